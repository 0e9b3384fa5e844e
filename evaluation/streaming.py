"""Streaming replay: the held-out period's events fed through `RecordEvents`, a recommendation
asked before each one; live user state against the same stack with history frozen at build time.

    python -m evaluation.streaming --artifacts artifacts-eval --out results/streaming [--max-users 1000]

On an evaluation bundle (`training.build --for-evaluation`: served history = the training split,
each user's latest interactions held out with their times). For each sampled user, their held-out
events in time order: ask for 10 items, score the event's item (hit rate@10, NDCG@10), then (live
arm only) record the event as a view. The frozen arm asks the same questions and records nothing,
so it sees only the bundle's history. Each user's state is their own, so users run concurrently;
within a user the order is the events' order. Impressions are not recorded and served items not
left out (`--served-filter-seconds 0`) in both arms: what is measured is what the user's own events
add. A user's first held-out event is asked before any live event, so the arms can only differ
from the second on: the report gives both all events and those.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from evaluation.replay import EVAL_GATEWAY_FLAGS, HeldOut
from funnel.artifacts.store import latest_version
from funnel.runtime.config import env_name
from funnel.v1 import events_pb2, events_pb2_grpc, recommender_pb2_grpc
from launcher.stack import REPO_ROOT, Stack, StackConfig

K = 10
ARMS = ("frozen", "live")


@dataclass
class EventResult:
    user: int
    position: int  # 0 = the user's first held-out event
    rank: int | None  # of the event's item in the answer, None when not in the top K


def held_out_events(bundle: Path, held_out: HeldOut) -> dict[int, list[tuple[int, int]]]:
    """Per sampled user, their held-out (item row, time) in time order."""
    times_path = bundle / "holdout_times.npy"
    if not times_path.is_file():
        raise SystemExit(f"{bundle} has no holdout_times.npy: rebuild it with training.build --for-evaluation")
    users, items, times = (np.load(bundle / f"holdout_{name}.npy") for name in ("users", "items", "times"))
    sampled = set(held_out.sample.tolist())
    events: dict[int, list[tuple[int, int]]] = {}
    for order in np.lexsort((items, times)):
        user = int(users[order])
        if user in sampled:
            events.setdefault(user, []).append((int(items[order]), int(times[order])))
    return events


async def stream(
    gateway: str, events_address: str, held_out: HeldOut, events: dict[int, list[tuple[int, int]]], live: bool,
    concurrency: int,
) -> list[EventResult]:  # fmt: skip
    results: list[EventResult] = []
    gate = asyncio.Semaphore(concurrency)
    async with grpc.aio.insecure_channel(gateway) as g, grpc.aio.insecure_channel(events_address) as e:
        recommender, recorder = recommender_pb2_grpc.RecommenderStub(g), events_pb2_grpc.EventsStub(e)

        async def one_user(user: int) -> None:
            async with gate:
                request = held_out.request(user)
                request.num_results, request.debug = K, False
                for position, (item, when) in enumerate(events[user]):
                    reply = await recommender.Recommend(request, timeout=30)
                    if reply.degraded:
                        raise RuntimeError(f"a degraded answer would skew the comparison: {reply.stages}")
                    rows = held_out.catalog.index.rows([entry.item_id for entry in reply.items]).tolist()
                    results.append(EventResult(user, position, rows.index(item) if item in rows else None))
                    if live:
                        event = events_pb2.Event(
                            event_id=f"stream-{user}-{position}",
                            user_id=request.user_id,
                            item_id=str(held_out.catalog.item_ids[item]),
                            type=events_pb2.EVENT_TYPE_VIEW,
                            timestamp=Timestamp(seconds=when),
                        )
                        await recorder.RecordEvents(events_pb2.RecordEventsRequest(events=[event]), timeout=30)

        await asyncio.gather(*(one_user(user) for user in events))
    return results


def summarise(results: list[EventResult], first: bool) -> dict[str, float]:
    chosen = [r for r in results if first or r.position > 0]
    hits = [r.rank is not None for r in chosen]
    gains = [1 / math.log2(r.rank + 2) if r.rank is not None else 0.0 for r in chosen]
    return {"events": len(chosen), f"hit_rate@{K}": float(np.mean(hits)), f"ndcg@{K}": float(np.mean(gains))}


def evaluate(artifacts: Path, run_dir: Path, max_users: int, seed: int, concurrency: int) -> dict:
    bundle = latest_version(artifacts / "bundles")
    held_out = HeldOut(bundle, max_users, seed)
    events = held_out_events(bundle, held_out)
    gateway_env = {
        "FUNNEL_SERVED_FILTER_SECONDS": "0",
        "FUNNEL_RECORD_IMPRESSIONS": "false",
        # Generous like every budget here: an answer read without live state would skew the comparison.
        "FUNNEL_STATE_BUDGET_MS": "3000",
        **{env_name(flag[2:].replace("-", "_")): value
           for flag, value in zip(EVAL_GATEWAY_FLAGS[::2], EVAL_GATEWAY_FLAGS[1::2], strict=True)},
    }  # fmt: skip
    stack = Stack(StackConfig(artifacts=artifacts, run_dir=run_dir, policy=REPO_ROOT / "config" / "policy.yaml",
                              auto_ports=True, gateway_port=0, gateway_env=gateway_env))  # fmt: skip
    stack.start()
    try:
        arms = {}
        for arm in ARMS:
            started = time.monotonic()
            results = asyncio.run(
                stream(stack.address("gateway"), stack.address("events"), held_out, events, arm == "live", concurrency)
            )
            arms[arm] = {
                "all events": summarise(results, first=True),
                "after the user's first held-out event": summarise(results, first=False),
                "seconds": round(time.monotonic() - started, 1),
            }
            per_event = {(r.user, r.position): r.rank is not None for r in results}
            arms[arm]["_hits"] = per_event
    finally:
        stack.stop()
    frozen_hits, live_hits = arms["frozen"].pop("_hits"), arms["live"].pop("_hits")
    return {
        "bundle": bundle.name,
        "users": len(events),
        "events": sum(len(v) for v in events.values()),
        "arms": arms,
        # Paired: the same question in both arms.
        "live hit, frozen missed": sum(live_hits[key] and not frozen_hits[key] for key in live_hits),
        "frozen hit, live missed": sum(frozen_hits[key] and not live_hits[key] for key in live_hits),
    }


def format_table(result: dict) -> str:
    lines = [f"| arm | events | hit rate@{K} | NDCG@{K} | events after the first | hit rate@{K} | NDCG@{K} |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for arm in ARMS:
        every, later = result["arms"][arm]["all events"], result["arms"][arm]["after the user's first held-out event"]
        lines.append(
            f"| {arm} | {every['events']} | {every[f'hit_rate@{K}']:.4f} | {every[f'ndcg@{K}']:.4f} | "
            f"{later['events']} | {later[f'hit_rate@{K}']:.4f} | {later[f'ndcg@{K}']:.4f} |"
        )
    frozen, live = (result["arms"][arm]["all events"][f"ndcg@{K}"] for arm in ARMS)
    lines.append("")
    lines.append(
        f"Live against frozen: NDCG@{K} {(live / frozen - 1) * 100:+.1f}% over all events; paired, live hit where "
        f"frozen missed {result['live hit, frozen missed']} times, the reverse {result['frozen hit, live missed']}."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts-eval"))
    parser.add_argument("--out", type=Path, default=Path("results/streaming"))
    parser.add_argument("--max-users", type=int, default=1000, help="held-out users streamed (a seeded sample)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=4, help="users streamed at once")
    args = parser.parse_args(argv)
    result = evaluate(args.artifacts, args.out / "run", args.max_users, args.seed, args.concurrency)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "streaming.json").write_text(json.dumps(result, indent=2))
    table = format_table(result)
    (args.out / "streaming.md").write_text(f"# Streaming replay: {result['bundle']}\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
