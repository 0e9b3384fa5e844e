"""Beyond-accuracy metrics of recommendation lists: coverage, diversity, novelty, provider exposure.

Every function takes the lists as arrays of catalog rows, best first, already cut to the length a
user sees. Accuracy (Recall@K, NDCG@K) comes from `training.evaluate`, shared with training.
"""

from __future__ import annotations

import math

import numpy as np


def catalog_coverage(lists: list[np.ndarray], catalog_size: int) -> float:
    """Share of the catalog recommended to at least one user."""
    if catalog_size <= 0:
        return 0.0
    shown = np.unique(np.concatenate(lists)) if lists else np.zeros(0, dtype=np.int64)
    return len(shown) / catalog_size


def intra_list_distance(lists: list[np.ndarray], vectors: np.ndarray) -> float:
    """Mean over lists of the mean cosine distance (1 - cosine) between every pair in the list."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms == 0, 1.0, norms)
    per_list = []
    for rows in lists:
        if len(rows) < 2:
            continue
        v = unit[rows]
        similarity = v @ v.T
        pairs = len(rows) * (len(rows) - 1)
        per_list.append(float((pairs - (similarity.sum() - np.trace(similarity))) / pairs))
    return float(np.mean(per_list)) if per_list else 0.0


def distinct_categories(lists: list[np.ndarray], category: np.ndarray) -> float:
    """Mean number of distinct categories per list."""
    return float(np.mean([len(np.unique(category[rows])) for rows in lists])) if lists else 0.0


def novelty(lists: list[np.ndarray], popularity: np.ndarray) -> float:
    """Mean self-information -log2 p(item) of recommended items, p from training interactions
    (add-one smoothed): higher means less popular, more novel items."""
    counts = np.asarray(popularity, dtype=np.float64) + 1.0
    information = -np.log2(counts / counts.sum())
    shown = np.concatenate(lists) if lists else np.zeros(0, dtype=np.int64)
    return float(information[shown].mean()) if len(shown) else 0.0


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative values: 0 when equal, towards 1 when one holds everything."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float((2.0 * (ranks * x).sum()) / (n * total) - (n + 1.0) / n)


def provider_exposure(lists: list[np.ndarray], provider: np.ndarray, num_providers: int) -> dict[str, float]:
    """How exposure (appearances in the lists) spreads over every provider of the catalog: its Gini
    coefficient, and the share taken by the top 1% of providers (at least one)."""
    shown = np.concatenate(lists) if lists else np.zeros(0, dtype=np.int64)
    exposure = np.bincount(provider[shown], minlength=num_providers).astype(np.float64)
    top = max(1, math.ceil(0.01 * num_providers))
    total = exposure.sum()
    top_share = float(np.sort(exposure)[::-1][:top].sum() / total) if total else 0.0
    return {"provider_gini": gini(exposure), "top1pct_provider_share": top_share}
