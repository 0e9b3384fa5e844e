"""One shard of the catalog: a FAISS inner-product index, the user tower and every candidate source."""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np

from funnel.artifacts.catalog import Catalog, Embeddings, Users
from funnel.artifacts.covisitation import CoVisitation
from funnel.artifacts.store import read_manifest
from funnel.policy.document import ContentRules
from funnel.retrieval.allowed_items import AllowedItems
from funnel.retrieval.faiss_index import IndexSpec, build_index, shard_of
from funnel.retrieval.sources import build_sources
from funnel.runtime.metrics import LOADED_ARTIFACTS
from services.retrieval.user_encoder import UserEncoder


class ShardIndex:
    """Everything one retrieval process needs to answer, loaded from one bundle version."""

    def __init__(self, bundle: Path, shard_index: int, shard_count: int, spec: IndexSpec, rules: ContentRules) -> None:
        manifest = read_manifest(bundle)
        self.version: str = manifest["version"]
        # Counts live indexes, so a hot swap can be seen to release the old one.
        LOADED_ARTIFACTS.labels("retrieval_index").inc()
        weakref.finalize(self, LOADED_ARTIFACTS.labels("retrieval_index").dec)
        self.catalog = Catalog.load(bundle)
        self.users = Users.load(bundle)
        self.item_id_list: list[str] = self.catalog.item_ids.tolist()
        item_vectors = Embeddings.load(bundle, mmap=True).items
        self.dim = int(item_vectors.shape[1])
        self.encoder = UserEncoder(bundle / "user_tower.pt", item_vectors, manifest["user_tower"]["history_length"])
        self._warm_up()
        rows = np.flatnonzero(shard_of(self.catalog.item_ids, shard_count) == shard_index)
        self.index = build_index(np.asarray(item_vectors[rows]), rows, spec)
        self.sources = build_sources(self.catalog, rows, self.index, CoVisitation.load(bundle, mmap=True))
        self.allowed = AllowedItems(self.catalog, rules)

    def use_content_rules(self, rules: ContentRules) -> None:
        """A reloaded policy: one reference swap, calls in flight keep the masks they started with."""
        self.allowed = AllowedItems(self.catalog, rules)

    def _warm_up(self) -> None:
        # TorchScript profiles and optimises a module on its first calls; pay for that at load
        # time, not on the first requests after a start or a swap.
        for _ in range(3):
            self.encoder.encode(np.zeros(0, dtype=np.int64), 0)
            self.encoder.encode(np.arange(min(3, len(self.catalog))), 1)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def history(self, user_row: int) -> np.ndarray:
        return self.users.history(user_row).astype(np.int64) if user_row >= 0 else np.zeros(0, dtype=np.int64)
