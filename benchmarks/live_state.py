"""What live data costs on the demo stack: the live-state read per request, and RecordEvents
throughput while the stack serves recommendations.

    python -m benchmarks.live_state --artifacts artifacts --out results/bench-live

1. Hydration: one client asks the same users, in turn, of a gateway reading each user's live state
   and of a gateway of the same stack that reads none (`--state-store ''`) sent the live events as
   `recent_item_ids` (the same work for the stages), sequentially, so none queues. Every user asked
   has 20 live events recorded first.
2. Events under load: Recommend at a steady open-loop rate while writers send batches of 20
   events back to back (Redis fsyncing every write, `appendfsync always`): events acknowledged per
   second, RecordEvents latency, and what the load saw (errors, degraded answers, p99).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from benchmarks.e2e_load import Scenario, Traffic, start_stack
from benchmarks.loadgen import Sample, open_loop
from funnel.artifacts.catalog import Catalog
from funnel.artifacts.store import latest_version
from funnel.v1 import events_pb2, events_pb2_grpc, recommender_pb2, recommender_pb2_grpc

BATCH = 20


def events_for(user: str, items: list[str], prefix: str) -> list[events_pb2.Event]:
    now = Timestamp()
    now.GetCurrentTime()
    return [
        events_pb2.Event(
            event_id=f"{prefix}-{n}", user_id=user, item_id=item, type=events_pb2.EVENT_TYPE_VIEW, timestamp=now
        )
        for n, item in enumerate(items)
    ]


async def hydration(live: str, frozen: str, events: str, traffic: Traffic, items: list[str], rounds: int) -> dict:
    """The live gateway (reads the user's state) against the frozen one asked with the request
    carrying what the live read folds in (so the stages do the same work): one ask of each per
    round, in alternating order, so both processes wake equally often (a process asked twice in a
    row answers its second ask faster on these shared cores, which would flatter it)."""
    requests = [traffic[n] for n in range(rounds)]
    rng = np.random.default_rng(3)
    async with (
        grpc.aio.insecure_channel(live) as a,
        grpc.aio.insecure_channel(frozen) as b,
        grpc.aio.insecure_channel(events) as e,
    ):
        recorder = events_pb2_grpc.EventsStub(e)
        with_lists: dict[str, recommender_pb2.RecommendRequest] = {}
        for request in requests:
            if request.user_id in with_lists:
                continue
            picked = [items[k] for k in rng.integers(0, len(items), BATCH)]
            events_batch = events_for(request.user_id, picked, request.user_id)
            await recorder.RecordEvents(events_pb2.RecordEventsRequest(events=events_batch))
            copy = recommender_pb2.RecommendRequest()
            copy.CopyFrom(request)
            copy.recent_item_ids.extend(sorted(set(picked)))  # one timestamp: the store orders them by id
            with_lists[request.user_id] = copy
        stubs = {"live": recommender_pb2_grpc.RecommenderStub(a), "frozen": recommender_pb2_grpc.RecommenderStub(b)}
        latency: dict[str, list[float]] = {"live": [], "frozen": []}
        read_ms: list[float] = []
        for n, request in enumerate(requests * 2):
            asks = [("live", request), ("frozen", with_lists[request.user_id])]
            for arm, sent in asks if n % 2 else asks[::-1]:
                started = time.perf_counter()
                reply = await stubs[arm].Recommend(sent, timeout=5)
                if n >= len(requests):  # the first pass warms both
                    latency[arm].append((time.perf_counter() - started) * 1000)
                    read_ms += [s.latency_ms for s in reply.stages if s.stage == "live_state"]
    p50 = {arm: float(np.percentile(values, 50)) for arm, values in latency.items()}
    return {
        "requests per arm": len(latency["live"]),
        "p50 ms, live": round(p50["live"], 3),
        "p50 ms, frozen sent the same lists": round(p50["frozen"], 3),
        "p50 added by the read ms": round(p50["live"] - p50["frozen"], 3),
        "live_state step p50 ms": round(float(np.percentile(read_ms, 50)), 3),
        "live_state step p99 ms": round(float(np.percentile(read_ms, 99)), 3),
    }


async def events_under_load(
    gateway: str, events: str, traffic: Traffic, items: list[str], rate: float, events_rate: float, seconds: float
) -> dict:
    """Recommend at `rate` and batches of 20 events adding up to `events_rate` a second, both open
    loop; `events_rate` 0: four writers send batches back to back (the events path's capacity)."""
    async with grpc.aio.insecure_channel(gateway) as g, grpc.aio.insecure_channel(events) as e:
        recommender, recorder = recommender_pb2_grpc.RecommenderStub(g), events_pb2_grpc.EventsStub(e)
        rng = np.random.default_rng(5)

        async def record(n: int) -> None:
            batch = events_for(f"bench-user-{n % 2000}", [items[k] for k in rng.integers(0, len(items), BATCH)],
                               f"b{events_rate:.0f}-{n}")  # fmt: skip
            await recorder.RecordEvents(events_pb2.RecordEventsRequest(events=batch), timeout=5)

        async def back_to_back(w: int, stop: float) -> list[Sample]:
            out, n = [], 0
            while time.perf_counter() < stop:
                started = time.perf_counter()
                try:
                    await record(w * 1_000_000 + n)
                    out.append(Sample(0, (time.perf_counter() - started) * 1000, "OK"))
                except grpc.aio.AioRpcError as exc:
                    out.append(Sample(0, (time.perf_counter() - started) * 1000, exc.code().name))
                n += 1
            return out

        async def recommend(n: int) -> bool:
            reply = await recommender.Recommend(traffic[n], timeout=2.0)
            return reply.degraded

        started = time.perf_counter()
        if events_rate > 0:
            served, written = await asyncio.gather(
                open_loop(recommend, rate, seconds), open_loop(record, events_rate / BATCH, seconds, seed=9)
            )
        else:
            stop = started + seconds
            served, *writers = await asyncio.gather(
                open_loop(recommend, rate, seconds), *(back_to_back(w, stop) for w in range(4))
            )
            written = [sample for samples in writers for sample in samples]
        elapsed = time.perf_counter() - started
    acknowledged = [s.latency_ms for s in written if s.code == "OK"]
    ok = [s.latency_ms for s in served if s.code == "OK"]
    failures: dict[str, int] = {}
    for sample in written:
        if sample.code != "OK":
            failures[sample.code] = failures.get(sample.code, 0) + 1
    return {
        "offered events per second": events_rate or "back to back, 4 writers",
        "events acknowledged per second": round(len(acknowledged) * BATCH / elapsed, 1),
        "RecordEvents p50 / p99 ms": [round(float(np.percentile(acknowledged, q)), 2) for q in (50, 99)],
        "RecordEvents failures": failures,
        "Recommend rate": rate,
        "Recommend answered": len(ok),
        "Recommend errors": sum(s.code != "OK" for s in served),
        "Recommend degraded": sum(bool(s.detail) for s in served if s.code == "OK"),
        "Recommend p50 / p99 ms": [round(float(np.percentile(ok, q)), 2) for q in (50, 99)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--out", type=Path, default=Path("results/bench-live"))
    parser.add_argument("--rounds", type=int, default=300, help="requests per arm of the hydration comparison")
    parser.add_argument("--rate", type=float, default=25.0, help="Recommend requests per second beside the events")
    parser.add_argument(
        "--events-rates",
        default="2000,0",
        help="events per second offered beside the Recommend load, one run each (0: back to back, the capacity)",
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    scenario = Scenario("demo", args.artifacts)
    # What was served is left out of nothing here: each arm asks the same users, and the stages
    # must do the same work for the comparison (impressions are still recorded, off the path).
    stack = start_stack(scenario, args.out / "run", gateway_env={"FUNNEL_SERVED_FILTER_SECONDS": "0"})
    try:
        # Two more gateways started the same way at the same time, one reading live state, one not.
        live = stack.launch_like("gateway", "gateway-live")
        frozen = stack.launch_like("gateway", "gateway-frozen", ["--state-store", ""])
        stack.wait_all_serving()
        traffic = Traffic(args.artifacts)
        items = Catalog.load(latest_version(args.artifacts / "bundles")).item_ids.tolist()
        result = {
            "hydration": asyncio.run(
                hydration(
                    f"127.0.0.1:{live.port}",
                    f"127.0.0.1:{frozen.port}",
                    stack.address("events"),
                    traffic,
                    items,
                    args.rounds,
                )
            ),
            "events under load": [
                asyncio.run(
                    events_under_load(
                        stack.address("gateway"),
                        stack.address("events"),
                        traffic,
                        items,
                        args.rate,
                        float(events_rate),
                        args.seconds,
                    )
                )
                for events_rate in args.events_rates.split(",")
            ],
            "durability": "Redis appendonly yes, appendfsync always: every acknowledged batch was fsynced first",
        }
    finally:
        stack.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "live.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
