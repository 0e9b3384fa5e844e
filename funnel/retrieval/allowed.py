"""Which items one request may be shown, as a mask every candidate source filters by.

Content policy depends on the request only through its maturity ceiling and country, so its mask
is computed once per such pair and kept; a request copies it and clears its own exclusions (what it
excludes, and the user's history unless consumed items may be served again).
"""

from __future__ import annotations

import numpy as np

from funnel.artifacts.catalog import Catalog
from funnel.policy.content import ContentFilter
from funnel.policy.document import ContentRules
from funnel.v1 import common_pb2


class AllowedItems:
    def __init__(self, catalog: Catalog, rules: ContentRules) -> None:
        self.filter = ContentFilter(catalog, rules)
        self._rows = np.arange(len(catalog), dtype=np.int64)
        self._by_key: dict[tuple[int, str], np.ndarray] = {}

    def content_mask(self, context: common_pb2.Context) -> np.ndarray:
        """Read-only: the items content policy allows in this context."""
        key = (self.filter.max_maturity(context), context.country)
        mask = self._by_key.get(key)
        if mask is None:
            mask = self.filter.allowed(self._rows, context)
            mask.setflags(write=False)
            self._by_key[key] = mask  # at most 5 ceilings x (countries + unknown) entries
        return mask

    def for_request(self, context: common_pb2.Context, excluded: np.ndarray) -> np.ndarray:
        allowed = self.content_mask(context).copy()
        allowed[excluded] = False
        return allowed
