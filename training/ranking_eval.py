"""Offline ranking evaluation over each held-out user's retrieval candidates.

Both orders see the same candidates (the two-tower top-N minus items already consumed): the
retrieval order, and the ranker's re-ordering. AUC and log loss are over every (user, candidate)
impression pooled, labelled 1 when the candidate is one of the user's held-out interactions.
"""

from __future__ import annotations

import numpy as np
import torch

from funnel.features import FeatureStore
from training.dataset import Interactions
from training.evaluate import ndcg_at_k, recall_at_k
from training.ranker import score


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum (Mann-Whitney) statistic."""
    positives = labels == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="stable")] = np.arange(1, len(scores) + 1)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def evaluate_ranking(
    test: Interactions, candidates: np.ndarray, retrieval_scores: np.ndarray, test_users: np.ndarray,
    store: FeatureStore, ranker: torch.nn.Module,
) -> dict[str, dict[str, float]]:  # fmt: skip
    per_order: dict[str, dict[str, list[float]]] = {"retrieval_order": {}, "ranker": {}}
    all_labels, ranker_scores, base_scores = [], [], []
    by_user = test.items_by_user()
    for n, user in enumerate(test_users):
        relevant = set(by_user[int(user)].tolist())
        predicted = score(ranker, store.features(int(user), candidates[n]))
        orders = {"retrieval_order": candidates[n], "ranker": candidates[n][np.argsort(-predicted, kind="stable")]}
        for name, ranked in orders.items():
            metrics = per_order[name]
            metrics.setdefault("ndcg@10", []).append(ndcg_at_k(ranked, relevant, 10))
            metrics.setdefault("recall@10", []).append(recall_at_k(ranked, relevant, 10))
        all_labels.append(np.isin(candidates[n], list(relevant)).astype(np.float32))
        ranker_scores.append(predicted)
        base_scores.append(retrieval_scores[n])
    labels = np.concatenate(all_labels)
    result = {name: {m: round(float(np.mean(v)), 4) for m, v in metrics.items()} for name, metrics in per_order.items()}
    result["ranker"]["auc"] = round(auc(labels, np.concatenate(ranker_scores)), 4)
    result["ranker"]["log_loss"] = round(log_loss(labels, np.concatenate(ranker_scores)), 4)
    result["retrieval_order"]["auc"] = round(auc(labels, np.concatenate(base_scores)), 4)
    result["retrieval_order"]["log_loss"] = float("nan")  # inner products are not probabilities
    result["impressions"] = {"count": len(labels), "positives": int(labels.sum()), "users": len(test_users)}
    return result


def format_ranking_table(result: dict) -> str:
    lines = [f"{'order':<16}{'ndcg@10':>10}{'recall@10':>11}{'auc':>8}{'log loss':>10}"]
    for name in ("retrieval_order", "ranker"):
        m = result[name]
        lines.append(f"{name:<16}{m['ndcg@10']:>10.4f}{m['recall@10']:>11.4f}{m['auc']:>8.4f}{m['log_loss']:>10.4f}")
    return "\n".join(lines)
