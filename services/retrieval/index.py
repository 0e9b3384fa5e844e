"""One shard of the catalog: a FAISS inner-product index plus the shard's popularity order."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from funnel.artifacts.catalog import Catalog, Embeddings, Users
from funnel.artifacts.store import read_manifest


def shard_of(item_ids: np.ndarray, shard_count: int) -> np.ndarray:
    """Deterministic shard of each item: crc32 of its id, so shards do not depend on row order."""
    return np.fromiter((zlib.crc32(i.encode()) % shard_count for i in item_ids), dtype=np.int64, count=len(item_ids))


@dataclass
class Hits:
    rows: np.ndarray  # int64 catalog rows, best first
    scores: np.ndarray  # float32


class ShardIndex:
    """Everything one retrieval process needs to answer, loaded from one bundle version."""

    def __init__(self, bundle: Path, shard_index: int, shard_count: int, index_factory: str) -> None:
        manifest = read_manifest(bundle)
        self.version = manifest["version"]
        self.catalog = Catalog.load(bundle)
        self.users = Users.load(bundle)
        embeddings = Embeddings.load(bundle)
        self.user_vectors = embeddings.users
        rows = np.flatnonzero(shard_of(self.catalog.item_ids, shard_count) == shard_index)
        self.shard_rows = rows
        self.index = _build_index(embeddings.items[rows], rows, index_factory)
        popularity = self.catalog.popularity[rows]
        self.popular_rows = rows[np.argsort(-popularity, kind="stable")]
        self._log_popularity = np.log1p(self.catalog.popularity).astype(np.float32)

    def user_row(self, user_id: str) -> int:
        return self.users.index.row(user_id)

    def search(self, user_row: int, k: int, exclude: np.ndarray) -> Hits:
        """Top-k items of this shard by inner product with the user's vector, minus `exclude`."""
        query = self.user_vectors[user_row : user_row + 1]
        scores, rows = self.index.search(query, min(k + len(exclude), self.index.ntotal))
        keep = (rows[0] >= 0) & ~np.isin(rows[0], exclude)
        return Hits(rows[0][keep][:k], scores[0][keep][:k])

    def popular(self, k: int, exclude: np.ndarray) -> Hits:
        head = self.popular_rows[: k + len(exclude)]
        head = head[~np.isin(head, exclude)][:k]
        return Hits(head, self._log_popularity[head])


def _build_index(vectors: np.ndarray, ids: np.ndarray, factory: str) -> faiss.Index:
    index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(vectors)
    index = faiss.IndexIDMap2(index) if not isinstance(index, faiss.IndexIDMap) else index
    index.add_with_ids(np.ascontiguousarray(vectors), ids.astype(np.int64))
    return index
