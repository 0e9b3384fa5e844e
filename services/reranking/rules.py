"""Re-ranking rules: small components with stable names, each reporting what it did.

A rule sees the slate (the surviving candidates in display order) and returns how many it removed
and moved. Removed candidates get a reason, so "why was this item dropped?" always has an answer.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from funnel.artifacts.catalog import Catalog, Users
from funnel.policy.document import PolicyError, RuleSpec


@dataclass
class Slate:
    item_ids: np.ndarray  # str, one per input candidate
    rows: np.ndarray  # catalog row per input candidate (-1 unknown)
    scores: np.ndarray  # float32 ranking score per input candidate
    order: np.ndarray  # input positions still in the list, in display order
    user_row: int
    removed: dict[int, str] = field(default_factory=dict)  # input position -> rule: reason
    notes: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))

    def drop(self, drop_mask: np.ndarray, rule: str, reason: str) -> int:
        """Remove the slate entries where `drop_mask` (aligned with `order`) is set."""
        for position in self.order[drop_mask]:
            self.removed[int(position)] = f"{rule}: {reason}"
        self.order = self.order[~drop_mask]
        return int(drop_mask.sum())


@dataclass
class Outcome:
    removed: int = 0
    moved: int = 0


class Rule:
    name: ClassVar[str]
    allowed_params: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, catalog: Catalog, users: Users, params: dict[str, Any]) -> None:
        unknown = set(params) - self.allowed_params
        if unknown:
            raise PolicyError(f"rule {self.name}: unknown parameters {sorted(unknown)}")
        self.catalog = catalog
        self.users = users

    def apply(self, slate: Slate) -> Outcome:
        raise NotImplementedError


class ExcludeConsumed(Rule):
    """Drop items the user has already interacted with."""

    name = "exclude_consumed"

    def apply(self, slate: Slate) -> Outcome:
        if slate.user_row < 0:
            return Outcome()
        consumed = np.isin(slate.rows[slate.order], self.users.history(slate.user_row))
        return Outcome(removed=slate.drop(consumed, self.name, "already consumed"))


class Dedupe(Rule):
    """Keep the first (best) occurrence of each item id."""

    name = "dedupe"

    def apply(self, slate: Slate) -> Outcome:
        ids = slate.item_ids[slate.order]
        _, first = np.unique(ids, return_index=True)
        duplicate = np.ones(len(ids), dtype=bool)
        duplicate[first] = False
        return Outcome(removed=slate.drop(duplicate, self.name, "duplicate item"))


class CategoryCap(Rule):
    """At most `max_per_category` items of any one category in the list."""

    name = "category_cap"
    allowed_params = frozenset({"max_per_category"})

    def __init__(self, catalog: Catalog, users: Users, params: dict[str, Any]) -> None:
        super().__init__(catalog, users, params)
        cap = params.get("max_per_category", 3)
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
            raise PolicyError(f"rule {self.name}: max_per_category must be an integer >= 1, got {cap!r}")
        self.cap = cap

    def apply(self, slate: Slate) -> Outcome:
        categories = self.catalog.category[slate.rows[slate.order]]
        over = occurrence_rank(categories) >= self.cap
        return Outcome(removed=slate.drop(over, self.name, f"more than {self.cap} items of its category"))


def occurrence_rank(values: np.ndarray) -> np.ndarray:
    """For each entry, how many equal values come before it (0 for the first), vectorised."""
    sorter = np.argsort(values, kind="stable")
    ordered = values[sorter]
    starts = np.r_[True, ordered[1:] != ordered[:-1]] if len(ordered) else np.zeros(0, dtype=bool)
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(ordered)), 0))
    rank = np.empty(len(values), dtype=np.int64)
    rank[sorter] = np.arange(len(ordered)) - group_start
    return rank


RULES: dict[str, type[Rule]] = {rule.name: rule for rule in (ExcludeConsumed, Dedupe, CategoryCap)}


def build_rules(specs: tuple[RuleSpec, ...], catalog: Catalog, users: Users) -> list[Rule]:
    rules = []
    for spec in specs:
        if spec.name not in RULES:
            raise PolicyError(f"unknown rule {spec.name!r}; known rules: {sorted(RULES)}")
        rules.append(RULES[spec.name](catalog, users, spec.params))
    return rules
