"""Ranking against a real Triton: answers, bad input, hot model reload, Triton down or slow, and
the two ways tensors reach Triton (in the gRPC message, or through system shared memory)."""

from __future__ import annotations

import asyncio
import re
import shutil
import threading
import time
from pathlib import Path

import grpc
import pytest

from funnel.artifacts.catalog import Embeddings
from funnel.artifacts.store import latest_version, read_manifest
from funnel.runtime.errors import DeadlineExceeded
from funnel.sources import SOURCE_CODES
from funnel.triton.client import TritonRanker
from funnel.v2 import candidates_pb2, ranking_pb2, ranking_pb2_grpc
from launcher.health import health_status
from launcher.ports import reserve_port
from launcher.triton import TritonServer

pytestmark = pytest.mark.processes  # every test here starts real processes

SLOW_MODEL = '''
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Fault injection: a ranker that takes two seconds to answer."""

    def execute(self, requests):
        time.sleep(2.0)
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(
                "score__0", np.zeros((len(pb_utils.get_input_tensor_by_name(r, "dense__0").as_numpy()), 1), np.float32)
            )])
            for r in requests
        ]
'''


def rank_request(count: int = 50, user: str = "u0000001") -> ranking_pb2.RankRequest:
    return ranking_pb2.RankRequest(
        user_id=user,
        candidates=candidates_pb2.CandidateList(
            item_ids=[f"i{n:07d}" for n in range(count)], sources=[SOURCE_CODES["ann"]] * count
        ),
    )


@pytest.fixture
def own_triton(artifacts: Path, tmp_path: Path):
    """A Triton of the test's own on a copy of the model repository, stopped afterwards."""
    repository = tmp_path / "model_repository"
    shutil.copytree(artifacts / "model_repository", repository, ignore=shutil.ignore_patterns("__pycache__"))
    server = TritonServer(repository, reserve_port(), reserve_port(), reserve_port(), tmp_path / "triton.log")
    yield server
    server.stop()


def start_ranking(start_service, artifacts: Path, triton: TritonServer, shared_memory: bool = True):
    return start_service(
        "services.ranking",
        [
            "--artifact-dir", str(artifacts), "--triton-url", triton.grpc_url, "--readiness-poll-seconds", "0.2",
            "--triton-shared-memory", str(shared_memory).lower(),
        ],
    )  # fmt: skip


def test_rank_scores_every_candidate_in_request_order_and_names_the_model_version(stack):
    with grpc.insecure_channel(stack.address("ranking-0")) as channel:
        reply = ranking_pb2_grpc.RankingStub(channel).Rank(rank_request(300), timeout=5)
    assert len(reply.scores) == 300
    assert all(0.0 < score < 1.0 for score in reply.scores)  # the ranker ends in a sigmoid
    assert len(set(reply.scores)) > 100, "a score per candidate, not one score for all"
    assert (reply.model_name, reply.model_version) == ("ranker", "1")


def test_scores_are_the_same_through_shared_memory_and_through_the_grpc_message(artifacts, own_triton, start_service):
    own_triton.start()
    own_triton.wait_ready()
    scores = {}
    for shared in (True, False):
        ranking = start_ranking(start_service, artifacts, own_triton, shared_memory=shared)
        with grpc.insecure_channel(ranking.address) as channel:
            stub = ranking_pb2_grpc.RankingStub(channel)
            # Several sizes, one after another, so slots are reused with fewer rows than before.
            scores[shared] = [list(stub.Rank(rank_request(n), timeout=5).scores) for n in (300, 7, 1200)]
        ranking.stop()
    assert scores[True] == scores[False]
    assert [len(s) for s in scores[True]] == [300, 7, 1200]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (ranking_pb2.RankRequest(user_id="u1"), "candidates.item_ids must not be empty"),
        (rank_request(2001), "2001 candidates, at most 2000 allowed"),
        (
            ranking_pb2.RankRequest(user_id="u1", candidates=candidates_pb2.CandidateList(item_ids=["no-such-item"])),
            "1 candidate item ids are not in the catalog, e.g. ['no-such-item']",
        ),
        (
            ranking_pb2.RankRequest(user_id="", candidates=candidates_pb2.CandidateList(item_ids=["i0000001"])),
            "user_id",
        ),
        (
            ranking_pb2.RankRequest(
                user_id="u1", candidates=candidates_pb2.CandidateList(item_ids=["i0000001", "i0000002"], sources=[1])
            ),
            "candidates.sources has 1 entries, candidates.item_ids 2",
        ),
        (
            ranking_pb2.RankRequest(
                user_id="u1", candidates=candidates_pb2.CandidateList(item_ids=["i0000001"], sources=[99])
            ),
            "candidates.sources holds an unknown CandidateSource",
        ),
        (
            ranking_pb2.RankRequest(user_id="u1", candidates=rank_request(3).candidates, user_vector=[1.0]),
            "user_vector has 1 values",
        ),
    ],
)
def test_ranking_rejects_bad_input_with_invalid_argument(stack, request_, message):
    with grpc.insecure_channel(stack.address("ranking-0")) as channel, pytest.raises(grpc.RpcError) as error:
        ranking_pb2_grpc.RankingStub(channel).Rank(request_, timeout=5)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.details()


def test_a_user_vector_counts_only_against_the_bundle_version_whose_tower_made_it(stack, artifacts):
    bundle = latest_version(artifacts / "bundles")
    dim = Embeddings.load(bundle).items.shape[1]
    with_vector = rank_request(300)
    with_vector.user_vector.extend([0.5] * dim)
    with grpc.insecure_channel(stack.address("ranking-0")) as channel:
        stub = ranking_pb2_grpc.RankingStub(channel)
        stored = list(stub.Rank(rank_request(300), timeout=5).scores)
        with_vector.user_vector_version = read_manifest(bundle, verify=False)["version"]
        own = list(stub.Rank(with_vector, timeout=5).scores)
        with_vector.user_vector_version = "20990101T000000Z-another-version"
        foreign = list(stub.Rank(with_vector, timeout=5).scores)
        with_vector.user_vector_version = ""
        with pytest.raises(grpc.RpcError) as unnamed:
            stub.Rank(with_vector, timeout=5)
    assert own != stored, "the same version's vector is what the features read"
    assert foreign == stored, "another version's vector is set aside for the stored one"
    assert unnamed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "user_vector_version must name" in unnamed.value.details()


def test_hot_model_reload_under_concurrent_requests_fails_none(artifacts, own_triton, start_service):
    own_triton.start()
    own_triton.wait_ready()
    ranking = start_ranking(start_service, artifacts, own_triton)
    versions: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        with grpc.insecure_channel(ranking.address) as channel:
            stub = ranking_pb2_grpc.RankingStub(channel)
            while not stop.is_set():
                try:
                    versions.append(stub.Rank(rank_request(200), timeout=5).model_version)
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code()}: {exc.details()}")

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        model_dir = own_triton.model_repository / "ranker"
        shutil.copytree(model_dir / "1", model_dir / "2", ignore=shutil.ignore_patterns("__pycache__"))
        with grpc.insecure_channel(ranking.address) as channel:
            reloaded = ranking_pb2_grpc.RankingStub(channel).ReloadModel(ranking_pb2.ReloadModelRequest(), timeout=120)
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert list(reloaded.ready_versions) == ["2"]
    assert not failures
    assert versions[0] == "1" and versions[-1] == "2"
    assert health_status(ranking.address) == "SERVING"


def test_triton_down_gives_fast_unavailable_and_not_serving_then_recovers(artifacts, own_triton, start_service):
    own_triton.start()
    own_triton.wait_ready()
    ranking = start_ranking(start_service, artifacts, own_triton)
    own_triton.stop()
    with grpc.insecure_channel(ranking.address) as channel:
        stub = ranking_pb2_grpc.RankingStub(channel)
        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as error:
            stub.Rank(rank_request(), timeout=5)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.perf_counter() - started < 1.0, "refused at once, not after a timeout"
        deadline = time.monotonic() + 10
        while health_status(ranking.address) != "NOT_SERVING" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert health_status(ranking.address) == "NOT_SERVING"

        own_triton.start()
        own_triton.wait_ready()
        deadline = time.monotonic() + 20
        while health_status(ranking.address) != "SERVING" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert health_status(ranking.address) == "SERVING", "readiness recovers by itself"
        assert stub.Rank(rank_request(), timeout=5).model_version == "1"


def test_slow_triton_gives_deadline_exceeded_never_a_hang(artifacts, own_triton, start_service):
    (own_triton.model_repository / "ranker" / "1" / "model.py").write_text(SLOW_MODEL)
    own_triton.start()
    own_triton.wait_ready()
    ranking = start_ranking(start_service, artifacts, own_triton)
    with grpc.insecure_channel(ranking.address) as channel:
        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as error:
            # No client deadline: the service's own default bounds the Triton call.
            ranking_pb2_grpc.RankingStub(channel).Rank(rank_request(), timeout=None)
        took = time.perf_counter() - started
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "Triton did not answer within" in error.value.details()
    assert took < 1.8, "cut off at the service's default budget, before the model answers"


def test_a_late_triton_call_is_left_to_finish_and_a_queued_one_is_dropped_by_triton(artifacts, own_triton):
    """The wheel's Triton can crash when a client cancels a call as it completes: the ranking service
    never cancels one. It stops waiting at its budget, the call runs on, Triton's queue policy
    rejects what waited past its own timeout, and the shared-memory slot stays held until Triton is
    done with it."""
    (own_triton.model_repository / "ranker" / "1" / "model.py").write_text(SLOW_MODEL)
    config = (own_triton.model_repository / "ranker" / "config.pbtxt").read_text()
    instances = int(re.search(r"count: (\d+)", config).group(1))
    own_triton.start()
    own_triton.wait_ready()

    async def late_calls() -> dict:
        ranker = TritonRanker(own_triton.grpc_url, "ranker", 1024, shared_memory_rows=100)
        try:
            assert await ranker.model_ready() and ranker.uses_shared_memory
            before = await ranker._control.get_inference_statistics("ranker")
            outcomes = []
            # One call per instance runs (two seconds each); the last queues behind them.
            for _ in range(instances + 1):
                buffer, slot = ranker.features_buffer(10)
                assert slot is not None
                buffer.dense[:], buffer.categorical[:] = 0.0, 0
                started = time.perf_counter()
                with pytest.raises(DeadlineExceeded):
                    await ranker.score(buffer, slot, timeout_s=0.3)
                outcomes.append(time.perf_counter() - started)
            held_while_running = ranker.region.in_use
            await asyncio.sleep(3.0)  # the model answers the running ones; the last was rejected in the queue
            after = await ranker._control.get_inference_statistics("ranker")
            return {
                "waits": outcomes,
                "held_while_running": held_while_running,
                "held_after": ranker.region.in_use,
                "stats": (before.model_stats[0].inference_stats, after.model_stats[0].inference_stats),
            }
        finally:
            await ranker.close()

    result = asyncio.run(late_calls())
    assert all(wait < 0.6 for wait in result["waits"]), "the caller gets its answer at its budget"
    assert result["held_while_running"] == instances + 1, "no slot is reused while Triton may still read it"
    assert result["held_after"] == 0, "each slot is freed once Triton is done"
    before, after = result["stats"]
    assert after.success.count - before.success.count == instances, "the running calls finished, not cancelled"
    assert after.fail.count - before.fail.count == 1, "the queued call was rejected by Triton at its timeout"
    assert own_triton.process is not None and own_triton.process.poll() is None
