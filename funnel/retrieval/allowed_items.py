"""Content policy's filter for each request context, kept: it depends on the request only through
its maturity ceiling and country, so its mask (and the same mask packed into bits for FAISS) is
computed once per such pair; a request adds its own exclusions (`allowed.py`)."""

from __future__ import annotations

import numpy as np

from funnel.artifacts.catalog import Catalog
from funnel.policy.content import ContentFilter
from funnel.policy.document import ContentRules
from funnel.retrieval.allowed import Allowed, packed
from funnel.v1 import common_pb2


class AllowedItems:
    def __init__(self, catalog: Catalog, rules: ContentRules) -> None:
        self.filter = ContentFilter(catalog, rules)
        self._rows = np.arange(len(catalog), dtype=np.int64)
        self._by_key: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}

    def content_mask(self, context: common_pb2.Context) -> np.ndarray:
        """Read-only: the items content policy allows in this context."""
        return self._content(context)[0]

    def for_request(self, context: common_pb2.Context, excluded: np.ndarray) -> Allowed:
        mask, bits = self._content(context)
        return Allowed(mask, excluded, bits)

    def _content(self, context: common_pb2.Context) -> tuple[np.ndarray, np.ndarray]:
        key = (self.filter.max_maturity(context), context.country)
        entry = self._by_key.get(key)
        if entry is None:
            mask = self.filter.allowed(self._rows, context)
            mask.setflags(write=False)
            bits = packed(mask)
            bits.setflags(write=False)
            entry = self._by_key[key] = (mask, bits)  # at most 5 ceilings x (countries + unknown) entries
        return entry
