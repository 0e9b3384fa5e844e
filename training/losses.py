"""Sampled-softmax (InfoNCE) loss over in-batch negatives, corrected for how negatives are sampled."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def in_batch_softmax_loss(
    user_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    item_rows: torch.Tensor,
    log_q: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Row i's positive is item i; every other row's item is a negative.

    In-batch negatives are drawn in proportion to popularity, which would teach the model to push
    popular items down; subtracting log q(item) (the logQ correction) undoes that. A row whose item
    is also another row's positive (an accidental hit) is masked, so a true positive is never
    treated as a negative.
    """
    logits = user_vectors @ item_vectors.T / temperature - log_q[item_rows][None, :]
    same_item = item_rows[:, None] == item_rows[None, :]
    accidental_hit = same_item & ~torch.eye(len(item_rows), dtype=torch.bool)
    logits = logits.masked_fill(accidental_hit, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(item_rows)))
