"""The Ranking gRPC service: hydrate features, score them on Triton, return candidates best first."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import grpc
import numpy as np

from funnel.artifacts.follow import follow_newest
from funnel.artifacts.store import read_manifest, wait_for_latest
from funnel.candidates import Candidates
from funnel.features import BundleFeatures, UserContext, country_slot
from funnel.runtime.errors import InvalidArgument, Unavailable
from funnel.runtime.metrics import ARTIFACT_INFO, FOREIGN_USER_VECTORS
from funnel.runtime.server import Runtime
from funnel.triton.client import TritonRanker
from funnel.v2 import ranking_pb2, ranking_pb2_grpc
from funnel.validation import check_context, check_id, check_ids
from funnel.wire import FLOAT32, write_column
from services.ranking.settings import RankingSettings

log = logging.getLogger("funnel.ranking")

# Time kept back from the caller's deadline to build and send the response.
RESPONSE_MARGIN_S = 0.002
DEFAULT_TIMEOUT_S = 1.0
SCORES_FIELD = ranking_pb2.RankResponse.DESCRIPTOR.fields_by_name["scores"].number


class LoadedFeatures(BundleFeatures):
    def __init__(self, bundle: Path) -> None:
        self.bundle = bundle
        self.version = read_manifest(bundle)["version"]
        super().__init__(bundle)

    def user_context(self, request: ranking_pb2.RankRequest, query: np.ndarray | None) -> UserContext:
        """What the features know of the requesting user: stored history plus this session's items,
        the time of their latest stored action, their country and the user tower's vector (`query`;
        None when retrieval degraded: the one stored with the bundle is used)."""
        recent = self.catalog.index.rows(request.recent_item_ids)
        row = self.users.index.row(request.user_id)
        return self.context(row, recent[recent >= 0], country_slot(request.context.country), query)


class RankingService(ranking_pb2_grpc.RankingServicer):
    service_names = [ranking_pb2.DESCRIPTOR.services_by_name["Ranking"].full_name]

    def __init__(self, runtime: Runtime, settings: RankingSettings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.features: LoadedFeatures | None = None
        self.triton = TritonRanker(
            settings.triton_url,
            settings.model_name,
            settings.triton_max_batch,
            runtime.tls,
            shared_memory_rows=settings.max_candidates if settings.triton_shared_memory else 0,
        )
        self._watch: asyncio.Task[None] | None = None
        self._follow: asyncio.Task[None] | None = None
        self._model_version = ""  # the last version Triton answered with, for the info metric
        ranking_pb2_grpc.add_RankingServicer_to_server(self, runtime.server)

    async def start(self) -> None:
        bundles = Path(self.settings.artifact_dir) / "bundles"
        bundle = await wait_for_latest(bundles, self.settings.artifact_poll_seconds)
        self.features = await self.runtime.run_cpu(LoadedFeatures, bundle)
        ARTIFACT_INFO.labels("bundle", self.features.version).set(1)
        log.info("features loaded", extra={"version": self.features.version})
        self._watch = asyncio.create_task(self._watch_triton())
        if self.settings.reload_poll_seconds > 0:
            self._follow = asyncio.create_task(
                follow_newest(bundles, self.settings.reload_poll_seconds, self._bundle_name, self.swap_to)
            )

    def _bundle_name(self) -> str:
        return self.features.bundle.name if self.features is not None else ""

    async def swap_to(self, bundle: Path) -> None:
        """New features beside the served ones, the ranker version trained with them ready in Triton,
        then one reference swap: a call in flight finishes with what it started with."""
        loaded = await self.runtime.run_cpu(LoadedFeatures, bundle)
        wanted = read_manifest(bundle, verify=False).get("ranker_model_version")
        try:
            ready = await self.triton.reload()
        except Unavailable as exc:  # Triton restarting, say: the next poll tries again
            log.warning("bundle swap waits for Triton", extra={"bundle": bundle.name, "error": exc.message})
            return
        if wanted is not None and str(wanted) not in ready:
            raise RuntimeError(f"Triton has ranker versions {ready} ready, not {wanted} that {bundle.name} needs")
        previous, self.features = self.features, loaded
        if previous is not None:
            ARTIFACT_INFO.labels("bundle", previous.version).set(0)
        ARTIFACT_INFO.labels("bundle", loaded.version).set(1)
        log.info("features swapped", extra={"from": previous.version if previous else "", "to": loaded.version,
                                            "ranker_versions": ready})  # fmt: skip

    async def _watch_triton(self) -> None:
        """Readiness follows Triton: SERVING only while the ranker model is ready there."""
        while True:
            ready = await self.triton.model_ready()
            await self.runtime.readiness.set(ready, f"Triton model {self.settings.model_name} ready={ready}")
            await asyncio.sleep(self.settings.readiness_poll_seconds)

    async def stop(self) -> None:
        for task in (self._watch, self._follow):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.triton.close()

    async def ReloadModel(
        self, request: ranking_pb2.ReloadModelRequest, context: grpc.aio.ServicerContext
    ) -> ranking_pb2.ReloadModelResponse:
        versions = await self.triton.reload()
        log.info("model reloaded", extra={"model": self.settings.model_name, "ready_versions": versions})
        return ranking_pb2.ReloadModelResponse(model_name=self.settings.model_name, ready_versions=versions)

    @staticmethod
    def _user_vector(request: ranking_pb2.RankRequest, version: str) -> np.ndarray | None:
        """The request's user vector when the served bundle's own user tower made it, else None
        (the stored vector is read): similarities across two versions' item spaces are noise."""
        if not len(request.user_vector):
            return None
        if not request.user_vector_version:
            raise InvalidArgument("user_vector_version must name the bundle version whose user tower made user_vector")
        user_vector = np.array(request.user_vector, dtype=np.float32)
        if not np.isfinite(user_vector).all():
            raise InvalidArgument("user_vector holds a non-finite value")
        if request.user_vector_version != version:
            FOREIGN_USER_VECTORS.inc()
            return None
        return user_vector

    async def Rank(
        self, request: ranking_pb2.RankRequest, context: grpc.aio.ServicerContext
    ) -> ranking_pb2.RankResponse:
        check_id(request.user_id, "user_id")
        check_context(request.context)
        candidates = Candidates.read(request.candidates)
        count = len(candidates)
        if count == 0:
            raise InvalidArgument("candidates.item_ids must not be empty")
        if count > self.settings.max_candidates:
            raise InvalidArgument(f"{count} candidates, at most {self.settings.max_candidates} allowed")
        check_ids(request.recent_item_ids, "recent_item_ids", self.settings.max_recent_items)
        loaded = self.features
        if loaded is None:
            raise Unavailable("features not loaded yet")
        dim = loaded.store.item_vectors.shape[1]
        if len(request.user_vector) not in (0, dim):
            raise InvalidArgument(f"user_vector has {len(request.user_vector)} values; the bundle's vectors have {dim}")
        user_vector = self._user_vector(request, loaded.version)
        rows = candidates.rows_in(loaded.catalog.index, loaded.version)
        if (rows < 0).any():
            unknown = [candidates.item_ids[i] for i in np.flatnonzero(rows < 0)[:5]]
            raise InvalidArgument(f"{int((rows < 0).sum())} candidate item ids are not in the catalog, e.g. {unknown}")

        buffer, slot = self.triton.features_buffer(count)
        try:
            user = loaded.user_context(request, user_vector)
            await self.runtime.run_call_work(loaded.store.features, user, rows, candidates.sources, None, buffer)
        except BaseException:
            if slot is not None:
                slot.release()
            raise
        remaining = context.time_remaining()
        timeout = (DEFAULT_TIMEOUT_S if remaining is None else remaining) - RESPONSE_MARGIN_S
        scores = await self.triton.score(buffer, slot, timeout)
        if scores.model_version != self._model_version:
            if self._model_version:
                ARTIFACT_INFO.labels("model", self._model_version).set(0)
            ARTIFACT_INFO.labels("model", scores.model_version).set(1)
            self._model_version = scores.model_version
        response = ranking_pb2.RankResponse(model_name=self.settings.model_name, model_version=scores.model_version)
        write_column(response, SCORES_FIELD, scores.values, FLOAT32)
        return response
