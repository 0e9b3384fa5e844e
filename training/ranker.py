"""The ranker: an MLP over the shared ranker features, trained on retrieval's own candidates.

Positives are interactions the retrieval embeddings never saw; negatives are drawn mostly from what
retrieval returns for that user (plus a few random items), so the ranker learns to reorder
retrieval's candidates rather than to tell good items from random ones.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from funnel.features import NUM_FEATURES, FeatureStore
from training.dataset import Interactions

log = logging.getLogger("funnel.training")


class RankerMLP(torch.nn.Module):
    """features [N, F] -> probability of engagement [N, 1] (the shape Triton's config declares)."""

    def __init__(self, num_features: int = NUM_FEATURES, hidden: int = 64) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(num_features, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden // 2),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden // 2, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.layers(features))


@dataclass(frozen=True)
class RankerConfig:
    candidates: int = 300  # retrieval list length the impressions are drawn from
    negatives_per_user: int = 24
    epochs: int = 8
    batch_size: int = 256
    learning_rate: float = 3e-3
    seed: int = 7


def build_impressions(
    positives: Interactions, candidates: np.ndarray, store: FeatureStore, config: RankerConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Impressions as production logs them: the items retrieval showed each user, labelled 1 when
    the user went on to interact with them. Positives outside the retrieval list are not
    impressions (the ranker never sees them in serving), so they are left out; negatives are a
    sample of the rest of the list."""
    rng = np.random.default_rng(config.seed)
    features, labels = [], []
    for user in np.unique(positives.user):
        shown = candidates[user]
        clicked = np.isin(shown, positives.item[positives.user == user])
        if not clicked.any():
            continue
        negatives = rng.choice(
            np.flatnonzero(~clicked), min(int((~clicked).sum()), config.negatives_per_user), replace=False
        )
        rows = np.concatenate([shown[clicked], shown[negatives]])
        features.append(store.features(int(user), rows))
        labels.append(np.concatenate([np.ones(int(clicked.sum())), np.zeros(len(negatives))]))
    return np.concatenate(features), np.concatenate(labels).astype(np.float32)


def train_ranker(features: np.ndarray, labels: np.ndarray, config: RankerConfig) -> tuple[RankerMLP, list[float]]:
    torch.manual_seed(config.seed)
    model = RankerMLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    x, y = torch.from_numpy(features), torch.from_numpy(labels)
    losses = []
    for epoch in range(config.epochs):
        order = torch.randperm(len(x))
        total, batches = 0.0, 0
        for start in range(0, len(x), config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = torch.nn.functional.binary_cross_entropy(model(x[batch]).squeeze(-1), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
            batches += 1
        losses.append(total / max(1, batches))
        log.info("ranker epoch", extra={"epoch": epoch + 1, "of": config.epochs, "loss": round(losses[-1], 4)})
    model.eval()
    return model, losses


def export_torchscript(model: RankerMLP, path: str) -> None:
    # TorchScript is deprecated in torch, but it is the format Triton's pytorch_libtorch backend
    # loads, so the warning is expected here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), path)
