"""Retrieval as the served funnel does it, for many users at once: every source, then fusion.

The ranker learns from these candidates and is evaluated on them, so they must be what serving
produces: the same source classes, the same fusion and limits. Only ANN search is batched here
(one exact search for every user, their history filtered out after), which returns what the
service's filtered exact search returns one user at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from funnel.artifacts.catalog import Catalog
from funnel.artifacts.covisitation import CoVisitation
from funnel.fusion import DEFAULT_LIMITS, fuse
from funnel.retrieval.allowed import Allowed
from funnel.retrieval.faiss_index import IndexSpec, build_index
from funnel.retrieval.sources import Query, build_sources
from funnel.sources import ANN, source_code


@dataclass
class Candidates:
    rows: np.ndarray  # int64 catalog rows in fused order
    sources: np.ndarray  # int64 SOURCE_CODES, one per row
    scores: np.ndarray  # float32 fused score


class Retriever:
    """The funnel's first stage over the whole catalog, from one set of models."""

    def __init__(self, catalog: Catalog, item_vectors: np.ndarray, covisitation: CoVisitation,
                 limits: dict[str, int] | None = None) -> None:  # fmt: skip
        self.catalog = catalog
        self.limits = dict(limits or DEFAULT_LIMITS)
        rows = np.arange(len(catalog), dtype=np.int64)
        self.index = build_index(item_vectors, rows, IndexSpec("Flat"))
        self.sources = build_sources(catalog, rows, self.index, covisitation)

    def retrieve(
        self, histories: list[np.ndarray], queries: np.ndarray, content: list[np.ndarray] | None = None
    ) -> list[Candidates]:
        """Candidates for each history (oldest first) with its user tower vector, history excluded;
        with `content`, only items its mask (one per history) allows, filtered inside the search."""
        ann = self.ann(histories, queries) if content is None else None
        out = []
        everything = np.ones(len(self.catalog), dtype=bool)
        for n, history in enumerate(histories):
            allowed = Allowed(everything if content is None else content[n], history)
            query = Query(history=history, allowed=allowed, vector=queries[n : n + 1])
            ranked = {}
            for name, limit in self.limits.items():
                found = ann[n] if name == ANN and ann is not None else self.sources[name].fetch(query, limit).rows
                ranked[name] = found.tolist()
            fused = fuse(ranked)
            out.append(
                Candidates(
                    np.array([key for key, _, _ in fused], dtype=np.int64),
                    np.array([source_code(source) for _, _, source in fused], dtype=np.int64),
                    np.array([score for _, score, _ in fused], dtype=np.float32),
                )
            )
        return out

    def source_hits(self, name: str, history: np.ndarray, k: int) -> np.ndarray:
        """One source's best `k` items for one history (the history itself excluded)."""
        allowed = Allowed(np.ones(len(self.catalog), dtype=bool), history)
        return self.sources[name].fetch(Query(history=history, allowed=allowed), k).rows

    def ann(self, histories: list[np.ndarray], queries: np.ndarray) -> list[np.ndarray]:
        k = self.limits.get(ANN, 0)
        if k == 0:
            return [np.zeros(0, dtype=np.int64)] * len(histories)
        # Queries grouped by history length, so a few long histories do not widen every search.
        extra = np.array([len(h) for h in histories])
        found: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(histories)
        for bound in np.unique(np.minimum(2 ** np.ceil(np.log2(extra + 1)), len(self.catalog))):
            members = np.flatnonzero(np.minimum(2 ** np.ceil(np.log2(extra + 1)), len(self.catalog)) == bound)
            depth = int(min(k + bound, len(self.catalog)))
            _, rows = self.index.search(np.ascontiguousarray(queries[members], dtype=np.float32), depth)
            for n, member in enumerate(members):
                hits = rows[n][rows[n] >= 0]
                found[member] = hits[~np.isin(hits, histories[member])][:k]
        return found
