"""Steady open-loop load through a gateway for fault tests, every outcome recorded with its times."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import grpc

from funnel.runtime.channels import channel_options
from funnel.v1 import common_pb2, recommender_pb2, recommender_pb2_grpc


@dataclass
class Outcome:
    started: float
    finished: float
    code: grpc.StatusCode
    response: recommender_pb2.RecommendResponse | None

    @property
    def stage_errors(self) -> list[str]:
        """Stages that degraded because a call failed, not because it was cut off at its budget."""
        if self.response is None:
            return []
        return [
            f"{s.stage}: {s.message}"
            for s in self.response.stages
            if s.status == common_pb2.STAGE_STATUS_DEGRADED and "cut off" not in s.message
        ]


class SteadyLoad:
    """Recommend calls started at a fixed rate (open loop: a slow answer does not slow the next call).

    `target` may list several gateways ('ipv4:a,b'): the client balances over them and follows their
    health, as a client in front of gateway replicas does.
    """

    def __init__(self, target: str, users: list[str], rate: float = 15.0, timeout_s: float = 1.0) -> None:
        self.users = users
        self.interval = 1.0 / rate
        self.timeout_s = timeout_s
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pending: set[grpc.Future] = set()
        self._channel = grpc.insecure_channel(target, options=channel_options(stage=True))
        self._stub = recommender_pb2_grpc.RecommenderStub(self._channel)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SteadyLoad:
        grpc.channel_ready_future(self._channel).result(timeout=10)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        deadline = time.monotonic() + self.timeout_s + 2
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.05)
        self._channel.close()

    def _run(self) -> None:
        n = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            request = recommender_pb2.RecommendRequest(user_id=self.users[n % len(self.users)], num_results=10)
            started = time.monotonic()
            future = self._stub.Recommend.future(request, timeout=self.timeout_s)
            with self._lock:
                self._pending.add(future)
            future.add_done_callback(lambda f, started=started: self._record(f, started))
            n += 1
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _record(self, future: grpc.Future, started: float) -> None:
        finished = time.monotonic()
        try:
            outcome = Outcome(started, finished, grpc.StatusCode.OK, future.result())
        except grpc.RpcError as exc:
            outcome = Outcome(started, finished, exc.code(), None)
        with self._lock:
            self._pending.discard(future)
            self.outcomes.append(outcome)

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def in_flight_at(self, moment: float) -> int:
        return sum(1 for o in self.snapshot() if o.started <= moment < o.finished)


def failed(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.code != grpc.StatusCode.OK]


def summary(outcomes: list[Outcome]) -> str:
    codes: dict[str, int] = {}
    for o in outcomes:
        codes[o.code.name] = codes.get(o.code.name, 0) + 1
    errors = [e for o in outcomes for e in o.stage_errors]
    late = sum(1 for o in outcomes if o.response is not None and o.response.degraded and not o.stage_errors)
    retried = sum(1 for o in outcomes if o.response is not None and any(s.attempts > 1 for s in o.response.stages))
    return f"{len(outcomes)} calls {codes}; {retried} with a retry or hedge; {late} cut off; stage errors: {errors[:5]}"
