"""Names and codes of the candidate sources, shared by retrieval, the gateway, ranking features and
training.

Between stages a candidate carries the code of the source that found it (`funnel.v2.CandidateSource`
holds the same numbers); the public API names it. The ranker reads the code as a categorical
feature, so the codes are fixed here once (new sources append).
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
SOURCE_NAMES = {code: name for name, code in SOURCE_CODES.items()}
RETRIEVAL_CODES = tuple(SOURCE_CODES[name] for name in RETRIEVAL_SOURCES)


def source_code(name: str) -> int:
    return SOURCE_CODES.get(name, 0)
