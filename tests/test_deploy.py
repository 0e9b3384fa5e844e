"""The deploy command against a stand-in API server on loopback (no cluster exists here).

What reaches the server is what would reach a real one: server-side apply patches with the
field manager, forced conflicts and dry run, scale subresource patches, label-selected lists.
Not exercised: a real API server's admission, defaulting and controllers (see k8s/README.md).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from kubernetes import client

from deploy.__main__ import main
from deploy.render import render
from launcher.stack import REPO_ROOT
from tests.fake_kube_api import FakeKubeApi

pytestmark = pytest.mark.processes  # every test here starts real processes


@pytest.fixture
def kube(tmp_path, monkeypatch):
    api = FakeKubeApi()
    api.start()
    monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    yield api
    api.stop()


def applies(api: FakeKubeApi) -> list:
    return [r for r in api.requests if r.method == "PATCH" and r.content_type == "application/apply-patch+yaml"]


def test_dry_run_sends_every_object_as_a_server_side_apply_and_persists_nothing(kube, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "deploy", "apply", "--overlay", "dev", "--dry-run"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "KUBECONFIG": str(tmp_path / "kubeconfig"), "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stderr
    objects = render("dev")
    sent = applies(kube)
    assert [r.body for r in sent] == objects  # every object, in kustomize's order, unchanged
    for request in sent:
        assert request.query["fieldManager"] == ["funnel-deploy"]
        assert request.query["force"] == ["true"] and request.query["dryRun"] == ["All"]
    paths = {r.path for r in sent}
    assert "/api/v1/namespaces/funnel-dev" in paths
    assert "/apis/apps/v1/namespaces/funnel-dev/deployments/retrieval-1" in paths
    assert "/apis/autoscaling/v2/namespaces/funnel-dev/horizontalpodautoscalers/ranking" in paths
    assert "/apis/networking.k8s.io/v1/namespaces/funnel-dev/networkpolicies/ranking-to-triton" in paths
    assert "/apis/policy/v1/namespaces/funnel-dev/poddisruptionbudgets/triton" in paths
    assert "/apis/batch/v1/namespaces/funnel-dev/jobs/build-artifacts" in paths
    assert kube.stored == {}
    assert f"dry run (nothing persisted): {len(objects)} objects" in result.stdout


def test_apply_then_status_reports_readiness_per_stage(kube, capsys):
    assert main(["apply", "--overlay", "dev"]) == 0
    assert len(kube.stored) == len(render("dev"))
    capsys.readouterr()

    assert main(["status", "--overlay", "dev"]) == 1  # nothing ready yet
    out = capsys.readouterr().out
    assert "retrieval    0/2" in out and "NOT READY" in out

    kube.ready.update({"gateway": 1, "retrieval-0": 1, "retrieval-1": 1, "ranking": 1, "reranking": 1, "triton": 1})
    assert main(["status", "--overlay", "dev"]) == 0
    out = capsys.readouterr().out
    assert "retrieval    2/2" in out and "retrieval-0, retrieval-1" in out and "NOT READY" not in out

    kube.ready["ranking"] = 0
    assert main(["status", "--overlay", "dev"]) == 1
    assert "ranking      0/1" in capsys.readouterr().out


def test_scale_one_shard_moves_its_replicas_and_its_autoscaler_floor(kube, capsys):
    assert main(["apply", "--overlay", "prod"]) == 0
    assert main(["scale", "retrieval", "--shard", "1", "--replicas", "5", "--overlay", "prod"]) == 0
    deployments, autoscalers = "deployments", "horizontalpodautoscalers"
    assert kube.stored[(deployments, "funnel", "retrieval-1")]["spec"]["replicas"] == 5
    assert kube.stored[(deployments, "funnel", "retrieval-0")]["spec"]["replicas"] == 3  # the other shard
    assert kube.stored[(autoscalers, "funnel", "retrieval-1")]["spec"]["minReplicas"] == 5
    assert kube.stored[(autoscalers, "funnel", "retrieval-0")]["spec"]["minReplicas"] == 3
    scale_calls = [r for r in kube.requests if r.path.endswith("/scale")]
    assert [r.path for r in scale_calls] == ["/apis/apps/v1/namespaces/funnel/deployments/retrieval-1/scale"]

    # Beyond the autoscaler's ceiling, the ceiling rises with it.
    assert main(["scale", "ranking", "--replicas", "15", "--overlay", "prod"]) == 0
    assert kube.stored[(autoscalers, "funnel", "ranking")]["spec"] == {
        **kube.stored[(autoscalers, "funnel", "ranking")]["spec"],
        "minReplicas": 15,
        "maxReplicas": 15,
    }
    assert "Deployment/ranking -> 15 replicas (autoscaler ranking: 15..15)" in capsys.readouterr().out


def test_a_refused_object_is_reported_and_the_rest_still_applied(kube, capsys):
    kube.reject.add("Deployment/triton")
    assert main(["apply", "--overlay", "dev"]) == 1
    out = capsys.readouterr().out
    assert "Deployment/triton" in out and "failed: 422" in out and "spec: Forbidden" in out
    assert ("deployments", "funnel-dev", "gateway") in kube.stored
    assert ("deployments", "funnel-dev", "triton") not in kube.stored


def test_scaling_a_stage_that_is_not_deployed_says_so(kube, capsys):
    assert main(["scale", "reranking", "--replicas", "2", "--overlay", "dev"]) == 2
    assert "no Deployment of reranking in namespace funnel-dev" in capsys.readouterr().err


def test_no_cluster_is_a_clear_message_not_a_trace(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert main(["status", "--overlay", "dev"]) == 2
    assert "error: no Kubernetes configuration" in capsys.readouterr().err

    closed = FakeKubeApi()
    closed.start()
    kubeconfig = closed.kubeconfig(tmp_path / "kubeconfig")
    closed.stop()  # nothing listens there any more
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert main(["apply", "--overlay", "dev", "--dry-run"]) == 2
    assert f"error: no cluster reachable at {closed.url}" in capsys.readouterr().err


def test_a_wrong_token_is_refused_plainly(kube, tmp_path, monkeypatch, capsys):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(kubeconfig.read_text().replace("secret-token", "wrong"))
    assert main(["status", "--overlay", "dev"]) == 2
    assert "refused: 401" in capsys.readouterr().err


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_rendered_object_is_a_valid_client_model(overlay):
    """Our manifests load into the kubernetes client's own typed objects, field for field."""
    for obj in render(overlay):
        version = obj["apiVersion"].rpartition("/")[2].capitalize()
        model = getattr(client, f"{version}{obj['kind']}")
        loaded = model.from_dict(obj)
        assert loaded.metadata.name == obj["metadata"]["name"]
        assert client.ApiClient().sanitize_for_serialization(loaded) == obj
