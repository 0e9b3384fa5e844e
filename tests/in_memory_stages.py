"""Stages in the test process, behind the gateway's Transport protocol, for the in-process gateway tests.

Retrieval and re-ranking run the services' own request code (`_retrieve`, `_rerank`) on the test
bundle, without a server; ranking scores by a fixed rule (the ranker itself needs Triton, which
the real-process tests exercise). Each stage can be made late, failing or slow on some calls: the
faults the gateway has to survive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from funnel.artifacts.catalog import Catalog, Embeddings, Users
from funnel.artifacts.store import latest_version, read_manifest
from funnel.candidates import Candidates
from funnel.policy.document import PolicyDocument
from funnel.policy.engine import PolicyEngine
from funnel.retrieval.faiss_index import IndexSpec
from funnel.v2 import ranking_pb2, retrieval_pb2
from services.gateway.stage_client import Metadata, StageError
from services.reranking.servicer import _rerank
from services.retrieval.index import ShardIndex
from services.retrieval.servicer import _retrieve
from services.retrieval.settings import RetrievalSettings


@dataclass
class Faults:
    """What the stage does on its n-th call (1-based): fail with `code`, or take `delay_s` first."""

    code: grpc.StatusCode | None = None
    delay_s: float = 0.0
    calls: tuple[int, ...] | None = None  # the faulty calls; None = every call

    def applies(self, n: int) -> bool:
        return self.calls is None or n in self.calls


class InMemoryStage:
    """A Transport that answers with `handler(request)`, subject to `faults`; counts its calls and
    the calls its caller gave up on (cancelled)."""

    def __init__(self, handler: Callable[[Any], Any], faults: Faults | None = None, server_ms: float = 0.5) -> None:
        self.handler = handler
        self.faults = faults or Faults()
        self.server_ms = server_ms
        self.calls = 0
        self.cancelled = 0
        self.requests: list[Any] = []

    async def __call__(self, request: Any, timeout_s: float, metadata: Metadata) -> tuple[Any, float]:
        self.calls += 1
        self.requests.append(request)
        faulty = self.faults.applies(self.calls)
        try:
            if faulty and self.faults.delay_s:
                await asyncio.sleep(min(self.faults.delay_s, timeout_s))
                if self.faults.delay_s >= timeout_s:
                    raise StageError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if faulty and self.faults.code is not None:
            raise StageError(self.faults.code, "injected fault")
        return self.handler(request), self.server_ms


def retrieval_handler(artifacts: Path, policy: PolicyDocument, shard: int, shards: int) -> Callable[[Any], Any]:
    """The retrieval service's own request code over one shard of the test bundle."""
    bundle = latest_version(artifacts / "bundles")
    index = ShardIndex(bundle, shard, shards, IndexSpec("Flat"), policy.content)
    settings = RetrievalSettings(artifact_dir=str(artifacts), shard_index=shard, shard_count=shards)

    def handle(request: retrieval_pb2.RetrieveRequest) -> retrieval_pb2.RetrieveResponse:
        limits = {entry.source: entry.limit for entry in request.source_limits}
        return _retrieve(index, request, limits, settings)

    return handle


def reranking_handler(artifacts: Path, policy: PolicyDocument) -> Callable[[Any], Any]:
    """The re-ranking service's own request code on the test bundle."""
    bundle = latest_version(artifacts / "bundles")
    engine = PolicyEngine(Catalog.load(bundle), Users.load(bundle), Embeddings.load(bundle).items, policy)
    version = read_manifest(bundle, verify=False)["version"]
    return lambda request: _rerank(engine, request, Candidates.read(request.candidates), version)


def reverse_ranking(request: ranking_pb2.RankRequest) -> ranking_pb2.RankResponse:
    """Scores that reverse the order it was given: a change the gateway's answer must show."""
    count = len(request.candidates.item_ids)
    return ranking_pb2.RankResponse(scores=np.linspace(0.1, 0.9, count).tolist(), model_version="reverse")
