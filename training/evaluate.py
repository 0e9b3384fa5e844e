"""Ranking metrics over held-out interactions."""

from __future__ import annotations

import numpy as np


def ndcg_at_k(ranked: np.ndarray, relevant: set[int], k: int) -> float:
    gains = np.array([1.0 if item in relevant else 0.0 for item in ranked[:k]])
    dcg = float((gains / np.log2(np.arange(2, len(gains) + 2))).sum())
    ideal = float((1.0 / np.log2(np.arange(2, min(k, len(relevant)) + 2))).sum())
    return dcg / ideal if ideal > 0 else 0.0


def recall_at_k(ranked: np.ndarray, relevant: set[int], k: int) -> float:
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k].tolist())) / len(relevant)
