"""The baselines every quality figure is set beside: random, popularity, item-kNN and EASE^R.

EASE^R (Steck 2019) is a closed-form linear item-item model, B = I - P diag(1/diag(P)) with
P = (X'X + lambda I)^-1, that is hard to beat on MovieLens; lambda is chosen on a validation split
of the training data (each user's latest interactions of it held out again), then refit on all of
it. Item-kNN scores an item by the summed cosine similarity (on co-occurrence) to the user's items.
Both need a dense items x items matrix: on a catalog above `max_dense_items` they are fit on the
most popular `max_dense_items` items (and can recommend nothing else), and the result says how much
of the held-out truth that sub-catalog covers. They are baselines to beat, never served.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from training.dataset import Interactions
from training.protocol import HOLDOUT, LIST_LENGTH, accuracy, split

EASE_LAMBDAS = (50.0, 200.0, 800.0, 3200.0, 12800.0)
VALIDATION_USERS = 5000  # lambda is chosen on at most this many users (a seeded sample)


@dataclass
class Baselines:
    metrics: dict[str, dict[str, float]]
    ease_lambda: float | None  # None when EASE^R was not fit
    dense_items: int  # size of the (sub-)catalog item-kNN and EASE^R were fit on
    dense_share_of_held_out: float  # share of held-out interactions inside it
    notes: list[str]
    ease: EaseScorer | None  # None when the dense baselines were not computed


@dataclass
class EaseScorer:
    """EASE^R's scores for any user's items, e.g. to order another method's candidates."""

    columns: np.ndarray  # catalog rows of the dense sub-catalog, sorted
    weights: torch.Tensor  # [columns, columns]
    num_items: int

    def scores(self, history: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """EASE^R score of each of `rows` for a user with `history`; -inf outside the sub-catalog."""
        column_of = np.searchsorted(self.columns, rows).clip(0, len(self.columns) - 1)
        inside = self.columns[column_of] == rows
        known = np.searchsorted(self.columns, history).clip(0, len(self.columns) - 1)
        known = known[self.columns[known] == history]
        totals = self.weights[torch.from_numpy(known)].sum(dim=0).numpy() if len(known) else np.zeros(len(self.columns))
        return np.where(inside, totals[column_of], -np.inf).astype(np.float32)


def _dense(train: Interactions, users: np.ndarray, columns: np.ndarray, num_items: int) -> torch.Tensor:
    """Binary [len(users), len(columns)] matrix of who interacted with what among `columns`."""
    column_of = np.full(num_items, -1, dtype=np.int64)
    column_of[columns] = np.arange(len(columns))
    row_of = np.full(int(train.user.max(initial=0)) + 1, -1, dtype=np.int64)
    row_of[users] = np.arange(len(users))
    rows, cols = row_of[train.user], column_of[train.item]
    keep = (rows >= 0) & (cols >= 0)
    matrix = torch.zeros((len(users), len(columns)), dtype=torch.float32)
    matrix[torch.from_numpy(rows[keep]), torch.from_numpy(cols[keep])] = 1.0
    return matrix


def gram_matrix(train: Interactions, columns: np.ndarray, num_items: int) -> torch.Tensor:
    """X'X over `columns` (co-occurrence counts), through a sparse product: never users x items dense."""
    column_of = np.full(num_items, -1, dtype=np.int64)
    column_of[columns] = np.arange(len(columns))
    pairs = np.unique(train.user.astype(np.int64) * num_items + train.item)  # each (user, item) once
    users, cols = pairs // num_items, column_of[pairs % num_items]
    users, cols = users[cols >= 0], cols[cols >= 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's notes that sparse support is in beta
        shape = (int(users.max(initial=0)) + 1, len(columns))
        matrix = torch.sparse_coo_tensor(torch.from_numpy(np.stack([users, cols])), torch.ones(len(users)), shape)
        matrix = matrix.coalesce()
        return torch.sparse.mm(matrix.t().coalesce(), matrix).to_dense()


def ease_weights(gram: torch.Tensor, lam: float) -> torch.Tensor:
    regularised = gram.clone()
    regularised.diagonal().add_(lam)
    precision = torch.cholesky_inverse(torch.linalg.cholesky(regularised))
    weights = -precision / precision.diagonal()[None, :]
    weights.diagonal().zero_()
    return weights


def item_knn_weights(gram: torch.Tensor) -> torch.Tensor:
    norms = gram.diagonal().sqrt().clamp(min=1e-9)
    similarity = gram / norms[:, None] / norms[None, :]
    similarity.diagonal().zero_()
    return similarity


# For each user, which catalog rows may be shown at all (content policy); None = every row.
AllowedFor = Callable[[int], np.ndarray] | None


def _top_lists(
    scores_of, history: torch.Tensor, users: np.ndarray, columns: np.ndarray, allowed_for: AllowedFor
) -> dict[int, np.ndarray]:
    """Best LIST_LENGTH columns per user (their own items and disallowed ones masked), as catalog rows."""
    lists = {}
    for start in range(0, len(users), 1024):
        part = slice(start, start + 1024)
        scores = scores_of(history[part]).masked_fill(history[part] > 0, float("-inf"))
        if allowed_for is not None:
            allowed = np.stack([allowed_for(int(u))[columns] for u in users[part]])
            scores = scores.masked_fill(torch.from_numpy(~allowed), float("-inf"))
        top = torch.topk(scores, min(LIST_LENGTH, scores.shape[1]), dim=1)
        for n, user in enumerate(users[part].tolist()):
            lists[user] = columns[top.indices[n].numpy()[torch.isfinite(top.values[n]).numpy()]]
    return lists


def _random_order(rng: np.random.Generator, num_items: int, known: int) -> np.ndarray:
    """Enough distinct random items for a list once a user's `known` ones are taken out (a
    permutation of a million items per user would dominate the evaluation)."""
    wanted = min(num_items, 4 * (LIST_LENGTH + known))
    if wanted * 4 >= num_items:
        return rng.permutation(num_items)
    draws = rng.integers(0, num_items, 2 * wanted)
    _, first = np.unique(draws, return_index=True)
    return draws[np.sort(first)]


def _exclude_history(
    ranked: np.ndarray, train_items: dict[int, np.ndarray], user: int, allowed_for: AllowedFor
) -> np.ndarray:
    known = train_items.get(user, np.zeros(0, np.int64))
    if allowed_for is not None:
        ranked = ranked[allowed_for(user)[ranked]]
    head = ranked[: LIST_LENGTH + len(known)]
    return head[~np.isin(head, known)][:LIST_LENGTH]


def evaluate_baselines(
    train: Interactions, relevant: dict[int, set[int]], num_items: int, seed: int = 7,
    max_dense_items: int = 12_000, lambdas: tuple[float, ...] = EASE_LAMBDAS, allowed_for: AllowedFor = None,
    dense: bool = True,
) -> Baselines:  # fmt: skip
    """Every baseline on the users of `relevant` (their held-out items), trained on `train`;
    `allowed_for` applies the same hard filters the served funnel obeys. `dense=False` leaves out
    item-kNN and EASE^R (minutes on a large sub-catalog)."""
    users = np.array(sorted(relevant), dtype=np.int64)
    train_items = train.items_by_user()
    popularity = np.bincount(train.item, minlength=num_items)
    rng = np.random.default_rng(seed)
    ranked_popular = np.argsort(-popularity, kind="stable")
    shuffled = {u: _random_order(rng, num_items, len(train_items.get(u, ()))) for u in users.tolist()}
    metrics = {
        "random": accuracy({u: _exclude_history(shuffled[u], train_items, u, allowed_for) for u in shuffled}, relevant),
        "popularity": accuracy(
            {u: _exclude_history(ranked_popular, train_items, u, allowed_for) for u in users.tolist()}, relevant
        ),
    }
    if not dense:
        return Baselines(metrics, None, 0, 0.0, [], None)
    columns = np.sort(ranked_popular[: min(num_items, max_dense_items)])
    inside = np.zeros(num_items, dtype=bool)
    inside[columns] = True
    held = np.array([item for items in relevant.values() for item in items], dtype=np.int64)
    share = float(inside[held].mean()) if len(held) else 1.0
    notes = []
    if len(columns) < num_items:
        notes.append(
            f"item-kNN and EASE^R are fit on the {len(columns):,} most popular of {num_items:,} items "
            f"(a dense items x items matrix); {share:.1%} of held-out interactions are among them"
        )

    history = _dense(train, users, columns, num_items)
    gram = gram_matrix(train, columns, num_items)
    similarity = item_knn_weights(gram)
    metrics["item-kNN"] = accuracy(_top_lists(lambda x: x @ similarity, history, users, columns, allowed_for), relevant)
    lam = choose_ease_lambda(train, columns, num_items, lambdas)
    weights = ease_weights(gram, lam)
    metrics["EASE^R"] = accuracy(_top_lists(lambda x: x @ weights, history, users, columns, allowed_for), relevant)
    notes.append(f"EASE^R lambda = {lam:g}, chosen among {list(lambdas)} on a validation split of the training data")
    return Baselines(metrics, lam, len(columns), share, notes, EaseScorer(columns, weights, num_items))


def choose_ease_lambda(train: Interactions, columns: np.ndarray, num_items: int, lambdas: tuple[float, ...]) -> float:
    """The lambda with the best NDCG@10 on each user's latest training interactions, fit without them."""
    inner_train, validation = split(train, HOLDOUT)
    relevant = {u: set(i.tolist()) for u, i in validation.items_by_user().items()}
    if not relevant:  # histories too short to hold anything out again
        return lambdas[len(lambdas) // 2]
    users = np.array(sorted(relevant), dtype=np.int64)
    if len(users) > VALIDATION_USERS:  # 100k users x 12k items dense: 4.8 GB, minutes per lambda
        users = np.sort(np.random.default_rng(0).choice(users, VALIDATION_USERS, replace=False))
        relevant = {int(u): relevant[int(u)] for u in users}
    history = _dense(inner_train, users, columns, num_items)
    gram = gram_matrix(inner_train, columns, num_items)
    best = (-1.0, lambdas[0])
    for lam in lambdas:
        weights = ease_weights(gram, lam)
        ndcg = accuracy(_top_lists(lambda x, w=weights: x @ w, history, users, columns, None), relevant)["ndcg@10"]
        best = max(best, (ndcg, lam))
    return best[1]
