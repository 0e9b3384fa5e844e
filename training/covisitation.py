"""Building the co-visitation table from interaction sequences, with numpy only.

Two items are co-visited when one user interacted with both within `window` steps of each other.
The later item counts fully for the earlier one ("people who watched X next watched Y") and
`backward` times for the reverse direction. Counts are normalised like a cosine (by the square
roots of both items' popularity), so that blockbusters do not neighbour everything, and each item
keeps its `top_k` strongest neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from funnel.artifacts.covisitation import CoVisitation
from training.dataset import Interactions, chronological


@dataclass(frozen=True)
class CoVisitationConfig:
    window: int = 20
    backward: float = 0.5
    top_k: int = 200
    seeds: int = 20
    recency_decay: float = 0.1


def build_covisitation(interactions: Interactions, num_items: int, config: CoVisitationConfig) -> CoVisitation:
    order = chronological(interactions)
    users = interactions.user[order].astype(np.int64)
    items = interactions.item[order].astype(np.int64)
    keys, weights = [], []
    for step in range(1, config.window + 1):
        same = users[step:] == users[:-step]
        earlier, later = items[:-step][same], items[step:][same]
        distinct = earlier != later
        earlier, later = earlier[distinct], later[distinct]
        # Aggregated per step, so memory holds distinct pairs rather than every occurrence.
        for key, weight in ((earlier * num_items + later, 1.0), (later * num_items + earlier, config.backward)):
            unique, count = np.unique(key, return_counts=True)
            keys.append(unique)
            weights.append(count * weight)
    if not keys:
        return _empty(num_items, config)
    unique, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    strength = np.bincount(inverse, weights=np.concatenate(weights))
    source, target = unique // num_items, unique % num_items
    popularity = np.sqrt(np.bincount(items, minlength=num_items).astype(np.float64)) + 1.0
    strength = strength / (popularity[source] * popularity[target])

    # Strongest neighbours first within each source item, then the first top_k of each.
    rank_order = np.lexsort((-strength, source))
    source, target, strength = source[rank_order], target[rank_order], strength[rank_order]
    starts = np.searchsorted(source, np.arange(num_items))
    keep = (np.arange(len(source)) - starts[source]) < config.top_k
    source, target, strength = source[keep], target[keep], strength[keep]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(source, minlength=num_items))]).astype(np.int64)
    return CoVisitation(
        indptr, target.astype(np.int32), strength.astype(np.float32), config.seeds, config.recency_decay
    )


def _empty(num_items: int, config: CoVisitationConfig) -> CoVisitation:
    return CoVisitation(
        np.zeros(num_items + 1, dtype=np.int64), np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32),
        config.seeds, config.recency_decay,
    )  # fmt: skip
