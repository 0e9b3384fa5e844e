"""`python -m evaluation`: replay held-out users through the served funnel and write the report.

    python -m evaluation --artifacts artifacts --out results/eval [--max-users 2000] [--seed 7]

The artifacts come from `training.build` (synthetic, or `--movielens DIR`), which trains on the
training part of a temporal split and keeps each user's last interactions as the held-out truth.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from evaluation.replay import evaluate
from evaluation.report import write_report


def progress(message: str) -> None:
    print(f"[eval {time.strftime('%H:%M:%S')}] {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--out", type=Path, default=Path("results/eval"))
    parser.add_argument("--max-users", type=int, default=2000, help="held-out users replayed (a seeded sample)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    args = parser.parse_args(argv)
    command = "python -m evaluation " + shlex.join(sys.argv[1:] if argv is None else argv)
    results = evaluate(args.artifacts, args.out / "run", args.max_users, args.seed, args.concurrency, progress)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval.json").write_text(json.dumps(results, indent=2))
    report = write_report(results, args.out, command)
    progress(f"wrote {args.out / 'eval.json'} and {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
