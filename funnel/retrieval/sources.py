"""Candidate sources over one shard's items, behind one protocol and one registry keyed by name.

Every source answers a `Query` (the user's history, the user tower's vector and which items may be
shown) with its best allowed items of the shard, scored on its own scale. Hard filters are applied
inside every source, ANN search included, so no candidate slot goes to an item the policy would
remove later. The gateway merges each source across shards by its score, then fuses the sources.
Training calls the same sources to build the ranker's impressions, so it sees what serving sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import faiss
import numpy as np

from funnel import sources as names
from funnel.arrays import best_first
from funnel.artifacts.catalog import Catalog
from funnel.artifacts.covisitation import CoVisitation
from funnel.retrieval.allowed import Allowed
from funnel.retrieval.filtered_search import filtered_search
from funnel.retrieval.hits import Hits

_EMPTY = Hits(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))


@dataclass
class Query:
    history: np.ndarray  # int64 item rows the user interacted with, oldest first
    allowed: Allowed  # the catalog rows that pass content policy and are not excluded
    vector: np.ndarray | None = None  # float32 [1, dim] user tower output


class CandidateSource(Protocol):
    name: ClassVar[str]

    def fetch(self, query: Query, k: int) -> Hits: ...


def first_allowed(ranked: np.ndarray, allowed: Allowed, k: int) -> np.ndarray:
    """The first `k` of `ranked` (catalog rows) that are allowed, looking at growing chunks so a
    long ranking is not scanned whole."""
    kept: list[np.ndarray] = []
    found, start, size = 0, 0, max(4 * k, 64)
    while found < k and start < len(ranked):
        chunk = ranked[start : start + size]
        good = chunk[allowed[chunk]]
        kept.append(good)
        found += len(good)
        start, size = start + size, size * 4
    return np.concatenate(kept)[:k] if kept else np.zeros(0, dtype=np.int64)


class AnnSource:
    """The user tower's vector searched in the shard's FAISS index, filtered during the search."""

    name = names.ANN

    def __init__(self, index: faiss.IndexIDMap2) -> None:
        self.index = index

    def fetch(self, query: Query, k: int) -> Hits:
        if query.vector is None:
            return _EMPTY
        return filtered_search(self.index, query.vector, k, query.allowed)


class CoVisitationSource:
    """Items people interacted with next to the user's latest items (recency-weighted)."""

    name = names.COVISIT

    def __init__(self, covisitation: CoVisitation, on_shard: np.ndarray) -> None:
        self.covisitation = covisitation
        self.on_shard = on_shard

    def fetch(self, query: Query, k: int) -> Hits:
        items, values = self.covisitation.scores(query.history)
        keep = self.on_shard[items] & query.allowed[items]
        items, values = items[keep], values[keep]
        top = best_first(values, k)
        return Hits(items[top], values[top])


class PopularSource:
    """The shard's most interacted-with items: the cold-start answer and a safety net."""

    name = names.POPULAR

    def __init__(self, catalog: Catalog, rows: np.ndarray) -> None:
        self._score = np.log1p(catalog.popularity).astype(np.float32)
        self._ranked = rows[np.argsort(-catalog.popularity[rows], kind="stable")]

    def fetch(self, query: Query, k: int) -> Hits:
        top = first_allowed(self._ranked, query.allowed, k)
        return Hits(top, self._score[top])


class CategoryPopularSource:
    """Popular items of the categories the user cares about, shared out by the user's affinity."""

    name = names.CATEGORY_POPULAR
    top_categories = 3

    def __init__(self, catalog: Catalog, rows: np.ndarray) -> None:
        self.catalog = catalog
        self._score = np.log1p(catalog.popularity).astype(np.float32)
        order = rows[np.argsort(-catalog.popularity[rows], kind="stable")]
        categories = catalog.category[order]
        self._ranked = {int(c): order[categories == c] for c in np.unique(categories)}

    def fetch(self, query: Query, k: int) -> Hits:
        if len(query.history) == 0:
            return _EMPTY
        affinity = np.bincount(self.catalog.category[query.history], minlength=len(self.catalog.category_names))
        chosen = np.argsort(-affinity, kind="stable")[: self.top_categories]
        chosen = chosen[affinity[chosen] > 0]
        shares = np.maximum(1, np.round(k * affinity[chosen] / affinity[chosen].sum())).astype(int)
        picked = [
            first_allowed(self._ranked.get(int(c), np.zeros(0, np.int64)), query.allowed, int(n))
            for c, n in zip(chosen, shares, strict=True)
        ]
        rows = np.concatenate(picked)[:k] if picked else np.zeros(0, dtype=np.int64)
        # The score weights popularity by how much the user likes the category.
        weight = (affinity / affinity.sum())[np.repeat(chosen, [len(p) for p in picked])][: len(rows)]
        return Hits(rows, (self._score[rows] * weight).astype(np.float32))


class FreshSource:
    """The shard's newest items, so new content gets a chance before it has interactions."""

    name = names.FRESH

    def __init__(self, catalog: Catalog, rows: np.ndarray, half_life_days: float = 30.0) -> None:
        self._ranked = rows[np.argsort(catalog.age_days[rows], kind="stable")]
        self._score = np.exp(-catalog.age_days * np.log(2) / half_life_days).astype(np.float32)

    def fetch(self, query: Query, k: int) -> Hits:
        top = first_allowed(self._ranked, query.allowed, k)
        return Hits(top, self._score[top])


def build_sources(
    catalog: Catalog, rows: np.ndarray, index: faiss.IndexIDMap2, covisitation: CoVisitation
) -> dict[str, CandidateSource]:
    """Every source of a shard serving `rows`, keyed by name (the registry requests are checked against)."""
    on_shard = np.zeros(len(catalog), dtype=bool)
    on_shard[rows] = True
    sources: list[CandidateSource] = [
        AnnSource(index),
        CoVisitationSource(covisitation, on_shard),
        CategoryPopularSource(catalog, rows),
        PopularSource(catalog, rows),
        FreshSource(catalog, rows),
    ]
    assert tuple(s.name for s in sources) == names.RETRIEVAL_SOURCES
    return {source.name: source for source in sources}
