"""New items without retraining: a bundle version with them is published, every stage swaps to it
within seconds, the fresh source and the ANN search find them, ranking and re-ranking take them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from funnel.artifacts.catalog import Catalog, Embeddings
from funnel.artifacts.store import latest_version, read_manifest
from funnel.sources import SOURCE_CODES
from funnel.v1 import recommender_pb2, recommender_pb2_grpc
from funnel.v2 import (
    candidates_pb2,
    ranking_pb2,
    ranking_pb2_grpc,
    reranking_pb2,
    reranking_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from launcher.stack import REPO_ROOT, Stack, StackConfig
from tests.conftest import POLICY
from training.add_items import add_items
from training.own_data import DataProblems

HEADER = "item_id,category,provider,maturity,regions,published_at,title\n"


def new_items_file(path: Path, catalog: Catalog, ids: list[str], category: int = 3) -> Path:
    name, provider = catalog.category_names[category], catalog.provider_names[5]
    path.write_text(HEADER + "".join(f"{item},{name},{provider},PG,,,New {item}\n" for item in ids))
    return path


@pytest.fixture
def root(artifacts: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "artifacts"
    shutil.copytree(artifacts, copy)
    return copy


def test_a_new_version_holds_the_served_catalog_plus_the_items(root, tmp_path):
    served = latest_version(root / "bundles")
    catalog = Catalog.load(served)
    bundle = add_items(root, new_items_file(tmp_path / "new.csv", catalog, ["fresh-1", "fresh-2"]))
    assert latest_version(root / "bundles") == bundle and read_manifest(bundle)["added_items"]["count"] == 2
    extended, vectors = Catalog.load(bundle), Embeddings.load(bundle).items
    assert extended.item_ids.tolist() == [*catalog.item_ids.tolist(), "fresh-1", "fresh-2"]
    assert (extended.category[-2:] == 3).all() and (extended.popularity[-2:] == 0).all()
    assert (extended.age_days[-2:] == 0).all(), "brand new: the fresh source puts them first"
    assert np.allclose(np.linalg.norm(vectors[-2:], axis=1), 1.0, atol=1e-5)
    mean = Embeddings.load(served).items[catalog.category == 3].mean(axis=0)
    assert float(vectors[-1] @ (mean / np.linalg.norm(mean))) > 0.5, "near the category's mean direction"


@pytest.mark.processes
@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("i0000100,category-03,provider-00005,,,,\n", "column item_id: already in the catalog"),
        ("new-1,a-new-genre,provider-00005,,,,\n", "column category: 'a-new-genre' is not a category of the bundle"),
        ("new-1,category-03,a-new-studio,,,,\n", "column provider: 'a-new-studio' is not a provider"),
        ("new-1,category-03,provider-00005,X,,,\n", "column maturity: 'X' is not one of"),
    ],
)
def test_what_cannot_be_added_is_refused_by_name_and_nothing_is_published(root, tmp_path, row, expected):
    before = latest_version(root / "bundles")
    path = tmp_path / "new.csv"
    path.write_text(HEADER + row)
    with pytest.raises(DataProblems, match=expected):
        add_items(root, path)
    assert latest_version(root / "bundles") == before
    result = subprocess.run(
        [sys.executable, "-m", "training.add_items", "--artifacts", str(root), "--items", str(path)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and expected in result.stderr


@pytest.mark.processes
def test_added_items_are_served_by_the_running_stack_within_seconds(root, tmp_path):
    stack = Stack(
        StackConfig(artifacts=root, run_dir=tmp_path / "run", policy=POLICY, auto_ports=True, gateway_port=0,
                    extra_env={"FUNNEL_RELOAD_POLL_SECONDS": "0.5"})
    )  # fmt: skip
    stack.start()
    try:
        catalog = Catalog.load(latest_version(root / "bundles"))
        new = ["fresh-a", "fresh-b", "fresh-c"]
        path = tmp_path / "new.csv"
        path.write_text(HEADER + "".join(
            f"{item},{catalog.category_names[n]},{catalog.provider_names[n + 4]},PG,,,\n" for n, item in enumerate(new)
        ))  # fmt: skip
        added_at = time.monotonic()
        add_items(root, path)
        request = retrieval_pb2.RetrieveRequest(
            user_id="someone-new", num_candidates=20, sources=[SOURCE_CODES["fresh"]]
        )
        with grpc.insecure_channel(stack.address("retrieval-0-0")) as channel:
            stub = retrieval_pb2_grpc.RetrievalStub(channel)
            while not set(new) <= set(stub.Retrieve(request, timeout=5).candidates.item_ids):
                assert time.monotonic() - added_at < 30, "the fresh source finds the new items"
                time.sleep(0.2)
        print(f"new items retrievable {time.monotonic() - added_at:.1f} s after they were added")
        # Ranking scores them and re-ranking keeps them once they have swapped too (same poll).
        candidates = candidates_pb2.CandidateList(item_ids=new, sources=[SOURCE_CODES["fresh"]] * 3)
        deadline = time.monotonic() + 30
        while True:
            try:
                with grpc.insecure_channel(stack.address("ranking-0")) as channel:
                    scores = (
                        ranking_pb2_grpc.RankingStub(channel)
                        .Rank(ranking_pb2.RankRequest(user_id="someone-new", candidates=candidates), timeout=5)
                        .scores
                    )
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and time.monotonic() < deadline, exc.details()
                time.sleep(0.2)
        assert len(scores) == 3 and np.isfinite(scores).all()
        ranked = candidates_pb2.CandidateList(item_ids=new, ranking_scores=list(scores))
        with grpc.insecure_channel(stack.address("reranking-0")) as channel:
            kept = reranking_pb2_grpc.RerankingStub(channel).Rerank(
                reranking_pb2.RerankRequest(user_id="someone-new", num_results=3, candidates=ranked), timeout=5
            )
        assert set(kept.candidates.item_ids) == set(new), "distinct categories and providers: none is a duplicate"
        with grpc.insecure_channel(stack.address("gateway")) as channel:
            reply = recommender_pb2_grpc.RecommenderStub(channel).Recommend(
                recommender_pb2.RecommendRequest(user_id="a-new-fan", num_results=20, recent_item_ids=[new[0]]),
                timeout=5,
            )
        assert not reply.degraded, [(s.stage, s.message) for s in reply.stages]
    finally:
        stack.stop()
