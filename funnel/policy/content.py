"""Hard filters: what may never be shown, whatever the ranking says.

Used by the re-ranking service as its first rules, and by the gateway itself when re-ranking fails
or is late, so that content policy is never skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from funnel.artifacts.catalog import Catalog, country_bit
from funnel.policy.document import ContentRules
from funnel.v1 import common_pb2


@dataclass
class FilterResult:
    keep: np.ndarray  # bool per input candidate
    reasons: dict[int, str]  # input position -> why it was removed


class ContentFilter:
    """Blocked items and providers, maturity above the user's ceiling, region availability."""

    name = "content_policy"

    def __init__(self, catalog: Catalog, rules: ContentRules) -> None:
        self.catalog = catalog
        self.rules = rules
        blocked_providers = [i for i, name in enumerate(catalog.provider_names) if name in rules.blocked_providers]
        self._blocked_provider = np.zeros(len(catalog.provider_names), dtype=bool)
        self._blocked_provider[blocked_providers] = True
        blocked_rows = catalog.index.rows(sorted(rules.blocked_item_ids))
        self._blocked_item = np.zeros(len(catalog), dtype=bool)
        self._blocked_item[blocked_rows[blocked_rows >= 0]] = True

    def max_maturity(self, context: common_pb2.Context) -> int:
        return context.max_maturity or self.rules.default_max_maturity

    def _checks(self, rows: np.ndarray, context: common_pb2.Context) -> list[tuple[np.ndarray, str]]:
        known = rows >= 0
        safe_rows = np.where(known, rows, 0)
        ceiling = self.max_maturity(context)
        bit = country_bit(context.country)
        return [
            (~known, "unknown item"),
            (self._blocked_item[safe_rows], "blocked item"),
            (self._blocked_provider[self.catalog.provider[safe_rows]], "blocked provider"),
            (self.catalog.maturity[safe_rows] > ceiling, "maturity above the allowed rating"),
            (
                (self.catalog.region_mask[safe_rows] != -1) & ((self.catalog.region_mask[safe_rows] & bit) == 0),
                f"not available in {context.country or 'an unknown region'}",
            ),
        ]

    def apply(self, rows: np.ndarray, context: common_pb2.Context) -> FilterResult:
        """`rows` are catalog rows (-1 = unknown item, always removed)."""
        keep = np.ones(len(rows), dtype=bool)
        reasons: dict[int, str] = {}
        for failed, reason in self._checks(rows, context):
            newly = failed & keep
            for position in np.flatnonzero(newly):
                reasons[int(position)] = reason
            keep &= ~failed
        return FilterResult(keep, reasons)

    def allowed(self, rows: np.ndarray, context: common_pb2.Context) -> np.ndarray:
        """`apply`'s verdict without the reasons: for whole catalogs, where reasons are not read."""
        keep = np.ones(len(rows), dtype=bool)
        for failed, _ in self._checks(rows, context):
            keep &= ~failed
        return keep


def exclusion_mask(item_ids: list[str], excluded: set[str]) -> np.ndarray:
    """True for candidates the caller asked not to see."""
    if not excluded:
        return np.zeros(len(item_ids), dtype=bool)
    return np.isin(np.asarray(item_ids, dtype=str), np.asarray(sorted(excluded), dtype=str))
