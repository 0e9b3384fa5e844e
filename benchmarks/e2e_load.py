"""The whole funnel under load, per scenario: latency against rate, CPU per request against the floor.

    python -m benchmarks.e2e_load --artifacts artifacts --artifacts-1m artifacts-1m   (make bench)

Each scenario starts its own stack (Triton, shards, stages, gateway on loopback), warms it up, then:

- sends Poisson arrivals at rising rates, each for a fixed time and at least 1,000 requests (a p99
  of 250 requests is their third slowest, which one scheduling stall of the co-located processes
  moves past the SLO), as many users from the data set would (5% of them users the model has never
  seen). A step records every request: end-to-end latency, status, degraded flag and each stage's
  gateway-side and server-side time. The sweep covers every rate up to 200 req/s, then goes on until
  the first rate whose p99 exceeds the SLO or that has an error; the highest rate below the first
  such miss is the sustainable rate;
- counts the CPU each process spends per answered request at a fixed rate, and the same for the
  floor: the same hops done bare, carrying the bytes this scenario's requests carry
  (`benchmarks/grpc_floor.py`, `benchmarks/payloads.py`), in the same run;
- asks for 100 results at a concurrency of 8 on the otherwise idle stack (the widest requests);
- for the first scenario, profiles the process that spends the most CPU per request.

Everything, load generator included, shares this machine's cores, which the report states.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np

from benchmarks.cpu import cpu_seconds
from benchmarks.grpc_floor import floor_cpu, one_hop
from benchmarks.loadgen import Sample, open_loop
from benchmarks.payloads import measure_payloads
from benchmarks.profile import profile_process
from benchmarks.report import write_report
from funnel.artifacts.catalog import COUNTRIES, Users
from funnel.artifacts.store import latest_version
from funnel.runtime.metrics import CAUSE_LABELS
from funnel.v1 import common_pb2, recommender_pb2, recommender_pb2_grpc
from launcher.stack import REPO_ROOT, Stack, StackConfig

STAGES = ("retrieval", "ranking", "reranking")
DEGRADED_STATUSES = (common_pb2.STAGE_STATUS_DEGRADED, common_pb2.STAGE_STATUS_FAILED)
OVERHEAD_RATE = 25.0  # the rate the gateway's overhead is reported at, for the stack and the bare floor
CORES = len(os.sched_getaffinity(0))  # the cores this run may use (what nproc prints)


@dataclass
class Scenario:
    name: str
    artifacts: Path
    shards: int = 1
    ranking_replicas: int = 1
    triton_shared_memory: bool = True
    live_state: bool = True  # users' live state read from Redis on every request, as `make up` runs
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Step:
    rate: float
    seconds: float
    sent: int
    ok: int
    errors: dict[str, int]
    degraded: int
    e2e_ms: list[float]  # OK requests, in send order
    stage_ms: dict[str, list[float]]  # gateway-side time per stage, OK requests
    server_ms: dict[str, list[float]]  # the stage servers' own time
    causes: dict[str, int] = field(default_factory=dict)  # "stage: cause" of each degraded stage

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.e2e_ms, q)) if self.e2e_ms else float("nan")

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds

    def overhead_ms(self) -> np.ndarray:
        """End-to-end minus the sum of the stage servers' own times: gateway, client and transport."""
        return np.asarray(self.e2e_ms) - sum(np.asarray(self.server_ms[s]) for s in STAGES)

    def summary(self) -> dict[str, float]:
        overhead = self.overhead_ms()
        return {
            "rate": self.rate,
            "sent": self.sent,
            "throughput_rps": round(self.throughput, 1),
            "errors": sum(self.errors.values()),
            "error_rate": round(sum(self.errors.values()) / max(self.sent, 1), 4),
            "degraded_rate": round(self.degraded / max(self.sent, 1), 4),
            **{f"p{q}_ms": round(self.percentile(q), 2) for q in (50, 90, 99, 99.9)},
            "overhead_p50_ms": round(float(np.median(overhead)), 2) if len(overhead) else float("nan"),
            **{f"{s}_server_p50_ms": round(float(np.median(self.server_ms[s])), 2) for s in STAGES if self.e2e_ms},
            **{f"{s}_call_p50_ms": round(float(np.median(self.stage_ms[s])), 2) for s in STAGES if self.e2e_ms},
        }


def degraded_causes(reply: recommender_pb2.RecommendResponse) -> list[str]:
    """The stage and cause ("retrieval: partial") of every stage that degraded or failed in an answer."""
    return [f"{s.stage}: {CAUSE_LABELS[s.cause]}" for s in reply.stages if s.status in DEGRADED_STATUSES]


def to_step(rate: float, seconds: float, samples: list[Sample]) -> Step:
    ok = [s for s in samples if s.code == "OK"]
    errors: dict[str, int] = {}
    for s in samples:
        if s.code != "OK":
            errors[s.code] = errors.get(s.code, 0) + 1
    return Step(
        rate=rate,
        seconds=seconds,
        sent=len(samples),
        ok=len(ok),
        errors=errors,
        degraded=sum(1 for s in ok if s.detail["degraded"]),
        e2e_ms=[round(s.latency_ms, 3) for s in ok],
        stage_ms={stage: [s.detail["stages"][stage][0] for s in ok] for stage in STAGES},
        server_ms={stage: [s.detail["stages"][stage][1] for s in ok] for stage in STAGES},
        causes=dict(Counter(cause for s in ok for cause in s.detail["causes"]).most_common()),
    )


class Traffic:
    """Who asks: users of the data set, 5% of them unknown (cold start), each from their country."""

    def __init__(self, artifacts: Path, seed: int = 11, num_results: int = 10) -> None:
        bundle = latest_version(artifacts / "bundles")
        if bundle is None:
            raise SystemExit(f"no bundle under {artifacts}; build it first (make artifacts)")
        users = Users.load(bundle)
        rng = np.random.default_rng(seed)
        rows = rng.integers(0, len(users.user_ids), 20_000)
        self.requests = [
            recommender_pb2.RecommendRequest(
                user_id=str(users.user_ids[row]) if n % 20 else f"cold-{n:06d}",
                num_results=num_results,
                context=common_pb2.Context(country=COUNTRIES[int(users.country[row])]),
            )
            for n, row in enumerate(rows)
        ]

    def __getitem__(self, n: int) -> recommender_pb2.RecommendRequest:
        return self.requests[n % len(self.requests)]


async def run_step(address: str, traffic: Traffic, rate: float, seconds: float, seed: int) -> Step:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        await channel.channel_ready()

        async def call(n: int) -> dict:
            reply = await stub.Recommend(traffic[n + seed * 1000], timeout=2.0)
            return {
                "degraded": reply.degraded,
                "stages": {s.stage: (round(s.latency_ms, 3), round(s.server_ms, 3)) for s in reply.stages},
                "causes": degraded_causes(reply),
            }

        samples = await open_loop(call, rate, seconds, seed=seed, timeout_s=5.0)
    return to_step(rate, seconds, samples)


def sweep(
    address: str,
    traffic: Traffic,
    rates: list[float],
    seconds: float,
    slo_ms: float,
    label: str,
    through: float = 200.0,
    min_requests: int = 0,
) -> list[Step]:
    """Every rate up to `through` (the report's widest reference rate), then on until the SLO is
    missed; stops early only when the system is saturated (median over four times the SLO, or over
    5% of requests failing), since higher rates would only queue. A step lasts `seconds`, or longer
    when that would send fewer than `min_requests`."""
    asyncio.run(run_step(address, traffic, 20, 3, seed=0))  # warm-up: connections, caches, JIT paths
    steps = []
    for n, rate in enumerate(rates):
        length = max(seconds, min_requests / rate)
        step = asyncio.run(run_step(address, traffic, rate, length, seed=n + 1))
        steps.append(step)
        s = step.summary()
        within = s["p99_ms"] <= slo_ms and s["errors"] == 0
        print(
            f"  [{label}] {rate:6.0f} req/s: {s['throughput_rps']:6.1f} answered/s  p50 {s['p50_ms']:6.1f}  "
            f"p99 {s['p99_ms']:6.1f} ms  errors {s['errors']}  degraded {s['degraded_rate']:.1%}  "
            f"overhead p50 {s['overhead_p50_ms']:.1f} ms  {'within' if within else 'OVER'} SLO",
            flush=True,
        )
        saturated = s["p50_ms"] > 4 * slo_ms or s["error_rate"] > 0.05
        if saturated or (not within and rate >= through):
            break
    return steps


def sustainable_rate(steps: list[Step], slo_ms: float) -> float:
    best = 0.0
    for step in steps:
        s = step.summary()
        if s["p99_ms"] > slo_ms or s["errors"]:
            break
        best = step.rate
    return best


def start_stack(
    scenario: Scenario, run_dir: Path, policy: Path | None = None, gateway_env: dict[str, str] | None = None
) -> Stack:
    stack = Stack(
        StackConfig(
            artifacts=scenario.artifacts,
            run_dir=run_dir,
            policy=policy or REPO_ROOT / "config" / "policy.yaml",
            retrieval_shards=scenario.shards,
            ranking_replicas=scenario.ranking_replicas,
            auto_ports=True,
            gateway_port=0,
            triton_shared_memory=scenario.triton_shared_memory,
            live_state=scenario.live_state,
            extra_env=scenario.env,
            gateway_env=gateway_env or {},
            startup_timeout_s=600,
        )
    )
    stack.start()
    return stack


OFF_THE_REQUEST_PATH = ("events",)


def cpu_per_request(stack: Stack, address: str, traffic: Traffic, rate: float, seconds: float) -> dict:
    """Milliseconds of CPU each process spends per answered request, over one step at `rate`."""
    # Every process a Recommend call passes through (Triton's row includes its python-backend stub;
    # Redis serves the live-state read and the impressions); the events service is not on that path.
    processes = {p.name: p.pid for p in stack.processes if p.name not in OFF_THE_REQUEST_PATH}
    before = {name: cpu_seconds(pid) for name, pid in processes.items()}
    client_before = time.process_time()
    step = asyncio.run(run_step(address, traffic, rate, seconds, seed=77))
    per_request = {
        name: round((cpu_seconds(pid) - before[name]) * 1000 / max(step.ok, 1), 3) for name, pid in processes.items()
    }
    total = round(sum(per_request.values()), 3)  # the stack's own processes: the load generator is apart
    client = round((time.process_time() - client_before) * 1000 / max(step.ok, 1), 3)
    print(f"   CPU per request at {rate:.0f} req/s: {per_request} -> total {total:.2f} ms (+ client {client})")
    return {
        "rate": rate,
        "answered": step.ok,
        "degraded": step.degraded,
        "ms": per_request,
        "total_ms": total,
        "load_generator_ms": client,
        "capacity_rps": round(1000 * CORES / (total + client), 1),
    }


def wide_requests(address: str, artifacts: Path, concurrency: int, seconds: float) -> dict:
    """100-result requests from `concurrency` clients at once, each sending its next when answered,
    on an otherwise idle stack: how many answers degraded, and their latency."""
    traffic = Traffic(artifacts, seed=5, num_results=100)

    causes: Counter[str] = Counter()  # "stage: cause" of each stage that degraded an answer

    async def run() -> list[tuple[float, bool]]:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            answers: list[tuple[float, bool]] = []
            stop = time.monotonic() + seconds

            async def client(n: int) -> None:
                sent = n
                while time.monotonic() < stop:
                    started = time.perf_counter()
                    reply = await stub.Recommend(traffic[sent], timeout=2.0)
                    answers.append(((time.perf_counter() - started) * 1000, reply.degraded))
                    causes.update(degraded_causes(reply))
                    sent += concurrency

            await asyncio.gather(*(client(n) for n in range(concurrency)))
            return answers

    answers = asyncio.run(run())
    latencies = np.array([ms for ms, _ in answers])
    result = {
        "concurrency": concurrency,
        "num_results": 100,
        "answered": len(answers),
        "degraded": sum(degraded for _, degraded in answers),
        "causes": dict(causes.most_common()),
        "p50_ms": round(float(np.median(latencies)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
    }
    print(f"   100 results at concurrency {concurrency}: {result}")
    return result


def run_scenario(scenario: Scenario, args: argparse.Namespace, profile: bool) -> dict:
    print(f"== scenario {scenario.name}: starting the stack", flush=True)
    started = time.monotonic()
    stack = start_stack(scenario, args.out / "run" / scenario.name)
    try:
        print(f"   up in {time.monotonic() - started:.0f} s; sweeping {args.rates} req/s, {args.seconds:.0f} s"
              f" and at least {args.min_requests} requests each")  # fmt: skip
        traffic = Traffic(scenario.artifacts)
        address = stack.address("gateway")
        steps = sweep(address, traffic, args.rates, args.seconds, args.slo_ms, scenario.name, args.through,
                      args.min_requests)  # fmt: skip
        result = {
            "scenario": asdict(scenario) | {"artifacts": str(scenario.artifacts)},
            "steps": [asdict(step) | {"summary": step.summary()} for step in steps],
            "sustainable_rps": sustainable_rate(steps, args.slo_ms),
        }
        result["wide_requests"] = wide_requests(address, scenario.artifacts, 8, args.seconds)
        payloads = measure_payloads(stack, traffic.requests[:40], scenario.triton_shared_memory)
        result["payload_bytes"] = asdict(payloads)
        result["cpu_per_request"] = cpu_per_request(stack, address, traffic, args.cpu_rate, args.seconds)
        if profile:
            cpu = result["cpu_per_request"]["ms"]
            process = max(stack.processes, key=lambda p: cpu.get(p.name, 0.0) if p.name != "triton" else 0.0)
            print(f"   profiling {process.name} (most CPU per request) at {args.profile_rate:.0f} req/s")
            result["profile"] = profile_process(
                process.pid,
                seconds=args.seconds,
                load=lambda: asyncio.run(run_step(address, traffic, args.profile_rate, args.seconds, seed=99)),
            ) | {"process": process.name}
    finally:
        stack.stop()
    # The bare stand-ins run alone, as the stack did: the same cores, the same rate, the same bytes.
    floor = floor_cpu(payloads, scenario.shards, args.cpu_rate, args.seconds, args.out / "run" / scenario.name,
                      latency_rate=OVERHEAD_RATE)  # fmt: skip
    result["floor"] = floor
    ratio = result["cpu_per_request"]["total_ms"] / floor["total_ms"]
    print(f"   floor (bare hops, same bytes) at {args.cpu_rate:.0f} req/s: {floor['ms']} -> {floor['total_ms']:.2f} ms;"
          f" the funnel spends {ratio:.2f} times that")  # fmt: skip
    print(f"   bare stack end to end at {OVERHEAD_RATE:.0f} req/s (the overhead if stages took no time): "
          f"p50 {floor['latency']['p50_ms']} ms, p99 {floor['latency']['p99_ms']} ms")  # fmt: skip
    return result


def machine() -> dict:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        "unknown",
    )
    return {"cores": CORES, "cpu": model, "python": sys.version.split()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="demo-size artifacts")
    parser.add_argument("--artifacts-1m", type=Path, help="1M-item artifacts; omitted = demo scenarios only")
    parser.add_argument("--rates", type=float, nargs="+", default=[25, 50, 100, 150, 200, 300, 400])
    parser.add_argument("--through", type=float, default=200.0, help="every rate up to this one is run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each rate step")
    parser.add_argument("--min-requests", type=int, default=1000, help="fewest requests a rate step sends")
    parser.add_argument("--slo-ms", type=float, default=50.0, help="p99 end-to-end objective")
    parser.add_argument("--profile-rate", type=float, default=100.0, help="rate of the profile")
    parser.add_argument("--cpu-rate", type=float, default=50.0, help="rate of the CPU-per-request step")
    parser.add_argument("--scenarios", nargs="+", help="names of the scenarios to run (default: all)")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    scenarios = [
        Scenario("demo", args.artifacts),
        # As the stack ran before live data: the figures the lean path's "before" was measured on.
        Scenario("demo, no live state", args.artifacts, live_state=False),
        Scenario("demo, tensors in the gRPC message", args.artifacts, triton_shared_memory=False),
        Scenario("demo, 2 retrieval shards", args.artifacts, shards=2),
    ]
    if args.artifacts_1m is not None:
        ivf = {"FUNNEL_INDEX_FACTORY": "IVF4096,Flat", "FUNNEL_SEARCH_PARAMS": "nprobe=64"}
        scenarios += [
            Scenario("1M items", args.artifacts_1m, env=ivf),
            Scenario("1M items, 2 retrieval shards", args.artifacts_1m, shards=2, env=ivf),
        ]
    if args.scenarios:
        scenarios = [s for s in scenarios if s.name in args.scenarios]
    print("== one bare gRPC hop between two processes", flush=True)
    hop = one_hop()
    print(f"   {hop}")
    results = {
        "machine": machine(),
        "grpc_hop": hop,
        "slo_ms": args.slo_ms,
        "seconds_per_step": args.seconds,
        "min_requests_per_step": args.min_requests,
        "cpu_rate": args.cpu_rate,
        "scenarios": [run_scenario(s, args, profile=n == 0) for n, s in enumerate(scenarios)],
    }
    (args.out / "results.json").write_text(json.dumps(results))
    report = write_report(results, args.out)
    print(f"wrote {args.out / 'results.json'} and {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
