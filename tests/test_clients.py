"""Every public call comes from a named client with scopes: a token it presents, checked against a
credentials file of digests that is re-read when it changes; a call without a known token, or
without the method's scope, costs nothing and changes nothing."""

from __future__ import annotations

import asyncio
import csv
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from funnel.runtime.calls import CallPolicy, InstrumentedServer
from funnel.runtime.clients import ClientsFile, new_credential, parse_clients
from funnel.runtime.errors import ConfigError
from funnel.runtime.exits import CONFIG_ERROR
from funnel.v1 import common_pb2, events_pb2, recommender_pb2, recommender_pb2_grpc
from funnel.v2 import ranking_pb2, ranking_pb2_grpc
from launcher.health import health_status
from launcher.metrics import scrape, total
from launcher.ports import bind_reserved_port
from launcher.stack import REPO_ROOT
from tests.fakes import Fault, faulty_reranking
from tests.live import event, refused, served_items, store, wait_until
from tests.live import record_events as record

REQUEST = recommender_pb2.RecommendRequest(user_id="u0000001", num_results=3, context=common_pb2.Context(country="US"))


class Credentials:
    """A credentials file with three clients, each token kept for the test to present."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tokens: dict[str, str] = {}
        lines = []
        for name, scopes in (("web", ["recommend", "record_events"]), ("reader", ["recommend"]),
                             ("writer", ["record_events"])):  # fmt: skip
            self.tokens[name], line = new_credential(name, scopes)
            lines.append(line)
        path.write_text("# client scopes credential\n" + "\n".join(lines) + "\n")

    def bearer(self, name: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens[name]}"),)


@pytest.fixture
def credentials(tmp_path) -> Credentials:
    return Credentials(tmp_path / "clients")


@pytest.fixture
def guarded(stack, start_gateway, start_service, credentials):
    """A gateway and an events service of the test stack's, both checking the credentials file."""
    assert stack.redis is not None
    shards = f"{stack.address('retrieval-0-0')};{stack.address('retrieval-1-0')}"
    flags = ["--clients-file", str(credentials.path), "--clients-poll-seconds", "0.2"]
    gateway = start_gateway(
        shards, stack.address("ranking-0"), stack.address("reranking-0"), "--state-store", stack.redis.url, *flags
    )
    events = start_service("services.events", ["--state-store", stack.redis.url, *flags], metrics=True)
    return gateway, events


def recommend(address: str, metadata=(), request=REQUEST) -> recommender_pb2.RecommendResponse:
    with grpc.insecure_channel(address) as channel:
        return recommender_pb2_grpc.RecommenderStub(channel).Recommend(request, timeout=5, metadata=metadata)


@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Bearer wrong"),), (("authorization", "TOKEN"),), (("authorization", "Basic TOKEN"),)],
    ids=["none", "wrong token", "no scheme", "other scheme"],
)
def test_a_call_without_a_known_token_is_unauthenticated_at_both_public_services(guarded, credentials, metadata):
    gateway, events = guarded
    metadata = tuple((key, value.replace("TOKEN", credentials.tokens["web"])) for key, value in metadata)
    for call in (lambda: recommend(gateway.address, metadata),
                 lambda: record(events.address, [event("victim", "i0000001")], metadata)):  # fmt: skip
        error = refused(call)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "bearer token" in error.details()


def test_a_client_without_the_scope_is_denied_and_changes_nothing(stack, guarded, credentials):
    gateway, events = guarded
    client = store(stack)
    dismissal = event("scope-victim", "i0000007", events_pb2.EVENT_TYPE_DISMISS)
    error = refused(lambda: record(events.address, [dismissal], credentials.bearer("reader")))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "client reader may not call" in error.details()
    victim = recommender_pb2.RecommendRequest(user_id="scope-victim", num_results=5)
    error = refused(lambda: recommend(gateway.address, credentials.bearer("writer"), victim))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    time.sleep(0.3)  # the gateway records impressions about 50 ms after an answer: there was none
    assert served_items(client, "scope-victim") == [] and not client.exists("funnel:u:{scope-victim}:dismissed")
    assert len(recommend(gateway.address, credentials.bearer("web"), victim).items) == 5
    assert record(events.address, [dismissal], credentials.bearer("writer")).recorded == 1


def test_health_needs_no_token_and_no_token_is_ever_logged(guarded, credentials):
    gateway, events = guarded
    assert len(recommend(gateway.address, credentials.bearer("web")).items) == 3
    for process in (gateway, events):
        assert health_status(process.address) == "SERVING"  # kubelet probes carry no token
    log = gateway.log.read_text()
    assert '"client": "web"' in log, "the access log names the client"
    assert not [token for token in credentials.tokens.values() if token in log]
    assert credentials.tokens["web"] not in credentials.path.read_text(), "the file holds digests only"


def test_a_rotated_credentials_file_takes_effect_without_a_restart_and_a_broken_one_is_refused(guarded, credentials):
    gateway, events = guarded
    new_token, line = new_credential("web", ["recommend", "record_events"])
    old = credentials.bearer("web")
    new = (("authorization", f"Bearer {new_token}"),)
    credentials.path.write_text(line + "\n")  # the old token's line is gone: rotated out
    assert wait_until(lambda: _code(lambda: recommend(gateway.address, old)) == grpc.StatusCode.UNAUTHENTICATED)
    assert len(recommend(gateway.address, new).items) == 3
    assert wait_until(lambda: _code(lambda: record(events.address, [event("rotated", "i1")], new)) is None)

    credentials.path.write_text("web recommend not-a-digest\n")
    assert wait_until(lambda: total(scrape(events.metrics_port), "funnel_credentials_reloads_total", result="rejected"))
    assert record(events.address, [event("rotated", "i2")], new).recorded == 1, "the loaded clients keep access"


def _code(call) -> grpc.StatusCode | None:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return None


def test_an_unknown_caller_takes_no_admission_slot(stack, start_gateway, credentials):
    """Admission after identity: with the one slot taken by a client's call, a call without a token
    is told UNAUTHENTICATED, not RESOURCE_EXHAUSTED, and so cannot crowd out known clients."""
    fault = Fault(delay_s=3.0)
    with faulty_reranking(fault) as reranking:
        shards = f"{stack.address('retrieval-0-0')};{stack.address('retrieval-1-0')}"
        gateway = start_gateway(
            shards, stack.address("ranking-0"), reranking, "--clients-file", str(credentials.path),
            "--max-in-flight", "1", "--reranking-budget-ms", "2500", "--default-deadline-ms", "3000",
        )  # fmt: skip
        with grpc.insecure_channel(gateway.address) as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            held = stub.Recommend.future(REQUEST, timeout=5, metadata=credentials.bearer("web"))
            assert wait_until(lambda: fault.in_flight == 1)
            error = refused(lambda: stub.Recommend(REQUEST, timeout=5))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            error = refused(lambda: stub.Recommend(REQUEST, timeout=5, metadata=credentials.bearer("web")))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, "the slot was taken, by the known client"
            fault.release()
            held.result()


class Parsed(ranking_pb2_grpc.RankingServicer):
    async def Rank(self, request, context):
        return ranking_pb2.RankResponse()


def test_an_unknown_callers_bytes_are_never_parsed(tmp_path, monkeypatch):
    token, line = new_credential("ops", ["admin"])
    (tmp_path / "clients").write_text(line + "\n")
    parsed: list[int] = []
    real = ranking_pb2.RankRequest.FromString
    monkeypatch.setattr(ranking_pb2.RankRequest, "FromString", lambda data: parsed.append(len(data)) or real(data))

    async def call(metadata) -> grpc.StatusCode:
        server = grpc.aio.server()
        policy = CallPolicy(clients=ClientsFile(str(tmp_path / "clients")))
        ranking_pb2_grpc.add_RankingServicer_to_server(Parsed(), InstrumentedServer(server, policy))
        port = bind_reserved_port(server)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    await ranking_pb2_grpc.RankingStub(channel).Rank(ranking_pb2.RankRequest(user_id="u"), timeout=5,
                                                                     metadata=metadata)  # fmt: skip
                except grpc.aio.AioRpcError as exc:
                    return exc.code()
                return grpc.StatusCode.OK
        finally:
            await server.stop(0)

    assert asyncio.run(call(())) == grpc.StatusCode.UNAUTHENTICATED and parsed == []
    assert asyncio.run(call((("authorization", f"Bearer {token}"),))) == grpc.StatusCode.OK and parsed


def test_events_carry_the_clients_name_into_the_log_and_the_export_can_leave_a_client_out(
    stack, guarded, credentials, tmp_path
):
    from training.export_events import export

    _, events = guarded
    record(events.address, [event("named-user", "i0000010")], credentials.bearer("web"))
    record(events.address, [event("named-user", "i0000011")], credentials.bearer("writer"))
    exported = export(store(stack), tmp_path / "log.csv", commit=False, exclude_clients=frozenset({"writer"}))
    rows = [row for row in csv.DictReader((tmp_path / "log.csv").open()) if row["user_id"] == "named-user"]
    assert [(row["item_id"], row["client"]) for row in rows] == [("i0000010", "web")]
    assert exported.left_out >= 1


def test_a_credentials_file_is_refused_with_every_problem_by_line():
    good = new_credential("web", ["recommend"])[1]
    text = f"{good}\nbad name! recommend sha256:{'a' * 64}\nweb everything sha256:{'b' * 64}\nweb recommend plain\n"
    with pytest.raises(ConfigError) as error:
        parse_clients(text, "clients")
    message = str(error.value)
    assert "clients:2" in message and "clients:3: scopes" in message and "clients:4: the credential" in message
    with pytest.raises(ConfigError, match="names no client"):
        parse_clients("# empty\n")
    assert parse_clients(good).names == ["web"]


@pytest.mark.processes
def test_an_unreadable_or_empty_credentials_file_stops_the_process_at_start(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("# nothing here\n\n")
    for path in (tmp_path / "missing", empty):
        result = subprocess.run(
            [sys.executable, "-m", "services.reranking", "--artifact-dir", str(tmp_path), "--clients-file", str(path)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == CONFIG_ERROR, result.stderr
        assert "configuration error: " in result.stderr
        assert "clients_file" in result.stderr or "names no client" in result.stderr


def test_a_client_over_its_rate_is_refused_with_a_retry_hint_and_the_others_are_not(stack, start_gateway, tmp_path):
    tokens = {}
    lines = []
    for name, options in (("flooder", ["rate=1", "burst=2"]), ("neighbour", [])):
        tokens[name], line = new_credential(name, ["recommend"], options)
        lines.append(line)
    (tmp_path / "clients").write_text("\n".join(lines) + "\n")
    shards = f"{stack.address('retrieval-0-0')};{stack.address('retrieval-1-0')}"
    gateway = start_gateway(
        shards, stack.address("ranking-0"), stack.address("reranking-0"), "--clients-file", str(tmp_path / "clients")
    )
    with grpc.insecure_channel(gateway.address) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        flooder = (("authorization", f"Bearer {tokens['flooder']}"),)
        for _ in range(2):  # its burst
            stub.Recommend(REQUEST, timeout=5, metadata=flooder)
        with pytest.raises(grpc.RpcError) as error:
            stub.Recommend(REQUEST, timeout=5, metadata=flooder)
        assert (
            error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "over its rate limit" in error.value.details()
        )
        retry_ms = dict(error.value.trailing_metadata())["retry-after-ms"]
        assert 0 < int(retry_ms) <= 1000
        neighbour = (("authorization", f"Bearer {tokens['neighbour']}"),)
        assert all(len(stub.Recommend(REQUEST, timeout=5, metadata=neighbour).items) == 3 for _ in range(5))


def test_a_token_bucket_refills_at_the_clients_rate_up_to_its_burst():
    from funnel.runtime.clients import Client
    from funnel.runtime.quotas import ClientQuotas

    now = [0.0]
    quotas = ClientQuotas(rate_per_s=10, burst=0, clock=lambda: now[0])
    default, own = Client("a", frozenset({"recommend"})), Client("b", frozenset({"recommend"}), rate_per_s=1, burst=1)
    assert [quotas.take(default) for _ in range(20)] == [0.0] * 20, "a burst of twice the rate"
    assert quotas.take(default) == pytest.approx(0.1)
    now[0] = 0.35
    assert [quotas.take(default) == 0.0 for _ in range(4)] == [True, True, True, False], "3.5 tokens back"
    assert quotas.take(own) == 0.0 and quotas.take(own) == pytest.approx(1.0), "its own line's rate and burst"
    assert ClientQuotas(0, 0).take(default) == 0.0, "rate 0: no quota"


def test_a_client_bound_to_its_users_acts_only_for_the_subject_of_a_valid_user_token(
    stack, start_gateway, start_service, tmp_path
):
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    signer = ec.generate_private_key(ec.SECP256R1())
    public = signer.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "users.pem").write_bytes(public)
    token, line = new_credential("app", ["recommend", "record_events"], ["bind_user"])
    (tmp_path / "clients").write_text(line + "\n")

    def user_token(subject: str, expires_in: float = 300, key=signer) -> str:
        claims = {"sub": subject, "exp": int(time.time() + expires_in), "aud": "funnel", "iss": "https://id.example"}
        return jwt.encode(claims, key, algorithm="ES256")

    assert stack.redis is not None
    flags = ["--clients-file", str(tmp_path / "clients"), "--user-token-key-file", str(tmp_path / "users.pem"),
             "--user-token-audience", "funnel", "--user-token-issuer", "https://id.example"]  # fmt: skip
    shards = f"{stack.address('retrieval-0-0')};{stack.address('retrieval-1-0')}"
    gateway = start_gateway(shards, stack.address("ranking-0"), stack.address("reranking-0"), *flags)
    events = start_service("services.events", ["--state-store", stack.redis.url, *flags])
    bearer = ("authorization", f"Bearer {token}")
    alice = recommender_pb2.RecommendRequest(user_id="bound-alice", num_results=3)

    assert len(recommend(gateway.address, (bearer, ("x-user-token", user_token("bound-alice"))), alice).items) == 3
    error = refused(lambda: recommend(gateway.address, (bearer, ("x-user-token", user_token("bound-mallory"))), alice))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "'bound-mallory'" in error.details()
    forged = user_token("bound-alice", key=ec.generate_private_key(ec.SECP256R1()))
    for metadata in (
        (bearer,),
        (bearer, ("x-user-token", user_token("bound-alice", -120))),
        (bearer, ("x-user-token", forged)),
    ):
        assert (
            refused(lambda m=metadata: recommend(gateway.address, m, alice)).code() == grpc.StatusCode.UNAUTHENTICATED
        )

    own = (bearer, ("x-user-token", user_token("bound-alice")))
    assert record(events.address, [event("bound-alice", "i0000001")], own).recorded == 1
    error = refused(lambda: record(events.address, [event("bound-alice", "i2"), event("bound-bob", "i0000007")], own))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "'bound-bob'" in error.details()
    assert not store(stack).exists("funnel:u:{bound-bob}:recent"), "nothing written for the other user"
