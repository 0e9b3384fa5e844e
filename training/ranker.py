"""The ranker: a DCN-v2 network over the shared ranker features, trained on retrieval's candidates.

Dense features and embedded categorical features form x0; explicit cross layers
(x_{l+1} = x0 * (W x_l + b) + x_l) learn feature interactions beside a deep MLP; a linear head on
both gives the engagement probability. Impressions come from what retrieval returns at many cuts
of users' pasts (`training/impressions.py`), so the ranker learns to reorder retrieval's
candidates rather than to tell good items from random ones. A share of the users is held apart
for validation; training stops when its log loss stops improving and keeps the best epoch.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from funnel.features import NUM_DENSE, FeatureBatch
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
    max_epochs: int = 30
    patience: int = 3  # epochs without a better validation loss before stopping
    validation_share: float = 0.1  # of the cuts (grouped by user), held apart
    batch_size: int = 512
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    seed: int = 7


@dataclass
class RankerTraining:
    model: DCNRanker
    losses: list[float]
    validation_losses: list[float]
    best_epoch: int
    examples: int
    positives: int


def train_ranker(
    features: FeatureBatch, labels: np.ndarray, groups: np.ndarray, cardinalities: list[int], config: RankerConfig
) -> RankerTraining:
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(config.seed)
    unique_groups = np.unique(groups)
    held = rng.choice(unique_groups, max(1, int(len(unique_groups) * config.validation_share)), replace=False)
    validation = np.isin(groups, held)
    train_rows, validation_rows = np.flatnonzero(~validation), np.flatnonzero(validation)
    dense, categorical, y = (torch.from_numpy(a) for a in (features.dense, features.categorical, labels))

    model = DCNRanker(cardinalities)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    progress = EpochLog("ranker", config.max_epochs)
    validation_losses: list[float] = []
    best = (float("inf"), 0, copy.deepcopy(model.state_dict()))
    for epoch in range(config.max_epochs):
        model.train()
        order = torch.from_numpy(train_rows)[torch.randperm(len(train_rows), generator=generator)]
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = torch.nn.functional.binary_cross_entropy(
                model(dense[batch], categorical[batch]).squeeze(-1), y[batch]
            )
            progress.step(optimizer, loss)
        progress.end_epoch()
        validation_losses.append(_loss(model, dense, categorical, y, validation_rows))
        print(f"    validation log loss {validation_losses[-1]:.4f}", flush=True)
        if validation_losses[-1] < best[0]:
            best = (validation_losses[-1], epoch, copy.deepcopy(model.state_dict()))
        elif epoch - best[1] >= config.patience:
            break
    model.load_state_dict(best[2])
    model.eval()
    return RankerTraining(model, progress.losses, validation_losses, best[1] + 1, len(labels), int(labels.sum()))


@torch.no_grad()
def _loss(model: DCNRanker, dense: torch.Tensor, categorical: torch.Tensor, y: torch.Tensor, rows: np.ndarray) -> float:
    model.eval()
    index = torch.from_numpy(rows)
    predicted = model(dense[index], categorical[index]).squeeze(-1)
    return float(torch.nn.functional.binary_cross_entropy(predicted, y[index]))


@torch.no_grad()
def score(model: torch.nn.Module, features: FeatureBatch) -> np.ndarray:
    return model(torch.from_numpy(features.dense), torch.from_numpy(features.categorical)).numpy().ravel()


def export_torchscript(model: DCNRanker, path: str) -> None:
    # TorchScript is deprecated in torch, but it is the format Triton's pytorch_libtorch backend
    # loads, so the warning is expected here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), path)
