"""Names of the candidate sources, shared by retrieval, the gateway, ranking features and training.

A candidate carries the name of the source that found it; the ranker reads it as a categorical
feature through `SOURCE_CODES`, so the codes are fixed here once (new sources append).
"""

from __future__ import annotations

ANN = "ann"  # two-tower user vector searched in the FAISS index
COVISIT = "covisit"  # items co-visited with the user's latest items
POPULAR = "popular"
CATEGORY_POPULAR = "category_popular"
FRESH = "fresh"
FALLBACK_POPULAR = "fallback_popular"  # the gateway's own list when every shard failed
PINNED = "pinned"  # placed by the policy, not found by the funnel

RETRIEVAL_SOURCES = (ANN, COVISIT, CATEGORY_POPULAR, POPULAR, FRESH)
SOURCE_CODES = {name: code for code, name in enumerate(("unknown", *RETRIEVAL_SOURCES, FALLBACK_POPULAR, PINNED))}


def source_code(name: str) -> int:
    return SOURCE_CODES.get(name, 0)
