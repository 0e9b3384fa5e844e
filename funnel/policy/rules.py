"""Re-ranking rules: small components with stable names, each reporting what it did.

Rules run by phase, whatever order the policy lists them in, so a later rule can never undo an
earlier guarantee: filters remove, scorers boost, reorderers (MMR) reorder, selectors fill the
top-N under caps and quotas together, pins place business items last. Removed candidates get a
reason, so "why was this item dropped?" always has an answer; kept ones collect notes for debug.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar

import numpy as np

from funnel.arrays import member_of
from funnel.artifacts.catalog import Catalog, Users
from funnel.policy.document import PolicyError


class Phase(IntEnum):
    FILTER = 0
    SCORE = 1
    REORDER = 2
    SELECT = 3
    PIN = 4


@dataclass
class Slate:
    item_ids: list[str]  # one per input candidate
    rows: np.ndarray  # catalog row per input candidate (-1 unknown)
    scores: np.ndarray  # float32 score per input candidate; scorers add to it
    order: np.ndarray  # input positions still in the list, in display order
    user_row: int
    num_results: int
    debug: bool = False  # notes (reasons for kept items) are only written when asked for
    session_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # this session's items
    removed: dict[int, str] = field(default_factory=dict)  # input position -> "rule: reason"
    notes: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))

    def drop(self, drop_mask: np.ndarray, rule: str, reason: str) -> int:
        """Remove the slate entries where `drop_mask` (aligned with `order`) is set."""
        for position in self.order[drop_mask]:
            self.removed[int(position)] = f"{rule}: {reason}"
        self.order = self.order[~drop_mask]
        return int(drop_mask.sum())

    def resort(self) -> int:
        """Order by the (boosted) scores again; returns how many positions changed."""
        return self.reorder(self.order[np.argsort(-self.scores[self.order], kind="stable")])

    def reorder(self, new_order: np.ndarray) -> int:
        """Replace the order (same members); returns how many positions changed."""
        moved = int((new_order != self.order).sum()) if len(new_order) == len(self.order) else len(new_order)
        self.order = new_order
        return moved


@dataclass
class Outcome:
    removed: int = 0
    moved: int = 0


class Rule:
    name: ClassVar[str]
    phase: ClassVar[Phase]
    params: ClassVar[dict[str, type | tuple[type, ...]]] = {}

    def __init__(self, catalog: Catalog, users: Users, vectors: np.ndarray, params: dict[str, Any]) -> None:
        unknown = set(params) - set(self.params)
        if unknown:
            raise PolicyError(f"rule {self.name}: unknown parameters {sorted(unknown)}")
        for key, value in params.items():
            expected = self.params[key]
            if isinstance(value, bool) or not isinstance(value, expected):
                raise PolicyError(f"rule {self.name}: {key} has the wrong type ({type(value).__name__})")
        self.catalog = catalog
        self.users = users
        self.vectors = vectors

    def apply(self, slate: Slate) -> Outcome:
        raise NotImplementedError

    def check(self, condition: bool, message: str) -> None:
        if not condition:
            raise PolicyError(f"rule {self.name}: {message}")


NUMBER = (int, float)


class ExcludeConsumed(Rule):
    """Drop items the user has already interacted with: stored history and this session's items."""

    name, phase = "exclude_consumed", Phase.FILTER

    def apply(self, slate: Slate) -> Outcome:
        stored = self.users.history(slate.user_row) if slate.user_row >= 0 else np.zeros(0, dtype=np.int64)
        consumed = member_of(slate.rows[slate.order], np.concatenate([stored, slate.session_rows]))
        return Outcome(removed=slate.drop(consumed, self.name, "already consumed"))


class Dedupe(Rule):
    """Keep the first (best) of identical items and, with `near_duplicate_cosine`, of items whose
    embeddings are closer than that cosine among the top `candidates`."""

    name, phase = "dedupe", Phase.FILTER
    params = {"near_duplicate_cosine": NUMBER, "candidates": int}

    def __init__(self, catalog: Catalog, users: Users, vectors: np.ndarray, params: dict[str, Any]) -> None:
        super().__init__(catalog, users, vectors, params)
        self.threshold = params.get("near_duplicate_cosine")
        self.candidates = params.get("candidates", 200)
        self.check(self.threshold is None or 0 < self.threshold <= 1, "near_duplicate_cosine must be in (0, 1]")
        self.check(self.candidates >= 1, "candidates must be >= 1")

    def apply(self, slate: Slate) -> Outcome:
        # Catalog rows stand for ids: content policy, which runs first, removed every unknown id.
        rows = slate.rows[slate.order]
        _, first = np.unique(rows, return_index=True)
        duplicate = np.ones(len(rows), dtype=bool)
        duplicate[first] = False
        removed = slate.drop(duplicate, self.name, "duplicate item")
        if self.threshold is None or len(slate.order) < 2:
            return Outcome(removed=removed)
        head = slate.order[: self.candidates]
        vectors = self.vectors[slate.rows[head]]
        similar = np.triu(vectors @ vectors.T > self.threshold, k=1)
        near = np.zeros(len(head), dtype=bool)
        # Greedy: a kept item hides the later items close to it. Only items with a close later item
        # can hide anything, and near copies are rare, so the loop visits a handful of rows at most.
        for i in np.flatnonzero(similar.any(axis=1)).tolist():
            if not near[i]:
                near |= similar[i]
        mask = np.zeros(len(slate.order), dtype=bool)
        mask[: len(head)] = near
        return Outcome(removed=removed + slate.drop(mask, self.name, f"near duplicate (cosine > {self.threshold})"))


class FreshnessBoost(Rule):
    """Add `weight` x 0.5^(age / half_life_days) to each score."""

    name, phase = "freshness_boost", Phase.SCORE
    params = {"half_life_days": NUMBER, "weight": NUMBER}

    def __init__(self, catalog: Catalog, users: Users, vectors: np.ndarray, params: dict[str, Any]) -> None:
        super().__init__(catalog, users, vectors, params)
        self.half_life = float(params.get("half_life_days", 30))
        self.weight = float(params.get("weight", 0.1))
        self.check(self.half_life > 0, "half_life_days must be > 0")
        self.check(self.weight >= 0, "weight must be >= 0")

    def apply(self, slate: Slate) -> Outcome:
        rows = slate.rows[slate.order]
        boost = self.weight * np.exp2(-self.catalog.age_days[rows] / self.half_life)
        slate.scores[slate.order] += boost.astype(np.float32)
        if slate.debug:
            for position, value in zip(slate.order[boost > 1e-4], boost[boost > 1e-4], strict=True):
                slate.notes[int(position)].append(f"{self.name} +{value:.4f}")
        return Outcome(moved=slate.resort())


class BusinessBoost(Rule):
    """Add fixed boosts to named items and providers (campaigns, partners)."""

    name, phase = "business_boost", Phase.SCORE
    params = {"items": dict, "providers": dict}

    def __init__(self, catalog: Catalog, users: Users, vectors: np.ndarray, params: dict[str, Any]) -> None:
        super().__init__(catalog, users, vectors, params)
        items, providers = params.get("items", {}), params.get("providers", {})
        for table in (items, providers):
            self.check(
                all(isinstance(v, NUMBER) and not isinstance(v, bool) for v in table.values()), "boosts must be numbers"
            )
        self.item_boost = np.zeros(len(catalog), dtype=np.float32)
        rows = catalog.index.rows([str(k) for k in items])
        self.item_boost[rows[rows >= 0]] = np.array([items[k] for k in items], dtype=np.float32)[rows >= 0]
        names = {name: n for n, name in enumerate(catalog.provider_names)}
        self.provider_boost = np.zeros(len(catalog.provider_names), dtype=np.float32)
        for name, value in providers.items():
            if str(name) in names:
                self.provider_boost[names[str(name)]] = value

    def apply(self, slate: Slate) -> Outcome:
        rows = slate.rows[slate.order]
        boost = self.item_boost[rows] + self.provider_boost[self.catalog.provider[rows]]
        slate.scores[slate.order] += boost
        if slate.debug:
            for position, value in zip(slate.order[boost != 0], boost[boost != 0], strict=True):
                slate.notes[int(position)].append(f"{self.name} {value:+.4f}")
        return Outcome(moved=slate.resort())


class MaximalMarginalRelevance(Rule):
    """Reorder the top `candidates` by MMR: lambda x relevance - (1 - lambda) x max similarity to
    the items already placed, over item embeddings."""

    name, phase = "mmr", Phase.REORDER
    params = {"lambda": NUMBER, "candidates": int}

    def __init__(self, catalog: Catalog, users: Users, vectors: np.ndarray, params: dict[str, Any]) -> None:
        super().__init__(catalog, users, vectors, params)
        self.trade_off = float(params.get("lambda", 0.7))
        self.candidates = params.get("candidates", 100)
        self.check(0 <= self.trade_off <= 1, "lambda must be in [0, 1]")
        self.check(self.candidates >= 1, "candidates must be >= 1")

    def apply(self, slate: Slate) -> Outcome:
        head = slate.order[: self.candidates]
        if len(head) < 3:
            return Outcome()
        relevance = slate.scores[head].astype(np.float64)
        spread = relevance.max() - relevance.min()
        relevance = (relevance - relevance.min()) / spread if spread > 0 else np.zeros(len(head))
        vectors = self.vectors[slate.rows[head]]
        placed = np.zeros(len(head), dtype=bool)
        weighted = self.trade_off * relevance
        penalty = 1 - self.trade_off
        closest: np.ndarray | None = None  # highest similarity to a placed item; none placed yet
        picks = []
        for _ in range(min(len(head), slate.num_results + 10)):  # only the top of the list is shown
            gain = weighted.copy() if closest is None else weighted - penalty * closest
            gain[placed] = -np.inf
            pick = int(np.argmax(gain))
            placed[pick] = True
            picks.append(pick)
            similarity = (vectors @ vectors[pick]).astype(np.float64)
            closest = similarity if closest is None else np.maximum(closest, similarity)
        rest = np.flatnonzero(~placed)
        new_head = head[np.concatenate([picks, rest]).astype(np.int64)]
        for rank, old in enumerate(picks if slate.debug else []):
            if old != rank:
                slate.notes[int(head[old])].append(f"{self.name}: moved from {old + 1} to {rank + 1}")
        return Outcome(moved=slate.reorder(np.concatenate([new_head, slate.order[len(head) :]])))
