"""Selectors and pins: the top-N is filled once, under every cap and quota at the same time.

Filling greedily in score order, a candidate is placed only if it keeps every constraint; one that
does not waits. Category windows are hard (never exceeded; a list can come out shorter). Provider
caps and provider quotas are soft: when the remaining candidates cannot satisfy them, the list is
completed without them rather than left short (caps hold "whenever satisfiable").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from funnel.artifacts.catalog import Catalog, Users
from funnel.policy.rules import NUMBER, Outcome, Phase, Rule, Slate


class CategoryCap(Rule):
    """At most `max_per_category` items of one category in any `window` consecutive positions
    (no window: in the whole list)."""

    name, phase = "category_cap", Phase.SELECT
    params = {"max_per_category": int, "window": int}

    def __init__(self, catalog: Catalog, users: Users, vectors: np.ndarray, params: dict[str, Any]) -> None:
        super().__init__(catalog, users, vectors, params)
        self.cap = params.get("max_per_category", 3)
        self.window = params.get("window")
        self.check(self.cap >= 1, f"max_per_category must be an integer >= 1, got {self.cap!r}")
        self.check(self.window is None or self.window > self.cap, "window must be larger than max_per_category")

    def allows(self, placed_categories: list[int], category: int) -> bool:
        recent = placed_categories if self.window is None else placed_categories[-(self.window - 1) :]
        return recent.count(category) < self.cap


class ProviderCap(Rule):
    """No provider holds more than `max_share` of the top-N."""

    name, phase = "provider_cap", Phase.SELECT
    params = {"max_share": NUMBER}

    def __init__(self, catalog: Catalog, users: Users, vectors: np.ndarray, params: dict[str, Any]) -> None:
        super().__init__(catalog, users, vectors, params)
        self.max_share = float(params.get("max_share", 0.3))
        self.check(0 < self.max_share <= 1, "max_share must be in (0, 1]")

    def limit(self, n: int) -> int:
        return max(1, int(self.max_share * n))


class ProviderMinShare(Rule):
    """At least `min_share` of the top-N from small providers (at most `max_catalog_items` items
    in the catalog) or new ones (no item older than `new_within_days`), when such candidates exist.
    With `window`, the share holds in every block of `window` positions (1-10, 11-20, ...), so the
    exposure lands where people look rather than at the bottom of a long list."""

    name, phase = "provider_min_share", Phase.SELECT
    params = {"min_share": NUMBER, "max_catalog_items": int, "new_within_days": NUMBER, "window": int}

    def __init__(self, catalog: Catalog, users: Users, vectors: np.ndarray, params: dict[str, Any]) -> None:
        super().__init__(catalog, users, vectors, params)
        self.min_share = float(params.get("min_share", 0.1))
        self.check(0 < self.min_share <= 1, "min_share must be in (0, 1]")
        self.window = params.get("window")
        self.check(self.window is None or self.window >= 1, "window must be an integer >= 1")
        providers = len(catalog.provider_names)
        size = np.bincount(catalog.provider, minlength=providers)
        self.small = size <= params.get("max_catalog_items", 20)
        if "new_within_days" in params:
            oldest = np.zeros(providers, dtype=np.float32)
            np.maximum.at(oldest, catalog.provider, catalog.age_days)
            self.small |= (oldest <= float(params["new_within_days"])) & (size > 0)

    def quota(self, n: int) -> int:
        return int(np.ceil(self.min_share * n - 1e-9))

    def block(self, placed: int, n: int) -> tuple[int, int]:
        """(first position, size) of the block the next slot falls in: the whole list without a window."""
        if self.window is None:
            return 0, n
        start = placed // self.window * self.window
        return start, min(self.window, n - start)


class Pin(Rule):
    """Business placements: `items` maps an item id to a 1-based position. A pinned item still
    passes content policy and exclusions; one that was filtered out is not placed."""

    name, phase = "pin", Phase.PIN
    params = {"items": dict}

    def __init__(self, catalog: Catalog, users: Users, vectors: np.ndarray, params: dict[str, Any]) -> None:
        super().__init__(catalog, users, vectors, params)
        self.positions = {str(k): v for k, v in params.get("items", {}).items()}
        values = list(self.positions.values())
        self.check(
            all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values),
            "positions must be integers >= 1",
        )
        self.check(len(set(values)) == len(values), "two items pinned at the same position")
        # By catalog row: a pinned item the catalog does not hold is removed by content policy anyway.
        rows = catalog.index.rows(list(self.positions))
        self.position_of_row = {int(r): v for r, v in zip(rows.tolist(), values, strict=True) if r >= 0}
        self.rows = np.array(sorted(self.position_of_row), dtype=np.int64)

    def apply(self, slate: Slate) -> Outcome:
        pinned = np.isin(slate.rows[slate.order], self.rows)
        unpinned = list(slate.order[~pinned])
        placements = sorted((self.position_of_row[int(slate.rows[p])], int(p)) for p in slate.order[pinned])
        for position, member in placements:
            unpinned.insert(min(position - 1, len(unpinned)), member)
            slate.notes[member].append(f"{self.name}: placed at {position}")
        return Outcome(moved=slate.reorder(np.array(unpinned, dtype=np.int64)))


def fill_top(slate: Slate, catalog: Catalog, selectors: list[Rule], n: int) -> list[tuple[str, Outcome]]:
    """Reorder the slate so its first `n` entries satisfy every selector. Each report counts the
    candidates that rule made wait (`moved`)."""
    if not selectors or len(slate.order) == 0:
        return [(rule.name, Outcome()) for rule in selectors]
    caps = [r for r in selectors if isinstance(r, CategoryCap)]
    provider_caps = [r for r in selectors if isinstance(r, ProviderCap)]
    quotas = [r for r in selectors if isinstance(r, ProviderMinShare)]
    categories = catalog.category[slate.rows[slate.order]].tolist()
    providers = catalog.provider[slate.rows[slate.order]].tolist()
    small = [q.small[providers].tolist() for q in quotas]
    small_left = [sum(flags) for flags in small]  # small-provider candidates not yet placed
    placed_small: list[list[bool]] = [[] for _ in quotas]  # per quota, whether each placed item is small
    waited = dict.fromkeys((rule.name for rule in selectors), 0)
    placed: list[int] = []
    placed_categories: list[int] = []
    provider_count: dict[int, int] = {}

    provider_limits = [(cap.name, cap.limit(n)) for cap in provider_caps]

    def slot_state() -> tuple[list[tuple[str, dict[int, int], int]], list[tuple[str, list[bool]]]]:
        """What the next slot allows, computed once per slot rather than once per candidate."""
        windows = []
        for cap in caps:
            recent = placed_categories if cap.window is None else placed_categories[-(cap.window - 1) :]
            counts: dict[int, int] = {}
            for category in recent:
                counts[category] = counts.get(category, 0) + 1
            windows.append((cap.name, counts, cap.cap))
        reserved = []
        for k, (q, flags) in enumerate(zip(quotas, small, strict=True)):
            start, size = q.block(len(placed), n)
            got = sum(placed_small[k][start:])
            need = min(q.quota(size), got + small_left[k])  # never more than the candidates can give
            if need > got and need - got >= start + size - len(placed):
                reserved.append((q.name, flags))  # the block's remaining slots are kept for small providers
        return windows, reserved

    def blocker(i: int, soft: bool, state) -> str | None:
        windows, reserved = state
        for name, counts, cap in windows:
            if counts.get(categories[i], 0) >= cap:
                return name
        if soft:
            for name, limit in provider_limits:
                if provider_count.get(providers[i], 0) >= limit:
                    return name
            for name, flags in reserved:
                if not flags[i]:
                    return name
        return None

    def place(i: int) -> None:
        placed.append(i)
        placed_categories.append(categories[i])
        provider_count[providers[i]] = provider_count.get(providers[i], 0) + 1
        for k, flags in enumerate(small):
            placed_small[k].append(flags[i])
            small_left[k] -= int(flags[i])

    # Each slot takes the best remaining candidate that keeps every constraint; soft constraints
    # that no remaining candidate can meet are relaxed rather than leaving the slot empty.
    remaining = list(range(len(slate.order)))
    made_wait: dict[int, str] = {}
    while len(placed) < n and remaining:
        state = slot_state()
        chosen = None
        for k, i in enumerate(remaining):
            reason = blocker(i, True, state)
            if reason is None:
                chosen = k
                break
            made_wait.setdefault(i, reason)
        if chosen is None:
            chosen = next((k for k, i in enumerate(remaining) if blocker(i, False, state) is None), None)
        if chosen is None:
            break
        place(remaining.pop(chosen))
    for reason in made_wait.values():
        waited[reason] += 1
    slate.reorder(slate.order[np.array(placed + remaining, dtype=np.int64)])
    if caps and len(placed) < n:
        # What is left would break a category window anywhere in the top-N: it cannot be shown.
        cut = np.zeros(len(slate.order), dtype=bool)
        cut[len(placed) :] = True
        slate.drop(cut, caps[0].name, "no place left in the top-N without exceeding its category cap")
    return [(rule.name, Outcome(moved=waited[rule.name])) for rule in selectors]
