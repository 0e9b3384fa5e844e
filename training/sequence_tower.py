"""The sequence user tower: causal self-attention over the user's items (SASRec-style).

The input is the same as the pooled tower's (training/towers.py): the item tower's vectors of the
user's latest items, latest first, a mask and a country slot, so the retrieval service serves
either from the bundle's TorchScript without knowing which. Position `i` attends to itself and to
the older positions `j >= i` only, with a learned bias per head for each distance `j - i`; there is
no absolute position, so every position of a training sequence is a prediction made exactly as the
served one is at position 0 (the latest item): training reads every position in one pass
(`training/sequence_training.py`). The vector is the latest position's output with the country
mixed in; with no history a learned "nothing yet" state stands in for it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from funnel.features import NUM_COUNTRY_SLOTS


class CausalBlock(torch.nn.Module):
    """Pre-norm self-attention and feed-forward, each added to its input."""

    def __init__(self, dim: int, heads: int, max_distance: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm_attention = torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.out = torch.nn.Linear(dim, dim)
        self.distance_bias = torch.nn.Parameter(torch.zeros(heads, max_distance))
        self.norm_ffn = torch.nn.LayerNorm(dim)
        self.ffn = torch.nn.Sequential(torch.nn.Linear(dim, 2 * dim), torch.nn.GELU(), torch.nn.Linear(2 * dim, dim))
        self.dropout = torch.nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x [B, L, dim]; allowed [B, L, L] bool (query i may read key j)."""
        batch, length, dim = x.shape
        head_dim = dim // self.heads
        q, k, v = self.qkv(self.norm_attention(x)).split(dim, dim=-1)
        q = q.view(batch, length, self.heads, head_dim).transpose(1, 2)
        k = k.view(batch, length, self.heads, head_dim).transpose(1, 2)
        v = v.view(batch, length, self.heads, head_dim).transpose(1, 2)
        positions = torch.arange(length, device=x.device)
        distance = (positions[None, :] - positions[:, None]).clamp(min=0, max=self.distance_bias.shape[1] - 1)
        logits = q @ k.transpose(-1, -2) / math.sqrt(head_dim) + self.distance_bias[:, distance].unsqueeze(0)
        # -1e4, not -inf: a padded query row then averages instead of turning into NaN.
        logits = logits.masked_fill(~allowed.unsqueeze(1), -1e4)
        attended = (torch.softmax(logits, dim=-1) @ v).transpose(1, 2).reshape(batch, length, dim)
        x = x + self.dropout(self.out(attended))
        return x + self.dropout(self.ffn(self.norm_ffn(x)))


class SequenceUserTower(torch.nn.Module):
    def __init__(self, dim: int, history_length: int, layers: int = 2, heads: int = 2, dropout: float = 0.2,
                 pooling: bool = True) -> None:  # fmt: skip
        super().__init__()
        self.register_buffer("use_user_id", torch.tensor(0, dtype=torch.int64))  # read by the bundle's manifest
        self.pooling = pooling
        self.input = torch.nn.Linear(dim, dim)
        self.blocks = torch.nn.ModuleList(CausalBlock(dim, heads, history_length, dropout) for _ in range(layers))
        self.norm = torch.nn.LayerNorm(dim)
        # The pooled tower's summaries, computed at every position over it and the older ones:
        # attention pooling by a learned score and distance, the mean, the item itself.
        self.score = torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.Tanh(), torch.nn.Linear(dim, 1))
        self.pool_distance = torch.nn.Parameter(torch.zeros(history_length))
        width = 4 * dim if pooling else dim
        self.nothing_yet = torch.nn.Parameter(torch.zeros(width))
        self.country = torch.nn.Embedding(NUM_COUNTRY_SLOTS, dim)
        self.head = torch.nn.Sequential(
            torch.nn.Linear(width + dim, 2 * dim), torch.nn.ReLU(), torch.nn.Linear(2 * dim, dim)
        )
        self.dropout = torch.nn.Dropout(dropout)
        torch.nn.init.normal_(self.country.weight, std=0.05)

    def states(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, L, width] the sequence's state at every position: what position i predicts comes
        next after its item, reading it and the older ones (history latest first, mask [B, L])."""
        length = history.shape[1]
        valid = mask > 0
        older_or_same = torch.ones(length, length, dtype=torch.bool, device=history.device).triu()
        allowed = older_or_same.unsqueeze(0) & valid.unsqueeze(1)
        x = self.dropout(self.input(history)) * mask.unsqueeze(-1)
        for block in self.blocks:
            x = block(x, allowed)
        x = self.norm(x)
        if not self.pooling:
            return x
        items = history * mask.unsqueeze(-1)
        # Sums over positions j >= i, accumulated from the oldest end.
        mean = items.flip(1).cumsum(1).flip(1) / mask.flip(1).cumsum(1).flip(1).clamp(min=1.0).unsqueeze(-1)
        positions = torch.arange(length, device=history.device)
        distance = (positions[None, :] - positions[:, None]).clamp(min=0, max=self.pool_distance.shape[0] - 1)
        logits = self.score(history).squeeze(-1).unsqueeze(1) + self.pool_distance[distance].unsqueeze(0)
        weights = torch.softmax(logits.masked_fill(~allowed, -1e4), dim=-1)
        return torch.cat([x, weights @ items, mean, items], dim=-1)

    def vectors(self, states: torch.Tensor, has_history: torch.Tensor, country: torch.Tensor) -> torch.Tensor:
        """Unit query vectors from states [N, width], has_history [N] bool and country slots [N]."""
        state = torch.where(has_history.unsqueeze(-1), states, self.nothing_yet.expand_as(states))
        return F.normalize(self.head(torch.cat([state, self.country(country)], dim=-1)), dim=-1)

    def forward(
        self, user: torch.Tensor, history: torch.Tensor, mask: torch.Tensor, country: torch.Tensor
    ) -> torch.Tensor:
        """user [B] (unused: the tower reads no user id), history [B, L, dim] item vectors latest
        first, mask [B, L] float (1 = an item), country [B] int64 slot -> [B, dim] unit vectors."""
        latest = self.states(history, mask)[:, 0]
        return self.vectors(latest, mask[:, 0] > 0, country)
