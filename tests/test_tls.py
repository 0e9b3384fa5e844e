"""Transport security: mutual TLS on every hop (Triton included), refused without a valid
certificate, and nothing listening beyond loopback."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as triton_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from funnel.v1 import common_pb2, recommender_pb2, recommender_pb2_grpc
from funnel.v2 import candidates_pb2, reranking_pb2, reranking_pb2_grpc
from launcher.ports import reserve_port, start_server
from launcher.triton import TritonServer, TritonTls
from tests.certs import Identity, issue, make_authority
from tests.conftest import POLICY


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    directory = tmp_path_factory.mktemp("pki")
    funnel_ca = make_authority(directory, "funnel")
    rogue_ca = make_authority(directory, "rogue")
    return {"workload": issue(directory, funnel_ca, "workload"), "rogue": issue(directory, rogue_ca, "rogue")}


def health(address: str, credentials: grpc.ChannelCredentials | None) -> str:
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def test_mutual_tls_stage_refuses_every_caller_without_a_certificate_its_ca_signed(artifacts, start_service, pki):
    workload, rogue = pki["workload"], pki["rogue"]
    probe_port = reserve_port()
    reranking = start_service(
        "services.reranking",
        ["--artifact-dir", str(artifacts), "--policy-path", str(POLICY), "--probe-port", str(probe_port)],
        env=workload.env(require_client_cert=True),
        credentials=workload.credentials(),
    )
    with grpc.secure_channel(reranking.address, workload.credentials()) as channel:
        request = reranking_pb2.RerankRequest(
            user_id="u0000001",
            candidates=candidates_pb2.CandidateList(item_ids=["i0000001"], ranking_scores=[1.0]),
            num_results=1,
        )
        reply = reranking_pb2_grpc.RerankingStub(channel).Rerank(request, timeout=5)
    assert reply.policy_version, "a caller with a certificate from the trusted CA is served"
    rogue_but_trusting = Identity(rogue.cert, rogue.key, workload.ca)  # trusts the server, wrong client CA
    refused = {
        "plaintext": health(reranking.address, None),
        "TLS without a client certificate": health(reranking.address, workload.credentials(present_cert=False)),
        "certificate from another CA": health(reranking.address, rogue_but_trusting.credentials()),
        "server not trusted by the caller": health(reranking.address, rogue.credentials()),
    }
    assert set(refused.values()) == {"UNAVAILABLE"}, refused
    # The probe port: plaintext health for the kubelet, and nothing else.
    probe_address = f"127.0.0.1:{probe_port}"
    assert health(probe_address, None) == "SERVING"
    with grpc.insecure_channel(probe_address) as channel, pytest.raises(grpc.RpcError) as refused_call:
        reranking_pb2_grpc.RerankingStub(channel).Rerank(request, timeout=5)
    assert refused_call.value.code() == grpc.StatusCode.UNIMPLEMENTED
    log = reranking.log.read_text()
    assert '"tls": "mutual"' in log
    assert "PRIVATE KEY" not in log and workload.key.read_text() not in log


@pytest.fixture
def mtls_triton(artifacts: Path, tmp_path: Path, pki) -> Iterator[TritonServer]:
    repository = tmp_path / "model_repository"
    shutil.copytree(artifacts / "model_repository", repository, ignore=shutil.ignore_patterns("__pycache__"))
    identity = pki["workload"]
    tls = TritonTls(identity.cert, identity.key, identity.ca)
    # Readiness is read over HTTP, which stays on loopback.
    server = start_server(
        lambda: TritonServer(
            repository, reserve_port(), reserve_port(), reserve_port(), tmp_path / "triton.log", tls=tls
        ),
        timeout_s=120,
    )
    try:
        yield server
    finally:
        server.stop()


def test_every_hop_runs_over_mutual_tls_down_to_triton(artifacts, start_service, pki, mtls_triton):
    workload = pki["workload"]
    stage_env = workload.env(require_client_cert=True)
    credentials = workload.credentials()

    def stage(module: str, *args: str):
        return start_service(module, ["--artifact-dir", str(artifacts), *args], env=stage_env, credentials=credentials)

    retrieval = stage("services.retrieval", "--shard-index", "0", "--shard-count", "1")
    ranking = stage("services.ranking", "--triton-url", mtls_triton.grpc_url, "--readiness-poll-seconds", "0.2")
    reranking = stage("services.reranking", "--policy-path", str(POLICY))
    # Public port: TLS, no client certificate (callers authenticate with bearer tokens); its own
    # calls to the stages present the workload certificate.
    gateway = start_service(
        "services.gateway",
        [
            "--retrieval-shards", retrieval.address,
            "--ranking-target", f"{ranking.address},{ranking.address}",  # a replica list: an ipv4: target
            "--reranking-target", reranking.address,
            "--artifact-dir", str(artifacts),
            "--policy-path", str(POLICY),
        ],
        env=workload.env(require_client_cert=False),
        credentials=workload.credentials(present_cert=False),
    )  # fmt: skip
    with grpc.secure_channel(gateway.address, workload.credentials(present_cert=False)) as channel:
        response = recommender_pb2_grpc.RecommenderStub(channel).Recommend(
            recommender_pb2.RecommendRequest(user_id="u0000001", num_results=5), timeout=5
        )
    assert [s.status for s in response.stages] == [common_pb2.STAGE_STATUS_OK] * 3, response.stages
    assert response.stages[1].version.startswith("ranker:"), "ranked by Triton, over mutual TLS"
    assert len(response.items) == 5
    assert health(gateway.address, None) == "UNAVAILABLE", "the gateway's port is TLS only"

    with pytest.raises(InferenceServerException):  # Triton itself refuses a client without a certificate
        triton_grpc.InferenceServerClient(
            mtls_triton.grpc_url, ssl=True, root_certificates=str(workload.ca)
        ).is_server_live(client_timeout=3)


def listening_addresses(pids: set[int]) -> set[str]:
    """host:port of every listening TCP socket held by the given processes."""
    inodes = set()
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except (FileNotFoundError, PermissionError):
            continue
        inodes |= {link[8:-1] for link in links if link.startswith("socket:[")}
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                found.add(decode_address(fields[1]))
    return found


def decode_address(hex_address: str) -> str:
    """/proc/net/tcp's little-endian hex address, as text; an IPv4-mapped IPv6 one as its IPv4."""
    host, port = hex_address.split(":")
    if len(host) == 32 and host.startswith("0000000000000000FFFF0000"):
        host = host[24:]  # ::ffff:a.b.c.d, how gRPC binds an IPv4 address on a dual-stack socket
    if len(host) == 8:
        address = ".".join(str(int(host[i : i + 2], 16)) for i in (6, 4, 2, 0))
    else:
        address = "::1" if host == "00000000000000000000000001000000" else f"[{host}]"
    return f"{address}:{int(port, 16)}"


def process_groups(leaders: set[int]) -> set[int]:
    """Every process in the groups the stack started (Triton's backend stubs included)."""
    members = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[2]) in leaders:
                members.add(int(entry))
    return members


def test_nothing_listens_beyond_loopback_by_default(stack):
    pids = process_groups({p.pid for p in stack.processes})
    addresses = listening_addresses(pids)
    ports = {p.port for p in stack.processes} | {p.metrics_port for p in stack.processes if p.metrics_port}
    assert {int(a.rsplit(":", 1)[1]) for a in addresses} >= ports, "every gRPC and metrics port was found"
    beyond = sorted(a for a in addresses if not a.startswith(("127.0.0.1:", "::1:")))
    assert not beyond, beyond


def test_a_replica_list_over_several_hosts_needs_an_expected_server_name():
    from funnel.runtime.config import load_settings
    from funnel.runtime.errors import ConfigError
    from services.gateway.settings import GatewaySettings

    env = {
        "FUNNEL_RETRIEVAL_SHARDS": "10.0.0.1:50061,10.0.0.2:50061",
        "FUNNEL_RANKING_TARGET": "ranking:50071",
        "FUNNEL_RERANKING_TARGET": "reranking:50081",
        "FUNNEL_ARTIFACT_DIR": "/artifacts",
        "FUNNEL_TLS_CA_FILE": "/certs/ca.pem",
    }
    with pytest.raises(ConfigError, match="set tls_server_name"):
        load_settings(GatewaySettings, [], env)
    assert load_settings(GatewaySettings, ["--tls-server-name", "funnel.internal"], env).tls_server_name
