"""The retrieval service through gRPC at a fixed request rate, then the same load across a hot swap.

    python -m benchmarks.retrieval_service --artifacts artifacts --rate 200 --seconds 10

Everything runs on this 2-core machine: the service process and the load generator share it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

import grpc

from benchmarks.loadgen import open_loop, summarise
from funnel.artifacts.store import latest_version, publish_copy
from funnel.fusion import DEFAULT_LIMITS
from funnel.sources import SOURCE_CODES
from funnel.v2 import retrieval_pb2, retrieval_pb2_grpc
from launcher.service import ServiceProcess

# What the gateway asks each shard for by default (`--ann-candidates` and the other source limits).
GATEWAY_LIMITS = [retrieval_pb2.SourceLimit(source=SOURCE_CODES[name], limit=n) for name, n in DEFAULT_LIMITS.items()]


async def run_load(address: str, rate: float, seconds: float, users: int, on_start=None):
    async with grpc.aio.insecure_channel(address) as channel:
        stub = retrieval_pb2_grpc.RetrievalStub(channel)

        async def call(n: int) -> str:
            request = retrieval_pb2.RetrieveRequest(
                user_id=f"u{n % users:07d}", num_candidates=max(DEFAULT_LIMITS.values()), source_limits=GATEWAY_LIMITS
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
        flags = [
            "--artifact-dir", str(root), "--index-factory", args.index_factory, "--search-params", args.search_params,
            "--reload-poll-seconds", "0.5", "--access-log", "false",
        ]  # fmt: skip
        service = ServiceProcess("services.retrieval", flags, root / "retrieval.log", timeout_s=300)
        try:
            address = service.address
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
            service.stop()
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
