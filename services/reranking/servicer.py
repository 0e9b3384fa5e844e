"""The Reranking gRPC service: the policy engine off the event loop, with policy hot reload."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import grpc
import numpy as np

from funnel.artifacts.catalog import Catalog, Embeddings, Users
from funnel.artifacts.follow import follow_newest
from funnel.artifacts.store import read_manifest, wait_for_latest
from funnel.candidates import Candidates, check_item_ids
from funnel.policy.document import PolicyDocument, load_policy
from funnel.policy.engine import PolicyEngine
from funnel.policy.watch import watch_policy
from funnel.runtime.errors import InvalidArgument, Unavailable
from funnel.runtime.metrics import ARTIFACT_INFO
from funnel.runtime.server import Runtime
from funnel.sources import PINNED, SOURCE_CODES, SOURCE_NAMES
from funnel.v1 import common_pb2
from funnel.v2 import reranking_pb2, reranking_pb2_grpc
from funnel.validation import check_context, check_count, check_id, check_ids
from services.reranking.settings import RerankingSettings

log = logging.getLogger("funnel.reranking")


class RerankingService(reranking_pb2_grpc.RerankingServicer):
    service_names = [reranking_pb2.DESCRIPTOR.services_by_name["Reranking"].full_name]

    def __init__(self, runtime: Runtime, settings: RerankingSettings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.engine: PolicyEngine | None = None
        self._tables: tuple[Catalog, Users, np.ndarray] | None = None
        self.bundle_version = ""  # whose catalog rows a candidate list may carry for this process
        self._watch: asyncio.Task[None] | None = None
        self._follow: asyncio.Task[None] | None = None
        self._rebuild = asyncio.Lock()
        self._bundle_name = ""
        reranking_pb2_grpc.add_RerankingServicer_to_server(self, runtime.server)

    async def start(self) -> None:
        path = Path(self.settings.policy_path)
        policy = load_policy(path)  # a bad policy fails start-up loudly
        bundle = await wait_for_latest(
            Path(self.settings.artifact_dir) / "bundles", self.settings.artifact_poll_seconds
        )
        self._tables = await self.runtime.run_cpu(_load_tables, bundle)
        self.bundle_version = read_manifest(bundle, verify=False)["version"]
        self._bundle_name = bundle.name
        self.engine = PolicyEngine(*self._tables, policy)
        ARTIFACT_INFO.labels("policy", policy.version).set(1)
        ARTIFACT_INFO.labels("bundle", self.bundle_version).set(1)
        log.info(
            "policy loaded", extra={"policy_version": policy.version, "rules": [r.name for r in self.engine.rules]}
        )
        await self.runtime.readiness.set(True, "policy and catalog loaded")
        if self.settings.policy_poll_seconds > 0:
            self._watch = asyncio.create_task(
                watch_policy(path, self.settings.policy_poll_seconds, self._apply_policy, lambda: self.engine.version)
            )
        if self.settings.reload_poll_seconds > 0:
            bundles = Path(self.settings.artifact_dir) / "bundles"
            self._follow = asyncio.create_task(
                follow_newest(bundles, self.settings.reload_poll_seconds, lambda: self._bundle_name, self.swap_to)
            )

    async def _apply_policy(self, policy: PolicyDocument) -> None:
        async with self._rebuild:  # a bundle swap and a policy change never build from each other's old half
            current = self.engine.version if self.engine else ""
            engine = await self.runtime.run_cpu(lambda: PolicyEngine(*self._tables, policy))
            self.engine = engine  # one reference swap: calls in flight keep the engine they started with
        ARTIFACT_INFO.labels("policy", current).set(0)
        ARTIFACT_INFO.labels("policy", engine.version).set(1)

    async def swap_to(self, bundle: Path) -> None:
        """A newer bundle's catalog under the current policy, then one swap of engine and version
        together (no await between them, so no call sees one without the other)."""
        async with self._rebuild:
            policy = self.engine.policy
            tables = await self.runtime.run_cpu(_load_tables, bundle)
            engine = await self.runtime.run_cpu(lambda: PolicyEngine(*tables, policy))
            version = read_manifest(bundle, verify=False)["version"]
            previous = self.bundle_version
            self._tables, self.engine, self.bundle_version, self._bundle_name = tables, engine, version, bundle.name
        ARTIFACT_INFO.labels("bundle", previous).set(0)
        ARTIFACT_INFO.labels("bundle", version).set(1)
        log.info("catalog swapped", extra={"from": previous, "to": version})

    async def stop(self) -> None:
        for task in (self._watch, self._follow):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.engine = None

    async def Rerank(
        self, request: reranking_pb2.RerankRequest, context: grpc.aio.ServicerContext
    ) -> reranking_pb2.RerankResponse:
        check_id(request.user_id, "user_id")
        check_context(request.context)
        check_count(request.num_results, "num_results", self.settings.max_results)
        check_ids(request.exclude_item_ids, "exclude_item_ids", self.settings.max_excluded)
        check_ids(request.recent_item_ids, "recent_item_ids", self.settings.max_recent_items)
        count = len(request.candidates.item_ids)
        if count > self.settings.max_candidates:
            raise InvalidArgument(f"{count} candidates, at most {self.settings.max_candidates} allowed")
        candidates = Candidates.read(request.candidates)
        check_item_ids(candidates.item_ids, "candidates.item_ids")
        if count and not (request.candidates.ranking_scores or request.candidates.retrieval_scores):
            raise InvalidArgument("candidates need ranking_scores or retrieval_scores to be ordered by")
        engine = self.engine
        if engine is None:
            raise Unavailable("policy not loaded yet")
        return await self.runtime.run_call_work(_rerank, engine, request, candidates, self.bundle_version)


def _load_tables(bundle: Path) -> tuple[Catalog, Users, np.ndarray]:
    return Catalog.load(bundle), Users.load(bundle), Embeddings.load(bundle, mmap=True).items


def _rerank(
    engine: PolicyEngine, request: reranking_pb2.RerankRequest, candidates: Candidates, version: str
) -> reranking_pb2.RerankResponse:
    """The policy over `candidates`; `version` is the bundle whose catalog the engine holds."""
    result = engine.run(
        request.user_id,
        candidates.item_ids,
        candidates.scores,
        request.context,
        request.exclude_item_ids,
        request.num_results,
        request.debug,
        request.recent_item_ids,
        candidates.rows_in(engine.catalog.index, version),
    )
    response = reranking_pb2.RerankResponse(policy_version=engine.version)
    for rule, outcome in result.reports:
        response.rules.append(common_pb2.RuleReport(rule=rule, removed=outcome.removed, moved=outcome.moved))
    count = len(candidates)
    pinned = result.slate.item_ids[count:]  # pinned items the funnel did not retrieve
    if pinned:
        candidates = candidates.extended(pinned, SOURCE_CODES[PINNED])
    final = candidates.take(result.positions)
    final.write(response.candidates)
    response.positions.extend(np.where(result.positions < count, result.positions, -1).tolist())
    if request.debug:
        applied = ", ".join(rule for rule, _ in result.reports)
        for rank, position in enumerate(result.positions.tolist()):
            reasons = _reasons(final, rank, applied, engine, result.slate.notes.get(position, []))
            response.reasons.add(reasons=reasons)
    return response


def _reasons(final: Candidates, rank: int, applied: str, engine: PolicyEngine, notes: list[str]) -> list[str]:
    reasons = [f"found by {SOURCE_NAMES.get(int(final.sources[rank]), 'unknown')}"]
    reasons.append(f"retrieval score {final.retrieval_scores[rank]:.4f}")
    if final.ranking_scores is not None:
        reasons.append(f"ranking score {final.ranking_scores[rank]:.4f}")
    reasons.extend(notes)
    reasons.append(f"position {rank + 1} after policy {engine.version} ({applied})")
    return reasons
