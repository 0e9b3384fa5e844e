"""Small numpy helpers for the request path, each an exact, cheaper form of a common numpy idiom.

Per request the funnel handles a few hundred candidates against a few dozen history items or
exclusions, where numpy's general routines spend more time choosing a method than working.
"""

from __future__ import annotations

import numpy as np


def member_of(values: np.ndarray, members: np.ndarray) -> np.ndarray:
    """`np.isin(values, members)` for integer arrays, by binary search in the sorted members:
    several times faster for a few hundred values against a few hundred members."""
    if len(members) == 0 or len(values) == 0:
        return np.zeros(len(values), dtype=bool)
    ordered = np.sort(members)
    found = np.searchsorted(ordered, values).clip(0, len(ordered) - 1)
    return ordered[found] == values


def best_first(scores: np.ndarray, k: int) -> np.ndarray:
    """`np.argsort(-scores, kind="stable")[:k]`, sorting only the scores that can be among the k best:
    the positions of the k highest scores, highest first, equal scores in position order."""
    if k >= len(scores):
        return np.argsort(-scores, kind="stable")
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    negated = -scores
    kth = np.partition(negated, k - 1)[k - 1]
    contenders = np.flatnonzero(negated <= kth)  # the k best and every tie of the k-th, in position order
    return contenders[np.argsort(negated[contenders], kind="stable")][:k]
