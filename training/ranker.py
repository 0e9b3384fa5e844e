"""The ranker: a DCN-v2 network over the shared ranker features, trained on retrieval's candidates.

Dense features and embedded categorical features form x0; explicit cross layers
(x_{l+1} = x0 * (W x_l + b) + x_l) learn feature interactions beside a deep MLP; a linear head on
both gives the engagement probability. Impressions come from what retrieval returns for each user,
labelled by interactions the retrieval model never saw, so the ranker learns to reorder
retrieval's candidates rather than to tell good items from random ones.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from funnel.features import NUM_DENSE, FeatureBatch, FeatureStore
from training.dataset import Interactions
from training.epochs import EpochLog


class DCNRanker(torch.nn.Module):
    """(dense [N, D] float32, categorical [N, C] int64) -> probability of engagement [N, 1]."""

    def __init__(self, cardinalities: list[int], num_dense: int = NUM_DENSE, embed_dim: int = 4,
                 cross_layers: int = 2, hidden: int = 64) -> None:  # fmt: skip
        super().__init__()
        self.embeddings = torch.nn.ModuleList(torch.nn.Embedding(n, embed_dim) for n in cardinalities)
        width = num_dense + embed_dim * len(cardinalities)
        self.cross = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(cross_layers))
        self.deep = torch.nn.Sequential(
            torch.nn.Linear(width, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden // 2), torch.nn.ReLU()
        )
        self.head = torch.nn.Linear(width + hidden // 2, 1)

    def forward(self, dense: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        parts = [dense]
        for position, table in enumerate(self.embeddings):
            parts.append(table(categorical[:, position]))
        x0 = torch.cat(parts, dim=1)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return torch.sigmoid(self.head(torch.cat([x, self.deep(x0)], dim=1)))


@dataclass(frozen=True)
class RankerConfig:
    candidates: int = 300  # retrieval list length the impressions are drawn from
    negatives_per_user: int = 24
    epochs: int = 8
    batch_size: int = 256
    learning_rate: float = 3e-3
    # A few thousand positive impressions against per-provider embeddings overfit without it.
    weight_decay: float = 1e-3
    seed: int = 7


def build_impressions(
    positives: Interactions, candidates: np.ndarray, store: FeatureStore, config: RankerConfig
) -> tuple[FeatureBatch, np.ndarray]:
    """Impressions as production logs them: the items retrieval showed each user, labelled 1 when
    the user went on to interact with them. Positives outside the retrieval list are not
    impressions (the ranker never sees them in serving), so they are left out; negatives are a
    sample of the rest of the list."""
    rng = np.random.default_rng(config.seed)
    batches, labels = [], []
    for user, items in positives.items_by_user().items():
        shown = candidates[user]
        clicked = np.isin(shown, items)
        if not clicked.any():
            continue
        count = min(int((~clicked).sum()), config.negatives_per_user)
        negatives = rng.choice(np.flatnonzero(~clicked), count, replace=False)
        batches.append(store.features(int(user), np.concatenate([shown[clicked], shown[negatives]])))
        labels.append(np.concatenate([np.ones(int(clicked.sum())), np.zeros(len(negatives))]))
    merged = FeatureBatch(np.concatenate([b.dense for b in batches]), np.concatenate([b.categorical for b in batches]))
    return merged, np.concatenate(labels).astype(np.float32)


def train_ranker(
    features: FeatureBatch, labels: np.ndarray, cardinalities: list[int], config: RankerConfig
) -> tuple[DCNRanker, list[float]]:
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True)
    model = DCNRanker(cardinalities)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    dense, categorical, y = (torch.from_numpy(a) for a in (features.dense, features.categorical, labels))
    generator = torch.Generator().manual_seed(config.seed)
    progress = EpochLog("ranker", config.epochs)
    for _ in range(config.epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = torch.nn.functional.binary_cross_entropy(
                model(dense[batch], categorical[batch]).squeeze(-1), y[batch]
            )
            progress.step(optimizer, loss)
        progress.end_epoch()
    model.eval()
    return model, progress.losses


@torch.no_grad()
def score(model: torch.nn.Module, features: FeatureBatch) -> np.ndarray:
    return model(torch.from_numpy(features.dense), torch.from_numpy(features.categorical)).numpy().ravel()


def export_torchscript(model: DCNRanker, path: str) -> None:
    # TorchScript is deprecated in torch, but it is the format Triton's pytorch_libtorch backend
    # loads, so the warning is expected here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), path)
