"""Ranking metrics over held-out interactions (binary relevance)."""

from __future__ import annotations

import numpy as np


def _hits(ranked: np.ndarray, relevant: set[int], k: int) -> np.ndarray:
    return np.isin(np.asarray(ranked[:k]), np.fromiter(relevant, dtype=np.int64, count=len(relevant)))


def ndcg_at_k(ranked: np.ndarray, relevant: set[int], k: int) -> float:
    if not relevant:
        return 0.0
    gains = _hits(ranked, relevant, k)
    dcg = float((gains / np.log2(np.arange(2, len(gains) + 2))).sum())
    ideal = float((1.0 / np.log2(np.arange(2, min(k, len(relevant)) + 2))).sum())
    return dcg / ideal


def recall_at_k(ranked: np.ndarray, relevant: set[int], k: int) -> float:
    if not relevant:
        return 0.0
    return float(_hits(ranked, relevant, k).sum()) / len(relevant)
