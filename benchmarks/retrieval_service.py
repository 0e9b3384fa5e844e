"""The retrieval service through gRPC at a fixed request rate, then the same load across a hot swap.

    python -m benchmarks.retrieval_service --artifacts artifacts --rate 200 --seconds 10

Everything runs on this 2-core machine: the service process and the load generator share it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

import grpc

from benchmarks.loadgen import open_loop, summarise
from funnel.artifacts.store import latest_version, publish_copy
from funnel.launcher.health import wait_serving
from funnel.launcher.processes import alive, free_port, spawn, stop_group
from funnel.launcher.stack import REPO_ROOT
from funnel.v1 import retrieval_pb2, retrieval_pb2_grpc

# What the gateway asks each shard for by default (gateway/settings.py).
GATEWAY_LIMITS = {"ann": 300, "category_popular": 50, "popular": 50, "fresh": 20}


async def run_load(address: str, rate: float, seconds: float, users: int, on_start=None):
    async with grpc.aio.insecure_channel(address) as channel:
        stub = retrieval_pb2_grpc.RetrievalStub(channel)

        async def call(n: int) -> str:
            request = retrieval_pb2.RetrieveRequest(
                user_id=f"u{n % users:07d}", num_candidates=300, source_limits=GATEWAY_LIMITS
            )
            return (await stub.Retrieve(request, timeout=5)).index_version

        if on_start is not None:
            asyncio.get_running_loop().call_later(seconds / 3, on_start)
        return await open_loop(call, rate, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--index-factory", default="Flat")
    parser.add_argument("--search-params", default="")
    parser.add_argument("--out", type=Path, default=Path("results/retrieval_service.json"))
    args = parser.parse_args(argv)

    bundle = latest_version(args.artifacts / "bundles")
    if bundle is None:
        print(f"no bundle under {args.artifacts}; run `make artifacts` first", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        publish_copy(bundle, root / "bundles", "20990101T000000Z-before")
        port = free_port()
        command = [
            sys.executable, "-m", "services.retrieval", "--port", str(port), "--artifact-dir", str(root),
            "--index-factory", args.index_factory, "--search-params", args.search_params,
            "--reload-poll-seconds", "0.5", "--access-log", "false",
        ]  # fmt: skip
        process = spawn(
            command, root / "retrieval.log", env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT
        )
        try:
            wait_serving(f"127.0.0.1:{port}", 300, lambda: alive(process.pid))
            address = f"127.0.0.1:{port}"
            users = 1000
            steady = asyncio.run(run_load(address, args.rate, args.seconds, users))
            print(f"steady load at {args.rate:.0f} req/s: {summarise(steady, args.seconds)}", flush=True)

            def publish() -> None:
                publish_copy(bundle, root / "bundles", "20990102T000000Z-after")
                print("published a new version; the service swaps to it by itself", flush=True)

            swap = asyncio.run(run_load(address, args.rate, args.seconds, users, on_start=publish))
            versions = [s.detail for s in swap if s.code == "OK"]
            swap_summary = summarise(swap, args.seconds) | {
                "served_before_swap": versions.count("20990101T000000Z-before"),
                "served_after_swap": versions.count("20990102T000000Z-after"),
            }
            print(f"same load across a hot swap: {swap_summary}", flush=True)
        finally:
            stop_group(process.pid)
    result = {
        "index_factory": args.index_factory, "search_params": args.search_params, "rate": args.rate,
        "seconds": args.seconds, "steady": summarise(steady, args.seconds), "hot_swap": swap_summary,
        "note": "service and load generator share this 2-core machine",
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0 if swap_summary["errors"] == 0 and swap_summary["served_after_swap"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
