"""Retrieval: the trained two-tower model, shard merging, hot swap under load, bad input."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from funnel.artifacts.catalog import Embeddings
from funnel.artifacts.store import MANIFEST, latest_version, publish_copy, read_manifest, write_manifest
from funnel.candidates import Candidates
from funnel.retrieval.faiss_index import IndexSpec, build_index, shard_of
from funnel.retrieval.merge import merge_candidates
from funnel.runtime import exits
from funnel.sources import RETRIEVAL_CODES, SOURCE_CODES
from funnel.v1 import common_pb2
from funnel.v2 import retrieval_pb2, retrieval_pb2_grpc
from launcher.health import health_status


def test_two_tower_training_lowers_the_loss_and_beats_popularity(artifacts):
    manifest = read_manifest(latest_version(artifacts / "bundles"))
    losses = manifest["training"]["two_tower_loss"]
    assert losses[-1] < losses[0]
    metrics = manifest["offline_evaluation"]["methods"]
    assert metrics["two-tower (ANN)"]["recall@100"] > 1.2 * metrics["popularity"]["recall@100"]
    assert metrics["popularity"]["recall@100"] > metrics["random"]["recall@100"]


@pytest.mark.parametrize("shards", [2, 3])
def test_sharded_search_merged_equals_one_index_over_every_item(artifacts, shards):
    vectors = Embeddings.load(latest_version(artifacts / "bundles")).items
    ids = np.arange(len(vectors))
    item_ids = np.array([f"i{n:07d}" for n in ids])
    queries = vectors[[5, 50, 500]] * 0.9 + 0.1  # arbitrary queries near real items
    whole = build_index(vectors, ids, IndexSpec("Flat"))
    assignment = shard_of(item_ids, shards)
    parts = [build_index(vectors[assignment == s], ids[assignment == s], IndexSpec("Flat")) for s in range(shards)]
    for query in queries:
        _, expected = whole.search(query[None, :], 100)
        answers = []
        for part in parts:
            scores, rows = part.search(query[None, :], 100)
            codes = np.full(len(rows[0]), SOURCE_CODES["ann"], dtype=np.int32)
            answers.append(Candidates([str(r) for r in rows[0]], codes, scores[0]))
        merged = [int(item) for item in merge_candidates(answers, {"ann": 100}).item_ids]
        # Exact scores: FAISS's float32 BLAS sums in a different order per index, so items whose
        # scores differ by an ulp may swap between one index and the shards; nothing else may differ.
        exact = vectors.astype(np.float64) @ query.astype(np.float64)
        assert len(merged) == len(set(merged)) == 100
        assert np.all(np.diff(exact[merged]) <= 1e-6), "merged list is not best-first"
        np.testing.assert_allclose(exact[merged], exact[expected[0]], atol=1e-6)
        assert exact[merged].min() >= np.sort(exact)[-100] - 1e-6, "an item outside the true top 100"


def new_version(root: Path, source: Path, name: str, corrupt: bool = False) -> Path:
    """Publish `source` again as version `name`, the way a training job publishes a new bundle."""
    target = publish_copy(source, root / "bundles", name)
    if corrupt:
        with (target / "item_embeddings.npy").open("r+b") as handle:
            handle.seek(-4, 2)
            handle.write(b"\xff\xff\xff\xff")
    return target


def through_a_swap(workers: list[threading.Thread], stop: threading.Event, publish: Callable[[], object],
                   swapped: Callable[[], bool], settle_s: float = 0.0) -> None:  # fmt: skip
    """Start `workers`; after `settle_s`, publish a new version; wait (30 s at most) until `swapped()`,
    then half a second more for calls in flight; then stop the workers and join them."""
    for worker in workers:
        worker.start()
    try:
        time.sleep(settle_s)
        publish()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not swapped():
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stop.set()
        for worker in workers:
            worker.join()


def test_hot_swap_under_concurrent_requests_fails_none_and_serves_the_new_version(artifacts, start_service, tmp_path):
    original = latest_version(artifacts / "bundles")
    root = tmp_path / "root"
    new_version(root, original, "20990101T000000Z-a")
    service = start_service(
        "services.retrieval", ["--artifact-dir", str(root), "--reload-poll-seconds", "0.3"], metrics=True
    )
    metrics_port = service.metrics_port
    seen: list[str] = []
    failures: list[str] = []
    health: list[str] = []
    stop = threading.Event()

    def watch_health() -> None:
        while not stop.is_set():
            health.append(health_status(service.address))
            time.sleep(0.05)

    def hammer(n: int) -> None:
        with grpc.insecure_channel(service.address) as channel:
            stub = retrieval_pb2_grpc.RetrievalStub(channel)
            while not stop.is_set():
                try:
                    reply = stub.Retrieve(
                        retrieval_pb2.RetrieveRequest(user_id=f"u{n:07d}", num_candidates=50), timeout=5
                    )
                    seen.append(reply.index_version)
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code()}: {exc.details()}")

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)] + [threading.Thread(target=watch_health)]
    through_a_swap(
        threads, stop, lambda: new_version(root, original, "20990102T000000Z-b"),
        swapped=lambda: bool(seen) and seen[-1] == "20990102T000000Z-b", settle_s=0.5,
    )  # fmt: skip

    assert not failures
    assert seen[0] == "20990101T000000Z-a" and seen[-1] == "20990102T000000Z-b"
    switch = seen.index("20990102T000000Z-b")
    assert len(seen) > 20 and switch > 0
    assert set(seen[switch + 8 :]) <= {"20990102T000000Z-b"}, (
        "after the swap (and calls in flight) only the new version"
    )
    assert set(health) == {"SERVING"}, "health stays SERVING through the swap"
    assert _loaded_indexes(metrics_port) == 1.0, "the old index is released once its calls finish"


def retrained(source: Path, root: Path, name: str) -> None:
    """`source` republished as `name` with every item vector moved to another item: a new item
    space, so its user tower (which pools the history's item vectors) and its index both change."""
    staged = publish_copy(source, root.parent / "staging", name)
    vectors = np.load(staged / "item_embeddings.npy")
    np.save(staged / "item_embeddings.npy", np.roll(vectors, 1, axis=0))
    manifest = json.loads((staged / MANIFEST).read_text())
    write_manifest(staged, name, {k: v for k, v in manifest.items() if k not in ("version", "files", "created")})
    staged.rename(root / "bundles" / name)  # complete, manifest and all, in one step


def test_a_swap_changes_the_user_tower_and_the_index_together(artifacts, start_service, tmp_path):
    original = latest_version(artifacts / "bundles")
    root = tmp_path / "root"
    new_version(root, original, "20990101T000000Z-a")
    service = start_service("services.retrieval", ["--artifact-dir", str(root), "--reload-poll-seconds", "0.2"])
    users = [f"u{n:07d}" for n in range(1, 13)]
    answers: list[tuple[str, str, tuple[str, ...]]] = []
    stop = threading.Event()

    def answer(stub, user: str) -> tuple[str, str, tuple[str, ...]]:
        request = retrieval_pb2.RetrieveRequest(user_id=user, num_candidates=50, sources=[SOURCE_CODES["ann"]])
        reply = stub.Retrieve(request, timeout=5)
        return reply.index_version, user, tuple(reply.candidates.item_ids)

    def hammer() -> None:
        with grpc.insecure_channel(service.address) as channel:
            stub = retrieval_pb2_grpc.RetrievalStub(channel)
            while not stop.is_set():
                answers.extend(answer(stub, user) for user in users)

    with grpc.insecure_channel(service.address) as channel:
        stub = retrieval_pb2_grpc.RetrievalStub(channel)
        before = {user: answer(stub, user)[2] for user in users}
        through_a_swap(
            [threading.Thread(target=hammer) for _ in range(3)], stop,
            lambda: retrained(original, root, "20990102T000000Z-b"),
            swapped=lambda: any(a[0].endswith("-b") for a in answers[-len(users) :]),
        )  # fmt: skip
        after = {user: answer(stub, user)[2] for user in users}
    expected = {"20990101T000000Z-a": before, "20990102T000000Z-b": after}
    assert sum(before[user] != after[user] for user in users) >= len(users) - 1, "the versions answer differently"
    assert {version for version, _, _ in answers} == set(expected), "answers from both sides of the swap"
    mixed = [(version, user) for version, user, items in answers if items != expected[version][user]]
    assert not mixed, f"answers matching neither version's tower and index together: {mixed[:5]}"


def _loaded_indexes(metrics_port: int) -> float:
    deadline = time.monotonic() + 10
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        value = float(next(row for row in text.splitlines() if row.startswith("funnel_loaded_artifacts{")).split()[-1])
        if value == 1.0 or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_reload_admin_call_swaps_to_a_named_version_and_rejects_a_corrupt_one(artifacts, start_service, tmp_path):
    original = latest_version(artifacts / "bundles")
    root = tmp_path / "root"
    new_version(root, original, "20990101T000000Z-a")
    service = start_service("services.retrieval", ["--artifact-dir", str(root), "--reload-poll-seconds", "0"])
    new_version(root, original, "20990102T000000Z-b")
    new_version(root, original, "20990103T000000Z-bad", corrupt=True)
    with grpc.insecure_channel(service.address) as channel:
        stub = retrieval_pb2_grpc.RetrievalStub(channel)
        reply = stub.Reload(retrieval_pb2.ReloadRequest(version="20990102T000000Z-b"), timeout=30)
        assert (reply.previous_version, reply.current_version, reply.swapped) == (
            "20990101T000000Z-a",
            "20990102T000000Z-b",
            True,
        )
        assert not stub.Reload(retrieval_pb2.ReloadRequest(version="20990102T000000Z-b"), timeout=30).swapped
        with pytest.raises(grpc.RpcError) as error:
            stub.Reload(retrieval_pb2.ReloadRequest(), timeout=30)  # the newest is the corrupt one
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "checksum" in error.value.details()
        with pytest.raises(grpc.RpcError) as error:
            stub.Reload(retrieval_pb2.ReloadRequest(version="no-such-version"), timeout=30)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        answer = stub.Retrieve(retrieval_pb2.RetrieveRequest(user_id="u0000001", num_candidates=5), timeout=5)
        assert answer.index_version == "20990102T000000Z-b", "the old index keeps serving after a rejected one"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"num_candidates": 5000}, "num_candidates must be <= 1000"),
        ({"num_candidates": 0}, "num_candidates must be > 0"),
        ({"num_candidates": 5, "sources": [SOURCE_CODES["ann"], 42]}, "unknown or non-retrieval sources [42]"),
        ({"num_candidates": 5, "sources": [SOURCE_CODES["pinned"]]}, "unknown or non-retrieval sources [7]"),
        ({"num_candidates": 5, "context": common_pb2.Context(country="Germany")}, "context.country"),
        ({"num_candidates": 5, "recent_item_ids": ["i1"] * 500}, "recent_item_ids: 500 ids"),
        (
            {"num_candidates": 5, "source_limits": [retrieval_pb2.SourceLimit(source=4, limit=-1)]},
            "source_limits[4].limit must be > 0",
        ),
        (
            {"num_candidates": 5, "source_limits": [retrieval_pb2.SourceLimit(source=9, limit=5)]},
            "unknown or non-retrieval sources [9]",
        ),
    ],
)
def test_retrieval_rejects_bad_input_with_invalid_argument(stack, fields, message):
    with grpc.insecure_channel(stack.address("retrieval-0-0")) as channel, pytest.raises(grpc.RpcError) as error:
        retrieval_pb2_grpc.RetrievalStub(channel).Retrieve(
            retrieval_pb2.RetrieveRequest(user_id="u1", **fields), timeout=5
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.details()


def test_retrieval_answers_name_the_shard_and_version(stack):
    with grpc.insecure_channel(stack.address("retrieval-1-0")) as channel:
        reply = retrieval_pb2_grpc.RetrievalStub(channel).Retrieve(
            retrieval_pb2.RetrieveRequest(user_id="u0000001", num_candidates=20), timeout=5
        )
    assert (reply.shard_index, reply.shard_count, reply.known_user) == (1, 2, True)
    assert reply.index_version.endswith("-tiny-eval")
    answer = Candidates.read(reply.candidates)
    assert set(answer.sources.tolist()) == set(RETRIEVAL_CODES)
    assert len(answer.retrieval_scores) == len(answer.item_ids) == len(answer.sources)


def test_source_limits_override_the_candidate_count_per_source(stack):
    with grpc.insecure_channel(stack.address("retrieval-0-0")) as channel:
        reply = retrieval_pb2_grpc.RetrievalStub(channel).Retrieve(
            retrieval_pb2.RetrieveRequest(
                user_id="u0000001",
                num_candidates=20,
                source_limits=[retrieval_pb2.SourceLimit(source=SOURCE_CODES["popular"], limit=3)],
            ),
            timeout=5,
        )
    sources = list(reply.candidates.sources)
    assert (sources.count(SOURCE_CODES["ann"]), sources.count(SOURCE_CODES["popular"])) == (20, 3)


def test_items_the_user_already_consumed_take_no_candidate_slot_unless_turned_off(artifacts, stack, start_service):
    from funnel.artifacts.catalog import Catalog, Users

    bundle = latest_version(artifacts / "bundles")
    catalog, users = Catalog.load(bundle), Users.load(bundle)
    user = "u0000001"
    history = set(catalog.item_ids[users.history(users.index.row(user))].tolist())
    assert len(history) >= 5
    request = retrieval_pb2.RetrieveRequest(user_id=user, num_candidates=1000)

    def candidates(address: str) -> list[str]:
        with grpc.insecure_channel(address) as channel:
            reply = retrieval_pb2_grpc.RetrievalStub(channel).Retrieve(request, timeout=10)
        return list(reply.candidates.item_ids)

    served = candidates(stack.address("retrieval-0-0")) + candidates(stack.address("retrieval-1-0"))
    assert len(served) > 1000 and not history & set(served), "no consumed item in any source of any shard"
    keeping = start_service("services.retrieval", ["--artifact-dir", str(artifacts), "--exclude-history", "false"])
    assert history & set(candidates(keeping.address)), "with the setting off, consumed items come back"


def test_an_index_spec_faiss_cannot_build_fails_start_up_with_the_reason_on_one_line(artifacts, start_service):
    service = start_service(
        "services.retrieval", ["--artifact-dir", str(artifacts), "--index-factory", "IVF8,PQ7"], wait=False
    )
    assert service.process.wait(timeout=60) == exits.START_FAILED
    failure = next(json.loads(line) for line in service.log.read_text().splitlines() if "start-up failed" in line)
    assert failure["error"].startswith("ValueError: index factory 'IVF8,PQ7' for 64-dimensional item vectors: ")
    assert "multiple of the number of subquantizers" in failure["error"]


def test_an_index_spec_faiss_cannot_build_or_set_is_refused_by_name():
    vectors = np.random.default_rng(5).standard_normal((300, 16)).astype(np.float32)
    rows = np.arange(len(vectors))
    with pytest.raises(ValueError, match=r"^index factory 'Bogus' for 16-dimensional item vectors: could not parse"):
        build_index(vectors, rows, IndexSpec("Bogus"))
    with pytest.raises(ValueError, match=r"^search parameters 'efSearch=64' for index 'IVF4,Flat': .*efSearch"):
        build_index(vectors, rows, IndexSpec("IVF4,Flat", "efSearch=64"))
