"""The ranker: a deep network over the shared ranker features, trained on retrieval's candidates.

The candidate's item embedding attends over the user's latest items (target attention); that,
the engineered dense features and the embedded categorical ones feed a DCN-v2 (explicit cross
layers beside a deep MLP) whose head gives the engagement probability. Impressions come from what
retrieval returns at many cuts of users' pasts (`training/impressions.py`), so the ranker learns
to reorder retrieval's candidates rather than to tell good items from random ones. A share of the users is held apart
for validation; training stops when its log loss stops improving and keeps the best epoch.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from funnel.features import NUM_DENSE, NUM_EMBEDDED, RECENT_ID_ITEMS, FeatureBatch
from training import device as training_device
from training.epochs import EpochLog
from training.impressions import Impressions
from training.ranker_losses import RANKER_LOSSES, cut_batches, ranker_loss


class TargetAttention(torch.nn.Module):
    """Each candidate attends over the user's recent items (DIN/BST-style target attention).

    Scaled dot-product heads with the candidate as the query and the recent items, plus a learned
    recency embedding, as keys; a learned empty slot is always there to attend to, so a user with
    no history (or none related to the candidate) gets a defined, learnable summary.
    """

    def __init__(self, dim: int, heads: int, positions: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = torch.nn.Linear(dim, dim, bias=False)
        self.key = torch.nn.Linear(dim, dim, bias=False)
        self.value = torch.nn.Linear(dim, dim, bias=False)
        self.recency = torch.nn.Parameter(torch.zeros(positions, dim))
        self.empty_key = torch.nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, candidate: torch.Tensor, recent: torch.Tensor, present: torch.Tensor,
                bounds: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """candidate [N, d]; recent [H, R, d] and present [H, R] bool, one per run of rows sharing a
        history; bounds [H + 1]: where each run starts, then N -> [N, d]."""
        n, d = candidate.shape
        histories, r = recent.shape[0], recent.shape[1]
        head_dim = d // self.heads
        # Keys and values once per history: a request's rows all share the user's.
        keys = torch.cat([self.empty_key.expand(histories, 1, d), self.key(recent + self.recency)], dim=1)
        values = torch.cat([torch.zeros_like(recent[:, :1]), self.value(recent)], dim=1)
        k = keys.view(histories, r + 1, self.heads, head_dim).transpose(1, 2)
        v = values.view(histories, r + 1, self.heads, head_dim).transpose(1, 2)
        visible = torch.cat([torch.ones_like(present[:, :1]), present], dim=1).view(histories, 1, 1, r + 1)
        q = self.query(candidate).view(n, self.heads, 1, head_dim)
        if histories <= 16:
            # Serving: a few requests' runs of rows, each against its own history, heads as the
            # batch of two matrix products (a broadcast over rows would copy the keys per row).
            runs = []
            for h in range(histories):
                start, end = int(bounds[h]), int(bounds[h + 1])
                run = q[start:end].squeeze(2).transpose(0, 1)  # [heads, rows, head_dim]
                logits = torch.bmm(run, k[h].transpose(1, 2)) / head_dim**0.5  # [heads, rows, R + 1]
                weights = torch.softmax(logits.masked_fill(~visible[h], -1e9), dim=-1)
                runs.append(torch.bmm(weights, v[h]).transpose(0, 1).reshape(end - start, d))
            return torch.cat(runs)
        # Training: shuffled rows, nearly one history each, gathered.
        run_of_row = torch.repeat_interleave(torch.arange(histories, device=bounds.device), bounds[1:] - bounds[:-1])
        return self._attend(q, k[run_of_row], v[run_of_row], visible[run_of_row]).reshape(n, d)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        logits = (q @ k.transpose(2, 3)) / (q.shape[-1] ** 0.5)  # [n, heads, 1, R + 1]
        return torch.softmax(logits.masked_fill(~visible, -1e9), dim=-1) @ v


class DeepRanker(torch.nn.Module):
    """(dense [N, D] float32, categorical [N, C] int64) -> probability of engagement [N, 1].

    x0 joins the dense features, the small embedded ones and, with `item_dim`, a 16-column summary of
    the candidate's item embedding, its target attention over the user's latest items and their
    product. Explicit cross layers (x_{l+1} = x0 * (W x_l + b) + x_l) learn feature interactions
    beside a deep MLP; a linear head on both gives the probability. `item_dim` 0 is the network
    without item ids (the DCN-v2 over engineered features alone). Item rows outside the table (items
    added after training) and the empty recent columns share row 0, a zero vector read as "unknown".
    """

    def __init__(self, cardinalities: list[int], num_items: int = 0, item_dim: int = 0, heads: int = 2,
                 item_vectors: np.ndarray | None = None, item_dropout: float = 0.0, num_dense: int = NUM_DENSE,
                 item_summary: int = 16, embed_dim: int = 4, cross_layers: int = 2,
                 hidden: int = 64) -> None:  # fmt: skip
        super().__init__()
        self.embeddings = torch.nn.ModuleList(torch.nn.Embedding(n, embed_dim) for n in cardinalities)
        self.num_items = num_items
        self.item_dim = item_dim
        self.first_id_column = NUM_EMBEDDED
        self.item_dropout = item_dropout
        self.items = torch.nn.Embedding(num_items + 1 if item_dim else 1, max(item_dim, 1), padding_idx=0)
        if item_dim and item_vectors is not None:
            with torch.no_grad():  # start from retrieval's item space, which already knows co-watching
                self.items.weight[1:] = _projected(item_vectors, item_dim)
        self.attention = TargetAttention(max(item_dim, heads), heads, RECENT_ID_ITEMS)
        # The candidate, what it attended to and their product, summarised in a few columns before
        # the cross layers: at their full 3 x 64 the cross layers alone took 5 ms for 500 rows.
        summary = item_summary if item_dim else 0
        self.summary = torch.nn.Linear(3 * max(item_dim, 1), max(summary, 1))
        width = num_dense + embed_dim * len(cardinalities) + summary
        self.cross = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(cross_layers))
        self.deep = torch.nn.Sequential(
            torch.nn.Linear(width, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden // 2), torch.nn.ReLU()
        )
        self.head = torch.nn.Linear(width + hidden // 2, 1)

    def forward(self, dense: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(dense, categorical))

    def logits(self, dense: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """[N, 1] the scores before the sigmoid (what a listwise loss compares within a cut)."""
        parts = [dense]
        for position, table in enumerate(self.embeddings):
            parts.append(table(categorical[:, position]))
        if self.item_dim > 0:
            ids = categorical[:, self.first_id_column :]
            rows = torch.where((ids >= 0) & (ids < self.num_items), ids + 1, torch.zeros_like(ids))
            starts, bounds = _runs(rows[:, 1:])
            histories = rows[starts, 1:]
            candidate = self._embedded(rows[:, 0])
            attended = self.attention(candidate, self._embedded(histories), histories > 0, bounds)
            parts.append(self.summary(torch.cat([candidate, attended, candidate * attended], dim=1)))
        x0 = torch.cat(parts, dim=1)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.head(torch.cat([x, self.deep(x0)], dim=1))

    def _embedded(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.dropout(self.items(rows), self.item_dropout, self.training)


def _runs(histories: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs of consecutive rows with the same history: (first row of each run, its bounds [H + 1])."""
    n = histories.shape[0]
    new_run = torch.ones(n, dtype=torch.bool, device=histories.device)
    if n > 1:
        new_run[1:] = (histories[1:] != histories[:-1]).any(dim=1)
    starts = torch.nonzero(new_run).squeeze(1)
    return starts, torch.cat([starts, torch.full([1], n, dtype=torch.int64, device=histories.device)])


def _projected(item_vectors: np.ndarray, dim: int) -> torch.Tensor:
    """Retrieval's item vectors cut or padded to `dim` columns, scaled to unit norm."""
    vectors = torch.zeros(len(item_vectors), dim)
    width = min(dim, item_vectors.shape[1])
    vectors[:, :width] = torch.from_numpy(np.ascontiguousarray(item_vectors[:, :width], dtype=np.float32))
    return vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-6)


@dataclass(frozen=True)
class RankerConfig:
    max_epochs: int = 30
    patience: int = 3  # epochs without a better validation loss before stopping
    validation_share: float = 0.1  # of the users, whose cuts are held apart
    batch_size: int = 512
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    # "adamw" decays the weights apart from the gradient step; "adam" adds the decay to the gradient
    # (L2), which drives parameters with tiny gradients to zero (see the optimizer below).
    optimizer: str = "adamw"
    seed: int = 7
    # The candidate's item embedding and its target attention over the user's latest items; 0
    # leaves item ids out (the network over engineered features alone).
    # `python -m evaluation.ranker_ablation --movielens data/ml-1m --holdout 1 --validation`: retrieval's
    # 64-dim vectors kept frozen gave HR@10 0.3071 (0.3076 trained with Adam) against 0.3000 without
    # ids. In an earlier run a table trained from them gave the gain back (0.2978 against 0.2975
    # without ids and 0.3033 frozen): the impressions are too few to learn 3.7k items anew.
    item_dim: int = 64
    attention_heads: int = 2
    item_dropout: float = 0.0
    train_item_table: bool = False  # False keeps retrieval's item vectors as they are
    loss: str = "pointwise"  # or "listwise", or "both" (training/ranker_losses.py)
    # Batches of whole cuts even for the pointwise loss: a cut's rows share a history, so the target
    # attention computes its keys once per cut instead of once per row.
    cut_batches: bool = False
    hidden: int = 64  # the deep MLP's first layer (its second is half)
    item_summary: int = 16  # columns summarising the candidate and what it attended to
    device: str = "cpu"  # where training runs (training/device.py); the model comes back on the CPU

    def __post_init__(self) -> None:
        if self.loss not in RANKER_LOSSES:
            raise ValueError(f"ranker loss {self.loss!r}: expected one of {', '.join(RANKER_LOSSES)}")


@dataclass
class RankerTraining:
    model: DeepRanker
    losses: list[float]
    validation_losses: list[float]
    best_epoch: int
    examples: int
    positives: int


def train_ranker(
    impressions: Impressions, cardinalities: list[int], item_vectors: np.ndarray, config: RankerConfig
) -> RankerTraining:
    """`item_vectors`: retrieval's, one row per catalog item; the item table starts from them.
    Validation holds a share of the users apart: cuts of one user share most of their history and
    next items, so holding cuts apart would reward memorising each user's sequence."""
    features, labels, users = impressions.features, impressions.labels, impressions.users
    torch.manual_seed(config.seed)
    training_device.deterministic(config.device)
    rng = np.random.default_rng(config.seed)
    unique_users = np.unique(users)
    held = rng.choice(unique_users, max(1, int(len(unique_users) * config.validation_share)), replace=False)
    validation = np.isin(users, held)
    train_rows, validation_rows = np.flatnonzero(~validation), np.flatnonzero(validation)
    on = config.device
    dense, categorical, y = (torch.from_numpy(a).to(on) for a in (features.dense, features.categorical, labels))

    model = DeepRanker(cardinalities, len(item_vectors), config.item_dim, config.attention_heads, item_vectors,
                       config.item_dropout, item_summary=config.item_summary, hidden=config.hidden).to(on)  # fmt: skip
    model.items.weight.requires_grad_(config.train_item_table)
    # Decoupled weight decay: with Adam's L2 term, parameters whose gradient is tiny (the attention's
    # query and key on data without next-item order) were driven to zero and then oscillated
    # through subnormal floats, which made later epochs 9x slower (4.7 s -> 42 s on the demo set).
    optimizers = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}
    optimizer = optimizers[config.optimizer](model.parameters(), lr=config.learning_rate,
                                             weight_decay=config.weight_decay)  # fmt: skip
    generator = torch.Generator().manual_seed(config.seed)
    progress = EpochLog("ranker", config.max_epochs)
    cuts = torch.from_numpy(impressions.cuts).to(on)
    validation_losses: list[float] = []
    best = (float("inf"), 0, copy.deepcopy(model.state_dict()))
    for epoch in range(config.max_epochs):
        model.train()
        for rows in _batches(train_rows, impressions.cuts, config, generator):
            batch = torch.from_numpy(rows).to(on)
            logits = model.logits(dense[batch], categorical[batch]).squeeze(-1)
            progress.step(optimizer, ranker_loss(config.loss, logits, y[batch], cuts[batch]))
        progress.end_epoch()
        validation_losses.append(_loss(model, dense, categorical, y, cuts, validation_rows, config.loss))
        print(f"    validation {config.loss} loss {validation_losses[-1]:.4f}", flush=True)
        if validation_losses[-1] < best[0]:
            best = (validation_losses[-1], epoch, copy.deepcopy(model.state_dict()))
        elif epoch - best[1] >= config.patience:
            break
    model.load_state_dict(best[2])
    model.to("cpu").eval()
    return RankerTraining(model, progress.losses, validation_losses, best[1] + 1, len(labels), int(labels.sum()))


def _batches(rows: np.ndarray, cuts: np.ndarray, config: RankerConfig, generator: torch.Generator):
    """Rows in random order for the pointwise loss; whole cuts, in random order, for the others."""
    if config.loss == "pointwise" and not config.cut_batches:
        order = rows[torch.randperm(len(rows), generator=generator).numpy()]
        return (order[start : start + config.batch_size] for start in range(0, len(order), config.batch_size))
    return cut_batches(rows, cuts, config.batch_size, generator)


@torch.no_grad()
def _loss(model: DeepRanker, dense: torch.Tensor, categorical: torch.Tensor, y: torch.Tensor, cuts: torch.Tensor,
          rows: np.ndarray, kind: str) -> float:  # fmt: skip
    model.eval()
    index = torch.from_numpy(rows).to(dense.device)
    return float(ranker_loss(kind, model.logits(dense[index], categorical[index]).squeeze(-1), y[index], cuts[index]))


@torch.no_grad()
def score(model: torch.nn.Module, features: FeatureBatch) -> np.ndarray:
    return model(torch.from_numpy(features.dense), torch.from_numpy(features.categorical)).numpy().ravel()


def export_torchscript(model: DeepRanker, path: str) -> None:
    # TorchScript is deprecated in torch, but it is the format Triton's pytorch_libtorch backend
    # loads, so the warning is expected here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), path)
