"""FAISS index settings at 100k and 1M items: build time, memory, single-query latency, Recall@100.

    python -m benchmarks.ann_indexes --sizes 100000 1000000

The vectors are clustered like trained embeddings (80 category x style centroids plus noise, unit
norm, 64 dims) rather than taken from a trained model: training a two-tower model on 1M items
does not fit a benchmark run on this machine. Queries mix two or three centroids, like users with
a few tastes. Latency is one query at a time on one thread; recall is against exact search.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np

from funnel.retrieval.faiss_index import skip_unused_polysemous_training

SETTINGS = [
    ("Flat", [""]),
    ("HNSW32", ["efSearch=128", "efSearch=256", "efSearch=512"]),
    ("IVF{nlist},Flat", ["nprobe=8", "nprobe=16", "nprobe=32", "nprobe=64"]),
    ("IVF{nlist},PQ32", ["nprobe=16", "nprobe=64"]),
    ("IVF{nlist},PQ32,RFlat", ["nprobe=16,k_factor_rf=4", "nprobe=32,k_factor_rf=4"]),
]


def clustered_vectors(count: int, dim: int, rng: np.random.Generator, centroids: np.ndarray) -> np.ndarray:
    assignment = rng.integers(0, len(centroids), count)
    vectors = centroids[assignment] + 0.35 * rng.standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def queries_for(count: int, dim: int, rng: np.random.Generator, centroids: np.ndarray) -> np.ndarray:
    picks = rng.integers(0, len(centroids), (count, 3))
    weights = rng.dirichlet(np.ones(3), count).astype(np.float32)
    queries = np.einsum("qk,qkd->qd", weights, centroids[picks]) + 0.2 * rng.standard_normal((count, dim)).astype(
        np.float32
    )
    return (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def timed_search(index: faiss.Index, queries: np.ndarray, k: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query, one at a time on one thread, after 20 to warm caches: latency ms, scores, ids."""
    faiss.omp_set_num_threads(1)
    for query in queries[:20]:
        index.search(query[None, :], k)
    latencies, scores, ids = [], [], []
    for query in queries:
        started = time.perf_counter()
        s, i = index.search(query[None, :], k)
        latencies.append((time.perf_counter() - started) * 1000)
        scores.append(s[0])
        ids.append(i[0])
    return np.array(latencies), np.array(scores), np.array(ids)


def measure(items: np.ndarray, queries: np.ndarray, truth: np.ndarray, factory: str, params: list[str]) -> list[dict]:
    faiss.omp_set_num_threads(2)  # building may use both cores; queries are timed on one
    started = time.perf_counter()
    index = faiss.index_factory(items.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    skip_unused_polysemous_training(index, ",".join(params))  # as the retrieval service builds it
    if factory.startswith("HNSW"):
        index.hnsw.efConstruction = 100  # the default (40) leaves recall on the table for clustered data
    if not index.is_trained:
        sample = items[np.random.default_rng(0).choice(len(items), min(len(items), 200_000), replace=False)]
        index.train(sample)
    index.add(items)
    build_s = time.perf_counter() - started
    memory_mb = len(faiss.serialize_index(index)) / 2**20
    faiss.omp_set_num_threads(1)
    rows = []
    space = faiss.ParameterSpace()
    for setting in params:
        if setting:
            space.set_index_parameters(index, setting)
        latencies, _, found = timed_search(index, queries)
        rows.append(
            {
                "index": factory,
                "params": setting or "-",
                "items": len(items),
                "build_s": round(build_s, 2),
                "memory_mb": round(memory_mb, 1),
                "p50_ms": round(float(np.percentile(latencies, 50)), 3),
                "p99_ms": round(float(np.percentile(latencies, 99)), 3),
                "recall@100": round(recall_at(found, truth), 4),
            }
        )
        print(_row(rows[-1]), flush=True)
    return rows


def _row(r: dict) -> str:
    return (
        f"{r['items']:>9} {r['index']:<24} {r['params']:<24} {r['build_s']:>8.1f} {r['memory_mb']:>9.1f} "
        f"{r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['recall@100']:>10.4f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("results/ann_indexes.json"))
    args = parser.parse_args(argv)
    rng = np.random.default_rng(7)
    centroids = rng.standard_normal((80, args.dim)).astype(np.float32)
    print(
        f"{'items':>9} {'index':<24} {'search params':<24} {'build s':>8} {'memory MB':>9} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'recall@100':>10}",
        flush=True,
    )
    results = []
    for size in args.sizes:
        items = clustered_vectors(size, args.dim, rng, centroids)
        queries = queries_for(args.queries, args.dim, rng, centroids)
        exact = faiss.IndexFlatIP(args.dim)
        exact.add(items)
        faiss.omp_set_num_threads(2)
        _, truth = exact.search(queries, 100)
        # About 250 items a list at 1M; small catalogs (the suite's smoke run) keep at least 39 a list.
        nlist = 4096 if size >= 500_000 else 1024 if size >= 100_000 else max(8, size // 100)
        for factory, params in SETTINGS:
            results.extend(measure(items, queries, truth, factory.format(nlist=nlist), params))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"dim": args.dim, "queries": args.queries, "threads_per_query": 1, "rows": results}, indent=2)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
