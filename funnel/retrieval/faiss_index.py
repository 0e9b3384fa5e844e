"""The FAISS index over one shard's item vectors, and which shard an item belongs to."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import faiss
import numpy as np


def shard_of(item_ids: np.ndarray, shard_count: int) -> np.ndarray:
    """Deterministic shard of each item: crc32 of its id, so shards do not depend on row order."""
    return np.fromiter((zlib.crc32(i.encode()) % shard_count for i in item_ids), dtype=np.int64, count=len(item_ids))


@dataclass(frozen=True)
class IndexSpec:
    factory: str = "Flat"  # FAISS index_factory string, inner product
    search_params: str = ""  # e.g. "efSearch=128" (HNSW) or "nprobe=16" (IVF)


def build_index(vectors: np.ndarray, ids: np.ndarray, spec: IndexSpec) -> faiss.Index:
    """An inner-product index over `vectors` that answers with `ids`. A spec FAISS cannot build or
    set for these vectors is a ValueError that names it and says why in FAISS's own words."""
    dim = vectors.shape[1]
    try:
        inner = faiss.index_factory(dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise _refused(f"index factory {spec.factory!r} for {dim}-dimensional item vectors", error) from None
    skip_unused_polysemous_training(inner, spec.search_params)
    if not inner.is_trained:
        inner.train(training_sample(vectors))
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))
    # The search settings after the vectors are in: set before, an IVF's HNSW quantizer assigned
    # each added vector with the search's wide efSearch, and a 10M-item shard was still adding after
    # 9 minutes on its one thread (`make bench-scale` adds them the same way, then sets the search's).
    if spec.search_params:
        try:
            faiss.ParameterSpace().set_index_parameters(inner, spec.search_params)
        except RuntimeError as error:
            raise _refused(f"search parameters {spec.search_params!r} for index {spec.factory!r}", error) from None
    _check_lists_reachable(inner)
    return index


def _refused(what: str, error: RuntimeError) -> ValueError:
    # FAISS's C++ errors carry the source location first and the reason after the last "Error: "
    # or ": " (e.g. "could not parse index string Bogus").
    text = str(error).strip()
    reason = text.rsplit("Error: ", 1)[-1] if "Error: " in text else text.rsplit(": ", 1)[-1]
    return ValueError(f"{what}: {reason}")


def skip_unused_polysemous_training(index: faiss.Index, search_params: str) -> None:
    """The index factory has every product quantizer learn an order of its codes for polysemous
    search, a Hamming-distance pre-filter that only `ht` (polysemous_ht) in the search parameters
    turns on. Without it that training is all cost: `IVF50,PQ32` trained in 45 s on 2 threads with
    it and 2 s without (5,000 vectors; it grows with the codebooks, not the vectors), time every
    shard start and hot swap would spend."""
    if "ht" in {setting.split("=")[0].strip() for setting in search_params.split(",")}:
        return
    leaf = faiss.downcast_index(index)
    while True:  # through the wrappers (ID map, refine, pre-transform) to the quantizing index
        wrapped = getattr(leaf, "base_index", None) or getattr(leaf, "index", None)
        if wrapped is None:
            break
        leaf = faiss.downcast_index(wrapped)
    if hasattr(leaf, "do_polysemous_training"):
        leaf.do_polysemous_training = False


# Rows an index is trained on at most: 64 per list of the largest IVF served (4,096 lists), and far
# more than PQ's codebooks need. k-means over every row of 10M items would take most of a shard's start.
TRAINING_ROWS = 262_144


def training_sample(vectors: np.ndarray) -> np.ndarray:
    """Every row up to TRAINING_ROWS, else that many drawn without replacement (the same every start)."""
    if len(vectors) <= TRAINING_ROWS:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    rows = np.sort(np.random.default_rng(0).choice(len(vectors), TRAINING_ROWS, replace=False))
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


def _check_lists_reachable(index: faiss.Index) -> None:
    """An IVF index whose quantizer is an HNSW graph gets no more lists from it than the graph's
    efSearch, whatever nprobe says (`make bench-scale`: recall stuck at 0.74 where 0.99 was due), so
    a spec that would search fewer lists than it asks for is refused."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return
    quantizer = faiss.downcast_index(ivf.quantizer)
    if isinstance(quantizer, faiss.IndexHNSW) and quantizer.hnsw.efSearch < ivf.nprobe:
        raise ValueError(
            f"nprobe={ivf.nprobe} but the HNSW quantizer returns at most efSearch={quantizer.hnsw.efSearch} lists: "
            f"add quantizer_efSearch={2 * ivf.nprobe} (at least {ivf.nprobe}) to the search parameters"
        )
