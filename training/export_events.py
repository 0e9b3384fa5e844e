"""Write the events the online store logged to an interactions file the build reads.

    python -m training.export_events --store redis://127.0.0.1:6390/0 --out events.csv [--after ID]

Columns: user_id, item_id, timestamp (Unix seconds), event_type, weight, event_id: the format of
`training.build --interactions` (which counts every type but impressions and dismissals as an
interaction). An impression logged by the gateway covers every item it served: one row each. The
last line printed is the id of the newest entry exported: pass it as --after next time to export
only what came since.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterator
from pathlib import Path

import redis

from funnel.live.schema import STREAM

COLUMNS = ("user_id", "item_id", "timestamp", "event_type", "weight", "event_id")
PAGE = 10_000


def rows(entries: list[tuple[str, dict[str, str]]]) -> Iterator[tuple[str, ...]]:
    for _, fields in entries:
        seconds = f"{int(fields['ts']) / 1000:.3f}"
        for item in fields["item_id"].split("\n"):
            yield fields["user_id"], item, seconds, fields["type"], fields["value"], fields["event_id"]


def export(client: redis.Redis, out: Path, after: str = "-") -> tuple[int, str]:
    """(rows written, id of the last entry exported); `after` is exclusive."""
    written, last = 0, after
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        while True:
            start = "-" if last == "-" else f"({last}"
            entries = client.xrange(STREAM, min=start, max="+", count=PAGE)
            if not entries:
                return written, last
            for row in rows(entries):
                writer.writerow(row)
                written += 1
            last = entries[-1][0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="Redis URL of the online store")
    parser.add_argument("--out", type=Path, required=True, help="CSV file to write")
    parser.add_argument("--after", default="-", help="export entries after this stream id (exclusive)")
    args = parser.parse_args(argv)
    try:
        written, last = export(redis.Redis.from_url(args.store, decode_responses=True), args.out, args.after)
    except redis.RedisError as exc:
        print(f"error: the store at {args.store} could not be read: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {written:,} events to {args.out}")
    print(last)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
