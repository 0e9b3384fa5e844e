"""The Retrieval gRPC service: validates, encodes the user once, asks every candidate source of its
shard with the request's hard filters applied inside each, and hot-swaps to new artifact versions
(and policy files) without dropping a call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import faiss
import grpc
import numpy as np
import torch

from funnel.artifacts.follow import follow_newest
from funnel.artifacts.store import MANIFEST, ArtifactError, latest_version, wait_for_latest
from funnel.candidates import Candidates, pick
from funnel.features import country_slot
from funnel.policy.document import PolicyDocument, load_policy
from funnel.policy.watch import watch_policy
from funnel.retrieval.faiss_index import IndexSpec
from funnel.retrieval.sources import Query
from funnel.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from funnel.runtime.metrics import ARTIFACT_INFO
from funnel.runtime.server import Runtime
from funnel.sources import RETRIEVAL_CODES, SOURCE_NAMES
from funnel.v2 import retrieval_pb2, retrieval_pb2_grpc
from funnel.validation import check_context, check_count, check_id, check_ids
from services.retrieval.index import ShardIndex
from services.retrieval.settings import RetrievalSettings

log = logging.getLogger("funnel.retrieval")


class RetrievalService(retrieval_pb2_grpc.RetrievalServicer):
    service_names = [retrieval_pb2.DESCRIPTOR.services_by_name["Retrieval"].full_name]

    def __init__(self, runtime: Runtime, settings: RetrievalSettings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.bundles = Path(settings.artifact_dir) / "bundles"
        self.spec = IndexSpec(settings.index_factory, settings.search_params)
        self.index: ShardIndex | None = None
        self.policy: PolicyDocument | None = None
        self._swap_lock = asyncio.Lock()
        self._watches: list[asyncio.Task[None]] = []
        retrieval_pb2_grpc.add_RetrievalServicer_to_server(self, runtime.server)

    async def start(self) -> None:
        # One query per thread: parallelism comes from concurrent requests, not OpenMP or intra-op.
        faiss.omp_set_num_threads(1)
        torch.set_num_threads(1)
        path = Path(self.settings.policy_path)
        self.policy = load_policy(path)  # a bad policy fails start-up loudly
        bundle = await wait_for_latest(self.bundles, self.settings.artifact_poll_seconds)
        await self.swap_to(bundle)
        await self.runtime.readiness.set(True, "index loaded")
        if self.settings.reload_poll_seconds > 0:
            poll = self.settings.reload_poll_seconds
            self._watches.append(asyncio.create_task(follow_newest(self.bundles, poll, self._version, self.swap_to)))
        if self.settings.policy_poll_seconds > 0:
            self._watches.append(
                asyncio.create_task(
                    watch_policy(
                        path, self.settings.policy_poll_seconds, self._apply_policy, lambda: self.policy.version
                    )
                )
            )

    async def _apply_policy(self, policy: PolicyDocument) -> None:
        async with self._swap_lock:  # a bundle loading now must not come up with the old rules
            self.policy = policy
            if self.index is not None:
                self.index.use_content_rules(policy.content)

    async def stop(self) -> None:
        for watch in self._watches:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        self.index = None

    def _version(self) -> str:
        return self.index.version if self.index else ""

    async def swap_to(self, bundle: Path) -> tuple[str, str, bool]:
        """Load `bundle` beside the current index, then swap; (previous, current, swapped)."""
        async with self._swap_lock:
            previous = self.index
            previous_version = previous.version if previous else ""
            if previous is not None and previous.version == bundle.name:
                return previous_version, previous_version, False
            s = self.settings
            loaded = await self.runtime.run_cpu(
                ShardIndex, bundle, s.shard_index, s.shard_count, self.spec, self.policy.content
            )
            # One reference assignment: a call that already read self.index finishes on the old
            # index, which is freed when the last such call drops it.
            self.index = loaded
            if previous_version:
                ARTIFACT_INFO.labels("bundle", previous_version).set(0)
            ARTIFACT_INFO.labels("bundle", loaded.version).set(1)
            log.info(
                "index swapped",
                extra={"from": previous_version, "to": loaded.version, "shard": f"{s.shard_index}/{s.shard_count}",
                       "items": loaded.size, "factory": self.spec.factory},
            )  # fmt: skip
            return previous_version, loaded.version, True

    async def Reload(
        self, request: retrieval_pb2.ReloadRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.ReloadResponse:
        if request.version:
            if "/" in request.version or request.version.startswith("."):
                raise InvalidArgument("version must be a directory name under bundles/")
            bundle = self.bundles / request.version
            if not (bundle / MANIFEST).is_file():
                raise NotFound(f"no complete bundle {request.version!r}")
        else:
            bundle = latest_version(self.bundles)
            if bundle is None:
                raise NotFound("no complete bundle to load")
        try:
            previous, current, swapped = await self.swap_to(bundle)
        except (ArtifactError, KeyError) as exc:
            raise FailedPrecondition(f"bundle {bundle.name} cannot be served: {exc}") from exc
        return retrieval_pb2.ReloadResponse(previous_version=previous, current_version=current, swapped=swapped)

    async def Retrieve(
        self, request: retrieval_pb2.RetrieveRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.RetrieveResponse:
        s = self.settings
        check_id(request.user_id, "user_id")
        check_count(request.num_candidates, "num_candidates", s.max_candidates)
        check_ids(request.exclude_item_ids, "exclude_item_ids", s.max_excluded)
        check_ids(request.recent_item_ids, "recent_item_ids", s.max_recent_items)
        check_context(request.context)
        limits = {code: request.num_candidates for code in (request.sources or RETRIEVAL_CODES)}
        for entry in request.source_limits:
            check_count(entry.limit, f"source_limits[{entry.source}].limit", s.max_candidates)
            limits[entry.source] = entry.limit
        unknown = sorted(set(limits) - set(RETRIEVAL_CODES))
        if unknown:
            raise InvalidArgument(f"unknown or non-retrieval sources {unknown}; this service serves {RETRIEVAL_CODES}")
        index = self.index  # one reference for the whole call, so a swap never mixes versions
        if index is None:
            raise Unavailable("index not loaded yet")
        return await self.runtime.run_call_work(_retrieve, index, request, limits, s)


def _retrieve(
    index: ShardIndex, request: retrieval_pb2.RetrieveRequest, limits: dict[int, int], settings: RetrievalSettings
) -> retrieval_pb2.RetrieveResponse:
    user_row = index.users.index.row(request.user_id)
    recent = index.catalog.index.rows(request.recent_item_ids)
    history = np.concatenate([index.history(user_row), recent[recent >= 0]])
    excluded = index.catalog.index.rows(request.exclude_item_ids)
    excluded = excluded[excluded >= 0]
    if settings.exclude_history:
        excluded = np.concatenate([excluded, history])
    slot = country_slot(request.context.country)
    if slot == 0 and user_row >= 0:  # no country in the request: the user's home country
        slot = int(index.users.country[user_row]) + 1
    vector = index.encoder.encode(history, slot)
    query = Query(history=history, allowed=index.allowed.for_request(request.context, excluded), vector=vector)
    hits = [(code, index.sources[SOURCE_NAMES[code]].fetch(query, limit)) for code, limit in limits.items()]
    rows = np.concatenate([h.rows for _, h in hits]) if hits else np.zeros(0, dtype=np.int64)
    response = retrieval_pb2.RetrieveResponse(
        index_version=index.version,
        shard_index=settings.shard_index,
        shard_count=settings.shard_count,
        known_user=user_row >= 0,
    )
    response.user_vector.extend(vector[0].tolist())
    Candidates(
        pick(index.item_id_list, rows),
        np.repeat(np.array([code for code, _ in hits], dtype=np.int32), [len(h.rows) for _, h in hits]),
        np.concatenate([h.scores for _, h in hits]).astype(np.float32) if hits else np.zeros(0, np.float32),
        rows=rows,
        catalog_version=index.version,
    ).write(response.candidates)
    return response
