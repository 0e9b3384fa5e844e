"""The build's offline evaluation, on the protocol of `training/protocol.py`: what each piece of
the funnel reaches on held-out interactions, beside the baselines, on the same users.

Retrieval is run exactly as served (`training/candidates.py`); the ranker then re-orders those
candidates, compared with retrieval's own order and with EASE^R ordering the same candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from funnel.artifacts.activity import ItemActivity
from funnel.features import FeatureStore, UserContext
from training.baselines import evaluate_baselines
from training.classification import auc, log_loss
from training.dataset import Dataset, Interactions, at_most
from training.fit import FittedModels, home_country_slots
from training.impressions import Sequences
from training.protocol import LIST_LENGTH, accuracy, relevant_items
from training.ranker import score


@dataclass
class HeldOutUsers:
    """The users an offline evaluation scores (a seeded sample of those with held-out items), with
    what every method needs of them: their held-out items, training sequences and country slots."""

    users: np.ndarray
    relevant: dict[int, set[int]]
    sequences: Sequences
    histories: list[np.ndarray]
    slots: np.ndarray

    @classmethod
    def sample(cls, data: Dataset, train: Interactions, test: Interactions, max_users: int, seed: int) -> HeldOutUsers:
        relevant = relevant_items(test)
        users = at_most(np.array(sorted(relevant), dtype=np.int64), max_users, np.random.default_rng(seed))
        sequences = Sequences.of(train, data.num_users)
        return cls(
            users,
            {int(u): relevant[int(u)] for u in users},
            sequences,
            [sequences.of_user(int(u))[0] for u in users],
            home_country_slots(data)[users],
        )


def evaluate_offline(
    data: Dataset, train: Interactions, test: Interactions, models: FittedModels, seed: int, max_users: int,
    max_dense_items: int = 12_000, progress=print,
) -> dict:  # fmt: skip
    held = HeldOutUsers.sample(data, train, test, max_users, seed)
    users, relevant, sequences, histories, slots = held.users, held.relevant, held.sequences, held.histories, held.slots
    retrieval = models.retrieval
    queries = retrieval.queries(histories, slots)
    retriever = retrieval.retriever()
    progress(f"offline evaluation on {len(users):,} held-out users: retrieval as served")
    found = retriever.retrieve(histories, queries)
    ann = retriever.ann(histories, queries)
    covisit = {
        int(u): retriever.source_hits("covisit", histories[n], LIST_LENGTH) for n, u in enumerate(users)
    }
    lists = {
        "two-tower (ANN)": {int(u): ann[n] for n, u in enumerate(users)},
        "co-visitation": covisit,
        "retrieval (fused)": {int(u): found[n].rows for n, u in enumerate(users)},
    }

    activity = ItemActivity.from_interactions(train.item, train.timestamp, data.num_items)
    store = FeatureStore(retrieval.catalog, retrieval.item_vectors, retrieval.covisitation, activity)
    dense = data.num_items <= max_dense_items
    progress("baselines on the same users: random, popularity" + (", item-kNN, EASE^R" if dense else ""))
    baselines = evaluate_baselines(train, relevant, data.num_items, seed, max_dense_items, dense=dense)
    if not dense:
        baselines.notes.append(
            f"item-kNN and EASE^R need a dense items x items matrix: above {max_dense_items:,} items the build "
            "leaves them to `make eval`, which fits them on a sub-catalog"
        )
    ranked, eased, labels, ranker_scores, fused_scores = {}, {}, [], [], []
    for n, user in enumerate(users.tolist()):
        candidates = found[n]
        history, times = sequences.of_user(user)
        context = UserContext(history, int(times[-1]), int(slots[n]), queries[n])
        predicted = score(models.ranker.model, store.features(context, candidates.rows, candidates.sources))
        ranked[user] = candidates.rows[np.argsort(-predicted, kind="stable")]
        if baselines.ease is not None:
            ease = baselines.ease.scores(history, candidates.rows)
            eased[user] = candidates.rows[np.argsort(-ease, kind="stable")]
        labels.append(np.isin(candidates.rows, list(relevant[user])).astype(np.float32))
        ranker_scores.append(predicted)
        fused_scores.append(candidates.scores)
    lists["retrieval + ranker"] = ranked
    y = np.concatenate(labels)
    retrieval_metrics = {name: accuracy(per_user, relevant) for name, per_user in lists.items()}
    candidate_recall = np.mean(
        [len(set(found[n].rows.tolist()) & relevant[int(u)]) / len(relevant[int(u)]) for n, u in enumerate(users)]
    )
    fused_auc = round(auc(y, np.concatenate(fused_scores)), 4)
    ranking = {
        "retrieval order": {**retrieval_metrics["retrieval (fused)"], "auc": fused_auc},
        **({"EASE^R order": accuracy(eased, relevant)} if eased else {}),
        "ranker": {
            **retrieval_metrics["retrieval + ranker"],
            "auc": round(auc(y, np.concatenate(ranker_scores)), 4),
            "log_loss": round(log_loss(y, np.concatenate(ranker_scores)), 4),
        },
    }
    return {
        "users": len(users),
        "methods": {**retrieval_metrics, **baselines.metrics},
        "ranking_on_candidates": ranking,
        "candidates": {
            "mean_count": round(float(np.mean([len(c.rows) for c in found])), 1),
            "recall_of_all_candidates": round(float(candidate_recall), 4),
            "impressions": len(y),
            "positives": int(y.sum()),
        },
        "baselines": {
            "ease_lambda": baselines.ease_lambda,
            "dense_items": baselines.dense_items,
            "dense_share_of_held_out": round(baselines.dense_share_of_held_out, 4),
            "notes": baselines.notes,
        },
    }
