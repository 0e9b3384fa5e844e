"""What one gRPC hop costs here, with nothing else in it: the floor under the gateway's overhead.

A Python grpc.aio server in its own process echoes a ranking request's candidates back; a client
in this process calls it one request at a time. The funnel makes four such hops per request
(client -> gateway, gateway -> each stage), so four times this is the least overhead any Python
gRPC gateway on this machine can have.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import grpc
import numpy as np

from funnel.launcher.processes import free_port
from funnel.launcher.stack import REPO_ROOT
from funnel.v1 import common_pb2, ranking_pb2, ranking_pb2_grpc

SERVER = """
import asyncio, sys, grpc
from funnel.v1 import ranking_pb2, ranking_pb2_grpc

class Echo(ranking_pb2_grpc.RankingServicer):
    async def Rank(self, request, context):
        return ranking_pb2.RankResponse(candidates=request.candidates)

async def main():
    server = grpc.aio.server()
    ranking_pb2_grpc.add_RankingServicer_to_server(Echo(), server)
    server.add_insecure_port("127.0.0.1:" + sys.argv[1])
    await server.start()
    await server.wait_for_termination()

asyncio.run(main())
"""


async def _measure(port: int, candidates: int, calls: int) -> list[float]:
    request = ranking_pb2.RankRequest(
        user_id="u0000001",
        candidates=[common_pb2.Candidate(item_id=f"i{n:07d}", score=0.5, source="ann") for n in range(candidates)],
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await channel.channel_ready()
        stub = ranking_pb2_grpc.RankingStub(channel)
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            await stub.Rank(request, timeout=2)
            times.append((time.perf_counter() - started) * 1000)
    return times[calls // 10 :]  # drop the warm-up tenth


def hop_floor(calls: int = 1000) -> dict[str, float]:
    """Median and p99 milliseconds of one round trip, empty and with 360 candidates each way."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port)], cwd=REPO_ROOT, env={"PYTHONPATH": str(REPO_ROOT)}
    )
    try:
        result = {}
        for count in (0, 360):
            times = asyncio.run(_measure(port, count, calls))
            result[f"p50_ms_{count}_candidates"] = round(float(np.median(times)), 3)
            result[f"p99_ms_{count}_candidates"] = round(float(np.percentile(times, 99)), 3)
        return result
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    print(hop_floor())
