"""A soak of the live loop: a steady event rate into a store with a small maxmemory, exported as it
goes, Recommend beside it. Does memory plateau, is any write refused, is every acknowledged event
in the export?

    python -m benchmarks.soak --artifacts artifacts --seconds 600 --out results/soak

The demo stack, its Redis given `--maxmemory-mb` (below what the events of the run would take if
nothing were ever trimmed or expired: the report says how far below). A writer records
`--events-per-s` events in batches of 20 from `--users` users active at once, a new cohort every
`--cohort-s` (visitors come and go); an exporter runs
`training.export_events` every `--export-every-s` seconds; Recommend runs at `--recommend-rate`.
The events service keeps idempotency keys `--idempotency-s` and a user's state `--user-ttl-s` (a
client may retry within the first; the second is how long a user is remembered without an event),
so both plateau within the run. Reported: events a second acknowledged and refused, memory every
10 s and its growth over the last half, bytes per log entry, idempotency key and user (Redis's own
MEMORY USAGE), every acknowledged event found in the exports or not, Recommend's p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import redis
from google.protobuf.timestamp_pb2 import Timestamp

from benchmarks.e2e_load import Scenario, Traffic, start_stack
from funnel.live.schema import STREAM, user_key
from funnel.v1 import events_pb2, events_pb2_grpc, recommender_pb2_grpc
from launcher.stack import REPO_ROOT

BATCH = 20


async def write_events(
    address: str, rate: float, seconds: float, users: int, cohort_s: float, acknowledged: list[str]
) -> dict:
    """Batches at a steady pace from `users` active users, a new cohort of them every `cohort_s` (as
    visitors come and go: the ones gone expire); every acknowledged event id kept for the export."""
    refused: dict[str, int] = {}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = events_pb2_grpc.EventsStub(channel)
        started, batches = time.monotonic(), 0
        while time.monotonic() - started < seconds:
            stamp = Timestamp()
            stamp.GetCurrentTime()
            ids = [f"soak-{batches}-{n}" for n in range(BATCH)]
            events = [
                events_pb2.Event(event_id=event_id,
                                 user_id=f"soak-user-{int((time.monotonic() - started) // cohort_s)}-"
                                         f"{(batches * BATCH + n) % users}",
                                 item_id=f"i{(batches * 7 + n) % 20000:07d}", type=events_pb2.EVENT_TYPE_VIEW,
                                 timestamp=stamp)
                for n, event_id in enumerate(ids)
            ]  # fmt: skip
            try:
                reply = await stub.RecordEvents(events_pb2.RecordEventsRequest(events=events), timeout=5)
                if reply.recorded + reply.duplicates == BATCH:
                    acknowledged.extend(ids)
            except grpc.aio.AioRpcError as exc:
                refused[exc.code().name] = refused.get(exc.code().name, 0) + BATCH
            batches += 1
            await asyncio.sleep(max(0.0, started + batches * BATCH / rate - time.monotonic()))
    return refused


async def recommend(address: str, traffic: Traffic, rate: float, seconds: float) -> list[float]:
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        started, n = time.monotonic(), 0
        while time.monotonic() - started < seconds:
            t = time.perf_counter()
            try:
                await stub.Recommend(traffic[n], timeout=2)
                latencies.append((time.perf_counter() - t) * 1000)
            except grpc.aio.AioRpcError:
                pass
            n += 1
            await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
    return latencies


async def watch_memory(store: redis.Redis, seconds: float, samples: list[tuple[float, int]]) -> None:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        samples.append((round(time.monotonic() - started, 1), int(store.info("memory")["used_memory"])))
        await asyncio.sleep(10)


async def export_loop(url: str, every_s: float, seconds: float, folder: Path, runs: list[dict]) -> None:
    started, n = time.monotonic(), 0
    while time.monotonic() - started < seconds + every_s:  # one more after the writer stops: it catches up
        await asyncio.sleep(every_s)
        out = folder / f"export-{n:04d}.csv"
        result = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "training.export_events", "--store", url, "--out", str(out)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        runs.append({"at_s": round(time.monotonic() - started, 1), "status": result.returncode,
                     "error": result.stderr.strip()[-300:]})  # fmt: skip
        n += 1


def bytes_per_key(store: redis.Redis, pattern: str, sample: int = 200) -> float:
    keys = [key for _, key in zip(range(sample), store.scan_iter(match=pattern, count=1000), strict=False)]
    usages = [store.memory_usage(key, samples=0) or 0 for key in keys]
    return round(float(np.mean(usages)), 1) if usages else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--events-per-s", type=float, default=400.0)
    parser.add_argument("--users", type=int, default=2_000, help="users active at once")
    parser.add_argument("--cohort-s", type=float, default=60.0, help="a new cohort of active users this often")
    parser.add_argument("--recommend-rate", type=float, default=10.0)
    parser.add_argument("--export-every-s", type=float, default=15.0)
    parser.add_argument("--idempotency-s", type=int, default=120)
    parser.add_argument("--user-ttl-s", type=int, default=120)
    parser.add_argument("--maxmemory-mb", type=float, default=48.0)
    parser.add_argument("--out", type=Path, default=Path("results/soak"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    env = {"FUNNEL_IDEMPOTENCY_SECONDS": str(args.idempotency_s), "FUNNEL_USER_TTL_SECONDS": str(args.user_ttl_s),
           "FUNNEL_LOG_RETENTION_SECONDS": "0"}  # fmt: skip
    stack = start_stack(Scenario("demo", args.artifacts, env=env), args.out / "run")
    assert stack.redis is not None
    store = redis.Redis(host=stack.redis.host, port=stack.redis.port, decode_responses=True)
    store.config_set("maxmemory", str(int(args.maxmemory_mb * 1024 * 1024)))
    baseline = int(store.info("memory")["used_memory"])
    acknowledged: list[str] = []
    memory: list[tuple[float, int]] = []
    exports: list[dict] = []
    traffic = Traffic(args.artifacts)

    async def run() -> tuple[dict, list[float]]:
        writer = write_events(
            stack.address("events"), args.events_per_s, args.seconds, args.users, args.cohort_s, acknowledged
        )
        reader = recommend(stack.address("gateway"), traffic, args.recommend_rate, args.seconds)
        refused, latencies, *_ = await asyncio.gather(
            writer, reader, watch_memory(store, args.seconds, memory),
            export_loop(stack.redis.url, args.export_every_s, args.seconds, args.out, exports),  # type: ignore[union-attr]
        )  # fmt: skip
        return refused, latencies

    try:
        refused, latencies = asyncio.run(run())
        sizes = {
            "log entry": round(store.memory_usage(STREAM, samples=0) / max(store.xlen(STREAM), 1), 1),
            "idempotency key": bytes_per_key(store, "funnel:u:{*}:event:*"),
            "user (recent set)": bytes_per_key(store, user_key("soak-user-*", "recent")),
            "served set (a user's impressions)": bytes_per_key(store, "funnel:u:{*}:served"),
        }
    finally:
        stack.stop()
    exported: set[str] = set()
    for path in sorted(args.out.glob("export-*.csv")):
        exported.update(row["event_id"] for row in csv.DictReader(path.open()) if row["event_type"] == "view")
    half = [used for at, used in memory if at >= args.seconds / 2]
    events = len(acknowledged)
    users_seen = min(events, args.users * (int(args.seconds // args.cohort_s) + 1))
    result = {
        "seconds": args.seconds,
        "maxmemory_mb": args.maxmemory_mb,
        "events_acknowledged": events,
        "events_per_s": round(events / args.seconds, 1),
        "events_refused": refused,
        "exports": {"runs": len(exports), "failed": [e for e in exports if e["status"]]},
        "acknowledged_missing_from_the_export": len(set(acknowledged) - exported),
        "memory_mb_every_10s": [round(used / 2**20, 2) for _, used in memory],
        "memory_growth_over_the_last_half_mb": round((max(half) - min(half)) / 2**20, 2) if half else None,
        "bytes": sizes,
        # What the store would hold if nothing were trimmed or expired (the log, every idempotency key,
        # every user's state): what the run's events need without the bounds, to set beside maxmemory.
        "without_trimming_or_expiry_mb": round(
            (
                baseline
                + events * (sizes["log entry"] + sizes["idempotency key"])
                + users_seen * sizes["user (recent set)"]
            )
            / 2**20,
            1,
        ),
        "recommend_p50_ms": round(float(np.percentile(latencies, 50)), 2) if latencies else None,
        "recommend_p99_ms": round(float(np.percentile(latencies, 99)), 2) if latencies else None,
    }
    (args.out / "soak.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    ok = not refused and not result["exports"]["failed"] and result["acknowledged_missing_from_the_export"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
