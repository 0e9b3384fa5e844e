"""Fusing the candidate sources into retrieval's one ordered list (the gateway serves it; training
reproduces it for the ranker's impressions).

Sources score on scales of their own (inner products, co-visitation sums, log counts), so they
are fused by rank: weighted reciprocal rank fusion, each source adding weight / (K + rank) for
every item it found. An item found by several sources rises; its source is the one that ranked it
best. The order is what a client gets when ranking is down, and what the ranker reads as a feature.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

from funnel import sources

K = 60.0  # the usual RRF constant: ranks 1 and 10 differ, ranks 200 and 210 barely
# Personal sources lead; the non-personal ones fill in and give new items a chance.
WEIGHTS = {
    sources.ANN: 1.0,
    sources.COVISIT: 1.0,
    sources.CATEGORY_POPULAR: 0.5,
    sources.POPULAR: 0.5,
    sources.FRESH: 0.25,
}

Key = TypeVar("Key", bound=Hashable)


def fuse(ranked: Mapping[str, Sequence[Key]], weights: Mapping[str, float] = WEIGHTS) -> list[tuple[Key, float, str]]:
    """(key, fused score, source) best first, from each source's keys best first. Ties keep the
    order in which keys were first met, sources taken in `ranked`'s order."""
    fused: dict[Key, float] = {}
    best: dict[Key, tuple[float, str]] = {}
    for source, keys in ranked.items():
        weight = weights.get(source, 0.5)
        for rank, key in enumerate(keys, 1):
            gain = weight / (K + rank)
            fused[key] = fused.get(key, 0.0) + gain
            if key not in best or gain > best[key][0]:
                best[key] = (gain, source)
    order = sorted(fused, key=fused.__getitem__, reverse=True)  # stable: first met wins ties
    return [(key, fused[key], best[key][1]) for key in order]


# Candidates kept per source after merging shards, in the order sources are fused: the gateway's
# defaults, and what training reproduces for the ranker's impressions.
DEFAULT_LIMITS = {
    sources.ANN: 300,
    sources.COVISIT: 200,
    sources.CATEGORY_POPULAR: 50,
    sources.POPULAR: 50,
    sources.FRESH: 20,
}
