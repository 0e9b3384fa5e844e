"""The bytes each hop of a request carries, measured on a running stack: what the floor must carry.

Sampled requests go through the gateway as a client sends them. Every process counts the bytes of
the messages it receives and sends, by method (`funnel_rpc_received_bytes_total`,
`funnel_rpc_sent_bytes_total`), so each gRPC hop's mean is read from the processes' own metrics,
before and after: the sizes are the funnel's, live state folded in, not estimates. Two hops end at a
server that is not ours: ranking's request to Triton is built the way the ranking service builds it
(`funnel/triton/client.py`), for as many rows as ranking's report says it scored; the gateway's
live-state read is replayed with the same script and the default limits on the stack's Redis.
"""

from __future__ import annotations

import time

import grpc
import numpy as np
import redis
from tritonclient.grpc.service_pb2 import ModelInferRequest

from benchmarks.grpc_floor import Payloads
from funnel.features import NUM_CATEGORICAL, NUM_DENSE
from funnel.live.schema import DISMISSED, RECENT, SERVED, ReadLimits, Retention, user_key
from funnel.live.scripts import READ_SCRIPT
from funnel.triton.client import plain_request, request_template, shared_request
from funnel.triton.shared_memory import InputRegion
from funnel.v1 import recommender_pb2, recommender_pb2_grpc
from launcher.metrics import scrape, total
from launcher.stack import Stack

# The gRPC hops: the method each one calls, and the processes (by name prefix) that serve it.
HOPS = {
    "public": ("/funnel.v1.Recommender/Recommend", "gateway"),
    "retrieval": ("/funnel.v2.Retrieval/Retrieve", "retrieval-"),
    "ranking": ("/funnel.v2.Ranking/Rank", "ranking-"),
    "reranking": ("/funnel.v2.Reranking/Rerank", "reranking-"),
}
_COUNTERS = ("funnel_rpc_requests_total", "funnel_rpc_received_bytes_total", "funnel_rpc_sent_bytes_total")


def measure_payloads(stack: Stack, requests: list[recommender_pb2.RecommendRequest], shared_memory: bool) -> Payloads:
    """Mean bytes each way of every hop over `requests`, sent through the stack's gateway."""
    before = _counters(stack)
    ranked_rows = []
    with grpc.insecure_channel(stack.address("gateway")) as channel:
        gateway = recommender_pb2_grpc.RecommenderStub(channel)
        for request in requests:
            answer = gateway.Recommend(request, timeout=5)
            ranked_rows += [s.items_in for s in answer.stages if s.stage == "ranking" and s.items_in]
    after = _counters(stack)
    mean = {}
    for hop in HOPS:
        # Summed over the processes that answered both times (one replica or every shard).
        calls, received, sent = (
            sum(after[name][hop][n] - before[name][hop][n] for name in after.keys() & before.keys()) for n in range(3)
        )
        mean[hop] = (round(received / calls), round(sent / calls)) if calls else (0, 0)
    triton = _triton_sizes(shared_memory, ranked_rows)
    live = _live_read_sizes(stack, [request.user_id for request in requests]) if stack.redis else (0, 0)
    return Payloads(mean["public"], mean["retrieval"], mean["ranking"], mean["reranking"], triton, live)


def _counters(stack: Stack) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Per process serving a hop, per hop: calls, bytes received and bytes sent so far."""
    counters = {}
    for process in stack.processes:
        methods = [(hop, method) for hop, (method, prefix) in HOPS.items() if process.name.startswith(prefix)]
        if not methods:
            continue
        try:
            samples = scrape(process.metrics_port)
        except OSError:  # stopped or killed: it serves nothing
            continue
        counters[process.name] = {
            hop: tuple(total(samples, counter, method=method) for counter in _COUNTERS) for hop, method in methods
        } | {hop: (0.0, 0.0, 0.0) for hop in HOPS if hop not in dict(methods)}
    return counters  # type: ignore[return-value]


def _resp_bytes(value: object) -> int:
    """Bytes of `value` in Redis's wire protocol (RESP): arrays of bulk strings, nested."""
    if isinstance(value, list):
        return len(f"*{len(value)}\r\n") + sum(_resp_bytes(part) for part in value)
    text = str(value).encode()
    return len(f"${len(text)}\r\n") + len(text) + 2


def _live_read_sizes(stack: Stack, users: list[str]) -> tuple[int, int]:
    """Mean bytes each way of the gateway's live-state read of `users`: the same script with its
    default arguments, on the stack's Redis."""
    assert stack.redis is not None
    client = redis.Redis(host=stack.redis.host, port=stack.redis.port, decode_responses=True)
    script = client.register_script(READ_SCRIPT)
    limits = ReadLimits()
    served_after = int(time.time() * 1000) - Retention().served_ttl_ms
    args = [limits.recent, limits.dismissed, limits.served, served_after]
    sent, received = [], []
    try:
        for user in users:
            keys = [user_key(user, group) for group in (RECENT, DISMISSED, SERVED)]
            sent.append(_resp_bytes(["EVALSHA", script.sha, len(keys), *keys, *args]))
            received.append(_resp_bytes(script(keys=keys, args=args)))
    finally:
        client.close()
    return int(np.mean(sent)), int(np.mean(received))


def _triton_sizes(shared_memory: bool, rows: list[int]) -> tuple[int, int]:
    """Mean bytes of the inference request the ranking service sends for each of `rows` candidate
    counts, and of the answer (the model version and one float a row)."""
    if not rows:
        return (0, 0)
    template = request_template("ranker")
    region = InputRegion(max(rows)) if shared_memory else None
    try:
        sizes = [_triton_request_bytes(template, region, n) for n in rows]
    finally:
        if region is not None:
            region.close()
    return int(np.mean(sizes)), int(np.mean(rows)) * 4 + 64


def _triton_request_bytes(template: ModelInferRequest, region: InputRegion | None, rows: int) -> int:
    if region is not None:
        slot = region.acquire(rows)
        assert slot is not None
        request = shared_request(template, slot, rows)
        slot.release()
    else:
        request = plain_request(
            template, np.zeros((rows, NUM_DENSE), np.float32), np.zeros((rows, NUM_CATEGORICAL), np.int64)
        )
    return request.ByteSize()
