"""Training the two-tower model with InfoNCE over in-batch negatives, and computing every vector."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from funnel.artifacts.catalog import Embeddings
from funnel.features import age_bucket
from training.dataset import Dataset, Interactions
from training.epochs import EpochLog
from training.losses import in_batch_softmax_loss
from training.towers import ItemTower, UserTower, country_slot


@dataclass(frozen=True)
class TwoTowerConfig:
    dim: int = 64
    history_length: int = 20
    epochs: int = 10
    batch_size: int = 1024
    temperature: float = 0.05
    learning_rate: float = 3e-3
    user_id_dropout: float = 0.2  # how often training hides the user id, so cold users are learned too
    seed: int = 7


def history_matrix(interactions: Interactions, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Order of interactions by (user, time) and, for each, the item rows of the user's previous
    `length` interactions (-1 padded)."""
    order = np.lexsort((interactions.timestamp, interactions.user))
    users = interactions.user[order]
    items = interactions.item[order]
    history = np.full((len(order), length), -1, dtype=np.int64)
    for back in range(1, length + 1):
        same_user = np.zeros(len(order), dtype=bool)
        same_user[back:] = users[back:] == users[:-back]
        history[back:, back - 1] = np.where(same_user[back:], items[:-back], -1)
    return order, history


class TwoTower:
    """Both towers and the item features they read, as tensors."""

    def __init__(self, data: Dataset, config: TwoTowerConfig) -> None:
        torch.manual_seed(config.seed)
        self.config = config
        self.items = ItemTower(data.num_items, len(data.category_names), len(data.provider_names), config.dim)
        self.users = UserTower(data.num_users, config.dim)
        self.category = torch.from_numpy(data.category.astype(np.int64))
        self.provider = torch.from_numpy(data.provider.astype(np.int64))
        self.age = torch.from_numpy(age_bucket(data.age_days))
        self.country = torch.from_numpy(country_slot(data.user_country.astype(np.int64)))

    def item_vectors(self, rows: torch.Tensor) -> torch.Tensor:
        return self.items(rows, self.category[rows], self.provider[rows], self.age[rows])

    def user_vectors(self, users: torch.Tensor, history: torch.Tensor, user_index: torch.Tensor) -> torch.Tensor:
        """history [B, L] item rows (-1 = none); user_index [B] (0 = unknown user)."""
        valid = history >= 0
        unique, inverse = torch.unique(history.clamp(min=0), return_inverse=True)
        vectors = self.item_vectors(unique)[inverse] * valid.unsqueeze(-1)
        count = valid.sum(dim=1, keepdim=True)
        pooled = vectors.sum(dim=1) / count.clamp(min=1)
        return self.users(user_index, pooled, (count > 0).float(), self.country[users])

    def parameters(self) -> list[torch.nn.Parameter]:
        return [*self.items.parameters(), *self.users.parameters()]

    def optimizer(self, learning_rate: float) -> SplitAdam:
        sparse = [self.items.item.weight, self.users.user.weight]
        dense = [p for p in self.parameters() if all(p is not s for s in sparse)]
        return SplitAdam(torch.optim.SparseAdam(sparse, lr=learning_rate), torch.optim.Adam(dense, lr=learning_rate))


class SplitAdam:
    """Adam for the id tables' sparse gradients and for the dense layers, stepped together.

    A dense Adam step reads and writes every row of every table: at a million items that was most
    of the training time, for rows the batch never touched.
    """

    def __init__(self, sparse: torch.optim.SparseAdam, dense: torch.optim.Adam) -> None:
        self.parts = (sparse, dense)

    def zero_grad(self) -> None:
        for part in self.parts:
            part.zero_grad()

    def step(self) -> None:
        for part in self.parts:
            part.step()


def train_two_tower(data: Dataset, train: Interactions, config: TwoTowerConfig) -> tuple[TwoTower, list[float]]:
    # Same seed, same model: parallel CPU kernels may otherwise sum in a different order per run.
    torch.use_deterministic_algorithms(True)
    model = TwoTower(data, config)
    rng = np.random.default_rng(config.seed)
    optimizer = model.optimizer(config.learning_rate)
    order, history = history_matrix(train, config.history_length)
    users = torch.from_numpy(train.user[order].astype(np.int64))
    items = torch.from_numpy(train.item[order].astype(np.int64))
    history_t = torch.from_numpy(history)
    frequency = np.bincount(train.item, minlength=data.num_items).astype(np.float64) + 1.0
    log_q = torch.from_numpy(np.log(frequency / frequency.sum())).float()

    progress = EpochLog("two-tower", config.epochs)
    for _ in range(config.epochs):
        for batch in np.array_split(rng.permutation(len(order)), max(1, len(order) // config.batch_size)):
            b = torch.from_numpy(batch)
            keep_id = torch.from_numpy(rng.random(len(batch)) >= config.user_id_dropout)
            user_index = torch.where(keep_id, users[b] + 1, torch.zeros_like(users[b]))
            loss = in_batch_softmax_loss(
                model.user_vectors(users[b], history_t[b], user_index),
                model.item_vectors(items[b]),
                items[b],
                log_q,
                config.temperature,
            )
            progress.step(optimizer, loss)
        progress.end_epoch()
    return model, progress.losses


@torch.no_grad()
def compute_embeddings(model: TwoTower, data: Dataset, history_of: list[np.ndarray]) -> Embeddings:
    """Item vectors for every item; user vectors for every known user from their latest history."""
    model.items.eval()
    model.users.eval()
    items = torch.cat([model.item_vectors(chunk) for chunk in torch.arange(data.num_items).split(65_536)])
    length = model.config.history_length
    history = np.full((data.num_users, length), -1, dtype=np.int64)
    for user, rows in enumerate(history_of):
        recent = rows[-length:]
        history[user, : len(recent)] = recent
    users = torch.arange(data.num_users)
    vectors = torch.cat(
        [
            model.user_vectors(chunk, torch.from_numpy(history[chunk.numpy()]), chunk + 1)
            for chunk in users.split(65_536)
        ]
    )
    return Embeddings(users=vectors.numpy().astype(np.float32), items=items.numpy().astype(np.float32))


def export_user_tower(model: TwoTower, path: str) -> None:
    """TorchScript of the user tower: (user, pooled history, has_history, country) -> vector."""
    model.users.eval()
    # TorchScript is deprecated in torch, yet it is what a serving process can load without this code.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model.users), path)
