"""Merging retrieval shards and candidate sources into one candidate list."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from funnel.fusion import fuse
from funnel.v1 import common_pb2, retrieval_pb2


def merge_candidates(
    responses: Iterable[retrieval_pb2.RetrieveResponse], limits: dict[str, int]
) -> list[common_pb2.Candidate]:
    """Each source's hits from every shard, best first by that source's score, cut to its limit
    (for the ANN source exactly the top-k one index over every item would give); then the sources
    fused by rank (`funnel.fusion`). Each candidate's score is its fused score, its source the one
    that ranked it best."""
    by_source: dict[str, list[common_pb2.Candidate]] = defaultdict(list)
    for response in responses:
        for candidate in response.candidates:
            by_source[candidate.source].append(candidate)
    ranked: dict[str, list[str]] = {}
    for source, limit in limits.items():
        pool = sorted(by_source.get(source, ()), key=lambda c: -c.score)
        # dict.fromkeys keeps the first of any repeat, in order.
        ranked[source] = list(dict.fromkeys(c.item_id for c in pool))[:limit]
    return [
        common_pb2.Candidate(item_id=item_id, score=score, source=source)
        for item_id, score, source in fuse(ranked)
    ]
