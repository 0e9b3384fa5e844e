"""Write the events the online store logged to an interactions file the build reads, and record how
far the export got, so the log may trim what is exported (and nothing else).

    python -m training.export_events --store redis://127.0.0.1:6390/0 --out events.csv \
        [--password-file FILE] [--exclude-clients forged-app,other] [--after ID --no-commit] [--cluster]

Columns: user_id, item_id, timestamp (Unix seconds), event_type, weight, event_id, client: the
format of `training.build --interactions` (which counts every type but impressions and dismissals as
an interaction; the client column says who wrote each event, so one client's events can be left out
before retraining). An impression logged by the gateway covers every item it served: one row each.

By default the export starts after the checkpoint (`funnel:log:exported`) and, once the file is
written and fsynced, moves the checkpoint to the last entry it read. Every entry carries a sequence
number: one missing (a gap, from a log trimmed by hand, say) fails the export with status 1 and the
checkpoint stays where it was. One exporter at a time: the checkpoint only moves from where this run
found it. `--cluster`: the store is a Redis Cluster, and every partition of its log is exported,
each from its own checkpoint (funnel/live/schema.py).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.cluster import RedisCluster

from funnel.live.schema import Layout, LogKeys
from funnel.runtime.config import shown

COLUMNS = ("user_id", "item_id", "timestamp", "event_type", "weight", "event_id", "client")
PAGE = 10_000
# Moves the checkpoint only from where this export found it (another exporter may have moved it).
_ADVANCE = """
if (redis.call('HGET', KEYS[1], 'id') or '') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'id', ARGV[2], 'seq', ARGV[3])
return 1
"""


class ExportGap(RuntimeError):
    """Sequence numbers are missing between the checkpoint and what the log holds: events were lost."""


@dataclass(frozen=True)
class Exported:
    rows: int  # written to the file
    entries: int  # log entries read (an impression entry is one row per item)
    left_out: int  # entries of excluded clients
    last_id: str  # one Redis: the last entry read; a cluster: empty (a partition's id says nothing of the rest)
    last_seq: int  # a cluster: the partitions' summed


def rows(fields: dict[str, str]) -> Iterator[tuple[str, ...]]:
    seconds = f"{int(fields['ts']) / 1000:.3f}"
    for item in fields["item_id"].split("\n"):
        yield (fields["user_id"], item, seconds, fields["type"], fields["value"], fields["event_id"],
               fields.get("client", ""))  # fmt: skip


@dataclass
class _Partition:
    """What one partition of the log gave this export, and where its checkpoint was."""

    checkpoint: dict[str, str]
    entries: int = 0
    rows: int = 0
    left_out: int = 0
    last_id: str = "-"
    last_seq: int = 0


def export(
    client: redis.Redis | RedisCluster,
    out: Path,
    after: str | None = None,
    commit: bool = True,
    exclude_clients: frozenset[str] = frozenset(),
) -> Exported:
    """Entries after `after` (exclusive), or after the checkpoint when None; moves the checkpoint
    when `commit` and the export started from it. Raises ExportGap (nothing moved) on a gap.

    On a cluster every partition of the log is read from its own checkpoint, one after the other
    into the one file (each partition in order, as a Kafka consumer reads a topic); the checkpoints
    move once the file is on disk. `after` names one stream's id, so it is for one Redis only."""
    layout = Layout.cluster() if isinstance(client, RedisCluster) else Layout()
    if after is not None and layout.partitions > 1:
        raise ValueError("--after names an id in one stream; a cluster's log has a stream per partition")
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        parts = [_export_partition(client, layout.log(n), writer, after, exclude_clients)
                 for n in range(layout.partitions)]  # fmt: skip
        handle.flush()
        os.fsync(handle.fileno())  # on disk before the checkpoint says these entries may go
    if commit and after is None:
        for n, part in enumerate(parts):
            old = part.checkpoint.get("id", "")
            if part.entries and not client.eval(_ADVANCE, 1, layout.log(n).exported, old, part.last_id, part.last_seq):
                raise ExportGap("another export moved the checkpoint meanwhile: this file overlaps it; run again")
    return Exported(
        sum(p.rows for p in parts), sum(p.entries for p in parts), sum(p.left_out for p in parts),
        parts[-1].last_id if len(parts) == 1 else "", sum(p.last_seq for p in parts),
    )  # fmt: skip


def _export_partition(
    client: redis.Redis | RedisCluster, log: LogKeys, writer: Any, after: str | None, exclude_clients: frozenset[str]
) -> _Partition:
    checkpoint = client.hgetall(log.exported) if after is None else {}
    part = _Partition(checkpoint)
    start_id = (checkpoint.get("id") or "-") if after is None else after
    expected = int(checkpoint.get("seq", 0)) + 1 if after is None else None
    part.last_id, part.last_seq = start_id, expected - 1 if expected is not None else 0
    last_id = start_id
    while page := client.xrange(log.stream, min="-" if last_id == "-" else f"({last_id}", max="+", count=PAGE):
        for entry_id, fields in page:
            seq = int(fields.get("seq", 0))
            if expected is not None and seq != expected:
                raise ExportGap(
                    f"the log skips from sequence number {expected - 1} to {seq} (entry {entry_id}): "
                    f"{seq - expected:,} events were removed before they were exported"
                    if seq > expected
                    else f"entry {entry_id} carries sequence number {seq}, expected {expected}"
                )
            expected = seq + 1 if expected is not None else None
            part.entries += 1
            last_id = part.last_id = entry_id
            part.last_seq = seq
            if fields.get("client", "") in exclude_clients:
                part.left_out += 1
                continue
            for row in rows(fields):
                writer.writerow(row)
                part.rows += 1
    return part


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="Redis URL of the online store (the `export` user's)")
    parser.add_argument("--password-file", default="", help="file holding that user's password (a mounted Secret)")
    parser.add_argument("--cluster", action="store_true", help="--store is a node of a Redis Cluster: every partition")
    parser.add_argument("--out", type=Path, required=True, help="CSV file to write")
    parser.add_argument("--exclude-clients", default="", help="clients whose events are left out, comma separated")
    parser.add_argument("--after", help="export the entries after this stream id (exclusive), not the checkpoint's")
    parser.add_argument("--no-commit", action="store_true", help="leave the checkpoint where it is")
    args = parser.parse_args(argv)
    excluded = frozenset(name for name in args.exclude_clients.split(",") if name)
    try:
        password = Path(args.password_file).read_text().strip() if args.password_file else None
        connect = RedisCluster.from_url if args.cluster else redis.Redis.from_url
        client = connect(args.store, password=password, decode_responses=True)
        result = export(client, args.out, args.after, not args.no_commit, excluded)
    except redis.RedisError as exc:
        print(f"error: the store at {shown(args.store)} could not be read: {exc}", file=sys.stderr)
        return 1
    except ExportGap as exc:
        print(f"error: {exc}; the checkpoint was not moved", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {result.rows:,} rows from {result.entries:,} log entries to {args.out}"
        + (f" ({result.left_out:,} entries of {', '.join(sorted(excluded))} left out)" if excluded else "")
    )
    if result.last_id:
        print(result.last_id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
