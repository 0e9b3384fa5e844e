"""One client floods the gateway; does another client notice? Per-client rate limits, measured.

    python -m benchmarks.quota_flood --artifacts artifacts --seconds 20 --out results/quota_flood

The demo stack with a credentials file of two clients: `neighbour`, asking at a steady rate (open
loop, Poisson), and `flooder`, whose quota is `--flooder-rate` calls a second. Rounds alternate:
the neighbour alone, then beside the flooder sending as fast as its process can (a closed loop of
`--flood-concurrency` calls at once, retrying each refusal at once), each round its own seed, twice
over, so drift on these shared cores falls on both arms. The flooder's quota is small, so what it
may send is next to nothing beside the neighbour: the difference between the arms is what turning the
rest away costs. Reported: the neighbour's p50/p99 and degraded share in each arm, and the
flooder's calls a second, served and refused. The target: the neighbour's p99 and degraded share
within 10% of their values without the flood.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from benchmarks.cpu import cpu_seconds
from benchmarks.e2e_load import Scenario, Traffic, start_stack
from benchmarks.loadgen import open_loop
from funnel.runtime.clients import RECOMMEND, new_credential
from funnel.v1 import recommender_pb2_grpc
from launcher.stack import REPO_ROOT

FLOODER = """
import asyncio, json, sys, time, grpc
from funnel.v1 import common_pb2, recommender_pb2, recommender_pb2_grpc
target, token, seconds, concurrency = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
rate = float(sys.argv[5])  # 0: a closed loop of `concurrency` calls; else calls a second, never waiting
request = recommender_pb2.RecommendRequest(user_id="flood", num_results=10, context=common_pb2.Context(country="US"))
metadata = (("authorization", f"Bearer {token}"),)

async def main():
    counts = {"OK": 0, "RESOURCE_EXHAUSTED": 0, "other": 0}
    async with grpc.aio.insecure_channel(target) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        deadline = time.monotonic() + seconds
        async def one():
            try:
                await stub.Recommend(request, timeout=2, metadata=metadata)
                counts["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                counts[exc.code().name if exc.code().name in counts else "other"] += 1
        async def loop():
            while time.monotonic() < deadline:
                await one()
        if rate > 0:
            tasks, started = [], time.monotonic()
            while (now := time.monotonic()) < deadline:
                tasks.append(asyncio.create_task(one()))
                await asyncio.sleep(max(0.0, started + len(tasks) / rate - now))
            await asyncio.gather(*tasks)
        else:
            await asyncio.gather(*(loop() for _ in range(concurrency)))
    print(json.dumps(counts), flush=True)

asyncio.run(main())
"""


async def neighbour_round(address: str, token: str, traffic: Traffic, rate: float, seconds: float, seed: int) -> dict:
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        await channel.channel_ready()

        async def call(n: int) -> bool:
            reply = await stub.Recommend(traffic[n + seed * 1000], timeout=2.0, metadata=metadata)
            return reply.degraded

        samples = await open_loop(call, rate, seconds, seed=seed)
    ok = [s for s in samples if s.code == "OK"]
    latencies = [s.latency_ms for s in ok]
    return {
        "requests": len(samples),
        "errors": len(samples) - len(ok),
        "degraded": sum(bool(s.detail) for s in ok),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "latencies": latencies,
        "degraded_flags": [bool(s.detail) for s in ok],
    }


def flood(address: str, token: str, seconds: float, concurrency: int, rate: float = 0.0) -> subprocess.Popen:
    # At the lowest CPU priority: it stands in for a client on another machine, whose own CPU the
    # gateway would not share; what the neighbour then feels is the gateway's work on the flood.
    return subprocess.Popen(
        ["nice", "-n", "19", sys.executable, "-c", FLOODER, address, token, str(seconds), str(concurrency), str(rate)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, env={"PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip


def arm_summary(rounds: list[dict]) -> dict:
    latencies = [ms for r in rounds for ms in r["latencies"]]
    flags = [flag for r in rounds for flag in r["degraded_flags"]]
    return {
        "requests": sum(r["requests"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
        "degraded_share": round(float(np.mean(flags)), 4) if flags else 0.0,
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each arm, alternating")
    parser.add_argument("--rate", type=float, default=25.0, help="the neighbour's requests a second")
    parser.add_argument(
        "--flooder-rate", type=float, default=2.0, help="the flooder's quota, calls a second (its burst the same)"
    )
    parser.add_argument("--flood-concurrency", type=int, default=8, help="calls at once of the closed-loop flood")
    parser.add_argument(
        "--flood-rate", type=float, default=0.0, help="an open-loop flood of this many calls a second instead"
    )
    parser.add_argument("--out", type=Path, default=Path("results/quota_flood"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    neighbour_token, neighbour = new_credential("neighbour", [RECOMMEND])
    quota = [f"rate={args.flooder_rate:g}", f"burst={max(1, round(args.flooder_rate))}"]
    flooder_token, flooder = new_credential("flooder", [RECOMMEND], quota)
    clients = args.out / "clients"
    clients.write_text(f"{neighbour}\n{flooder}\n")
    gateway_env = {"FUNNEL_CLIENTS_FILE": str(clients)}
    stack = start_stack(Scenario("demo", args.artifacts), args.out / "run", gateway_env=gateway_env)
    traffic = Traffic(args.artifacts)
    arms: dict[str, list[dict]] = {"alone": [], "beside the flood": []}
    floods = []
    gateway_cpu: dict[str, float] = {"alone": 0.0, "beside the flood": 0.0}
    try:
        address = stack.address("gateway")
        asyncio.run(neighbour_round(address, neighbour_token, traffic, args.rate, 3, seed=99))  # warm-up
        for n in range(args.rounds):
            for arm in arms:
                flooding = None
                if arm != "alone":
                    flooding = flood(address, flooder_token, args.seconds + 1, args.flood_concurrency, args.flood_rate)
                if flooding:
                    time.sleep(1.0)  # the flood is at full speed when the round starts
                gateway_pid = stack.get("gateway").pid
                cpu_before = cpu_seconds(gateway_pid)
                result = asyncio.run(neighbour_round(address, neighbour_token, traffic, args.rate, args.seconds, n))
                gateway_cpu[arm] += cpu_seconds(gateway_pid) - cpu_before
                arms[arm].append(result)
                if flooding:
                    out, _ = flooding.communicate(timeout=60)
                    counts = json.loads(out.strip().splitlines()[-1])
                    floods.append({k: round(v / (args.seconds + 1), 1) for k, v in counts.items()})
                print(f"round {n + 1} {arm}: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
                      f"degraded {result['degraded']} of {result['requests']}", flush=True)  # fmt: skip
    finally:
        stack.stop()
    summary = {arm: arm_summary(rounds) for arm, rounds in arms.items()}
    alone, flooded = summary["alone"], summary["beside the flood"]
    result = {
        "neighbour_rate": args.rate,
        "flooder_quota_per_s": args.flooder_rate,
        "flood": f"open loop, {args.flood_rate:g} calls/s"
        if args.flood_rate
        else f"closed loop, {args.flood_concurrency} at once",
        "seconds_per_round": args.seconds,
        "rounds_per_arm": args.rounds,
        "neighbour": summary,
        "flooder_calls_per_s": floods,
        "p99_ratio": round(flooded["p99_ms"] / alone["p99_ms"], 3),
        # The gateway's CPU the flood added, per call of the flooder's (the neighbour's calls are the
        # same in both arms): what turning a call away costs.
        "gateway_cpu_ms_per_flooder_call": round(
            (gateway_cpu["beside the flood"] - gateway_cpu["alone"])
            * 1000
            / max(1.0, sum(sum(f.values()) for f in floods) * args.seconds),
            3,
        ),
        "degraded_share_difference": round(flooded["degraded_share"] - alone["degraded_share"], 4),
    }
    (args.out / "quota_flood.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
