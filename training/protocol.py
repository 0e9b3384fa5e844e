"""The one evaluation protocol: every quality figure of the project, offline or served, uses it.

Per user, the latest `HOLDOUT` interactions (in time, ties broken by `dataset.tie_break`) are held
out; users with fewer than `MIN_TRAIN` others are not evaluated. Each method ranks the full catalog
minus the items the user already has, and is scored on the held-out items: Recall@10/50/100 and
NDCG@10 (NDCG@100 beside). No sampled negatives: they inflate scores several-fold.
"""

from __future__ import annotations

import numpy as np

from training.dataset import Interactions, temporal_split
from training.evaluate import ndcg_at_k, recall_at_k

HOLDOUT = 2
MIN_TRAIN = 3
RECALL_CUTOFFS = (10, 50, 100)
NDCG_CUTOFFS = (10, 100)
LIST_LENGTH = max(RECALL_CUTOFFS)
METRICS = (*(f"recall@{k}" for k in RECALL_CUTOFFS), *(f"ndcg@{k}" for k in NDCG_CUTOFFS))


def split(interactions: Interactions, holdout: int = HOLDOUT) -> tuple[Interactions, Interactions]:
    """(train, held out): each user's latest `holdout` interactions held out."""
    return temporal_split(interactions, holdout, MIN_TRAIN)


def accuracy(lists: dict[int, np.ndarray], relevant: dict[int, set[int]]) -> dict[str, float]:
    """Mean metrics over the users of `lists` (each a ranked array of item rows, best first)."""
    users = sorted(lists)
    if not users:
        return dict.fromkeys(METRICS, 0.0)
    out = {}
    for k in RECALL_CUTOFFS:
        out[f"recall@{k}"] = float(np.mean([recall_at_k(lists[u], relevant[u], k) for u in users]))
    for k in NDCG_CUTOFFS:
        out[f"ndcg@{k}"] = float(np.mean([ndcg_at_k(lists[u], relevant[u], k) for u in users]))
    return {name: round(value, 4) for name, value in out.items()}


def relevant_items(test: Interactions) -> dict[int, set[int]]:
    return {user: set(items.tolist()) for user, items in test.items_by_user().items()}


def format_table(rows: dict[str, dict[str, float]], metrics: tuple[str, ...] = METRICS) -> str:
    width = max([len(name) for name in rows] + [8]) + 2
    lines = [f"{'method':<{width}}" + "".join(f"{m:>12}" for m in metrics)]
    for name, values in rows.items():
        lines.append(f"{name:<{width}}" + "".join(f"{values.get(m, float('nan')):>12.4f}" for m in metrics))
    return "\n".join(lines)
