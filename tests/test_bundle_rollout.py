"""The loop closes: a retrained bundle with its ranker version, published beside the served one,
reaches retrieval, ranking (features, and Triton's model) and re-ranking under load, with no
failed request and no stage error."""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from funnel.artifacts.store import MANIFEST, latest_version, write_manifest
from launcher.stack import Stack, StackConfig
from tests.conftest import POLICY
from tests.load import SteadyLoad, failed, summary

pytestmark = pytest.mark.processes  # every test here starts real processes

NEW = "20990101T000000Z-retrained"


def publish_retrained(root: Path) -> None:
    """What a retraining job leaves: ranker version 2 in the repository, then the bundle naming it,
    manifest last."""
    shutil.copytree(root / "model_repository" / "ranker" / "1", root / "model_repository" / "ranker" / "2")
    served = latest_version(root / "bundles")
    target = root / "bundles" / NEW
    shutil.copytree(served, target, ignore=shutil.ignore_patterns(MANIFEST))
    previous = json.loads((served / MANIFEST).read_text())
    kept = {k: v for k, v in previous.items() if k not in ("version", "files", "created")}
    write_manifest(target, NEW, {**kept, "ranker_model_version": 2})


def bundle_served(metrics_port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as page:
        text = page.read().decode()
    return re.search(rf'funnel_artifact_info\{{kind="bundle",version="{NEW}"\}} 1\.0', text) is not None


def foreign_user_vectors(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as page:
        text = page.read().decode()
    match = re.search(r"^funnel_ranking_foreign_user_vectors_total (\S+)$", text, re.MULTILINE)
    assert match is not None, "ranking exports the count of user vectors it set aside"
    return float(match.group(1))


def test_a_retrained_bundle_reaches_every_stage_under_load_with_no_failed_request(artifacts, tmp_path):
    root = tmp_path / "artifacts"
    shutil.copytree(artifacts, root)
    stack = Stack(
        StackConfig(
            artifacts=root, run_dir=tmp_path / "run", policy=POLICY, auto_ports=True, gateway_port=0,
            extra_env={"FUNNEL_RELOAD_POLL_SECONDS": "0.5"},
        )
    )  # fmt: skip
    stack.start()
    try:
        with SteadyLoad(stack.address("gateway"), [f"u{n:07d}" for n in range(40)], rate=15, timeout_s=2.0) as load:
            time.sleep(1.0)
            publish_retrained(root)
            stages = [stack.get(name) for name in ("retrieval-0-0", "ranking-0", "reranking-0")]
            deadline = time.monotonic() + 60
            while not all(bundle_served(p.metrics_port) for p in stages) and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(0.5)  # calls that began before the last swap finish
            foreign_before = foreign_user_vectors(stages[1].metrics_port)
            time.sleep(1.0)
        outcomes = load.snapshot()
        # Once every stage serves one version, ranking reads every user vector the gateway hands it:
        # the gateway names the version whose tower made it, and it is ranking's own.
        assert foreign_user_vectors(stages[1].metrics_port) == foreign_before
        assert all(bundle_served(p.metrics_port) for p in stages), "every stage serves the new bundle"
        assert not failed(outcomes), summary(outcomes)
        assert not [o.stage_errors for o in outcomes if o.stage_errors], summary(outcomes)
        last = outcomes[-1].response
        assert last is not None
        versions = {s.stage: s.version for s in last.stages}
        assert versions["retrieval"] == NEW and versions["ranking"] == "ranker:2", versions
    finally:
        stack.stop()
