"""The two-tower retrieval model.

Item tower: item id + category + provider + age bucket -> unit vector.
User tower: the user's latest items as a sequence (item-tower vectors, most recent first), pooled
by attention that knows each item's position, beside the mean and the latest item, plus the
request's country -> unit vector. The user is their recent actions: a new event changes the very
next vector without retraining, and users the model never saw get a vector from their session.
A user-id embedding is optional (`use_user_id`, off by default: the ablation table says whether it
helps); row 0 is "no id". The user tower is exported as TorchScript for the retrieval service,
which feeds it the vectors of the items it already holds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from funnel.features import NUM_AGE_BUCKETS, NUM_COUNTRY_SLOTS


class ItemTower(torch.nn.Module):
    def __init__(self, num_items: int, num_categories: int, num_providers: int, dim: int,
                 init_std: float = 0.05, sparse: bool = True) -> None:  # fmt: skip
        super().__init__()
        # Sparse gradients: a step moves only the rows in its batch, not all of a million-row table.
        self.item = torch.nn.Embedding(num_items, dim, sparse=sparse)
        self.category = torch.nn.Embedding(num_categories, dim)
        self.provider = torch.nn.Embedding(num_providers, dim)
        self.age = torch.nn.Embedding(NUM_AGE_BUCKETS, dim)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(4 * dim, 2 * dim), torch.nn.ReLU(), torch.nn.Linear(2 * dim, dim)
        )
        for table in (self.item, self.category, self.provider, self.age):
            torch.nn.init.normal_(table.weight, std=init_std)

    def forward(
        self, item: torch.Tensor, category: torch.Tensor, provider: torch.Tensor, age: torch.Tensor
    ) -> torch.Tensor:
        parts = torch.cat([self.item(item), self.category(category), self.provider(provider), self.age(age)], dim=-1)
        return F.normalize(self.mlp(parts), dim=-1)


class UserTower(torch.nn.Module):
    def __init__(self, num_users: int, dim: int, history_length: int, use_user_id: bool = False,
                 sequence_aware: bool = True, sparse: bool = True) -> None:  # fmt: skip
        super().__init__()
        # Without ids every user shares row 0, so the tower has one code path either way.
        self.user = torch.nn.Embedding(num_users + 1 if use_user_id else 1, dim, sparse=sparse)
        self.register_buffer("use_user_id", torch.tensor(1 if use_user_id else 0, dtype=torch.int64))
        self.register_buffer("sequence_aware", torch.tensor(1.0 if sequence_aware else 0.0))
        self.country = torch.nn.Embedding(NUM_COUNTRY_SLOTS, dim)
        self.position = torch.nn.Embedding(history_length, dim)  # 0 = the latest item
        self.attention = torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.Tanh(), torch.nn.Linear(dim, 1))
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(5 * dim + 1, 2 * dim), torch.nn.ReLU(), torch.nn.Linear(2 * dim, dim)
        )
        for table in (self.user, self.country, self.position):
            torch.nn.init.normal_(table.weight, std=0.05)

    def forward(
        self, user: torch.Tensor, history: torch.Tensor, mask: torch.Tensor, country: torch.Tensor
    ) -> torch.Tensor:
        """user [B] int64 (0 = none), history [B, L, dim] item vectors latest first (zeros past the
        end), mask [B, L] float (1 = an item), country [B] int64 slot."""
        length = history.shape[1]
        count = mask.sum(dim=1, keepdim=True)
        mean = (history * mask.unsqueeze(-1)).sum(dim=1) / count.clamp(min=1.0)
        positioned = history + self.position.weight[:length].unsqueeze(0)
        logits = self.attention(positioned).squeeze(-1).masked_fill(mask == 0, -1e4)
        weights = torch.softmax(logits, dim=1) * mask
        attended = (weights.unsqueeze(-1) * history).sum(dim=1) / weights.sum(dim=1, keepdim=True).clamp(min=1e-6)
        # The plain-pooling ablation: the same network fed the mean where attention and the latest
        # item would be.
        latest = history[:, 0] * self.sequence_aware + mean * (1.0 - self.sequence_aware)
        attended = attended * self.sequence_aware + mean * (1.0 - self.sequence_aware)
        parts = [
            self.user(user * self.use_user_id), attended, mean, latest, (count > 0).float(), self.country(country)
        ]
        return F.normalize(self.mlp(torch.cat(parts, dim=-1)), dim=-1)
