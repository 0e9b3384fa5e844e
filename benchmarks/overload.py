"""Overload: the demo stack at its sustainable rate and at three times it, without and with load
shedding (the gateway's adaptive concurrency limit), on one machine in one run.

    python -m benchmarks.overload --artifacts artifacts [--rate R] [--seconds 10] [--out results/overload]

Without --rate, the sustainable rate (p99 <= 50 ms, no error) is found first by a short sweep.
Printed per step: what was sent, answered, shed (RESOURCE_EXHAUSTED) and failed otherwise, the
latency of answered calls (p50/p99) and of refusals (p50), the share degraded, and the quality
factor the gateway ended the step at.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import grpc
import numpy as np

from benchmarks.e2e_load import Scenario, Traffic, start_stack, sustainable_rate, sweep
from benchmarks.loadgen import Sample, open_loop
from funnel.v1 import recommender_pb2_grpc

SLO_MS = 50.0
# The gateway sheds to keep its own latency under this; stages keep the default fixed ceiling.
SHEDDING = {"latency_target_ms": 40.0}


async def load(address: str, traffic: Traffic, rate: float, seconds: float, seed: int) -> list[Sample]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        await channel.channel_ready()

        async def call(n: int) -> dict:
            reply = await stub.Recommend(traffic[n + seed * 1000], timeout=1.0)
            return {"degraded": reply.degraded, "quality": reply.quality_factor}

        return await open_loop(call, rate, seconds, seed=seed, timeout_s=3.0)


def describe(samples: list[Sample], rate: float, seconds: float) -> dict:
    ok = [s for s in samples if s.code == "OK"]
    shed = [s for s in samples if s.code == "RESOURCE_EXHAUSTED"]
    failed: dict[str, int] = {}
    for s in samples:
        if s.code not in ("OK", "RESOURCE_EXHAUSTED"):
            failed[s.code] = failed.get(s.code, 0) + 1
    ok_ms = [s.latency_ms for s in ok]

    def pct(values: list[float], q: float) -> float:
        return round(float(np.percentile(values, q)), 1) if values else float("nan")

    return {
        "rate": rate,
        "sent": len(samples),
        "answered_per_s": round(len(ok) / seconds, 1),
        "shed": len(shed),
        "failed": failed,
        "answered_p50_ms": pct(ok_ms, 50),
        "answered_p99_ms": pct(ok_ms, 99),
        "refused_p50_ms": pct([s.latency_ms for s in shed], 50),
        "degraded_share": round(sum(s.detail["degraded"] for s in ok) / max(len(ok), 1), 3),
        "quality_factor_min": round(min((s.detail["quality"] for s in ok), default=float("nan")), 2),
    }


def run(artifacts: Path, rate: float | None, seconds: float, out: Path) -> dict:
    traffic = Traffic(artifacts)
    results: dict = {"seconds_per_step": seconds, "slo_ms": SLO_MS, "configs": {}}
    for name, gateway_env in {"no shedding": {}, "adaptive shedding": SHEDDING}.items():
        env = {f"FUNNEL_{key.upper()}": str(value) for key, value in gateway_env.items()}
        stack = start_stack(Scenario(name, artifacts), out / name.replace(" ", "-"), gateway_env=env)
        try:
            address = stack.address("gateway")
            if rate is None:
                steps = sweep(address, traffic, [10, 15, 20, 25, 30, 40], seconds, SLO_MS, "find sustainable")
                rate = sustainable_rate(steps, SLO_MS) or 10.0
                results["sustainable_rate"] = rate
            asyncio.run(load(address, traffic, 20, 3, seed=0))  # warm-up
            rows = []
            for n, factor in enumerate((1, 3)):
                row = describe(
                    asyncio.run(load(address, traffic, rate * factor, seconds, seed=n + 1)), rate * factor, seconds
                )
                row["load"] = f"{factor}x"
                rows.append(row)
                print(f"  [{name}] {factor}x ({rate * factor:.0f} req/s): {json.dumps(row)}", flush=True)
            results["configs"][name] = {"gateway_settings": gateway_env, "steps": rows}
        finally:
            stack.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--rate", type=float, default=None, help="the 1x rate; found by a sweep when omitted")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path("results/overload"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = run(args.artifacts, args.rate, args.seconds, args.out)
    (args.out / "overload.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out / 'overload.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
