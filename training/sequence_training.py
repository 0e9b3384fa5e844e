"""Training the sequence tower on every position of every user's sequence in one pass.

Each user's training sequence is cut, from the newest item back, into windows of
`history_length + 1` items that overlap by one: in a window (latest first) position `i + 1` is the
history of the item at position `i`, so one forward pass through the causal tower predicts every
item of the window but its oldest, and every interaction but a user's first is a target exactly
once per epoch. A user's first item is the target of the "nothing yet" state (no history), which is
what a user the model has never seen starts from.

The softmax runs over the whole catalog when it is small enough (`full_softmax_items`): exact, and
on a few thousand items cheaper than sampling. Past that, it runs over the batch's distinct targets
(in-batch negatives, drawn in proportion to popularity, so corrected by log q) and items drawn
uniformly from the catalog (corrected by log(M / N)), the mixed negatives of the pooled tower's
loss (`training/losses.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from training.dataset import Interactions
from training.impressions import Sequences

if TYPE_CHECKING:  # two_tower imports this module
    from training.two_tower import TwoTower


@dataclass(frozen=True)
class Windows:
    """items [W, length + 1] item rows latest first (-1 past a user's first item); user [W];
    starts [W] bool: the window holds the user's first item (its oldest valid one)."""

    items: np.ndarray
    user: np.ndarray
    starts: np.ndarray

    def lengths(self) -> np.ndarray:
        return (self.items >= 0).sum(axis=1)


def windows_of(train: Interactions, num_users: int, length: int) -> Windows:
    sequences = Sequences.of(train, num_users)
    counts = np.diff(sequences.indptr)
    per_user = np.where(counts > 0, np.maximum(1, -(-(counts - 1) // length)), 0)
    user = np.repeat(np.arange(num_users), per_user)
    back = np.arange(len(user)) - np.repeat(np.cumsum(per_user) - per_user, per_user)  # 0 = the newest window
    newest = sequences.indptr[user + 1] - 1 - back * length  # each window's newest item
    offsets = newest[:, None] - np.arange(length + 1)[None, :]
    inside = offsets >= sequences.indptr[user][:, None]
    items = np.where(inside, sequences.items[np.where(inside, offsets, 0)], -1)
    starts = offsets[:, -1] <= sequences.indptr[user]
    return Windows(items.astype(np.int64), user.astype(np.int64), starts)


def batches(windows: Windows, positions: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Windows grouped by length, so a batch pads little, about `positions` items each, in random
    order. Only the order is random: the grouping, so the number of batches, follows the lengths."""
    lengths = windows.lengths()
    order = np.lexsort((rng.random(len(lengths)), lengths))
    groups: list[np.ndarray] = []
    start = 0
    while start < len(order):
        # Sorted by length, a batch is as long as its last window: shrink it until it fits.
        size = max(1, positions // max(1, int(lengths[order[start]])))
        while True:
            end = min(len(order), start + size)
            longest = int(lengths[order[end - 1]])
            if (end - start) * longest <= positions or end - start == 1:
                break
            size = max(1, positions // longest)
        groups.append(order[start:end])
        start = end
    return [groups[n] for n in rng.permutation(len(groups))]


@dataclass(frozen=True)
class SoftmaxConfig:
    temperature: float
    full_softmax_items: int
    uniform_negatives: int
    in_batch_negatives: bool = True


def next_item_loss(
    queries: torch.Tensor, targets: torch.Tensor, item_vectors: Callable[[torch.Tensor], torch.Tensor],
    log_q: torch.Tensor, num_items: int,
    config: SoftmaxConfig, rng: np.random.Generator,
) -> torch.Tensor:  # fmt: skip
    """Cross-entropy of each query [N, dim] for its target item [N], over the catalog or over
    in-batch and uniform negatives. `item_vectors(rows)` computes the item tower."""
    # The temperature divides the queries, not the logits: one pass over [N, dim], not [N, items].
    queries = queries / config.temperature
    if num_items <= config.full_softmax_items:
        return F.cross_entropy(queries @ item_vectors(torch.arange(num_items, device=queries.device)).T, targets)
    if not config.in_batch_negatives:
        # The positive, then the uniform samples: sampled softmax with its log(M / N) correction.
        positive = (queries * item_vectors(targets)).sum(dim=1, keepdim=True)
        sampled = _uniform_logits(queries, targets, item_vectors, num_items, config.uniform_negatives, rng)
        labels = torch.zeros(len(targets), dtype=torch.int64, device=queries.device)
        return F.cross_entropy(torch.cat([positive, sampled], dim=1), labels)
    distinct, label = torch.unique(targets, return_inverse=True)
    in_batch = queries @ item_vectors(distinct).T - (log_q[distinct] + math.log(len(targets)))
    parts = [in_batch]
    if config.uniform_negatives:
        parts.append(_uniform_logits(queries, targets, item_vectors, num_items, config.uniform_negatives, rng))
    return F.cross_entropy(torch.cat(parts, dim=1), label)


def _uniform_logits(
    queries: torch.Tensor, targets: torch.Tensor, item_vectors: Callable[[torch.Tensor], torch.Tensor],
    num_items: int, count: int, rng: np.random.Generator,
) -> torch.Tensor:  # fmt: skip
    """Logits of `count` items drawn uniformly, corrected by log(M / N); a row's own target among
    them is masked, so a positive is never its own negative."""
    rows = torch.from_numpy(rng.integers(0, num_items, count)).to(queries.device)
    logits = queries @ item_vectors(rows).T - math.log(count / num_items)
    return logits.masked_fill(targets[:, None] == rows[None, :], float("-inf"))


def window_loss(model: TwoTower, windows: Windows, batch: np.ndarray, log_q: torch.Tensor, config: SoftmaxConfig,
                rng: np.random.Generator) -> torch.Tensor:  # fmt: skip
    """The loss of one batch of windows: every position's next item, and each first item from
    nothing. The model's user tower is a `SequenceUserTower`."""
    window_items = windows.items[batch]
    width = max(2, int((window_items >= 0).sum(axis=1).max()))
    on = model.country.device
    items = torch.from_numpy(window_items[:, :width]).to(on)
    inputs, targets = items[:, 1:], items[:, :-1]
    valid = inputs >= 0
    item_vectors: Callable[[torch.Tensor], torch.Tensor] = model.item_vectors
    if model.num_items <= config.full_softmax_items:
        # The softmax needs every item's vector anyway: one pass of the item tower serves both.
        catalog = model.item_vectors(torch.arange(model.num_items, device=on))
        item_vectors = catalog.__getitem__
        vectors = catalog[inputs.clamp(min=0)] * valid.unsqueeze(-1)
    else:
        distinct, inverse = torch.unique(inputs.clamp(min=0), return_inverse=True)
        vectors = model.item_vectors(distinct)[inverse] * valid.unsqueeze(-1)
    tower = model.users
    states = tower.states(vectors, valid.float())
    country = model.country[torch.from_numpy(windows.user[batch]).to(on)]
    predicts = valid & (targets >= 0)
    rows, columns = predicts.nonzero(as_tuple=True)
    starts = torch.from_numpy(np.flatnonzero(windows.starts[batch])).to(on)
    first = items[starts, (items[starts] >= 0).sum(dim=1) - 1]
    query_states = torch.cat([states[rows, columns], torch.zeros(len(starts), states.shape[-1], device=on)])
    has_history = torch.cat(
        [torch.ones(len(rows), dtype=torch.bool, device=on), torch.zeros(len(starts), dtype=torch.bool, device=on)]
    )
    queries = tower.vectors(query_states, has_history, torch.cat([country[rows], country[starts]]))
    all_targets = torch.cat([targets[rows, columns], first])
    return next_item_loss(queries, all_targets, item_vectors, log_q, model.num_items, config, rng)
