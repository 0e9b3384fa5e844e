"""A capacity plan computed from measured figures: shards, replicas, cores, memory and p99 per stage
for 10M, 100M and 1B items at 1k, 10k and 100k requests per second.

    python -m benchmarks.capacity results/scale/scale.json --out results/scale/plan.md

Inputs, all measured: `benchmarks.scale` (index bytes per item, search time per query on one thread
at 1M and 10M items, tail quantiles, the gateway's merge at 2 and 4 shards, index build rate, the
catalog state a shard keeps per catalog item) and `make bench` on 1M items (CPU per request of each
process, `STAGE_CPU_MS` below). What is assumed is named in `Assumptions` and printed with the plan.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# CPU per answered request by process, ms, `make bench` on 1M items at 50 req/s (2026-12-03,
# docs/benchmarks/report.md "1M items" and "1M items, 2 retrieval shards").
STAGE_CPU_MS = {"ranking + Triton": 3.56 + 1.66, "re-ranking": 2.15, "gateway": 3.92, "Redis": 0.27}
RETRIEVAL_ONE_SHARD_MS = 3.37  # the retrieval process, one shard of 1M (IVF4096,Flat nprobe=64)
RETRIEVAL_TWO_SHARDS_MS = (2.88 + 2.82) / 2  # each of two shards of 500k
GATEWAY_PER_EXTRA_SHARD_MS = 4.27 - 3.92  # the gateway's CPU grew this much with the second shard
# Exact top-100 over 64-dim fp16 vectors on one NVIDIA H200 (torch, from the scale issue's
# measurements, not this project's code): queries per second in batches of 64 at 100M items.
GPU_QUERIES_PER_S_AT_100M = 1228
GPU_MEMORY_BYTES = 141e9
SIZES = (10_000_000, 100_000_000, 1_000_000_000)
RATES = (1_000, 10_000, 100_000)
SHARD_SIZES = (2_500_000, 5_000_000, 10_000_000, 25_000_000, 50_000_000)


@dataclass(frozen=True)
class Assumptions:
    utilisation: float = 0.6  # of each core, leaving room for bursts and a replica lost
    pod_cores: int = 4
    min_replicas: int = 2  # per shard and per stage, so one can fail
    shard_memory_gib: float = 32.0  # the index part of a retrieval pod
    search_p99_budget_ms: float = 15.0  # the slowest shard's search, of the gateway's 50 ms SLO
    recall_target: float = 0.95


def chosen(scale: dict, recall: float) -> dict:
    """At the largest measured size: the fastest p99 among settings with recall@100 >= `recall`."""
    largest = max(row["items"] for row in scale["rows"])
    rows = [r for r in scale["rows"] if r["items"] == largest and r["index"] != "Flat"]
    good = [r for r in rows if r["recall@100"] >= recall] or [max(rows, key=lambda r: r["recall@100"])]
    return min(good, key=lambda r: r["p99_ms"])


def search_model(scale: dict, pick: dict):
    """Search time per query on one thread as a power law of the items in a shard, through the
    chosen setting's 1M and 10M measurements (IVF scans ~ nprobe x N / nlist with nlist ~ sqrt N)."""
    same = sorted((r for r in scale["rows"] if r["index"] == pick["index"] and r["params"] == pick["params"]),
                  key=lambda r: r["items"])  # fmt: skip
    small, large = same[0], same[-1]
    exponent = math.log(large["p50_ms"] / small["p50_ms"]) / math.log(large["items"] / small["items"])

    def at(items: float, quantile: str = "p50") -> float:
        return large["latency_ms"][quantile] * (items / large["items"]) ** exponent

    return at, exponent


def fan_out_quantile(shards: int) -> str:
    """The measured quantile nearest above 0.99^(1/shards): where the slowest of `shards` sits at p99."""
    needed = 100 * 0.99 ** (1 / shards)
    for q in (50, 90, 99, 99.9, 100):
        if q >= needed:
            return f"p{q:g}"
    return "p100"


def plan(scale: dict, a: Assumptions) -> list[dict]:
    pick = chosen(scale, a.recall_target)
    search, _ = search_model(scale, pick)
    bytes_per_item = pick["bytes_per_item"]
    retrieval_search_1m = 2 * (RETRIEVAL_ONE_SHARD_MS - RETRIEVAL_TWO_SHARDS_MS)  # halving the items halved it
    retrieval_fixed = RETRIEVAL_ONE_SHARD_MS - retrieval_search_1m  # the tower, sources and gRPC per call
    merge = scale["sharded"]
    merge_per_shard = float(np.polyfit([m["shards"] for m in merge], [m["merge_p50_ms"] for m in merge], 1)[0])
    add_rate = pick["items"] / max(1e-9, pick["build_s"] - pick["train_s"])  # items/s on 2 cores
    rows = []
    for items in SIZES:
        fits = [n for n in SHARD_SIZES if n <= items and n * bytes_per_item / 2**30 <= a.shard_memory_gib]
        fitting = [n for n in fits if search(n, "p99") <= a.search_p99_budget_ms] or fits[:1]
        per_shard = max(fitting)
        shards = math.ceil(items / per_shard)
        quantile = fan_out_quantile(shards)
        search_p99 = search(per_shard, quantile)
        for rate in RATES:
            shard_cpu = retrieval_fixed + search(per_shard)
            shard_cores = rate * shard_cpu / 1000 / a.utilisation
            replicas = max(a.min_replicas, math.ceil(shard_cores / a.pod_cores))
            stages = {**STAGE_CPU_MS, "gateway": STAGE_CPU_MS["gateway"] + GATEWAY_PER_EXTRA_SHARD_MS * (shards - 1)}
            stage_cores = {name: rate * ms / 1000 / a.utilisation for name, ms in stages.items()}
            gpus = rate / (GPU_QUERIES_PER_S_AT_100M * 1e8 / items)
            search_cores = rate * shards * search(per_shard) / 1000 / a.utilisation
            rows.append({
                "items": items, "rate": rate, "shards": shards, "items_per_shard": per_shard,
                "replicas_per_shard": replicas, "retrieval_cores": round(shards * replicas * a.pod_cores),
                "index_gib_per_pod": round(per_shard * bytes_per_item / 2**30, 1),
                "catalog_gib_per_pod": round(items * scale["catalog_bytes_per_item"] / 2**30, 1),
                "other_cores": {k: math.ceil(v) for k, v in stage_cores.items()},
                "search_p99_ms": round(search_p99, 2), "fan_out_quantile": quantile,
                "merge_ms": round(merge_per_shard * shards, 2),
                "rebuild_min": round((pick["train_s"] + per_shard / add_rate) / 60, 1),
                "gpus_exact": math.ceil(gpus), "gpu_memory_ok": items * 64 * 2 <= GPU_MEMORY_BYTES,
                "search_cores_replaced_per_gpu": round(search_cores / max(gpus, 1e-9), 1),
            })  # fmt: skip
    return rows


def markdown(scale: dict, a: Assumptions) -> str:
    pick = chosen(scale, a.recall_target)
    _, exponent = search_model(scale, pick)
    lines = [
        f"Index: {pick['index']} ({pick['params']}), recall@100 {pick['recall@100']} at {pick['items']:,} items, "
        f"{pick['bytes_per_item']} bytes per item, search p50 {pick['p50_ms']} ms / p99 {pick['p99_ms']} ms on one "
        f"thread; search time grows as items^{exponent:.2f} per shard (1M -> 10M).",
        f"Assumptions: {a}.",
        "",
        "| items | req/s | shards x items | replicas per shard | retrieval cores | index GiB per pod | catalog GiB per "
        "pod (today) | ranking+Triton / re-ranking / gateway / Redis cores | slowest shard search p99 | merge | index "
        "rebuild | H200s for exact search (cores of search each replaces) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in plan(scale, a):
        other = " / ".join(str(v) for v in r["other_cores"].values())
        gpu = f"{r['gpus_exact']} ({r['search_cores_replaced_per_gpu']})" if r["gpu_memory_ok"] else "does not fit"
        lines.append(
            f"| {r['items']:,} | {r['rate']:,} | {r['shards']} x {r['items_per_shard']:,} | "
            f"{r['replicas_per_shard']} | {r['retrieval_cores']:,} | {r['index_gib_per_pod']} | "
            f"{r['catalog_gib_per_pod']} | {other} | "
            f"{r['search_p99_ms']} ms ({r['fan_out_quantile']}) | {r['merge_ms']} ms | {r['rebuild_min']} min | {gpu} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scale", type=Path, help="benchmarks.scale's scale.json")
    parser.add_argument("--out", type=Path, default=Path("results/scale/plan.md"))
    args = parser.parse_args(argv)
    text = markdown(json.loads(args.scale.read_text()), Assumptions())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
