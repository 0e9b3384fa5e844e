"""The trained models and their Triton serving: parity with torch, and the quality they reach."""

from __future__ import annotations

import numpy as np
import torch
import tritonclient.grpc as triton

from funnel.artifacts.store import latest_version, read_manifest
from funnel.features import BundleFeatures
from services.ranking.model_repository import SCORE_OUTPUT
from services.ranking.triton import request_tensors


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

    client = triton.InferenceServerClient(stack.triton.grpc_url)
    result = client.infer("ranker", request_tensors(dense, categorical))
    np.testing.assert_allclose(result.as_numpy(SCORE_OUTPUT).ravel(), expected, rtol=1e-5, atol=1e-6)
    assert result.get_response().model_version == "1"


def test_model_repository_is_standard_with_dynamic_batching_and_both_configs(artifacts):
    model_dir = artifacts / "model_repository" / "ranker"
    local = (model_dir / "config.pbtxt").read_text()
    cluster = (model_dir / "configs" / "libtorch.pbtxt").read_text()
    assert 'backend: "python"' in local and 'platform: "pytorch_libtorch"' in cluster
    for config in (local, cluster):
        assert "dynamic_batching" in config and "max_batch_size: 1024" in config and "model_warmup" in config
    assert {"model.pt", "model.py"} <= {p.name for p in (model_dir / "1").iterdir()}


def test_ranker_beats_retrieval_order_on_held_out_interactions(artifacts):
    ranking = read_manifest(latest_version(artifacts / "bundles"))["offline_evaluation"]["ranking_on_candidates"]
    assert ranking["ranker"]["ndcg@10"] > ranking["retrieval order"]["ndcg@10"] > 0
    assert ranking["ranker"]["auc"] > ranking["retrieval order"]["auc"] > 0.5
