"""Optional caller authentication: a bearer token in the metadata, or UNAUTHENTICATED."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from funnel.runtime.auth import BearerTokens
from funnel.v1 import common_pb2, recommender_pb2, recommender_pb2_grpc
from launcher.health import health_status
from launcher.stack import REPO_ROOT

TOKEN = "s3cret-token-for-tests"
REQUEST = recommender_pb2.RecommendRequest(user_id="u0000001", num_results=3, context=common_pb2.Context(country="US"))


@pytest.fixture
def guarded_gateway(stack, start_gateway, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# accepted callers\nanother-token\n{TOKEN}\n")
    shards = f"{stack.address('retrieval-0-0')};{stack.address('retrieval-1-0')}"
    return start_gateway(
        shards, stack.address("ranking-0"), stack.address("reranking-0"), "--auth-token-file", str(tokens)
    )


@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),), (("authorization", f"Basic {TOKEN}"),)],
    ids=["none", "wrong token", "no scheme", "other scheme"],
)
def test_calls_without_a_valid_token_are_unauthenticated(guarded_gateway, metadata):
    with grpc.insecure_channel(guarded_gateway.address) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            recommender_pb2_grpc.RecommenderStub(channel).Recommend(REQUEST, timeout=5, metadata=metadata)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "bearer token" in refused.value.details()


def test_a_valid_token_is_served_probes_need_none_and_no_token_is_logged(guarded_gateway):
    with grpc.insecure_channel(guarded_gateway.address) as channel:
        reply = recommender_pb2_grpc.RecommenderStub(channel).Recommend(
            REQUEST, timeout=5, metadata=(("authorization", f"Bearer {TOKEN}"),)
        )
    assert len(reply.items) == 3
    assert health_status(guarded_gateway.address) == "SERVING"  # kubelet probes carry no token
    log = guarded_gateway.log.read_text()
    assert "/funnel.v1.Recommender/Recommend" in log  # the call was logged...
    assert TOKEN not in log and "another-token" not in log  # ...without the token


@pytest.mark.processes
def test_an_unreadable_or_empty_token_file_stops_the_process_at_start(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("# nothing here\n\n")
    for path in (tmp_path / "missing", empty):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "services.reranking",
                "--artifact-dir",
                str(tmp_path),
                "--auth-token-file",
                str(path),
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        assert "configuration error: " in result.stderr and "auth" in result.stderr


def test_token_comparison_is_by_digest_and_scheme_is_case_insensitive():
    tokens = BearerTokens(["a", "b"])
    assert tokens.accepts((("authorization", "bearer b"),))
    assert tokens.accepts((("x-request-id", "1"), ("authorization", "Bearer a")))
    assert not tokens.accepts((("authorization", "Bearer c"),))
    assert not tokens.accepts(())
