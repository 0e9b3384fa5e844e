"""The retrieval service at 10M items through its own gRPC processes: one shard holding every item,
then 2 shards holding half each, fanned out and merged with the gateway's own merge.

    python -m benchmarks.large_catalog --artifacts artifacts --items 10000000 --shards 1 2 --out results/large-catalog

The served demo bundle grown to `--items`: its own items first (so its users, their histories and
its user tower stay as trained), then synthetic ones whose vectors cluster around the demo items'
(`benchmarks/ann_indexes.py`'s generator: in the space the user tower's queries live in) and whose
columns are drawn from the demo's. Each shard process loads it and builds its IVF index at start, as
a served shard does. Reported per layout: start-up (load and index build), resident memory of each
process, then at `--rate` requests a second for `--seconds` (each request to every shard at once,
the gateway's source limits): p50/p99 of the slowest shard's answer, of the merge, and of the two
together, as the gateway's retrieval step waits for them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import time
from pathlib import Path

import grpc
import numpy as np

from benchmarks.ann_indexes import clustered_vectors
from benchmarks.retrieval_service import GATEWAY_LIMITS
from funnel.artifacts.catalog import Users
from funnel.artifacts.store import latest_version, read_manifest, write_manifest
from funnel.candidates import Candidates
from funnel.fusion import DEFAULT_LIMITS
from funnel.retrieval.merge import merge_candidates
from funnel.v2 import retrieval_pb2, retrieval_pb2_grpc
from launcher.health import wait_serving
from launcher.service import ServiceProcess

# IVF-Flat with an HNSW quantizer: `make bench-scale`'s choice at 10M (recall@100 0.994 at nprobe 128).
INDEX = ("IVF4096_HNSW32,Flat", "nprobe=128,quantizer_efSearch=256")
CHUNK = 1_000_000


def grow_bundle(source: Path, root: Path, items: int, seed: int) -> Path:
    """`source` with synthetic items appended up to `items`, published under `root/bundles`."""
    manifest = read_manifest(source, verify=False)
    version = f"{manifest['version']}-{items}"
    bundle = root / "bundles" / version
    bundle.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    base = len(np.load(source / "items_item_ids.npy", mmap_mode="r"))
    picks = rng.integers(0, base, items - base)
    for path in sorted(source.iterdir()):
        name = path.name
        if name == "manifest.json":
            continue
        if name == "items_item_ids.npy":
            grown = np.array([f"s{n:08d}" for n in range(base, items)])
            np.save(bundle / name, np.concatenate([np.load(path), grown]))
        elif name == "items_popularity.npy":
            own = np.load(path)
            np.save(bundle / name, np.concatenate([own, np.zeros(items - base, own.dtype)]))
        elif name.startswith("items_"):
            own = np.load(path)
            np.save(bundle / name, np.concatenate([own, own[picks]]))
        elif name == "item_embeddings.npy":
            own = np.load(path)
            out = np.lib.format.open_memmap(bundle / name, mode="w+", dtype=np.float32, shape=(items, own.shape[1]))
            out[:base] = own
            for start in range(base, items, CHUNK):
                end = min(items, start + CHUNK)
                out[start:end] = clustered_vectors(end - start, own.shape[1], rng, own[rng.integers(0, base, 512)])
            out.flush()
            del out
        elif name == "covisitation_indptr.npy":  # the new items have no co-visited neighbours
            own = np.load(path)
            np.save(bundle / name, np.concatenate([own, np.full(items - base, own[-1], own.dtype)]))
        elif name == "activity_first_seen.npy":  # first seen now: brand new
            own = np.load(path)
            np.save(bundle / name, np.concatenate([own, np.full(items - base, own.max(), own.dtype)]))
        else:
            shutil.copy2(path, bundle / name)
    metadata = {k: v for k, v in manifest.items() if k not in ("version", "files", "created")}
    metadata["shapes"] = {**manifest["shapes"], "items": items}
    write_manifest(bundle, version, metadata)
    return bundle


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def fan_out(addresses: list[str], users: list[str], rate: float, seconds: float) -> dict[str, list[float]]:
    """Open-loop requests, each to every shard at once and merged: the slowest shard, the merge, both."""
    channels = [grpc.aio.insecure_channel(address) for address in addresses]
    stubs = [retrieval_pb2_grpc.RetrievalStub(channel) for channel in channels]
    timings: dict[str, list[float]] = {"slowest shard": [], "merge": [], "fan-out and merge": []}
    errors = 0

    async def one(n: int) -> None:
        nonlocal errors
        request = retrieval_pb2.RetrieveRequest(
            user_id=users[n % len(users)], num_candidates=max(DEFAULT_LIMITS.values()), source_limits=GATEWAY_LIMITS
        )
        started = time.perf_counter()
        try:
            answers = await asyncio.gather(*(stub.Retrieve(request, timeout=5) for stub in stubs))
        except grpc.aio.AioRpcError:
            errors += 1
            return
        answered = time.perf_counter()
        merge_candidates([Candidates.read(answer.candidates) for answer in answers], DEFAULT_LIMITS)
        done = time.perf_counter()
        timings["slowest shard"].append((answered - started) * 1000)
        timings["merge"].append((done - answered) * 1000)
        timings["fan-out and merge"].append((done - started) * 1000)

    try:
        tasks = []
        gap = 1.0 / rate
        rng = np.random.default_rng(5)
        start = time.perf_counter()
        for n in range(int(rate * seconds)):
            start += rng.exponential(gap)
            await asyncio.sleep(max(0.0, start - time.perf_counter()))
            tasks.append(asyncio.create_task(one(n)))
        await asyncio.gather(*tasks)
    finally:
        for channel in channels:
            await channel.close()
    timings["errors"] = [float(errors)]
    return timings


def run_layout(root: Path, shards: int, users: list[str], args: argparse.Namespace) -> dict:
    started = time.monotonic()
    processes = []
    try:
        for shard in range(shards):
            flags = [
                "--artifact-dir", str(root), "--shard-index", str(shard), "--shard-count", str(shards),
                "--index-factory", args.index_factory, "--search-params", args.search_params, "--access-log", "false",
                "--reload-poll-seconds", "3600",
            ]  # fmt: skip
            processes.append(ServiceProcess("services.retrieval", flags, root / f"shard-{shards}-{shard}.log",
                                            wait=False, timeout_s=3600))  # fmt: skip
        for process in processes:
            wait_serving(process.address, 3600, lambda p=process: p.process.poll() is None)
        startup = time.monotonic() - started
        memory = [round(rss_mib(p.process.pid)) for p in processes]
        print(f"   {shards} shard(s) serving after {startup:.0f} s, resident MiB {memory}", flush=True)
        asyncio.run(fan_out([p.address for p in processes], users, args.rate, 2.0))  # warm-up
        timings = asyncio.run(fan_out([p.address for p in processes], users, args.rate, args.seconds))
    finally:
        for process in processes:
            process.stop()
    row: dict = {"shards": shards, "items_per_shard": args.items // shards, "startup_s": round(startup, 1),
                 "resident_mib": memory, "errors": int(timings.pop("errors")[0])}  # fmt: skip
    for name, values in timings.items():
        row[name] = {"p50_ms": round(float(np.percentile(values, 50)), 2),
                     "p99_ms": round(float(np.percentile(values, 99)), 2)}  # fmt: skip
    print(f"   {row}", flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| shards | items per shard | start-up s | resident MiB per process | slowest shard p50 / p99 ms | "
        "merge p50 / p99 ms | fan-out and merge p50 / p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        parts = ("slowest shard", "merge", "fan-out and merge")
        cells = " | ".join(f"{r[k]['p50_ms']} / {r[k]['p99_ms']}" for k in parts)
        lines.append(f"| {r['shards']} | {r['items_per_shard']:,} | {r['startup_s']} | "
                     f"{', '.join(f'{m:,}' for m in r['resident_mib'])} | {cells} | {r['errors']} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="the served demo bundle to grow")
    parser.add_argument("--items", type=int, default=10_000_000)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--index-factory", default=INDEX[0])
    parser.add_argument("--search-params", default=INDEX[1])
    parser.add_argument("--out", type=Path, default=Path("results/large-catalog"))
    args = parser.parse_args(argv)
    source = latest_version(args.artifacts / "bundles")
    if source is None:
        raise SystemExit(f"no bundle under {args.artifacts}; run `make artifacts` first")
    root = args.out / "artifacts"
    shutil.rmtree(root, ignore_errors=True)
    started = time.monotonic()
    bundle = grow_bundle(source, root, args.items, seed=3)
    print(f"== {args.items:,} items in {bundle} after {time.monotonic() - started:.0f} s", flush=True)
    users = Users.load(bundle).user_ids.tolist()
    rows = [run_layout(root, shards, users, args) for shards in args.shards]
    shutil.rmtree(root, ignore_errors=True)  # gigabytes of synthetic vectors
    text = table(rows)
    print(text)
    (args.out / "large_catalog.json").write_text(json.dumps(
        {"items": args.items, "index": [args.index_factory, args.search_params], "rate": args.rate,
         "seconds": args.seconds, "rows": rows}, indent=2
    ) + "\n")  # fmt: skip
    (args.out / "large_catalog.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
