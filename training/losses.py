"""Sampled-softmax (InfoNCE) losses over in-batch and uniformly sampled negatives, each corrected
for how its negatives are sampled."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sampled_softmax_loss(
    user_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    item_rows: torch.Tensor,
    log_q: torch.Tensor,
    temperature: float,
    sampled_vectors: torch.Tensor | None = None,
    sampled_rows: torch.Tensor | None = None,
    num_items: int = 0,
    first_positive: int = 0,
) -> torch.Tensor:
    """Row i's positive is item `first_positive + i`; every other item is a negative, and so is every
    sampled one. (`first_positive` > 0: the items are several processes' batches gathered, this
    process's own at that offset.)

    In-batch negatives are drawn in proportion to popularity, which would teach the model to push
    popular items down; subtracting log q(item) (the logQ correction) undoes that. In-batch
    negatives alone are all popular ones: a model trained on them never sees the tail and learns
    to rank it anywhere (the literature reports such training collapsing on MovieLens time
    splits). Negatives sampled uniformly from the catalog (`sampled_*`, mixed negative sampling)
    show it the tail; their correction is log(M / N) for M samples of N items. A negative that is
    the row's own positive (an accidental hit) is masked, so a true positive is never a negative.
    """
    positives = torch.arange(len(user_vectors), device=user_vectors.device) + first_positive
    own = item_rows[positives]
    logits = user_vectors @ item_vectors.T / temperature - (log_q[item_rows] + math.log(len(item_rows)))[None, :]
    accidental_hit = own[:, None] == item_rows[None, :]
    accidental_hit[torch.arange(len(positives), device=positives.device), positives] = False
    logits = logits.masked_fill(accidental_hit, float("-inf"))
    if sampled_vectors is not None and sampled_rows is not None:
        sampled = user_vectors @ sampled_vectors.T / temperature - math.log(len(sampled_rows) / num_items)
        sampled = sampled.masked_fill(own[:, None] == sampled_rows[None, :], float("-inf"))
        logits = torch.cat([logits, sampled], dim=1)
    return F.cross_entropy(logits, positives)
