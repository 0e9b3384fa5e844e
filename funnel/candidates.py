"""A candidate list as columns: the in-process form of `funnel.v2.CandidateList`, and its checks.

Every stage reads the message into numpy columns once and writes it from them once: no message per
candidate, no per-candidate map, nothing converted twice, and the numeric columns go between numpy
and the wire format without a Python object per value (`funnel/wire.py`). A column that is neither
empty nor as long as `item_ids` is refused with INVALID_ARGUMENT naming it, before any work is done.

Items are named by id everywhere; beside the ids a list may carry each item's catalog row in one
bundle version (`catalog_rows`, `catalog_version`), which a stage serving that same version uses
instead of looking every id up (`rows_in`). Any other version reads the ids, so stages that swap
bundles at different moments never mix catalogs.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter

import numpy as np

from funnel.artifacts.catalog import IdIndex
from funnel.ids import MAX_ID_LENGTH
from funnel.runtime.errors import InvalidArgument
from funnel.sources import SOURCE_CODES
from funnel.v2 import candidates_pb2
from funnel.wire import FLOAT32, ROW, SMALL_ENUM, read_columns, write_column

_KNOWN_SOURCES = max(SOURCE_CODES.values())
SOURCES_FIELD, RETRIEVAL_FIELD, RANKING_FIELD, ROWS_FIELD = (
    candidates_pb2.CandidateList.DESCRIPTOR.fields_by_name[name].number
    for name in ("sources", "retrieval_scores", "ranking_scores", "catalog_rows")
)
_COLUMNS = {
    "sources": (SOURCES_FIELD, SMALL_ENUM, np.dtype(np.int32)),
    "retrieval_scores": (RETRIEVAL_FIELD, FLOAT32, np.dtype(np.float32)),
    "ranking_scores": (RANKING_FIELD, FLOAT32, np.dtype(np.float32)),
    "catalog_rows": (ROWS_FIELD, ROW, np.dtype(np.int64)),
}


def pick(values: list[str], positions: np.ndarray | list[int]) -> list[str]:
    """`[values[p] for p in positions]`, in C."""
    index = positions.tolist() if isinstance(positions, np.ndarray) else positions
    if len(index) > 1:
        return list(itemgetter(*index)(values))
    return [values[p] for p in index]


@dataclass
class Candidates:
    item_ids: list[str]
    sources: np.ndarray  # int32 SOURCE_CODES, one per item
    retrieval_scores: np.ndarray  # float32, one per item
    ranking_scores: np.ndarray | None = None  # float32, one per item once ranking scored the list
    rows: np.ndarray | None = None  # int64 catalog rows in bundle `catalog_version`, when known
    catalog_version: str = ""

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def empty(cls) -> Candidates:
        return cls([], np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32))

    @property
    def scores(self) -> np.ndarray:
        """The latest stage's scores: the ranker's when it scored the list, else retrieval's."""
        return self.retrieval_scores if self.ranking_scores is None else self.ranking_scores

    def rows_in(self, index: IdIndex, version: str) -> np.ndarray:
        """Each item's row in the catalog of bundle `version` (indexed by `index`), -1 for an id it
        does not hold: the carried rows when they are that version's, else a lookup of every id."""
        if self.rows is not None and self.catalog_version == version:
            if len(self.rows) and int(self.rows.max()) >= len(index):
                raise InvalidArgument(f"catalog_rows holds a row beyond the {len(index)} items of {version}")
            return self.rows
        return index.rows(self.item_ids)

    def take(self, positions: np.ndarray | list[int]) -> Candidates:
        """The candidates at `positions`, in that order."""
        return Candidates(
            pick(self.item_ids, positions),
            self.sources[positions],
            self.retrieval_scores[positions],
            None if self.ranking_scores is None else self.ranking_scores[positions],
            None if self.rows is None else self.rows[positions],
            self.catalog_version,
        )

    def extended(self, item_ids: list[str], source: int) -> Candidates:
        """These candidates followed by `item_ids`, all from `source`, with zero scores (and no rows:
        nothing says which catalog holds them)."""
        zeros = np.zeros(len(item_ids), dtype=np.float32)
        return Candidates(
            self.item_ids + item_ids,
            np.concatenate([self.sources, np.full(len(item_ids), source, dtype=np.int32)]),
            np.concatenate([self.retrieval_scores, zeros]),
            None if self.ranking_scores is None else np.concatenate([self.ranking_scores, zeros]),
        )

    def write(
        self, message: candidates_pb2.CandidateList, sources: bool = True, scores: str = "all"
    ) -> candidates_pb2.CandidateList:
        """Fill `message` (empty) with the ids, the rows when known, and the columns asked for:
        `sources`, and `scores` "all", "latest" (the ranker's when it scored the list, else
        retrieval's) or "none"."""
        if sources:
            write_column(message, SOURCES_FIELD, self.sources, SMALL_ENUM)
        if scores == "all" or (scores == "latest" and self.ranking_scores is None):
            write_column(message, RETRIEVAL_FIELD, self.retrieval_scores, FLOAT32)
        if scores in ("all", "latest") and self.ranking_scores is not None:
            write_column(message, RANKING_FIELD, self.ranking_scores, FLOAT32)
        if self.rows is not None and self.catalog_version:
            write_column(message, ROWS_FIELD, self.rows, ROW)
            message.catalog_version = self.catalog_version
        message.item_ids.extend(self.item_ids)
        return message

    def to_message(self, sources: bool = True, scores: str = "all") -> candidates_pb2.CandidateList:
        """The list as a new message (see `write`)."""
        return self.write(candidates_pb2.CandidateList(), sources, scores)

    @classmethod
    def read(cls, message: candidates_pb2.CandidateList, field: str = "candidates") -> Candidates:
        """The columns of `message`; a missing sources or retrieval_scores column reads as unknown
        (0) for each item. Raises InvalidArgument naming `field`'s bad column."""
        item_ids = message.item_ids[:]
        count = len(item_ids)
        columns = read_columns(message, _COLUMNS)
        for name, values in columns.items():
            if len(values) not in (0, count):
                raise InvalidArgument(
                    f"{field}.{name} has {len(values)} entries, {field}.item_ids {count}: "
                    "each column must be empty or as long as item_ids"
                )
        sources = columns["sources"] if len(columns["sources"]) else np.zeros(count, dtype=np.int32)
        if count and (sources.min() < 0 or sources.max() > _KNOWN_SOURCES):
            raise InvalidArgument(f"{field}.sources holds an unknown CandidateSource")
        retrieval = _finite(columns["retrieval_scores"], count, f"{field}.retrieval_scores")
        ranking = columns["ranking_scores"]
        ranked = _finite(ranking, count, f"{field}.ranking_scores") if len(ranking) else None
        rows = columns["catalog_rows"]
        if len(rows) and not message.catalog_version:
            raise InvalidArgument(f"{field}.catalog_rows needs {field}.catalog_version")
        known = len(rows) and count
        return cls(item_ids, sources, retrieval, ranked, rows if known else None, message.catalog_version)


def _finite(values: np.ndarray, count: int, what: str) -> np.ndarray:
    if not len(values):
        return np.zeros(count, dtype=np.float32)
    if not np.isfinite(values).all():
        raise InvalidArgument(f"{what} holds a non-finite value")
    return values


def check_item_ids(item_ids: list[str], what: str) -> None:
    """Every id non-empty, printable and at most MAX_ID_LENGTH characters (one pass, no per-id call)."""
    if not item_ids:
        return
    if min(map(len, item_ids)) == 0:
        raise InvalidArgument(f"{what} holds an empty id")
    if max(map(len, item_ids)) > MAX_ID_LENGTH:
        raise InvalidArgument(f"{what} holds an id longer than {MAX_ID_LENGTH} characters")
    if not "".join(item_ids).isprintable():
        raise InvalidArgument(f"{what} holds an id with non-printable characters")
