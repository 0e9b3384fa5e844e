"""Rule names to components, and building a validated rule list from a policy."""

from __future__ import annotations

import numpy as np

from funnel.artifacts.catalog import Catalog, Users
from funnel.policy.document import ContentRules, PolicyError, RuleSpec
from funnel.policy.rules import (
    BusinessBoost,
    Dedupe,
    ExcludeConsumed,
    FreshnessBoost,
    MaximalMarginalRelevance,
    Rule,
)
from funnel.policy.selection import CategoryCap, Pin, ProviderCap, ProviderMinShare

RULES: dict[str, type[Rule]] = {
    rule.name: rule
    for rule in (
        ExcludeConsumed, Dedupe, FreshnessBoost, BusinessBoost, MaximalMarginalRelevance,
        CategoryCap, ProviderCap, ProviderMinShare, Pin,
    )
}  # fmt: skip


def build_rules(
    specs: tuple[RuleSpec, ...], catalog: Catalog, users: Users, vectors: np.ndarray, content: ContentRules
) -> list[Rule]:
    """Rules in phase order (stable within a phase); raises PolicyError naming the problem."""
    names = [spec.name for spec in specs]
    for name in names:
        if name not in RULES:
            raise PolicyError(f"unknown rule {name!r}; known rules: {sorted(RULES)}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise PolicyError(f"rules listed more than once: {repeated}")
    rules = [RULES[spec.name](catalog, users, vectors, spec.params) for spec in specs]
    _check_against_content(rules, catalog, content)
    return sorted(rules, key=lambda rule: rule.phase)


def _check_against_content(rules: list[Rule], catalog: Catalog, content: ContentRules) -> None:
    """Business rules that promote what content policy forbids are contradictions, not intent."""
    for rule in rules:
        if isinstance(rule, Pin):
            blocked = sorted(set(rule.positions) & content.blocked_item_ids)
            rows = catalog.index.rows(list(rule.positions))
            providers = {catalog.provider_names[catalog.provider[r]] for r in rows[rows >= 0]}
            blocked += sorted(providers & content.blocked_providers)
            if blocked:
                raise PolicyError(f"contradictory settings: pin places content the policy blocks: {blocked}")
        if isinstance(rule, BusinessBoost):
            boosted = {catalog.provider_names[p] for p in np.flatnonzero(rule.provider_boost > 0)}
            conflict = sorted(boosted & content.blocked_providers)
            if conflict:
                raise PolicyError(f"contradictory settings: business_boost boosts blocked providers {conflict}")
