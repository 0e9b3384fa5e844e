"""User and item embeddings trained with a sampled softmax (InfoNCE) over in-batch negatives.

This is the factorised first version of the two-tower model: one id embedding per user and per
item. In-batch negatives over-sample popular items, so each logit is corrected by the log of the
item's sampling probability (logQ); a batch row whose item is another row's positive is masked, so
the model is never taught that a true positive is a negative.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from funnel.artifacts.catalog import Embeddings
from training.dataset import Interactions

log = logging.getLogger("funnel.training")


@dataclass(frozen=True)
class EmbeddingConfig:
    dim: int = 32
    epochs: int = 8
    batch_size: int = 1024
    temperature: float = 0.07
    learning_rate: float = 0.02
    seed: int = 7


def train_embeddings(
    train: Interactions, num_users: int, num_items: int, config: EmbeddingConfig
) -> tuple[Embeddings, list[float]]:
    """Train and return unit-norm embeddings, with the mean loss of each epoch."""
    torch.manual_seed(config.seed)
    generator = np.random.default_rng(config.seed)
    users = torch.nn.Embedding(num_users, config.dim)
    items = torch.nn.Embedding(num_items, config.dim)
    torch.nn.init.normal_(users.weight, std=0.1)
    torch.nn.init.normal_(items.weight, std=0.1)
    optimizer = torch.optim.Adam([users.weight, items.weight], lr=config.learning_rate)

    frequency = np.bincount(train.item, minlength=num_items).astype(np.float64) + 1.0
    log_q = torch.from_numpy(np.log(frequency / frequency.sum())).float()
    user_rows = torch.from_numpy(train.user.astype(np.int64))
    item_rows = torch.from_numpy(train.item.astype(np.int64))

    losses = []
    for epoch in range(config.epochs):
        order = torch.from_numpy(generator.permutation(len(train)))
        total, batches = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = in_batch_softmax_loss(
                F.normalize(users(user_rows[batch]), dim=-1),
                F.normalize(items(item_rows[batch]), dim=-1),
                item_rows[batch],
                log_q,
                config.temperature,
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
            batches += 1
        losses.append(total / max(1, batches))
        log.info("embedding epoch", extra={"epoch": epoch + 1, "of": config.epochs, "loss": round(losses[-1], 4)})

    with torch.no_grad():
        embeddings = Embeddings(
            users=F.normalize(users.weight, dim=-1).numpy().astype(np.float32),
            items=F.normalize(items.weight, dim=-1).numpy().astype(np.float32),
        )
    return embeddings, losses


def in_batch_softmax_loss(
    user_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    item_rows: torch.Tensor,
    log_q: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """InfoNCE over the batch: row i's positive is item i, every other row's item a negative."""
    logits = user_vectors @ item_vectors.T / temperature - log_q[item_rows][None, :]
    same_item = item_rows[:, None] == item_rows[None, :]
    accidental_hit = same_item & ~torch.eye(len(item_rows), dtype=torch.bool)
    logits = logits.masked_fill(accidental_hit, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(item_rows)))
