"""One shard of the catalog: a FAISS inner-product index, the user tower, and popularity order."""

from __future__ import annotations

import weakref
import zlib
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from funnel.artifacts.catalog import Catalog, Embeddings, Users
from funnel.artifacts.store import read_manifest
from funnel.runtime.metrics import LOADED_ARTIFACTS
from services.retrieval.hits import Hits
from services.retrieval.sources import CategoryPopularSource, FreshSource, PopularSource
from services.retrieval.user_encoder import UserEncoder


def shard_of(item_ids: np.ndarray, shard_count: int) -> np.ndarray:
    """Deterministic shard of each item: crc32 of its id, so shards do not depend on row order."""
    return np.fromiter((zlib.crc32(i.encode()) % shard_count for i in item_ids), dtype=np.int64, count=len(item_ids))


@dataclass(frozen=True)
class IndexSpec:
    factory: str = "Flat"  # FAISS index_factory string, inner product
    search_params: str = ""  # e.g. "efSearch=128" (HNSW) or "nprobe=16" (IVF)


def build_index(vectors: np.ndarray, ids: np.ndarray, spec: IndexSpec) -> faiss.Index:
    """An inner-product index over `vectors` that answers with `ids`."""
    inner = faiss.index_factory(vectors.shape[1], spec.factory, faiss.METRIC_INNER_PRODUCT)
    if not inner.is_trained:
        inner.train(vectors)
    if spec.search_params:
        faiss.ParameterSpace().set_index_parameters(inner, spec.search_params)
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))
    return index


class ShardIndex:
    """Everything one retrieval process needs to answer, loaded from one bundle version."""

    def __init__(self, bundle: Path, shard_index: int, shard_count: int, spec: IndexSpec) -> None:
        manifest = read_manifest(bundle)
        self.version: str = manifest["version"]
        # Counts live indexes, so a hot swap can be seen to release the old one.
        LOADED_ARTIFACTS.labels("retrieval_index").inc()
        weakref.finalize(self, LOADED_ARTIFACTS.labels("retrieval_index").dec)
        self.catalog = Catalog.load(bundle)
        self.users = Users.load(bundle)
        self.item_id_list: list[str] = self.catalog.item_ids.tolist()
        item_vectors = Embeddings.load(bundle, mmap=True).items
        self.encoder = UserEncoder(
            bundle / "user_tower.pt", item_vectors, self.users, manifest["user_tower"]["history_length"]
        )
        self._warm_up()
        rows = np.flatnonzero(shard_of(self.catalog.item_ids, shard_count) == shard_index)
        self.index = build_index(np.asarray(item_vectors[rows]), rows, spec)
        self.on_shard = np.zeros(len(self.catalog), dtype=bool)
        self.on_shard[rows] = True
        self.popular = PopularSource(self.catalog, rows)
        self.category_popular = CategoryPopularSource(self.catalog, rows)
        self.fresh = FreshSource(self.catalog, rows)

    def _warm_up(self) -> None:
        # TorchScript profiles and optimises a module on its first calls; pay for that at load
        # time, not on the first requests after a start or a swap.
        for _ in range(3):
            self.encoder.encode(0 if len(self.users.user_ids) else -1, np.zeros(0, dtype=np.int64), "")
            self.encoder.encode(-1, np.arange(min(3, len(self.catalog))), "US")

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def search(self, query: np.ndarray, k: int, exclude: np.ndarray) -> Hits:
        """Top-k items of this shard by inner product with `query` [1, dim], minus `exclude`."""
        exclude = exclude[self.on_shard[exclude]]  # only this shard's items take extra search slots
        scores, rows = self.index.search(query, min(k + len(exclude), self.size))
        keep = (rows[0] >= 0) & ~np.isin(rows[0], exclude)
        return Hits(rows[0][keep][:k], scores[0][keep][:k])

    def user_affinity(self, user_row: int, recent_rows: np.ndarray) -> np.ndarray:
        """Weight per category: the user's stored history share plus this session's items."""
        affinity = np.zeros(len(self.catalog.category_names), dtype=np.float32)
        if user_row >= 0:
            affinity += self.users.category_affinity[user_row]
        if len(recent_rows):
            affinity += np.bincount(self.catalog.category[recent_rows], minlength=len(affinity)) / len(recent_rows)
        return affinity
