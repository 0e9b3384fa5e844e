"""The catalog at 1M and 10M items: FAISS indexes worth serving at that size, and sharded fan-out.

    python -m benchmarks.scale --sizes 1000000 10000000 --out results/scale

For each size: exact search (the recall reference, and its one-query latency), then each index
built in a child process of its own (build time, peak memory above the input vectors, bytes per
item), with recall@100 against exact search and p50/p99 per query on one thread. Then the largest
size is split into 2 and 4 shards of the best index (by item, as `shard_of` does), each shard
searched for every query and the answers merged with the gateway's own merge: per query the
merged latency is the slowest shard's plus the merge (shards run on their own cores), and recall
is the merged list's. The vectors are clustered like trained embeddings (`benchmarks.ann_indexes`).
`benchmarks.capacity` turns the JSON into the plan in docs/scale.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path

import faiss
import numpy as np

from benchmarks.ann_indexes import clustered_vectors, queries_for, recall_at, timed_search
from funnel.artifacts.catalog import Catalog
from funnel.candidates import Candidates
from funnel.retrieval.merge import merge_candidates
from funnel.sources import SOURCE_CODES

K = 100
# The IVF bases: lists by k-means, an HNSW graph over the centroids to assign each vector (a flat
# quantizer costs nlist dot products per vector: hours at 10M here), and codes of 32 bytes (product
# quantized; "np": no polysemous training, which only a Hamming pre-filter would use), 64 bytes
# (8-bit scalar quantized) or the float vectors. Each trained once per size.
BASES = {
    "PQ32": "IVF{nlist}_HNSW32,PQ32np",
    "SQ8": "IVF{nlist}_HNSW32,SQ8",
    "Flat": "IVF{nlist}_HNSW32,Flat",
}
# (name, base, refinement, search settings). A refinement keeps a second copy of each vector (8-bit
# scalar-quantized, or float) and re-scores the base's best k_factor_rf x K with it. An HNSW
# quantizer returns no more lists than its efSearch: quantizer_efSearch is set to twice nprobe.
VARIANTS = [
    ("IVF-PQ32 + SQ8 refine", "PQ32", "SQ8", ["nprobe=256,quantizer_efSearch=512,k_factor_rf=8"]),
    ("IVF-SQ8", "SQ8", "", [f"nprobe={n},quantizer_efSearch={2 * n}" for n in (64, 128, 256)]),
    ("IVF-SQ8 + float refine", "SQ8", "Flat", ["nprobe=256,quantizer_efSearch=512,k_factor_rf=2"]),
    ("IVF-Flat", "Flat", "", [f"nprobe={n},quantizer_efSearch={2 * n}" for n in (128, 256)]),
]
# The graph index for comparison where it builds in minutes (its build grows ~N log N).
GRAPH = ("HNSW32", ["efSearch=256", "efSearch=512"])
GRAPH_UP_TO = 1_000_000
QUANTILES = (50, 90, 99, 99.9, 100)
SHARDED = ("IVF-SQ8", "nprobe=256,quantizer_efSearch=512")


def vectors(path: Path, count: int, dim: int, rng: np.random.Generator, centroids: np.ndarray) -> np.ndarray:
    """`count` clustered unit vectors in a memory-mapped file at `path` (so the processes that build
    indexes share one copy), made a million at a time (float64 noise for 10M would be 5 GB)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(count, dim))
    for start in range(0, count, 1_000_000):
        end = min(count, start + 1_000_000)
        out[start:end] = clustered_vectors(end - start, dim, rng, centroids)
    out.flush()
    return np.load(path, mmap_mode="r")


def nlist_for(count: int) -> int:
    """About 4 sqrt(N) lists, a power of two, at most 4096: on these vectors a query's top 100 lie
    spread over the lists of 2-3 clusters, so recall follows the share of lists probed, and more
    lists would only need more probes (and make k-means at 10M take much longer here)."""
    return min(4096, int(2 ** round(np.log2(4 * np.sqrt(count)))))


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def trained_base(items: np.ndarray, base: str) -> tuple[bytes, float]:
    """The IVF base `base` trained on a sample (40 per list), serialized, and the seconds it took."""
    started = time.perf_counter()
    nlist = nlist_for(len(items))
    index = faiss.index_factory(items.shape[1], BASES[base].format(nlist=nlist), faiss.METRIC_INNER_PRODUCT)
    faiss.extract_index_ivf(index).cp.niter = 10  # k-means settles on these clusters well before 25
    sample = np.random.default_rng(0).choice(len(items), min(len(items), 40 * nlist), replace=False)
    index.train(np.ascontiguousarray(items[np.sort(sample)]))
    return faiss.serialize_index(index), time.perf_counter() - started


def variant(base: bytes, refine: str, items: np.ndarray) -> faiss.Index:
    """A copy of the trained base, refined by `refine` ("" none, "SQ8", "Flat"), items not yet added."""
    index = faiss.deserialize_index(base)
    if refine == "Flat":
        return faiss.IndexRefineFlat(index)
    if refine == "SQ8":
        fine = faiss.IndexScalarQuantizer(items.shape[1], faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        fine.train(np.ascontiguousarray(items[:200_000]))
        return faiss.IndexRefine(index, fine)
    return index


def _build_and_measure(name: str, refine: str, base: bytes, train_s: float, settings: list[str],
                       items_path: str, queries: np.ndarray, truth: np.ndarray, sink) -> None:  # fmt: skip
    """In a child process of its own (spawned: OpenMP does not survive a fork), so its peak memory
    is this index's alone; the memory-mapped vectors are touched first and count in the baseline."""
    items = np.load(items_path, mmap_mode="r")
    float(np.asarray(items).sum())  # touch every page
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak to now
    baseline = _rss_mib("VmRSS")
    faiss.omp_set_num_threads(2)
    started = time.perf_counter()
    index = graph_index(items.shape[1]) if name == GRAPH[0] else variant(base, refine, items)
    for start in range(0, len(items), 1_000_000):
        index.add(np.ascontiguousarray(items[start : start + 1_000_000]))
    build_s = train_s + time.perf_counter() - started
    peak = _rss_mib("VmHWM") - baseline
    size = len(faiss.serialize_index(index))
    rows = []
    for setting in settings:
        faiss.ParameterSpace().set_index_parameters(index, setting)
        latencies, _, found = timed_search(index, queries)
        rows.append({
            "index": name, "params": setting, "items": len(items), "build_s": round(build_s, 1),
            "train_s": round(train_s, 1),
            "peak_mib_above_vectors": round(peak, 1), "bytes_per_item": round(size / len(items), 1),
            "p50_ms": round(float(np.percentile(latencies, 50)), 3),
            "p99_ms": round(float(np.percentile(latencies, 99)), 3), "recall@100": round(recall_at(found, truth), 4),
            "latency_ms": tail(latencies),
        })  # fmt: skip
    sink.send(rows)


def in_child(target, *args):
    """`target(*args, sink)` run in a spawned process (OpenMP does not survive a fork), its one
    `sink.send(value)` returned: each measurement's peak memory is its own."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=target, args=(*args, child))
    process.start()
    value = parent.recv()
    process.join()
    return value


def measure_index(name: str, refine: str, base: bytes, train_s: float, settings: list[str], items_path: Path,
                  queries: np.ndarray, truth: np.ndarray) -> list[dict]:  # fmt: skip
    """The variant `name` (the trained `base` with `refine`, or the graph), built and measured in a child."""
    rows = in_child(_build_and_measure, name, refine, base, train_s, settings, str(items_path), queries, truth)
    for row in rows:
        print(_line(row), flush=True)
    return rows


def graph_index(dim: int) -> faiss.Index:
    index = faiss.index_factory(dim, GRAPH[0], faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 100  # the default (40) leaves recall on the table for clustered data
    return index


def exact(items: np.ndarray, queries: np.ndarray, timed: int) -> tuple[np.ndarray, dict]:
    """The true top-K for every query (both cores), and exact search's one-query latency."""
    index = faiss.IndexFlatIP(items.shape[1])
    index.add(items)
    faiss.omp_set_num_threads(2)
    _, truth = index.search(queries, K)
    latencies, _, _ = timed_search(index, queries[:timed])
    row = {
        "index": "Flat", "params": "-", "items": len(items), "build_s": 0.0, "train_s": 0.0,
        "peak_mib_above_vectors": round(items.nbytes / 2**20, 1), "bytes_per_item": float(items.shape[1] * 4),
        "p50_ms": round(float(np.percentile(latencies, 50)), 3),
        "p99_ms": round(float(np.percentile(latencies, 99)), 3), "recall@100": 1.0,
    }  # fmt: skip
    print(_line(row), flush=True)
    return truth, row


def sharded(items: np.ndarray, queries: np.ndarray, truth: np.ndarray, shard_counts: list[int],
            bases: dict[str, tuple[bytes, float]]) -> list[dict]:  # fmt: skip
    """The merged answer of `shard_counts` shards of the SHARDED index, per query; the shards share
    one training, as one build's shards would."""
    name, setting = SHARDED
    base, refine = next((bases[b][0], r) for n, b, r, _ in VARIANTS if n == name)
    codes = np.full(K, SOURCE_CODES["ann"], dtype=np.int32)
    rows = []
    for count in shard_counts:
        per_shard, answers = [], []
        for shard in range(count):
            rows_of_shard = np.arange(shard, len(items), count)
            index = variant(base, refine, items)
            faiss.omp_set_num_threads(2)
            index.add(items[rows_of_shard])
            faiss.ParameterSpace().set_index_parameters(index, setting)
            latencies, scores, local = timed_search(index, queries)
            per_shard.append(latencies)
            answers.append((scores, np.where(local >= 0, rows_of_shard[np.maximum(local, 0)], -1)))
            del index
        merge_ms, found = [], []
        for q in range(len(queries)):
            lists = [Candidates([str(i) for i in ids[q]], codes, s[q]) for s, ids in answers]
            started = time.perf_counter()
            merged = merge_candidates(lists, {"ann": K})
            merge_ms.append((time.perf_counter() - started) * 1000)
            found.append([int(i) for i in merged.item_ids])
        slowest = np.max(per_shard, axis=0)
        total = slowest + np.array(merge_ms)
        row = {
            "index": name, "params": setting, "items": len(items), "shards": count,
            "items_per_shard": len(items) // count,
            "shard_p50_ms": round(float(np.percentile(np.concatenate(per_shard), 50)), 3),
            "shard_latency_ms": tail(np.concatenate(per_shard)),
            "merge_p50_ms": round(float(np.percentile(merge_ms, 50)), 3),
            "merged_p50_ms": round(float(np.percentile(total, 50)), 3),
            "merged_p99_ms": round(float(np.percentile(total, 99)), 3),
            "recall@100": round(recall_at(np.array(found), truth), 4),
        }  # fmt: skip
        print(f"{count} shards of {len(items):,}: {row}", flush=True)
        rows.append(row)
    return rows


def _catalog_state(count: int, sink) -> None:
    """In a child: the resident memory a retrieval shard holds per catalog item beside its index (the
    catalog's columns, its id -> row map and the id list it answers with), for every item."""
    baseline = _rss_mib("VmRSS")
    item_ids = np.array([f"i{n:07d}" for n in range(count)])
    catalog = Catalog(
        item_ids, np.zeros(count, np.int32), np.zeros(count, np.int32), np.ones(count, np.int8),
        np.zeros(count, np.int64), np.zeros(count, np.float32), np.zeros(count, np.float32), ["c"], ["p"],
    )  # fmt: skip
    id_list = catalog.item_ids.tolist()  # as ShardIndex keeps it
    sink.send((_rss_mib("VmRSS") - baseline) * 2**20 / count)
    del catalog, id_list


def catalog_bytes_per_item(count: int) -> float:
    return round(in_child(_catalog_state, count), 1)


def tail(latencies: np.ndarray) -> dict[str, float]:
    """The latency quantiles a fan-out needs (the slowest of S shards sits at quantile 0.99^(1/S))."""
    return {f"p{q:g}": round(float(np.percentile(latencies, q)), 3) for q in QUANTILES}


def _line(r: dict) -> str:
    return (
        f"{r['items']:>9} {r['index']:<38} {r['params']:<24} {r['build_s']:>8.1f} {r['peak_mib_above_vectors']:>9.1f} "
        f"{r['bytes_per_item']:>7.1f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['recall@100']:>10.4f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--exact-timed", type=int, default=100, help="queries timed on exact search (slow at 10M)")
    parser.add_argument("--shards", type=int, nargs="*", default=[2, 4])
    parser.add_argument("--out", type=Path, default=Path("results/scale"))
    args = parser.parse_args(argv)
    rng = np.random.default_rng(7)
    centroids = rng.standard_normal((80, args.dim)).astype(np.float32)
    print(f"{'items':>9} {'index':<38} {'search params':<24} {'build s':>8} {'peak MiB':>9} {'B/item':>7} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'recall@100':>10}", flush=True)  # fmt: skip
    result: dict = {"dim": args.dim, "queries": args.queries, "k": K, "threads_per_query": 1, "rows": [], "sharded": []}
    args.out.mkdir(parents=True, exist_ok=True)
    result["catalog_bytes_per_item"] = catalog_bytes_per_item(1_000_000)
    print(f"catalog state a retrieval shard holds per catalog item: {result['catalog_bytes_per_item']} B", flush=True)
    for size in args.sizes:
        started = time.perf_counter()
        items_path = args.out / f"vectors-{size}.npy"
        items = vectors(items_path, size, args.dim, rng, centroids)
        queries = queries_for(args.queries, args.dim, rng, centroids)
        print(f"{size:,} vectors made in {time.perf_counter() - started:.0f} s", flush=True)
        truth, row = exact(items, queries, args.exact_timed)
        result["rows"].append(row)
        bases = {name: trained_base(items, name) for name in BASES}
        print(", ".join(f"{name} base trained in {t:.0f} s" for name, (_, t) in bases.items()), flush=True)
        for name, base, refine, settings in VARIANTS:
            result["rows"].extend(
                measure_index(name, refine, bases[base][0], bases[base][1], settings, items_path, queries, truth)
            )
        if size <= GRAPH_UP_TO:
            result["rows"].extend(measure_index(GRAPH[0], "", b"", 0.0, GRAPH[1], items_path, queries, truth))
        if size == max(args.sizes) and args.shards:
            result["sharded"] = sharded(items, queries, truth, args.shards, bases)
        del items
        items_path.unlink()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out / 'scale.json'}")


if __name__ == "__main__":
    main()
