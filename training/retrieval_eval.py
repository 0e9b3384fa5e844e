"""Offline retrieval evaluation over the full item set: two-tower against popularity and random."""

from __future__ import annotations

import faiss
import numpy as np

from funnel.artifacts.catalog import Embeddings, Users
from training.dataset import Interactions, at_most
from training.evaluate import ndcg_at_k, recall_at_k

CUTOFFS = (10, 50, 100, 500)


def evaluate_retrieval(
    test: Interactions,
    users: Users,
    embeddings: Embeddings,
    popularity: np.ndarray,
    seed: int = 7,
    max_users: int = 5000,
) -> dict[str, dict[str, float]]:
    """Recall@K and NDCG@K per method; items a user already interacted with in training are skipped."""
    rng = np.random.default_rng(seed)
    test_users = np.unique(test.user)
    test_users = at_most(test_users, max_users, rng)  # keeps the full-catalog search affordable at 1M items
    by_user = test.items_by_user()
    k_max = max(CUTOFFS)
    index = faiss.IndexFlatIP(embeddings.items.shape[1])
    index.add(embeddings.items)
    longest = int(np.diff(users.history_indptr).max(initial=0))
    _, found = index.search(embeddings.users[test_users], min(len(embeddings.items), k_max + longest))
    popular = np.argsort(-popularity, kind="stable")[: k_max + longest]

    sums: dict[str, dict[str, float]] = {m: {} for m in ("two_tower", "popularity", "random")}
    for n, user in enumerate(test_users):
        relevant = set(by_user[int(user)].tolist())
        seen = users.history(int(user))
        ranked = {
            "two_tower": found[n][~np.isin(found[n], seen)],
            "popularity": popular[~np.isin(popular, seen)],
            "random": rng.choice(len(embeddings.items), min(len(embeddings.items), k_max), replace=False),
        }
        for method, items in ranked.items():
            for k in CUTOFFS:
                sums[method][f"recall@{k}"] = sums[method].get(f"recall@{k}", 0.0) + recall_at_k(items, relevant, k)
                sums[method][f"ndcg@{k}"] = sums[method].get(f"ndcg@{k}", 0.0) + ndcg_at_k(items, relevant, k)
    return {m: {name: round(v / len(test_users), 4) for name, v in metrics.items()} for m, metrics in sums.items()}


def format_table(results: dict[str, dict[str, float]]) -> str:
    columns = [f"{metric}@{k}" for metric in ("recall", "ndcg") for k in CUTOFFS]
    lines = [f"{'method':<11}" + "".join(f"{c:>11}" for c in columns)]
    for method, metrics in results.items():
        lines.append(f"{method:<11}" + "".join(f"{metrics[c]:>11.4f}" for c in columns))
    return "\n".join(lines)
