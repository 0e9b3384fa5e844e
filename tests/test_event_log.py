"""Nothing acknowledged is ever lost, and the store stays bounded: idempotency scoped by client and
user, a reused id with another payload refused, a log that trims only what was exported and refuses
writes when full, an export that finds any gap, per-user expiry, durability checked all along.

Each test runs its own Redis and events service (real processes), so it can change their settings."""

from __future__ import annotations

import csv
import subprocess
import sys
import time

import grpc
import pytest
import redis

from funnel.live.schema import LOG_EXPORTED, STREAM, user_key
from funnel.runtime.clients import new_credential
from funnel.v1 import events_pb2
from launcher.health import health_status
from launcher.metrics import scrape, total
from launcher.ports import reserve_port, start_server
from launcher.redis import RedisServer
from launcher.stack import REPO_ROOT
from tests.live import event, record_events, refused, wait_until

pytestmark = pytest.mark.processes  # a Redis and an events service per test


@pytest.fixture
def own_redis(tmp_path):
    server = start_server(lambda: RedisServer(tmp_path / "redis", reserve_port(), tmp_path / "redis.log"), 30)
    yield server
    server.stop()


@pytest.fixture
def events_service(own_redis, start_service, tmp_path):
    """`events_service(*flags, clients=[...])`: an events service on the test's Redis; with client
    names, a credentials file naming them (their bearer metadata in `.bearer`)."""

    def start(*flags: str, clients: tuple[str, ...] = ()):
        extra: list[str] = []
        tokens = {}
        if clients:
            lines = []
            for name in clients:
                tokens[name], line = new_credential(name, ["record_events"])
                lines.append(line)
            (tmp_path / "clients").write_text("\n".join(lines) + "\n")
            extra = ["--clients-file", str(tmp_path / "clients")]
        service = start_service(
            "services.events", ["--state-store", own_redis.url, "--store-check-seconds", "0.2", *extra, *flags],
            metrics=True,
        )  # fmt: skip
        service.bearer = {name: (("authorization", f"Bearer {token}"),) for name, token in tokens.items()}
        return service

    return start


def record(service, events, metadata=()) -> events_pb2.RecordEventsResponse:
    return record_events(service.address, events, metadata)


def client_of(server: RedisServer) -> redis.Redis:
    return redis.Redis(host=server.host, port=server.port, decode_responses=True)


def export(server: RedisServer, out, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training.export_events", "--store", server.url, "--out", str(out), *flags],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_an_id_another_client_or_user_used_first_does_not_hide_an_event(own_redis, events_service):
    service = events_service(clients=("app-a", "app-b"))
    first = record(service, [event("user-x", "i1", event_id="e-1234")], service.bearer["app-a"])
    other_client = record(service, [event("user-y", "i2", event_id="e-1234")], service.bearer["app-b"])
    same_client_other_user = record(service, [event("user-z", "i3", event_id="e-1234")], service.bearer["app-a"])
    assert [r.recorded for r in (first, other_client, same_client_other_user)] == [1, 1, 1]
    recent = client_of(own_redis)
    assert recent.zrange(user_key("user-y", "recent"), 0, -1) == ["i2"], "the victim's event was stored"


def test_an_id_reused_with_another_payload_is_refused_and_nothing_of_the_batch_is_written(own_redis, events_service):
    service = events_service()
    original = event("user-r", "i1", event_id="e-1")
    assert record(service, [original]).recorded == 1
    assert record(service, [original]).duplicates == 1, "a retry with the same payload is a duplicate"
    changed = event("user-r", "i2", event_id="e-1")
    error = refused(lambda: record(service, [event("user-r", "i3"), changed]))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS and "events[1].event_id 'e-1'" in error.details()
    in_batch = refused(
        lambda: record(service, [event("user-r", "i4", event_id="e-9"), event("user-r", "i5", event_id="e-9")])
    )
    assert in_batch.code() == grpc.StatusCode.ALREADY_EXISTS
    assert client_of(own_redis).zrange(user_key("user-r", "recent"), 0, -1) == ["i1"], "nothing else was written"


def test_the_log_keeps_every_unexported_event_refuses_when_full_and_trims_only_what_was_exported(
    own_redis, events_service, tmp_path
):
    service = events_service("--log-max-events", "100", "--log-retention-seconds", "0")
    acknowledged = []
    for batch in range(5):
        events = [event(f"user-{n % 7}", f"i{batch}-{n}") for n in range(20)]
        assert record(service, events).recorded == 20
        acknowledged += [e.event_id for e in events]
    error = refused(lambda: record(service, [event("user-1", "one-too-many")]))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "not yet exported" in error.details()
    assert wait_until(lambda: total(scrape(service.metrics_port), "funnel_event_log_unexported") == 100)

    first = export(own_redis, tmp_path / "first.csv")
    assert first.returncode == 0, first.stderr
    assert [row["event_id"] for row in csv.DictReader((tmp_path / "first.csv").open())] == acknowledged
    assert record(service, [event("user-1", "after-export")]).recorded == 1, "exported entries made room"
    log = client_of(own_redis)
    assert log.xlen(STREAM) == 1, "exported entries past retention are trimmed, the new one kept"
    second = export(own_redis, tmp_path / "second.csv")
    assert second.returncode == 0, second.stderr
    assert [row["item_id"] for row in csv.DictReader((tmp_path / "second.csv").open())] == ["after-export"]


def test_an_export_that_finds_a_gap_fails_loudly_and_keeps_its_checkpoint(own_redis, events_service, tmp_path):
    service = events_service()
    assert record(service, [event("user-g", f"i{n}") for n in range(5)]).recorded == 5
    log = client_of(own_redis)
    log.xdel(STREAM, log.xrange(STREAM)[2][0])  # removed by hand, before any export
    result = export(own_redis, tmp_path / "gap.csv")
    assert result.returncode == 1
    assert "skips from sequence number 2 to 4" in result.stderr and "1 events were removed" in result.stderr
    assert log.hgetall(LOG_EXPORTED) == {}, "the checkpoint did not move"


def test_a_users_state_expires_after_inactivity(own_redis, events_service):
    service = events_service("--user-ttl-seconds", "1")
    record(service, [event("user-t", "i1"), event("user-t", "i2", events_pb2.EVENT_TYPE_DISMISS)])
    store = client_of(own_redis)
    for group in ("recent", "dismissed"):
        assert 0 < store.pttl(user_key("user-t", group)) <= 1000
    assert wait_until(lambda: not store.exists(user_key("user-t", "recent"), user_key("user-t", "dismissed")))


def test_a_store_that_stops_fsyncing_gets_no_acknowledgement_until_it_does_again(own_redis, events_service):
    service = events_service()
    assert record(service, [event("user-f", "i1")]).recorded == 1
    store = client_of(own_redis)
    store.config_set("appendfsync", "no")
    try:
        assert wait_until(lambda: health_status(service.address) == "NOT_SERVING")
        error = refused(lambda: record(service, [event("user-f", "i2")]))
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "not durable" in error.details()
        assert total(scrape(service.metrics_port), "funnel_store_durable") == 0
    finally:
        store.config_set("appendfsync", "always")
    assert wait_until(lambda: health_status(service.address) == "SERVING")
    assert record(service, [event("user-f", "i3")]).recorded == 1


def test_a_full_store_refuses_writes_loudly_and_its_memory_is_a_metric(own_redis, events_service):
    service = events_service()
    store = client_of(own_redis)
    assert wait_until(lambda: total(scrape(service.metrics_port), "funnel_store_used_memory_bytes") > 0)
    store.config_set("maxmemory", str(int(store.info("memory")["used_memory"]) + 64 * 1024))
    assert wait_until(lambda: total(scrape(service.metrics_port), "funnel_store_maxmemory_bytes") > 0)
    refusals = []
    for batch in range(200):
        try:
            record(service, [event(f"user-m{batch}", "x" * 100 + str(n)) for n in range(50)])
        except grpc.RpcError as exc:
            refusals.append(exc)
            break
    assert refusals, "a store at maxmemory refuses writes"
    assert refusals[0].code() == grpc.StatusCode.UNAVAILABLE and "OOM" in refusals[0].details()
    store.config_set("maxmemory", "0")
    assert record(service, [event("user-m", "after")]).recorded == 1


def test_impressions_obey_the_bound_the_events_service_set(own_redis, events_service, tmp_path):
    import asyncio

    from funnel.live.schema import Retention
    from funnel.live.store import LiveStore, Served, connect

    service = events_service("--log-max-events", "3")
    assert record(service, [event("user-i", f"i{n}") for n in range(3)]).recorded == 3

    async def serve() -> tuple[int, int]:
        store = LiveStore(connect(own_redis.url, 1.0), Retention())
        try:
            return await store.record_served([Served("user-i", ["a", "b"], "r-1", "web")], int(time.time() * 1000))
        finally:
            await store.close()

    assert asyncio.run(serve()) == (0, 1), "the full log takes no impression"
    assert client_of(own_redis).zrange(user_key("user-i", "served"), 0, -1) == ["a", "b"], "the filter still works"


def test_one_user_cannot_send_more_than_the_per_user_cap_in_a_window(own_redis, events_service):
    service = events_service("--user-events-per-window", "5", "--user-window-seconds", "60")
    assert record(service, [event("user-q", f"i{n}") for n in range(5)]).recorded == 5
    error = refused(lambda: record(service, [event("user-other", "ok"), event("user-q", "one-more")]))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "user 'user-q' sent more than 5" in error.details()
    assert not client_of(own_redis).exists(user_key("user-other", "recent")), "nothing of the batch was written"
    assert record(service, [event("user-other", "ok")]).recorded == 1


def test_each_service_has_a_store_user_with_only_its_commands_and_no_password_shows(
    stack, start_gateway, start_service, tmp_path
):
    """Redis run with the roles' ACL file (the one the Kubernetes Secret holds): the gateway and the
    events service work on their own users, and neither may FLUSHALL, CONFIG SET or DEBUG."""
    import secrets as token_source

    from funnel.live.acl import ROLES, acl_file

    passwords = {role: token_source.token_urlsafe(16) for role in ROLES}
    (tmp_path / "users.acl").write_text(acl_file(passwords))
    for role, password in passwords.items():
        (tmp_path / role).write_text(password + "\n")
    acl = tmp_path / "users.acl"
    server = start_server(lambda: RedisServer(tmp_path / "redis", reserve_port(), tmp_path / "log", acl_file=acl), 30)
    try:
        url = f"redis://{{}}@{server.host}:{server.port}/0"
        events = start_service(
            "services.events",
            ["--state-store", url.format("events"), "--state-store-password-file", str(tmp_path / "events")],
        )
        shards = f"{stack.address('retrieval-0-0')};{stack.address('retrieval-1-0')}"
        gateway = start_gateway(
            shards, stack.address("ranking-0"), stack.address("reranking-0"), "--state-store", url.format("gateway"),
            "--state-store-password-file", str(tmp_path / "gateway"),
        )  # fmt: skip
        assert record(events, [event("acl-user", "i0000003")]).recorded == 1
        with grpc.insecure_channel(gateway.address) as channel:
            from funnel.v1 import recommender_pb2, recommender_pb2_grpc

            reply = recommender_pb2_grpc.RecommenderStub(channel).Recommend(
                recommender_pb2.RecommendRequest(user_id="acl-user", num_results=5), timeout=5
            )
        assert not reply.degraded, reply.stages  # the live-state read went through on the gateway's user
        for role in ("gateway", "events", "export"):
            as_role = redis.Redis(host=server.host, port=server.port, username=role, password=passwords[role])
            for command in (("FLUSHALL",), ("CONFIG", "SET", "appendfsync", "no"), ("DEBUG", "SLEEP", "0")):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    as_role.execute_command(*command)
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host=server.host, port=server.port).ping()  # no user, no access
        export_run = subprocess.run(
            [sys.executable, "-m", "training.export_events", "--store", url.format("export"), "--password-file",
             str(tmp_path / "export"), "--out", str(tmp_path / "log.csv")],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert export_run.returncode == 0, export_run.stderr
        logs = "".join(p.read_text() for p in (*tmp_path.glob("*.log"), tmp_path / "log")) + export_run.stderr
        assert not [password for password in passwords.values() if password in logs]
    finally:
        server.stop()
