"""Training the two-tower model with InfoNCE over mixed negatives, and computing every vector."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from funnel.artifacts.catalog import Embeddings
from funnel.features import age_bucket, country_slots
from training import device as training_device
from training import distributed
from training.dataset import Dataset, Interactions, chronological
from training.epochs import EpochLog
from training.losses import sampled_softmax_loss
from training.sequence_tower import SequenceUserTower
from training.sequence_training import SoftmaxConfig, batches, window_loss, windows_of
from training.towers import ItemTower, UserTower

USER_TOWERS = ("pooled", "sequence")
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TwoTowerConfig:
    dim: int = 64
    history_length: int = 20
    epochs: int = 8
    batch_size: int = 1024
    temperature: float = 0.05
    learning_rate: float = 4e-3
    lr_schedule: str = "constant"  # or "cosine": decayed to 0 over the run's steps
    # Negatives sampled uniformly from the catalog per batch, beside the in-batch ones (mixed negative
    # sampling). 0 = in-batch only: on the validation splits of ml-latest-small and the synthetic demo
    # uniform negatives lowered NDCG@10 by a third (the ablation table has the figures).
    uniform_negatives: int = 0
    sequence_aware: bool = True  # attention over positions; False = mean pooling (the ablation)
    # "sequence": causal self-attention trained on every position (training/sequence_tower.py);
    # "pooled": attention pooling trained on one example per interaction (training/towers.py).
    user_tower: str = "pooled"
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    # The sequence tower's batch: about this many predicted items. Steps, not examples, were what it
    # lacked: on MovieLens-1M's validation split 8 epochs reached HR@10 0.2318 at 8,192, 0.2750 at
    # 2,048 and 0.2869 at 1,024 (an epoch 38, 48 and 60 s).
    batch_positions: int = 1024
    causal_pooling: bool = True  # the sequence tower also reads the pooled tower's summaries at each position
    full_softmax_items: int = 20_000  # the sequence tower's softmax runs over the whole catalog up to this
    in_batch_negatives: bool = True  # the sequence tower's sampled softmax: False = uniform samples only
    # The item tables' initial scale. Small, the item vectors start out alike (the tower's biases
    # outweigh them) and the sequence tower's full softmax sat for hundreds of steps near uniform
    # before it moved; at 0.5 it learnt a planted next item within a hundred.
    item_init_std: float = 0.05
    use_user_id: bool = False
    user_id_dropout: float = 0.2  # with ids: how often training hides them, so cold users are learned too
    seed: int = 7
    device: str = "cpu"  # where training runs (training/device.py); the model comes back on the CPU

    def __post_init__(self) -> None:
        if self.user_tower not in USER_TOWERS:
            raise ValueError(f"user_tower {self.user_tower!r}: expected one of {', '.join(USER_TOWERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule {self.lr_schedule!r}: expected one of {', '.join(LR_SCHEDULES)}")


# The sequence tower's settings: SASRec's recipe where it applies (two blocks, dropout 0.2, learning
# rate 1e-3), item tables started larger and a warmer softmax than the pooled tower's (at 0.05 it
# learnt a planted order several times slower), the latest 50 items: on MovieLens-1M's validation
# split 200 gave less (HR@10 0.200 against 0.212 after 8 epochs, without the pooled summaries) for
# a tenth more time.
SEQUENCE_TOWER = TwoTowerConfig(
    user_tower="sequence", history_length=50, learning_rate=1e-3, item_init_std=0.5, temperature=0.1
)


def history_matrix(interactions: Interactions, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Time order of the interactions and, for each, the item rows of the user's previous `length`
    interactions, the latest first (-1 padded)."""
    order = chronological(interactions)
    users = interactions.user[order]
    items = interactions.item[order]
    history = np.full((len(order), length), -1, dtype=np.int64)
    for back in range(1, length + 1):
        same_user = np.zeros(len(order), dtype=bool)
        same_user[back:] = users[back:] == users[:-back]
        history[back:, back - 1] = np.where(same_user[back:], items[:-back], -1)
    return order, history


def latest_first(histories: list[np.ndarray], length: int) -> np.ndarray:
    """[len(histories), length] item rows: each history's latest `length` items, latest first, -1 padded."""
    out = np.full((len(histories), length), -1, dtype=np.int64)
    for n, rows in enumerate(histories):
        recent = np.asarray(rows[-length:])[::-1]
        out[n, : len(recent)] = recent
    return out


class TwoTower:
    """Both towers and the item features they read, as tensors."""

    def __init__(self, data: Dataset, config: TwoTowerConfig) -> None:
        torch.manual_seed(config.seed)
        self.config = config
        self.num_items = data.num_items
        # Sparse id-table gradients save the CPU a pass over every row per step; on a GPU that pass is
        # cheap, and NCCL cannot all-reduce sparse gradients.
        self.sparse = config.device == "cpu"
        self.items = ItemTower(
            data.num_items, len(data.category_names), len(data.provider_names), config.dim, config.item_init_std,
            self.sparse,
        )
        if config.user_tower == "sequence":
            self.users: UserTower | SequenceUserTower = SequenceUserTower(
                config.dim, config.history_length, config.layers, config.heads, config.dropout, config.causal_pooling
            )
        else:
            self.users = UserTower(
                data.num_users, config.dim, config.history_length, config.use_user_id, config.sequence_aware,
                self.sparse,
            )
        self.category = torch.from_numpy(data.category.astype(np.int64))
        self.provider = torch.from_numpy(data.provider.astype(np.int64))
        self.age = torch.from_numpy(age_bucket(data.age_days))
        self.country = torch.from_numpy(country_slots(data.user_country.astype(np.int64)))

    def to(self, device: str | torch.device) -> TwoTower:
        """Both towers and the feature tables on `device` (in place)."""
        self.items.to(device)
        self.users.to(device)
        self.category, self.provider, self.age, self.country = (
            t.to(device) for t in (self.category, self.provider, self.age, self.country)
        )
        return self

    def item_vectors(self, rows: torch.Tensor) -> torch.Tensor:
        return self.items(rows, self.category[rows], self.provider[rows], self.age[rows])

    def user_vectors(self, users: torch.Tensor, history: torch.Tensor, user_index: torch.Tensor) -> torch.Tensor:
        """history [B, L] item rows latest first (-1 = none); user_index [B] (0 = no id)."""
        valid = history >= 0
        unique, inverse = torch.unique(history.clamp(min=0), return_inverse=True)
        vectors = self.item_vectors(unique)[inverse] * valid.unsqueeze(-1)
        return self.users(user_index, vectors, valid.float(), self.country[users])

    def parameters(self) -> list[torch.nn.Parameter]:
        return [*self.items.parameters(), *self.users.parameters()]

    def optimizer(self, learning_rate: float) -> SplitAdam:
        sparse = [self.items.item.weight] if self.sparse else []
        if self.sparse and isinstance(self.users, UserTower):
            sparse.append(self.users.user.weight)
        dense = [p for p in self.parameters() if all(p is not s for s in sparse)]
        parts = [torch.optim.SparseAdam(sparse, lr=learning_rate)] if sparse else []
        return SplitAdam(*parts, torch.optim.Adam(dense, lr=learning_rate))

    def eval(self) -> None:
        self.items.eval()
        self.users.eval()


class SplitAdam:
    """Adam for the id tables' sparse gradients and for the dense layers, stepped together.

    A dense Adam step reads and writes every row of every table: at a million items that was most
    of the training time, for rows the batch never touched.
    """

    def __init__(self, *parts: torch.optim.Optimizer) -> None:
        self.parts = parts

    def zero_grad(self) -> None:
        for part in self.parts:
            part.zero_grad()

    def step(self) -> None:
        for part in self.parts:
            part.step()

    def scale_learning_rate(self, base: float, factor: float) -> None:
        for part in self.parts:
            for group in part.param_groups:
                group["lr"] = base * factor


def decay_factor(schedule: str, step: int, steps: int) -> float:
    """The learning rate's share of its base at `step` of `steps`: 1 throughout for "constant",
    a half cosine from 1 to 0 for "cosine"."""
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / max(1, steps)))


def train_two_tower(
    data: Dataset, train: Interactions, config: TwoTowerConfig, start_from: TwoTower | None = None
) -> tuple[TwoTower, list[float]]:
    """Every interaction is a next-item example: the user's previous items predict it. With
    `start_from`, training continues from that model's weights (which it changes)."""
    training_device.deterministic(config.device)
    model = (start_from or TwoTower(data, config)).to(config.device)
    group = distributed.current()
    if config.user_tower == "sequence":
        if group.world > 1:
            raise ValueError("training on several processes supports the pooled user tower, not the sequence tower")
        model, losses = train_every_position(model, data, train, config)
        return model.to("cpu"), losses
    rng = np.random.default_rng(config.seed + group.rank)
    optimizer = model.optimizer(config.learning_rate)
    order, history = history_matrix(train, config.history_length)
    mine = group.shard(train.user[order])  # every row with one process: the whole split
    order, history = order[mine], history[mine]
    on = config.device
    users = torch.from_numpy(train.user[order].astype(np.int64)).to(on)
    items = torch.from_numpy(train.item[order].astype(np.int64)).to(on)
    history_t = torch.from_numpy(history).to(on)
    # The sampling correction counts the whole split, on every process alike.
    frequency = np.bincount(train.item, minlength=data.num_items).astype(np.float64) + 1.0
    log_q = torch.from_numpy(np.log(frequency / frequency.sum())).float().to(on)
    pair = TowerPair(model)
    forward = pair if group.world == 1 else DistributedDataParallel(pair)
    # The batch is split across the processes: each step still averages the gradient over
    # `batch_size` examples, and each process's users see every process's items as negatives, so N
    # processes take the one-process steps over the one-process softmax (tests/test_losses.py).
    # With full batches on each, an epoch was 1/N the steps, and 3 epochs on the tiny set fell to
    # 71% of the one-process recall@50.
    local_batch = max(1, config.batch_size // group.world)
    steps = distributed.common_count(max(1, len(order) // local_batch))

    progress = EpochLog("two-tower", config.epochs)
    model.items.train()
    model.users.train()
    done = 0
    for _ in range(config.epochs):
        for batch in _batches(rng.permutation(len(order)), steps, local_batch, group.world):
            factor = decay_factor(config.lr_schedule, done, config.epochs * steps)
            optimizer.scale_learning_rate(config.learning_rate, factor)
            done += 1
            b = torch.from_numpy(batch).to(on)
            user_index = torch.zeros_like(users[b])
            if config.use_user_id:
                keep_id = torch.from_numpy(rng.random(len(batch)) >= config.user_id_dropout).to(on)
                user_index = torch.where(keep_id, users[b] + 1, user_index)
            sampled = config.uniform_negatives > 0
            sampled_rows = torch.zeros(0, dtype=torch.int64, device=on)
            if sampled:
                sampled_rows = torch.from_numpy(rng.integers(0, data.num_items, config.uniform_negatives)).to(on)
            user_vectors, item_vectors = forward(users[b], history_t[b], user_index, items[b], sampled_rows)
            batch_vectors, batch_rows = distributed.gathered(item_vectors[: len(batch)], items[b])
            loss = sampled_softmax_loss(
                user_vectors,
                batch_vectors,
                batch_rows,
                log_q,
                config.temperature,
                item_vectors[len(batch) :] if sampled else None,
                sampled_rows if sampled else None,
                data.num_items,
                first_positive=group.rank * len(batch),
            )
            progress.step(optimizer, loss)
        progress.end_epoch()
    model.to("cpu").eval()
    return model, progress.losses


def _batches(order: np.ndarray, steps: int, size: int, processes: int) -> list[np.ndarray]:
    """One process: `steps` near-equal batches of every row. Several: `steps` batches of exactly
    `size` rows (gathering needs equal shapes), the few rows left over skipped this epoch."""
    if processes == 1:
        return np.array_split(order, steps)
    return list(order[: steps * size].reshape(steps, size))


class TowerPair(torch.nn.Module):
    """Both towers as one module: DistributedDataParallel wraps one module's forward, and all-reduces
    the gradients of everything that forward used."""

    def __init__(self, model: TwoTower) -> None:
        super().__init__()
        self.items = model.items
        self.users = model.users
        self.model = model

    def forward(
        self, users: torch.Tensor, history: torch.Tensor, user_index: torch.Tensor, items: torch.Tensor,
        sampled_rows: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """(user vectors [B, d], item vectors [B + S, d]: the batch's items, then the sampled ones)."""
        user_vectors = self.model.user_vectors(users, history, user_index)
        return user_vectors, self.model.item_vectors(torch.cat([items, sampled_rows]))


def train_every_position(
    model: TwoTower, data: Dataset, train: Interactions, config: TwoTowerConfig
) -> tuple[TwoTower, list[float]]:
    """The sequence tower's training: every position of every window a next-item example."""
    rng = np.random.default_rng(config.seed)
    optimizer = model.optimizer(config.learning_rate)
    windows = windows_of(train, data.num_users, config.history_length)
    frequency = np.bincount(train.item, minlength=data.num_items).astype(np.float64) + 1.0
    log_q = torch.from_numpy(np.log(frequency / frequency.sum())).float().to(config.device)
    softmax = SoftmaxConfig(
        config.temperature, config.full_softmax_items, config.uniform_negatives, config.in_batch_negatives
    )
    progress = EpochLog("sequence tower", config.epochs)
    model.items.train()
    model.users.train()
    done = 0
    for _ in range(config.epochs):
        epoch = batches(windows, config.batch_positions, rng)
        # Batches follow the windows' lengths, which every epoch shares: so does their number.
        steps = config.epochs * len(epoch)
        for batch in epoch:
            optimizer.scale_learning_rate(config.learning_rate, decay_factor(config.lr_schedule, done, steps))
            done += 1
            progress.step(optimizer, window_loss(model, windows, batch, log_q, softmax, rng))
        progress.end_epoch()
    model.eval()
    return model, progress.losses


@torch.no_grad()
def item_embeddings(model: TwoTower) -> np.ndarray:
    model.eval()
    return torch.cat([model.item_vectors(chunk) for chunk in torch.arange(model.num_items).split(65_536)]).numpy()


@torch.no_grad()
def encode_histories(
    model: TwoTower, item_vectors: np.ndarray, histories: np.ndarray, country_slots: np.ndarray, user_index: np.ndarray
) -> np.ndarray:
    """User vectors for many histories at once: [n, L] item rows latest first (-1 padded), as the
    retrieval service encodes one. `user_index` is 0 without ids."""
    model.eval()
    out = []
    for start in range(0, len(histories), 16_384):
        part = slice(start, start + 16_384)
        rows = histories[part]
        valid = rows >= 0
        vectors = torch.from_numpy(item_vectors[rows.clip(min=0)] * valid[..., None])
        out.append(
            model.users(
                torch.from_numpy(np.asarray(user_index[part], dtype=np.int64)),
                vectors,
                torch.from_numpy(valid.astype(np.float32)),
                torch.from_numpy(np.asarray(country_slots[part], dtype=np.int64)),
            ).numpy()
        )
    dim = item_vectors.shape[1]
    return np.concatenate(out) if out else np.zeros((0, dim), dtype=np.float32)


def compute_embeddings(model: TwoTower, data: Dataset, history_of: list[np.ndarray]) -> Embeddings:
    """Item vectors for every item; user vectors for every known user from their latest history."""
    items = item_embeddings(model)
    histories = latest_first(history_of, model.config.history_length)
    user_index = np.arange(1, data.num_users + 1) if model.config.use_user_id else np.zeros(data.num_users, np.int64)
    users = encode_histories(model, items, histories, country_slots(data.user_country.astype(np.int64)), user_index)
    return Embeddings(users=users.astype(np.float32), items=items.astype(np.float32))


def export_user_tower(model: TwoTower, path: str) -> None:
    """TorchScript of the user tower: (user, history vectors latest first, mask, country) -> vector."""
    model.users.eval()
    # TorchScript is deprecated in torch, yet it is what a serving process can load without this code.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model.users), path)
