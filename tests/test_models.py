"""The trained models and their Triton serving: parity with torch, and the quality they reach."""

from __future__ import annotations

import asyncio

import numpy as np
import torch

from funnel.artifacts.store import latest_version, read_manifest
from funnel.features import BundleFeatures
from funnel.triton.client import TritonRanker


async def score_on_triton(url: str, dense: np.ndarray, categorical: np.ndarray, shared_memory: bool):
    """The ranking service's own Triton client, tensors through shared memory or in the message."""
    ranker = TritonRanker(url, "ranker", 1024, shared_memory_rows=2000 if shared_memory else 0)
    try:
        assert await ranker.model_ready()
        assert ranker.uses_shared_memory == shared_memory
        buffer, slot = ranker.features_buffer(len(dense))
        buffer.dense[:], buffer.categorical[:] = dense, categorical
        return await ranker.score(buffer, slot, timeout_s=10.0)
    finally:
        await ranker.close()


def test_triton_scores_equal_in_process_torch_for_the_same_features(stack, artifacts):
    tables = BundleFeatures(latest_version(artifacts / "bundles"))
    store = tables.store
    known = store.features(tables.context(3), np.arange(300), np.ones(300, dtype=np.int64))
    cold = store.features(tables.context(-1, country=2), np.arange(300, 420))
    dense = np.concatenate([known.dense, cold.dense])
    categorical = np.concatenate([known.categorical, cold.categorical])
    model = torch.jit.load(str(artifacts / "model_repository" / "ranker" / "1" / "model.pt"))
    with torch.no_grad():
        expected = model(torch.from_numpy(dense), torch.from_numpy(categorical)).numpy().ravel()

    for shared_memory in (True, False):
        scores = asyncio.run(score_on_triton(stack.triton.grpc_url, dense, categorical, shared_memory))
        np.testing.assert_allclose(scores.values, expected, rtol=1e-5, atol=1e-6)
        assert scores.model_version == "1"


def test_model_repository_is_standard_with_dynamic_batching_and_both_configs(artifacts):
    model_dir = artifacts / "model_repository" / "ranker"
    local = (model_dir / "config.pbtxt").read_text()
    cluster = (model_dir / "configs" / "libtorch.pbtxt").read_text()
    assert 'backend: "python"' in local and 'platform: "pytorch_libtorch"' in cluster
    for config in (local, cluster):
        assert "dynamic_batching" in config and "max_batch_size: 1024" in config and "model_warmup" in config
    # Two python-backend instances: calls that overlap each get one instead of a two-request batch,
    # on which the python backend stalls (`make bench-ranking`'s open-loop tail).
    assert "kind: KIND_CPU count: 2" in local and "kind: KIND_CPU count: 1" in cluster
    assert {"model.pt", "model.py"} <= {p.name for p in (model_dir / "1").iterdir()}
    # On a GPU the batcher may merge 8 of the ranking service's 1,024-row pieces.
    gpu = (model_dir / "configs" / "libtorch-gpu.pbtxt").read_text()
    assert "kind: KIND_GPU" in gpu and "max_batch_size: 8192" in gpu and "max_queue_delay_microseconds: 200" in gpu
    assert "max_queue_delay_microseconds: 0" in cluster


def test_ranker_beats_retrieval_order_on_held_out_interactions(artifacts):
    ranking = read_manifest(latest_version(artifacts / "bundles"))["offline_evaluation"]["ranking_on_candidates"]
    assert ranking["ranker"]["ndcg@10"] > ranking["retrieval order"]["ndcg@10"] > 0
    assert ranking["ranker"]["auc"] > ranking["retrieval order"]["auc"] > 0.5
