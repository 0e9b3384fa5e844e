"""The floor under the funnel's cost: the same hops done bare, measured in the same run.

A bare stand-in replaces every process of the stack: a grpc.aio server that answers raw bytes
(no parsing, no work), and, where the real process calls on, the same calls. The gateway stand-in
calls every shard stand-in at once, then ranking's, then re-ranking's; ranking's stand-in calls
Triton's. Each call carries as many bytes each way as the real one (measured on the running stack,
`payload_sizes`). Where the stack reads users' live state, the gateway stand-in first reads as many
bytes from a Redis server started the same way (one GET per request). Its CPU per request, per
process, is the least any Python gRPC funnel of this shape can spend here; the funnel's own figure
is compared with it as a ratio.

    python -m benchmarks.grpc_floor    (a single hop, for a quick look)
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np
import redis

from benchmarks.cpu import cpu_seconds
from benchmarks.loadgen import Sample, open_loop
from launcher.health import wait_listening, wait_serving
from launcher.ports import PORT_IN_USE_EXIT, reserve_port, retry_on_port_taken, start_server
from launcher.processes import stop_group
from launcher.redis import RedisServer
from launcher.stack import REPO_ROOT

METHOD = "/floor.Bare/Call"

# One bare process: answers `reply` bytes; when `calls` is set, first makes those calls in order
# (a list of parallel groups: [[target, request bytes], ...]), as the real process would.
SERVER = """
import asyncio, json, sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

port, reply, plan, store_url = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
in_use_exit = int(sys.argv[5])
METHOD = "/floor.Bare/Call"
identity = lambda data: data

async def main():
    store = None
    if store_url:
        import redis.asyncio as aioredis
        store = aioredis.Redis.from_url(store_url)
    channels = {target: grpc.aio.insecure_channel(target) for group in plan for target, _ in group}
    stubs = {t: c.unary_unary(METHOD, request_serializer=identity, response_deserializer=identity)
             for t, c in channels.items()}
    groups = [[(stubs[t], b"x" * size) for t, size in group] for group in plan]
    answer = b"y" * reply

    async def call(request, context):
        if store is not None:
            await store.get("live")
        for group in groups:
            if len(group) == 1:
                await group[0][0](group[0][1], timeout=5)
            else:
                await asyncio.gather(*(stub(payload, timeout=5) for stub, payload in group))
        return answer

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(call, request_deserializer=identity, response_serializer=identity)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("floor.Bare", {"Call": handler})])
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    try:
        server.add_insecure_port(f"127.0.0.1:{port}")
    except RuntimeError:  # taken: the launcher's contract, so it starts this again on another port
        sys.exit(in_use_exit)
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.wait_for_termination()

asyncio.run(main())
"""


@dataclass
class Payloads:
    """Bytes each way of every hop of one request (means over sampled requests)."""

    public: tuple[int, int]  # client -> gateway, and back
    retrieval: tuple[int, int]  # gateway -> one shard
    ranking: tuple[int, int]
    reranking: tuple[int, int]
    triton: tuple[int, int]  # ranking -> Triton (tensors in shared memory travel outside gRPC)
    live: tuple[int, int] = (0, 0)  # gateway -> Redis, the live-state read; (0, 0): no live state


class BareStack:
    """The stand-ins, each its own process, named as the real processes are."""

    def __init__(self, payloads: Payloads, shards: int, log_dir: Path) -> None:
        self.payloads = payloads
        self.shards = shards
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}
        self.store: RedisServer | None = None

    def _start_store(self) -> str:
        """A Redis server as the stack runs it, holding one value of the live-state read's size."""
        self.store = start_server(
            lambda: RedisServer(self.log_dir / "floor-redis", reserve_port(), self.log_dir / "floor-redis.log"), 30
        )
        assert self.store.process is not None
        self.processes["redis"] = self.store.process
        redis.Redis(host=self.store.host, port=self.store.port).set("live", b"z" * self.payloads.live[1])
        return self.store.url

    def _start(self, name: str, reply: int, plan: list[list[tuple[str, int]]], store_url: str = "") -> str:
        """One stand-in, once it holds its (reserved) port; started again on another while one is taken."""
        self.log_dir.mkdir(parents=True, exist_ok=True)

        def start() -> str:
            port = reserve_port()
            with (self.log_dir / f"floor-{name}.log").open("a") as log:
                self.processes[name] = subprocess.Popen(
                    [sys.executable, "-c", SERVER, str(port), str(reply), json.dumps(plan), store_url,
                     str(PORT_IN_USE_EXIT)],
                    cwd=REPO_ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            self.ports[name] = port
            wait_listening(f"127.0.0.1:{port}", self.processes[name], 30)
            return f"127.0.0.1:{port}"

        return retry_on_port_taken(start)

    def start(self) -> str:
        p = self.payloads
        triton = self._start("triton", p.triton[1], [])
        shards = [self._start(f"retrieval-{n}", p.retrieval[1], []) for n in range(self.shards)]
        ranking = self._start("ranking", p.ranking[1], [[(triton, p.triton[0])]])
        reranking = self._start("reranking", p.reranking[1], [])
        plan = [[(s, p.retrieval[0]) for s in shards], [(ranking, p.ranking[0])], [(reranking, p.reranking[0])]]
        store_url = self._start_store() if p.live[1] else ""
        gateway = self._start("gateway", p.public[1], plan, store_url)
        for name, port in self.ports.items():  # Redis was waited for when started
            wait_serving(f"127.0.0.1:{port}", 30, lambda name=name: self.processes[name].poll() is None)
        return gateway

    def stop(self) -> None:
        for process in self.processes.values():
            stop_group(process.pid)
            process.wait(timeout=10)


async def _drive(address: str, request_bytes: int, rate: float, seconds: float) -> list[Sample]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = channel.unary_unary(METHOD, request_serializer=lambda d: d, response_deserializer=lambda d: d)
        payload = b"x" * request_bytes
        for _ in range(50):  # warm-up: connections and code paths
            await stub(payload, timeout=5)

        async def call(n: int) -> dict:
            await stub(payload, timeout=5)
            return {}

        return await open_loop(call, rate, seconds, seed=5, timeout_s=5.0)


def floor_cpu(
    payloads: Payloads, shards: int, rate: float, seconds: float, log_dir: Path, latency_rate: float | None = None
) -> dict:
    """CPU ms per request of each bare process, and their total, at an open-loop `rate`; with
    `latency_rate`, also the bare stack's end-to-end latency at that rate: what the gateway's
    overhead would be if every stage answered in no time."""
    bare = BareStack(payloads, shards, log_dir)
    address = bare.start()
    try:
        before = {name: cpu_seconds(p.pid) for name, p in bare.processes.items()}
        samples = asyncio.run(_drive(address, payloads.public[0], rate, seconds))
        answered = sum(1 for s in samples if s.code == "OK")
        ms = {
            name: round((cpu_seconds(p.pid) - before[name]) * 1000 / max(answered, 1), 3)
            for name, p in bare.processes.items()
        }
        result = {"rate": rate, "answered": answered, "ms": ms, "total_ms": round(sum(ms.values()), 3)}
        if latency_rate is not None:
            samples = asyncio.run(_drive(address, payloads.public[0], latency_rate, seconds))
            latencies = [s.latency_ms for s in samples if s.code == "OK"]
            result["latency"] = {
                "rate": latency_rate,
                "answered": len(latencies),
                "p50_ms": round(float(np.median(latencies)), 2),
                "p99_ms": round(float(np.percentile(latencies, 99)), 2),
            }
    finally:
        bare.stop()
    return result


def one_hop(calls: int = 1000) -> dict[str, float]:
    """Median and p99 milliseconds of one bare round trip between two processes, empty and 10 kB."""
    bare = BareStack(Payloads((0, 0), (0, 0), (0, 0), (0, 0), (0, 0)), 0, Path("results/floor"))
    address = bare._start("echo", 10_000, [])

    async def measure(size: int) -> list[float]:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = channel.unary_unary(METHOD, request_serializer=lambda d: d, response_deserializer=lambda d: d)
            await channel.channel_ready()
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                await stub(b"x" * size, timeout=5)
                times.append((time.perf_counter() - started) * 1000)
            return times[calls // 10 :]

    try:
        wait_serving(address, 30, lambda: bare.processes["echo"].poll() is None)
        result = {}
        for size in (0, 10_000):
            times = asyncio.run(measure(size))
            result[f"p50_ms_{size}_bytes"] = round(float(np.median(times)), 3)
            result[f"p99_ms_{size}_bytes"] = round(float(np.percentile(times, 99)), 3)
        return result
    finally:
        bare.stop()


if __name__ == "__main__":
    print(one_hop())
    example = Payloads((60, 300), (150, 9600), (6300, 2200), (10400, 400), (500, 2200))
    floor = floor_cpu(example, 1, 25, 10, Path("results/floor"), latency_rate=25)
    print(json.dumps(floor | {"payloads": asdict(example)}))
