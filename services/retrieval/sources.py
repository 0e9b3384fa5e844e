"""Candidate sources beside the ANN index, each over one shard's items.

Every source returns its best items for the shard with a score on its own scale; the gateway
merges each source across shards by that score, then the sources together.
"""

from __future__ import annotations

import numpy as np

from funnel.artifacts.catalog import Catalog
from services.retrieval.hits import Hits


def _without(rows: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    head = rows[: k + len(exclude)]
    return head[~np.isin(head, exclude)][:k]


class PopularSource:
    """The shard's most interacted-with items: the cold-start answer and a safety net."""

    name = "popular"

    def __init__(self, catalog: Catalog, rows: np.ndarray) -> None:
        self._score = np.log1p(catalog.popularity).astype(np.float32)
        self._ranked = rows[np.argsort(-catalog.popularity[rows], kind="stable")]

    def fetch(self, k: int, exclude: np.ndarray) -> Hits:
        top = _without(self._ranked, exclude, k)
        return Hits(top, self._score[top])


class CategoryPopularSource:
    """Popular items of the categories the user cares about, shared out by the user's affinity."""

    name = "category_popular"

    def __init__(self, catalog: Catalog, rows: np.ndarray) -> None:
        self._score = np.log1p(catalog.popularity).astype(np.float32)
        order = rows[np.argsort(-catalog.popularity[rows], kind="stable")]
        categories = catalog.category[order]
        self._ranked = {int(c): order[categories == c] for c in np.unique(categories)}

    def fetch(self, k: int, exclude: np.ndarray, affinity: np.ndarray, top_categories: int = 3) -> Hits:
        """`affinity`: weight per category (the user's history share); all zero gives nothing."""
        if not affinity.any():
            return Hits(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
        chosen = np.argsort(-affinity, kind="stable")[:top_categories]
        chosen = chosen[affinity[chosen] > 0]
        shares = np.maximum(1, np.round(k * affinity[chosen] / affinity[chosen].sum())).astype(int)
        picked = [
            _without(self._ranked.get(int(c), np.zeros(0, np.int64)), exclude, int(n))
            for c, n in zip(chosen, shares, strict=True)
        ]
        rows = np.concatenate(picked)[:k] if picked else np.zeros(0, dtype=np.int64)
        # The score weights popularity by how much the user likes the category.
        weight = affinity[np.repeat(chosen, [len(p) for p in picked])][: len(rows)]
        return Hits(rows, (self._score[rows] * weight).astype(np.float32))


class FreshSource:
    """The shard's newest items, so new content gets a chance before it has interactions."""

    name = "fresh"

    def __init__(self, catalog: Catalog, rows: np.ndarray, half_life_days: float = 30.0) -> None:
        self._ranked = rows[np.argsort(catalog.age_days[rows], kind="stable")]
        self._score = np.exp(-catalog.age_days * np.log(2) / half_life_days).astype(np.float32)

    def fetch(self, k: int, exclude: np.ndarray) -> Hits:
        top = _without(self._ranked, exclude, k)
        return Hits(top, self._score[top])
