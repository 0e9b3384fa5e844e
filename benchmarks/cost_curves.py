"""What a request costs as its work grows: results asked for, the user's history, candidates ranked.

    python -m benchmarks.cost_curves --artifacts artifacts --rate 40 --seconds 10 --repeats 2 --out results/bench

The demo stack with live state, as `make up` runs it. Each point is an open-loop step at a fixed
rate with the CPU every process on the request path spent per answered request (from /proc, as
`make bench` measures it) above what it spends idle (measured first, for as long as a step), and
the end-to-end p50/p99; every point runs `--repeats` times in turns and the medians are kept:
- results: 10 and 100 per request, the bench's own users;
- history: users known only by their live events, 10, 200 and 2,000 of them each (recorded through
  the events service first), 10 results;
- candidates: the gateway's per-source limits scaled so retrieval hands ranking about 200, 500 or
  1,000 candidates (each a stack of its own), 10 results.
The catalog axis is `make bench`'s 20k and 1M scenarios and `make bench-scale`'s 10M index.
Targets: 100 results at most 1.5x the CPU of 10; a 2,000-item history at most 1.3x a 10-item one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import time
from pathlib import Path

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from benchmarks.cpu import cpu_seconds
from benchmarks.e2e_load import OFF_THE_REQUEST_PATH, Scenario, Traffic, run_step, start_stack
from funnel import sources
from funnel.artifacts.catalog import Catalog
from funnel.artifacts.store import latest_version
from funnel.fusion import DEFAULT_LIMITS
from funnel.v1 import common_pb2, events_pb2, events_pb2_grpc, recommender_pb2
from launcher.stack import Stack

HISTORIES = (10, 200, 2000)
CANDIDATES = (200, 500, 1000)
USERS_PER_HISTORY = 20
LIMIT_SETTINGS = {
    sources.ANN: "FUNNEL_ANN_CANDIDATES",
    sources.COVISIT: "FUNNEL_COVISIT_CANDIDATES",
    sources.CATEGORY_POPULAR: "FUNNEL_CATEGORY_CANDIDATES",
    sources.POPULAR: "FUNNEL_POPULAR_CANDIDATES",
    sources.FRESH: "FUNNEL_FRESH_CANDIDATES",
}


class Requests:
    """A fixed list of requests, cycled (what `cpu_per_request` sends)."""

    def __init__(self, requests: list[recommender_pb2.RecommendRequest]) -> None:
        self.requests = requests

    def __getitem__(self, n: int) -> recommender_pb2.RecommendRequest:
        return self.requests[n % len(self.requests)]


def requests_of(users: list[str]) -> Requests:
    country = common_pb2.Context(country="US")
    return Requests([recommender_pb2.RecommendRequest(user_id=user, num_results=10, context=country) for user in users])


def limits_for(candidates: int) -> dict[str, str]:
    """The gateway's per-source limits scaled from the defaults to about `candidates` in all."""
    scale = candidates / sum(DEFAULT_LIMITS.values())
    return {LIMIT_SETTINGS[source]: str(max(1, round(n * scale))) for source, n in DEFAULT_LIMITS.items()}


def record_histories(stack: Stack, items: list[str], rng: np.random.Generator) -> dict[int, list[str]]:
    """Users with 10, 200 and 2,000 views each, written through the events service."""
    users: dict[int, list[str]] = {}
    now = time.time()
    with grpc.insecure_channel(stack.address("events")) as channel:
        stub = events_pb2_grpc.EventsStub(channel)
        for length in HISTORIES:
            users[length] = [f"history-{length}-{k}" for k in range(USERS_PER_HISTORY)]
            for user in users[length]:
                picked = rng.choice(items, length, replace=len(items) < length)
                batch = []
                for n, item in enumerate(picked):
                    stamp = Timestamp()
                    stamp.FromNanoseconds(int((now - length + n) * 1e9))  # one a second, oldest first
                    batch.append(events_pb2.Event(event_id=f"{user}-{n}", user_id=user, item_id=str(item),
                                                  type=events_pb2.EVENT_TYPE_VIEW, timestamp=stamp))  # fmt: skip
                for start in range(0, len(batch), 1000):
                    stub.RecordEvents(events_pb2.RecordEventsRequest(events=batch[start : start + 1000]), timeout=30)
    return users


def on_the_request_path(stack: Stack) -> dict[str, int]:
    return {p.name: p.pid for p in stack.processes if p.name not in OFF_THE_REQUEST_PATH}


def idle_cpu(stack: Stack, seconds: float) -> dict[str, float]:
    """CPU seconds each process spends a second with no request (health checks, reload polls,
    timers): subtracted from every point, so a request's cost does not depend on the rate."""
    processes = on_the_request_path(stack)
    before = {name: cpu_seconds(pid) for name, pid in processes.items()}
    time.sleep(seconds)
    return {name: (cpu_seconds(pid) - before[name]) / seconds for name, pid in processes.items()}


def measure(stack: Stack, requests: Requests | Traffic, rate: float, seconds: float, idle: dict[str, float]) -> dict:
    """CPU ms per answered request above idle, per process, and the latency, over one open-loop step."""
    processes = on_the_request_path(stack)
    before = {name: cpu_seconds(pid) for name, pid in processes.items()}
    started = time.monotonic()
    step = asyncio.run(run_step(stack.address("gateway"), requests, rate, seconds, seed=77))
    elapsed = time.monotonic() - started
    answered = max(step.ok, 1)
    ms = {name: (cpu_seconds(pid) - before[name] - idle[name] * elapsed) * 1000 / answered
          for name, pid in processes.items()}  # fmt: skip
    return {"ms": ms, "total_ms": sum(ms.values()), "p50_ms": step.percentile(50), "p99_ms": step.percentile(99),
            "answered": step.ok, "degraded": step.degraded}  # fmt: skip


def median_of(label: str, runs: list[dict]) -> dict:
    """The point's repeats, each figure their median (the machine is shared: one run can be unlucky)."""
    names = runs[0]["ms"]
    return {
        "point": label,
        "repeats": len(runs),
        "ms": {name: round(float(np.median([r["ms"][name] for r in runs])), 3) for name in names},
        "total_ms": round(float(np.median([r["total_ms"] for r in runs])), 3),
        "total_ms_each": [round(r["total_ms"], 3) for r in runs],
        "p50_ms": round(float(np.median([r["p50_ms"] for r in runs])), 2),
        "p99_ms": round(float(np.median([r["p99_ms"] for r in runs])), 2),
        "answered": sum(r["answered"] for r in runs),
        "degraded": sum(r["degraded"] for r in runs),
    }


def run_points(stack: Stack, points: dict[str, Requests | Traffic], args: argparse.Namespace) -> list[dict]:
    """Every point `args.repeats` times, in turns (so a noisy minute spreads over all of them)."""
    idle = idle_cpu(stack, args.seconds)
    print(f"   idle CPU (ms a second): { {name: round(v * 1000, 1) for name, v in idle.items()} }", flush=True)
    runs: dict[str, list[dict]] = {label: [] for label in points}
    for _ in range(args.repeats):
        for label, requests in points.items():
            runs[label].append(measure(stack, requests, args.rate, args.seconds, idle))
            print(f"   {label}: {runs[label][-1]['total_ms']:.2f} ms CPU per request above idle", flush=True)
    return [median_of(label, measured) for label, measured in runs.items()]


def ratios(rows: list[dict]) -> dict[str, float]:
    """The targets' ratios, of the points this run measured."""
    by = {row["point"]: row["total_ms"] for row in rows}
    wanted = {
        "100 results / 10 results (target <= 1.5)": ("500 candidates, 100 results", "500 candidates, 10 results"),
        "history 2,000 / 10 (target <= 1.3)": ("history of 2,000, 10 results", "history of 10, 10 results"),
        "1,000 candidates / 200": ("1000 candidates, 10 results", "200 candidates, 10 results"),
    }
    return {name: round(by[a] / by[b], 2) for name, (a, b) in wanted.items() if a in by and b in by}


def table(rows: list[dict]) -> str:
    processes = sorted({name for row in rows for name in row["ms"]})
    lines = [
        "| point | CPU ms per request above idle | " + " | ".join(processes) + " | p50 ms | p99 ms | degraded |",
        "|---|---|" + "---|" * len(processes) + "---|---|---|",
    ]
    for row in rows:
        cells = " | ".join(f"{row['ms'].get(name, 0):.2f}" for name in processes)
        lines.append(f"| {row['point']} | {row['total_ms']:.2f} | {cells} | {row['p50_ms']} | {row['p99_ms']} | "
                     f"{row['degraded']} of {row['answered']} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--rate", type=float, default=40.0, help="requests a second at every point")
    parser.add_argument("--repeats", type=int, default=2, help="runs of every point, in turns; the median is kept")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of every point")
    parser.add_argument("--candidates", type=int, nargs="+", default=list(CANDIDATES),
                        help="about how many candidates ranking gets; 500 also runs the results and history points")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    items = Catalog.load(latest_version(args.artifacts / "bundles")).item_ids.tolist()
    rng = np.random.default_rng(3)
    rows: list[dict] = []
    for candidates in sorted(args.candidates, key=lambda c: c != 500):
        scenario = Scenario(f"candidates-{candidates}", args.artifacts, env={"FUNNEL_USER_EVENTS_PER_WINDOW": "0"})
        print(f"== about {candidates} candidates: starting the stack", flush=True)
        run_dir = args.out / "run" / scenario.name
        shutil.rmtree(run_dir, ignore_errors=True)  # a store left by an earlier run would lengthen the histories
        stack = start_stack(scenario, run_dir, gateway_env=limits_for(candidates))
        try:
            points: dict[str, Requests | Traffic] = {f"{candidates} candidates, 10 results": Traffic(args.artifacts)}
            if candidates == 500:
                points["500 candidates, 100 results"] = Traffic(args.artifacts, num_results=100)
                users = record_histories(stack, items, rng)
                for length in HISTORIES:
                    points[f"history of {length:,}, 10 results"] = requests_of(users[length])
            rows += run_points(stack, points, args)
        finally:
            stack.stop()
    measured = ratios(rows)
    text = table(rows) + "\n\n" + "\n".join(f"- {name}: {value}" for name, value in measured.items())
    print(text)
    (args.out / "cost_curves.json").write_text(json.dumps({"rows": rows, "ratios": measured}, indent=2) + "\n")
    (args.out / "cost_curves.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
