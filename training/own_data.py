"""Your own data: an interactions file and an items file (CSV or Parquet) into the Dataset every
build step reads.

interactions  user_id, item_id, timestamp          required
              event_type                           optional: default "view"; impression and dismiss
                                                   rows are not interactions and are left out
              weight                               optional: default 1; a finite number, kept for
                                                   the record (the models weigh every interaction alike)
items         item_id                              required; one row per item
              category, provider                   optional: default "unknown"
              maturity                             optional: G, PG, PG13, R, NC17 (or 1-5); default PG
              regions                              optional: ISO country codes separated by "|"; empty
                                                   = available everywhere (the default)
              published_at                         optional: default the item's first interaction
              title                                optional: text, not used by the models

A timestamp is Unix seconds (integer or decimal) or ISO 8601 ("2024-05-01T12:00:00Z"; no zone =
UTC). Without an items file every item of the interactions gets the defaults. Every problem is
reported with its file, line (CSV; the header is line 1) or row (Parquet) and column, and the build
stops before training.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from funnel.artifacts.catalog import COUNTRIES, MATURITY_NAMES, WORLDWIDE
from funnel.ids import MAX_ID_LENGTH
from funnel.live.kinds import INTERACTION_TYPES, STATE_OF_TYPE
from training.dataset import Dataset, Interactions

DEFAULT_EVENT = "view"
DEFAULT_MATURITY = 2  # PG
MAX_PROBLEMS = 20  # reported at once; the rest are counted
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
ITEM_COLUMNS = ("item_id",)


class DataProblems(ValueError):
    """The files cannot be built from: every problem found, each with where it is."""

    def __init__(self, problems: list[str], more: int = 0) -> None:
        self.problems = problems
        lines = problems + ([f"... and {more} more"] if more else [])
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class ItemRecord:
    item_id: str
    category: str = "unknown"
    provider: str = "unknown"
    maturity: int = DEFAULT_MATURITY
    region_mask: int = int(WORLDWIDE)
    published_at: float | None = None  # Unix seconds; None: the item's first interaction


class _Report:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.more = 0

    def add(self, where: str, column: str, message: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"{where}, column {column}: {message}")
        else:
            self.more += 1

    def raise_if_any(self) -> None:
        if self.problems:
            raise DataProblems(self.problems, self.more)


def load_files(interactions: Path | Sequence[Path], items: Path | None = None) -> Dataset:
    """Several interactions files are read as one (base data, then exported events, say)."""
    paths = [interactions] if isinstance(interactions, Path) else list(interactions)
    report = _Report()
    records = _read_items(items, report) if items is not None else None
    rows = [row for path in paths for row in _read_interactions(path, report)]
    if records is None:
        records = [ItemRecord(item) for item in dict.fromkeys(item for _, _, item, _ in rows)]
    else:
        known = {record.item_id for record in records}
        for where, _, item, _ in rows:
            if item not in known:
                report.add(where, "item_id", f"{item!r} is not in the items file {items}")
    report.raise_if_any()
    if not rows:
        names = ", ".join(str(path) for path in paths)
        raise DataProblems([f"{names}: no interactions (impressions and dismissals are not interactions)"])
    source = "files:" + "+".join(path.name for path in paths)
    return to_dataset(records, [(user, item, ts) for _, user, item, ts in rows], source)


def read_items(path: Path) -> list[ItemRecord]:
    """An items file on its own (`training.add_items`), every problem reported as by `load_files`."""
    report = _Report()
    records = _read_items(path, report)
    report.raise_if_any()
    return records


def to_dataset(
    items: list[ItemRecord],
    interactions: list[tuple[str, str, float]],
    source: str,
) -> Dataset:
    """Items in the order given; users in the natural order of their ids."""
    item_row = {record.item_id: n for n, record in enumerate(items)}
    user_keys = sorted({user for user, _, _ in interactions}, key=natural_order)
    user_row = {key: n for n, key in enumerate(user_keys)}
    user = np.array([user_row[u] for u, _, _ in interactions], dtype=np.int32)
    item = np.array([item_row[i] for _, i, _ in interactions], dtype=np.int32)
    timestamp = np.array([int(t) for _, _, t in interactions], dtype=np.int64)
    first_seen = np.full(len(items), timestamp.max(), dtype=np.float64)
    np.minimum.at(first_seen, item, timestamp)
    published = np.array(
        [record.published_at if record.published_at is not None else first_seen[n] for n, record in enumerate(items)]
    )
    category_names = sorted({record.category for record in items})
    provider_names = sorted({record.provider for record in items})
    category_of = {name: n for n, name in enumerate(category_names)}
    provider_of = {name: n for n, name in enumerate(provider_names)}
    return Dataset(
        item_ids=np.array([record.item_id for record in items]),
        category=np.array([category_of[record.category] for record in items], dtype=np.int32),
        provider=np.array([provider_of[record.provider] for record in items], dtype=np.int32),
        maturity=np.array([record.maturity for record in items], dtype=np.int8),
        region_mask=np.array([record.region_mask for record in items], dtype=np.int64),
        # Age as of the latest interaction: the build's "now".
        age_days=np.maximum(0.0, (timestamp.max() - published) / 86_400.0).astype(np.float32),
        category_names=category_names,
        provider_names=provider_names,
        user_ids=np.array(user_keys),
        user_country=np.full(len(user_keys), COUNTRIES.index("US"), dtype=np.int8),
        interactions=Interactions(user, item, timestamp),
        source=source,
    )


# -- reading ---------------------------------------------------------------------------------------


def _records(path: Path, required: tuple[str, ...], report: _Report) -> Iterator[tuple[str, dict[str, str]]]:
    """(where, row) for each data row, every value a stripped string; a missing required column is
    reported once, naming it, and no row is read."""
    if not path.is_file():
        report.add(str(path), "-", "no such file")
        return
    if path.suffix.lower() in (".parquet", ".pq"):
        yield from _parquet_records(path, required, report)
        return
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in required if name not in header]
        if missing:
            for name in missing:
                report.add(f"{path}:1", name, f"missing (the header has {', '.join(header) or 'nothing'})")
            return
        reader.fieldnames = header
        for row in reader:
            yield f"{path}:{reader.line_num}", {k: (v or "").strip() for k, v in row.items() if k is not None}


def _parquet_records(path: Path, required: tuple[str, ...], report: _Report) -> Iterator[tuple[str, dict[str, str]]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    missing = [name for name in required if name not in table.column_names]
    for name in missing:
        report.add(str(path), name, f"missing (the file has {', '.join(table.column_names)})")
    if missing:
        return
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    for n in range(table.num_rows):
        row = {name: "" if values[n] is None else _text(values[n]) for name, values in columns.items()}
        yield f"{path} row {n + 1}", row


def _text(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value).strip()


def _read_interactions(path: Path, report: _Report) -> list[tuple[str, str, str, float]]:
    """(where, user, item, time) of every interaction."""
    rows = []
    for where, row in _records(path, INTERACTION_COLUMNS, report):
        user = _identifier(row, "user_id", where, report)
        item = _identifier(row, "item_id", where, report)
        ts = _timestamp(row.get("timestamp", ""), where, "timestamp", report)
        kind = row.get("event_type") or DEFAULT_EVENT
        if kind not in STATE_OF_TYPE:
            report.add(where, "event_type", f"{kind!r} is not one of {', '.join(STATE_OF_TYPE)}")
            continue
        weight = row.get("weight") or "1"
        if not _finite(weight):
            report.add(where, "weight", f"{weight!r} is not a finite number")
            continue
        if user and item and ts is not None and kind in INTERACTION_TYPES:
            rows.append((where, user, item, ts))
    return rows


def _read_items(path: Path, report: _Report) -> list[ItemRecord]:
    records: dict[str, ItemRecord] = {}
    for where, row in _records(path, ITEM_COLUMNS, report):
        item = _identifier(row, "item_id", where, report)
        if not item:
            continue
        if item in records:
            report.add(where, "item_id", f"{item!r} appears twice")
            continue
        maturity = _maturity(row.get("maturity", ""), where, report)
        regions = _regions(row.get("regions", ""), where, report)
        published = row.get("published_at", "")
        published_at = _timestamp(published, where, "published_at", report, before_1970=True) if published else None
        records[item] = ItemRecord(
            item_id=item,
            category=row.get("category") or "unknown",
            provider=row.get("provider") or "unknown",
            maturity=maturity,
            region_mask=regions,
            published_at=published_at,
        )
    if not records and not report.problems:
        report.add(str(path), "item_id", "no items")
    return list(records.values())


def _identifier(row: dict[str, str], column: str, where: str, report: _Report) -> str:
    value = row.get(column, "")
    if not value:
        report.add(where, column, "empty")
    elif len(value) > MAX_ID_LENGTH or not value.isprintable():
        report.add(where, column, f"must be at most {MAX_ID_LENGTH} printable characters")
    else:
        return value
    return ""


def _timestamp(value: str, where: str, column: str, report: _Report, before_1970: bool = False) -> float | None:
    """Unix seconds of `value`; an interaction is after 1970, a publication may be older."""
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            report.add(where, column, f"{value!r} is neither Unix seconds nor an ISO 8601 time")
            return None
        seconds = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(seconds) or (seconds < 0 and not before_1970):
        report.add(where, column, f"{value!r} is not a time after 1970")
        return None
    return seconds


def _maturity(value: str, where: str, report: _Report) -> int:
    if not value:
        return DEFAULT_MATURITY
    if value.isdigit() and 1 <= int(value) < len(MATURITY_NAMES):
        return int(value)
    if value.upper() in MATURITY_NAMES[1:]:
        return MATURITY_NAMES.index(value.upper())
    report.add(where, "maturity", f"{value!r} is not one of {', '.join(MATURITY_NAMES[1:])} or 1-5")
    return DEFAULT_MATURITY


def _regions(value: str, where: str, report: _Report) -> int:
    codes = [code.strip().upper() for code in value.split("|") if code.strip()]
    if not codes:
        return int(WORLDWIDE)
    unknown = [code for code in codes if code not in COUNTRIES]
    if unknown:
        report.add(where, "regions", f"{', '.join(unknown)} not among the served countries {', '.join(COUNTRIES)}")
        return int(WORLDWIDE)
    return sum(1 << COUNTRIES.index(code) for code in set(codes))


def _finite(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def natural_order(key: str) -> list[str | int]:
    """Ids in the order people expect: "u2" before "u10", "7" before "12" (digit runs as numbers)."""
    return [int(part) if n % 2 else part for n, part in enumerate(re.split(r"(\d+)", key))]
