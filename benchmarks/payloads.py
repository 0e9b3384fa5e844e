"""The bytes each hop of a request carries, measured on a running stack: what the floor must carry.

Each sampled request is replayed hop by hop against the real stage processes, with the gateway's own
request builders (`gateway/steps.py`) and Triton's request as the ranking service builds it, so the
sizes are the funnel's, not estimates.
"""

from __future__ import annotations

import time

import grpc
import numpy as np
import redis
from tritonclient.grpc.service_pb2 import ModelInferRequest

from benchmarks.grpc_floor import Payloads
from funnel.candidates import Candidates
from funnel.features import NUM_CATEGORICAL, NUM_DENSE
from funnel.launcher.stack import Stack
from funnel.live.schema import DISMISSED, RECENT, SERVED, user_key
from funnel.live.store import READ_SCRIPT
from funnel.runtime.deadline import Budget
from funnel.v1 import recommender_pb2, recommender_pb2_grpc
from funnel.v2 import ranking_pb2_grpc, reranking_pb2_grpc, retrieval_pb2_grpc
from gateway.merge import merge_candidates
from gateway.settings import GatewaySettings
from gateway.stage_client import StageCall
from gateway.steps import RankCandidates, RequestState, RerankCandidates, RetrieveCandidates
from services.ranking.shared_memory import InputRegion
from services.ranking.triton import plain_request, request_template, shared_request


def measure_payloads(stack: Stack, requests: list[recommender_pb2.RecommendRequest], shared_memory: bool) -> Payloads:
    """Mean bytes each way of every hop over `requests`, on the stack's first replica of each stage."""
    limits = GatewaySettings(retrieval_shards="-", ranking_target="-", reranking_target="-", artifact_dir="-")
    sizes: dict[str, list[tuple[int, int]]] = {hop: [] for hop in ("public", "retrieval", "ranking", "reranking")}
    triton: list[tuple[int, int]] = []
    shards = sorted({p.name.rsplit("-", 1)[0] for p in stack.processes if p.name.startswith("retrieval-")})
    channels = {name: grpc.insecure_channel(stack.address(name)) for name in ("gateway", "ranking-0", "reranking-0")}
    channels |= {shard: grpc.insecure_channel(stack.address(f"{shard}-0")) for shard in shards}
    template = request_template("ranker")
    region = InputRegion(2000) if shared_memory else None
    try:
        gateway = recommender_pb2_grpc.RecommenderStub(channels["gateway"])
        for request in requests:
            answer = gateway.Recommend(request, timeout=5)
            sizes["public"].append((request.ByteSize(), answer.ByteSize()))
            state = RequestState(request, Budget(5.0), 0.0, limits.source_limits())
            retrieve = RetrieveCandidates([], 60, None).build(state)  # type: ignore[arg-type]
            answers = [retrieval_pb2_grpc.RetrievalStub(channels[s]).Retrieve(retrieve, timeout=5) for s in shards]
            sizes["retrieval"] += [(retrieve.ByteSize(), a.ByteSize()) for a in answers]
            state.candidates = merge_candidates([Candidates.read(a.candidates) for a in answers], state.source_limits)
            state.user_vector = answers[0].user_vector
            rank = RankCandidates([], 80).build(state)
            ranked = ranking_pb2_grpc.RankingStub(channels["ranking-0"]).Rank(rank, timeout=5)
            sizes["ranking"].append((rank.ByteSize(), ranked.ByteSize()))
            triton.append(_triton_sizes(template, region, len(state.candidates)))
            RankCandidates([], 80).accept(state, [StageCall(ranked)])
            rerank = RerankCandidates([], 40, None).build(state)  # type: ignore[arg-type]
            reranked = reranking_pb2_grpc.RerankingStub(channels["reranking-0"]).Rerank(rerank, timeout=5)
            sizes["reranking"].append((rerank.ByteSize(), reranked.ByteSize()))
    finally:
        for channel in channels.values():
            channel.close()
        if region is not None:
            region.close()
    mean = {hop: tuple(int(v) for v in np.mean(pairs, axis=0)) for hop, pairs in sizes.items()}
    live = _live_read_sizes(stack, [request.user_id for request in requests], limits) if stack.redis else (0, 0)
    return Payloads(mean["public"], mean["retrieval"], mean["ranking"], mean["reranking"],
                    tuple(int(v) for v in np.mean(triton, axis=0)), live)  # type: ignore[arg-type]  # fmt: skip


def _resp_bytes(value: object) -> int:
    """Bytes of `value` in Redis's wire protocol (RESP): arrays of bulk strings, nested."""
    if isinstance(value, list):
        return len(f"*{len(value)}\r\n") + sum(_resp_bytes(part) for part in value)
    text = str(value).encode()
    return len(f"${len(text)}\r\n") + len(text) + 2


def _live_read_sizes(stack: Stack, users: list[str], settings: GatewaySettings) -> tuple[int, int]:
    """Mean bytes each way of the gateway's live-state read of `users`: the same script with the
    same arguments, on the stack's Redis."""
    assert stack.redis is not None
    client = redis.Redis(host=stack.redis.host, port=stack.redis.port, decode_responses=True)
    script = client.register_script(READ_SCRIPT)
    now_ms = int(time.time() * 1000)
    served_after = now_ms - settings.retention().served_ttl_ms
    args = [settings.live_recent_items, settings.live_dismissed_items, settings.served_filter_items, served_after]
    sent, received = [], []
    try:
        for user in users:
            keys = [user_key(user, group) for group in (RECENT, DISMISSED, SERVED)]
            sent.append(_resp_bytes(["EVALSHA", script.sha, len(keys), *keys, *args]))
            received.append(_resp_bytes(script(keys=keys, args=args)))
    finally:
        client.close()
    return int(np.mean(sent)), int(np.mean(received))


def _triton_sizes(template: ModelInferRequest, region: InputRegion | None, rows: int) -> tuple[int, int]:
    """Bytes of the inference request the ranking service sends for `rows` candidates, and of the
    answer (the model version and one float a row)."""
    if region is not None:
        slot = region.acquire(rows)
        assert slot is not None
        request = shared_request(template, slot, rows)
        slot.release()
    else:
        request = plain_request(
            template, np.zeros((rows, NUM_DENSE), np.float32), np.zeros((rows, NUM_CATEGORICAL), np.int64)
        )
    return request.ByteSize(), rows * 4 + 64
