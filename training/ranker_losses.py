"""The ranker's losses, and batches of whole cuts for the listwise one.

Pointwise log loss asks each impression "engaged or not?" on its own. At serving the ranker only
orders one request's candidates, so a listwise loss asks the question that is read: within one
cut's candidates, which are the next items? It is the cross-entropy of a softmax over the cut's
rows against its positives (ListNet with one-hot targets, the sampled softmax of two-tower training
applied to the ranker's candidates). "both" adds the two, which keeps the scores usable as
probabilities for whatever reads them as such, as YouTube's and others' multi-objective rankers do.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

RANKER_LOSSES = ("pointwise", "listwise", "both")


def pointwise_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # The sigmoid, then the log loss: the same operations as before the logits were exposed, so a
    # build's pointwise ranker is bit-for-bit what it was.
    return F.binary_cross_entropy(torch.sigmoid(logits), labels)


def listwise_loss(logits: torch.Tensor, labels: torch.Tensor, cuts: torch.Tensor) -> torch.Tensor:
    """Mean over cuts of -log softmax of the cut's positives (each positive weighted 1 / positives).
    logits, labels [N]; cuts [N]: the rows of one cut are adjacent, and every cut has a positive."""
    _, group = torch.unique_consecutive(cuts, return_inverse=True)
    counts = torch.bincount(group)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(len(cuts), device=cuts.device) - starts[group]
    table = logits.new_full((len(counts), int(counts.max())), float("-inf"))
    table[group, position] = logits
    targets = labels.new_zeros(table.shape)
    targets[group, position] = labels
    # Padding's -inf stays out of the sum: 0 * -inf would be NaN.
    log_p = torch.log_softmax(table, dim=1).masked_fill(targets == 0, 0.0)
    return (-(targets * log_p).sum(dim=1) / targets.sum(dim=1).clamp(min=1.0)).mean()


def ranker_loss(kind: str, logits: torch.Tensor, labels: torch.Tensor, cuts: torch.Tensor) -> torch.Tensor:
    if kind == "pointwise":
        return pointwise_loss(logits, labels)
    if kind == "listwise":
        return listwise_loss(logits, labels, cuts)
    return pointwise_loss(logits, labels) + listwise_loss(logits, labels, cuts)


def cut_batches(
    rows: np.ndarray, cuts: np.ndarray, batch_rows: int, generator: torch.Generator
) -> Iterator[np.ndarray]:
    """`rows` (ascending, whole cuts) in batches of whole cuts, about `batch_rows` rows each, the cuts
    in random order and each cut's rows adjacent."""
    cut_of_row = cuts[rows]
    first = np.flatnonzero(np.r_[True, cut_of_row[1:] != cut_of_row[:-1]])
    ends = np.r_[first[1:], len(rows)]
    per_batch = max(1, round(batch_rows * len(first) / max(1, len(rows))))
    order = torch.randperm(len(first), generator=generator).numpy()
    for start in range(0, len(order), per_batch):
        chosen = order[start : start + per_batch]
        yield rows[np.concatenate([np.arange(first[c], ends[c]) for c in chosen])]
