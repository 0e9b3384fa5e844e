"""The Retrieval gRPC service: validates, searches the current shard index off the event loop."""

from __future__ import annotations

import logging
from pathlib import Path

import faiss
import grpc

from funnel.artifacts.store import wait_for_latest
from funnel.runtime.errors import InvalidArgument, Unavailable
from funnel.runtime.metrics import ARTIFACT_INFO
from funnel.runtime.server import Runtime
from funnel.v1 import common_pb2, retrieval_pb2, retrieval_pb2_grpc
from funnel.validation import check_context, check_count, check_id, check_ids
from services.retrieval.index import Hits, ShardIndex
from services.retrieval.settings import RetrievalSettings

log = logging.getLogger("funnel.retrieval")

SOURCE_ANN = "ann"
SOURCE_POPULAR = "popular"
SOURCES = (SOURCE_ANN, SOURCE_POPULAR)


class RetrievalService(retrieval_pb2_grpc.RetrievalServicer):
    service_names = [retrieval_pb2.DESCRIPTOR.services_by_name["Retrieval"].full_name]

    def __init__(self, runtime: Runtime, settings: RetrievalSettings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.index: ShardIndex | None = None
        retrieval_pb2_grpc.add_RetrievalServicer_to_server(self, runtime.server)

    async def start(self) -> None:
        # One query per thread: parallelism comes from concurrent requests, not OpenMP.
        faiss.omp_set_num_threads(1)
        bundles = Path(self.settings.artifact_dir) / "bundles"
        bundle = await wait_for_latest(bundles, self.settings.artifact_poll_seconds)
        s = self.settings
        self.index = await self.runtime.run_cpu(ShardIndex, bundle, s.shard_index, s.shard_count, s.index_factory)
        ARTIFACT_INFO.labels("bundle", self.index.version).set(1)
        log.info(
            "index loaded",
            extra={
                "version": self.index.version,
                "shard": f"{s.shard_index}/{s.shard_count}",
                "items": int(self.index.index.ntotal),
            },
        )
        await self.runtime.readiness.set(True, "index loaded")

    async def stop(self) -> None:
        self.index = None

    async def Retrieve(
        self, request: retrieval_pb2.RetrieveRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.RetrieveResponse:
        check_id(request.user_id, "user_id")
        check_count(request.num_candidates, "num_candidates", self.settings.max_candidates)
        check_ids(request.exclude_item_ids, "exclude_item_ids", self.settings.max_excluded)
        check_context(request.context)
        unknown = set(request.sources) - set(SOURCES)
        if unknown:
            raise InvalidArgument(f"unknown sources {sorted(unknown)}; known: {list(SOURCES)}")
        index = self.index  # one reference for the whole call, so a swap never mixes versions
        if index is None:
            raise Unavailable("index not loaded yet")
        sources = list(request.sources) or list(SOURCES)
        return await self.runtime.run_cpu(_retrieve, index, request, sources, self.settings)


def _retrieve(
    index: ShardIndex, request: retrieval_pb2.RetrieveRequest, sources: list[str], settings: RetrievalSettings
) -> retrieval_pb2.RetrieveResponse:
    exclude = index.catalog.index.rows(list(request.exclude_item_ids))
    exclude = exclude[exclude >= 0]
    user_row = index.user_row(request.user_id)
    response = retrieval_pb2.RetrieveResponse(
        index_version=index.version,
        shard_index=settings.shard_index,
        shard_count=settings.shard_count,
        known_user=user_row >= 0,
    )
    k = request.num_candidates
    if SOURCE_ANN in sources and user_row >= 0:
        _append(response, index, index.search(user_row, k, exclude), SOURCE_ANN)
    if SOURCE_POPULAR in sources:
        _append(response, index, index.popular(k, exclude), SOURCE_POPULAR)
    return response


def _append(response: retrieval_pb2.RetrieveResponse, index: ShardIndex, hits: Hits, source: str) -> None:
    ids = index.catalog.item_ids[hits.rows]
    response.candidates.extend(
        common_pb2.Candidate(
            item_id=str(item_id), score=float(score), source=source, stage_scores={"retrieval": float(score)}
        )
        for item_id, score in zip(ids, hits.scores, strict=True)
    )
