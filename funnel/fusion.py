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

import numpy as np

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


def fuse_columns(
    ranked: Mapping[str, Sequence[Key]], weights: Mapping[str, float] = WEIGHTS
) -> tuple[list[Key], np.ndarray, np.ndarray]:
    """(keys, fused scores, best source), best first, from each source's keys best first (no key
    twice within a source). The best source is an index into `ranked`: the one whose rank gave the
    key the most, the first listed on a tie. Ties in fused score keep the order in which keys were
    first met, sources taken in `ranked`'s order. Vectorised: a few numpy calls per source."""
    first_seen: dict[Key, int] = {}
    setdefault = first_seen.setdefault
    codes: list[np.ndarray] = []
    gains: list[np.ndarray] = []
    for keys, source in zip(ranked.values(), ranked, strict=True):
        codes.append(np.array([setdefault(key, len(first_seen)) for key in keys], dtype=np.int64))
        gains.append(weights.get(source, 0.5) / (K + np.arange(1, len(keys) + 1, dtype=np.float64)))
    count = len(first_seen)
    # Summed in source order, as a running sum per key would be: the same floats, bit for bit.
    fused = np.bincount(np.concatenate(codes), np.concatenate(gains), minlength=count) if count else np.zeros(0)
    best_gain = np.full(count, -np.inf)
    best = np.zeros(count, dtype=np.int64)
    for index, (code, gain) in enumerate(zip(codes, gains, strict=True)):
        better = gain > best_gain[code]
        best_gain[code[better]] = gain[better]
        best[code[better]] = index
    order = np.argsort(-fused, kind="stable")
    keys = list(first_seen)
    return [keys[n] for n in order.tolist()], fused[order], best[order]


def fuse(ranked: Mapping[str, Sequence[Key]], weights: Mapping[str, float] = WEIGHTS) -> list[tuple[Key, float, str]]:
    """`fuse_columns` as (key, fused score, source name) tuples."""
    keys, scores, best = fuse_columns(ranked, weights)
    names = list(ranked)
    return [(key, score, names[n]) for key, score, n in zip(keys, scores.tolist(), best.tolist(), strict=True)]


# Candidates kept per source after merging shards, in the order sources are fused: the gateway's
# defaults, and what training reproduces for the ranker's impressions.
DEFAULT_LIMITS = {
    sources.ANN: 300,
    sources.COVISIT: 200,
    sources.CATEGORY_POPULAR: 50,
    sources.POPULAR: 50,
    sources.FRESH: 20,
}
