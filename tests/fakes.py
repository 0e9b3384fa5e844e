"""Fault-injecting stage doubles: real gRPC servers on loopback that are slow, fail, or hang.

They implement the same services as the real stages and exist only to inject faults the real
stages would not produce on demand.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager

import grpc

from funnel.sources import SOURCE_CODES
from funnel.v2 import (
    candidates_pb2,
    ranking_pb2,
    ranking_pb2_grpc,
    reranking_pb2,
    reranking_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from launcher.ports import bind_reserved_port, reserve_port


class Fault:
    """What a double does on each call: wait `delay_s`, then fail with `code` or answer.

    With `every` = n only every n-th call is delayed or failed; the others answer at once. The
    double also counts its calls, the most it held at once, and calls its caller cancelled.
    """

    def __init__(self, delay_s: float = 0.0, code: grpc.StatusCode | None = None, every: int = 1) -> None:
        self.delay_s = delay_s
        self.code = code
        self.every = every
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.cancelled = 0
        self._lock = threading.Lock()
        self._released = threading.Event()

    def act(self, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls += 1
            faulty = self.calls % self.every == 0
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if faulty:
                self._released.wait(self.delay_s)
        finally:
            with self._lock:
                self.in_flight -= 1
                self.cancelled += 0 if context.is_active() else 1
        if faulty and self.code is not None:
            context.abort(self.code, "injected fault")

    def release(self) -> None:
        self._released.set()


class FixedRetrieval(retrieval_pb2_grpc.RetrievalServicer):
    """Returns a fixed candidate list, so a test controls exactly what enters the funnel."""

    def __init__(self, item_ids: list[str], fault: Fault) -> None:
        self.item_ids = item_ids
        self.fault = fault

    def Retrieve(self, request, context):
        self.fault.act(context)
        candidates = candidates_pb2.CandidateList(
            item_ids=self.item_ids,
            sources=[SOURCE_CODES["ann"]] * len(self.item_ids),
            retrieval_scores=[1.0 - n / 1000 for n in range(len(self.item_ids))],
        )
        return retrieval_pb2.RetrieveResponse(candidates=candidates, index_version="fixed", shard_count=1)


class FaultyRanking(ranking_pb2_grpc.RankingServicer):
    def __init__(self, fault: Fault) -> None:
        self.fault = fault

    def Rank(self, request, context):
        self.fault.act(context)
        scores = [1.0 - n / 1000 for n in range(len(request.candidates.item_ids))]
        return ranking_pb2.RankResponse(scores=scores, model_name="fake", model_version="0")


class FaultyReranking(reranking_pb2_grpc.RerankingServicer):
    def __init__(self, fault: Fault) -> None:
        self.fault = fault

    def Rerank(self, request, context):
        self.fault.act(context)
        # Only reached when the fault lets it through; it would return everything unfiltered.
        return reranking_pb2.RerankResponse(candidates=request.candidates, policy_version="fake")


@contextmanager
def serve(register: Callable[[grpc.Server], None]) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    register(server)
    port = bind_reserved_port(server)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def closed_address() -> str:
    """An address where nothing listens: a stage that is down (reserved, so nothing will)."""
    return f"127.0.0.1:{reserve_port()}"


@contextmanager
def fixed_retrieval(item_ids: list[str], fault: Fault | None = None) -> Iterator[str]:
    with serve(
        lambda s: retrieval_pb2_grpc.add_RetrievalServicer_to_server(FixedRetrieval(item_ids, fault or Fault()), s)
    ) as a:
        yield a


@contextmanager
def faulty_ranking(fault: Fault) -> Iterator[str]:
    with serve(lambda s: ranking_pb2_grpc.add_RankingServicer_to_server(FaultyRanking(fault), s)) as address:
        yield address


@contextmanager
def faulty_reranking(fault: Fault) -> Iterator[str]:
    try:
        with serve(lambda s: reranking_pb2_grpc.add_RerankingServicer_to_server(FaultyReranking(fault), s)) as address:
            yield address
    finally:
        fault.release()


def elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
