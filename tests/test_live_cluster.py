"""The live loop on a Redis Cluster of 3 masters, each with a replica, started from the same
redis-server binary: every role on its own store user, the log partitioned across the masters,
exported whole, a batch across partitions still refused as one, and a master killed under load
losing no acknowledged event (replicas confirm each batch before it is acknowledged)."""

from __future__ import annotations

import csv
import hashlib
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from funnel.live.acl import ROLES, acl_file
from funnel.live.schema import Layout
from funnel.v1 import events_pb2, events_pb2_grpc, recommender_pb2, recommender_pb2_grpc
from launcher.redis_cluster import StoreCluster
from launcher.stack import REPO_ROOT
from tests.live import event, record_events, refused, wait_until

pytestmark = pytest.mark.processes  # six redis-servers, an events service and a gateway


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[StoreCluster]:
    """Three masters and three replicas; the roles' ACL file on every node, an admin user to build it."""
    passwords = {role: secrets.token_urlsafe(16) for role in (*ROLES, "admin")}
    admin = hashlib.sha256(passwords["admin"].encode()).hexdigest()
    acl = tmp_path / "users.acl"
    roles = {role: passwords[role] for role in ROLES}
    acl.write_text(acl_file(roles) + f"user admin on #{admin} ~* &* +@all\n")
    for role, password in passwords.items():
        (tmp_path / role).write_text(password + "\n")
    store = StoreCluster(tmp_path / "cluster", acl_file=acl, admin=("admin", passwords["admin"]))
    store.passwords = passwords  # type: ignore[attr-defined]
    try:
        store.start()
        yield store
    finally:
        store.stop()


def as_role(cluster: StoreCluster, role: str, tmp_path: Path) -> list[str]:
    node = cluster.nodes[0].server
    return [f"redis://{role}@{node.host}:{node.port}/0", "--state-store-password-file", str(tmp_path / role),
            "--state-store-cluster", "true"]  # fmt: skip


def start_events(start_service, cluster: StoreCluster, tmp_path: Path, *flags: str):
    store = as_role(cluster, "events", tmp_path)
    return start_service("services.events", ["--state-store", *store, "--store-check-seconds", "0.2", *flags])


def export(cluster: StoreCluster, tmp_path: Path, name: str) -> list[dict[str, str]]:
    store = as_role(cluster, "export", tmp_path)
    out = tmp_path / name
    run = subprocess.run(
        [sys.executable, "-m", "training.export_events", "--store", store[0], "--password-file", store[2],
         "--cluster", "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    with out.open() as handle:
        return list(csv.DictReader(handle))


def users_on_every_master(cluster: StoreCluster, count: int) -> list[str]:
    """`count` user ids whose log partitions are spread over every master."""
    layout = Layout.cluster()
    masters = cluster.masters_now()
    owners = {}
    with cluster.admin_client(masters[0]) as client:
        for line in client.execute_command("CLUSTER", "NODES").splitlines():
            fields = line.split()
            for span in fields[8:]:
                low, _, high = span.partition("-")
                for slot in range(int(low), int(high or low) + 1):
                    owners[slot] = fields[0]
        users = [f"cluster-user-{n}" for n in range(count)]
        slots = {user: client.execute_command("CLUSTER", "KEYSLOT", layout.log(layout.partition(user)).stream)
                 for user in users}  # fmt: skip
    assert {owners[slot] for slot in slots.values()} == {m.node_id for m in masters}, "users on every master"
    return users


def test_the_live_loop_runs_on_a_three_master_cluster_each_role_on_its_own_user(
    cluster, stack, start_service, start_gateway, tmp_path
):
    events = start_events(start_service, cluster, tmp_path, "--replica-acks", "1")
    gateway = start_gateway(
        f"{stack.address('retrieval-0-0')};{stack.address('retrieval-1-0')}", stack.address("ranking-0"),
        stack.address("reranking-0"), "--state-store", *as_role(cluster, "gateway", tmp_path),
    )  # fmt: skip
    users = users_on_every_master(cluster, 24)

    # One batch across every master's partitions: checked everywhere, then written everywhere.
    batch = [event(user, f"i{n:07d}") for n, user in enumerate(users)]
    assert record_events(events.address, batch).recorded == len(users)
    for master in cluster.masters_now():
        with cluster.admin_client(master) as client:
            assert client.dbsize() > 0, "every master holds a share of the users and of the log"

    # A batch whose one event reuses an id with another payload writes nothing, in any partition.
    reused = event(users[0], "another-item", event_id=batch[0].event_id)
    fresh = [event(user, "never-written") for user in users[1:]]
    error = refused(lambda: record_events(events.address, [*fresh, reused]))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS, error.details()

    # The gateway reads a user's live state from the master that owns it and records what it served.
    dismissed = "i0000042"
    record_events(events.address, [event(users[1], dismissed, events_pb2.EVENT_TYPE_DISMISS)])
    with grpc.insecure_channel(gateway.address) as channel:
        reply = recommender_pb2_grpc.RecommenderStub(channel).Recommend(
            recommender_pb2.RecommendRequest(user_id=users[1], num_results=10), timeout=5
        )
    assert not reply.degraded, reply.stages
    assert dismissed not in [item.item_id for item in reply.items]

    # The export reads every partition from its own checkpoint, and the next one starts after it.
    def exported_rows() -> list[dict[str, str]]:
        return export(cluster, tmp_path, f"export-{time.monotonic_ns()}.csv")

    rows = exported_rows()
    ids = {row["event_id"] for row in rows}
    assert {e.event_id for e in batch} <= ids
    assert not [row for row in rows if row["item_id"] == "never-written"]
    assert {row["event_type"] for row in rows} >= {"view", "dismiss"}
    if reply.request_id not in ids:  # the impression is recorded off the request path, just after the answer
        assert wait_until(lambda: reply.request_id in {row["event_id"] for row in exported_rows()}, 10)
    assert exported_rows() == [], "every partition's checkpoint moved past what was exported"


@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_a_master_lost_under_load_loses_no_acknowledged_event(fault, cluster, start_service, tmp_path):
    """Clients send batches and retry an unacknowledged one with the same ids, as they must. One
    master is killed (SIGKILL), or paused past its failover (SIGSTOP: to the others it is cut off,
    while its clients' commands wait in its sockets) and woken. Its replica takes over its slots;
    every acknowledged event is in the export after it, none twice. Without replica acks the woken
    master answers the commands that waited, then learns it is no longer a master and drops what
    it wrote: `make bench-cluster` measures that loss."""
    timeout = "1500" if fault == "kill" else "8000"  # longer than the pause: the woken master's answers arrive
    events = start_events(start_service, cluster, tmp_path, "--replica-acks", "1", "--store-timeout-ms", timeout)
    users = users_on_every_master(cluster, 30)
    acknowledged: list[str] = []
    refusals: list[grpc.StatusCode] = []
    stop = threading.Event()

    def client(users: list[str]) -> None:
        with grpc.insecure_channel(events.address) as channel:
            stub = events_pb2_grpc.EventsStub(channel)
            n = 0
            while not stop.is_set():
                batch = [event(user, f"i{n:07d}") for user in users]
                n += 1
                while True:  # the same batch, the same ids, until it is acknowledged
                    try:
                        stub.RecordEvents(events_pb2.RecordEventsRequest(events=batch), timeout=5)
                        acknowledged.extend(e.event_id for e in batch)
                        break
                    except grpc.RpcError as exc:
                        refusals.append(exc.code())
                        time.sleep(0.05)

    clients = [threading.Thread(target=client, args=(users[k::3],)) for k in range(3)]
    for thread in clients:
        thread.start()
    try:
        assert wait_until(lambda: len(acknowledged) > 300, 30)
        victim = cluster.masters_now()[0]
        # Until its replica is promoted, batches touching the victim's slots are refused; after it,
        # until a replica follows the new master again, they are written but not confirmed, so not
        # acknowledged either. The killed node restarts, as Kubernetes restarts a pod, and follows.
        if fault == "kill":
            cluster.kill(victim)
            cluster.wait_healthy(30)
            cluster.restart(victim)
        else:
            cluster.pause(victim)
            cluster.wait_promoted(victim, 30)  # raises when the victim's replica did not take over
            cluster.resume(victim)
        before = len(acknowledged)
        cluster.wait_healthy(30)
        assert wait_until(lambda: len(acknowledged) > before + 300, 30), "writes resume after the failover"
    finally:
        stop.set()
        for thread in clients:
            thread.join(30)
    assert set(refusals) <= {grpc.StatusCode.UNAVAILABLE}, refusals
    rows = export(cluster, tmp_path, "after-failover.csv")
    exported = [row["event_id"] for row in rows]
    assert set(acknowledged) <= set(exported), "an acknowledged event was lost in the failover"
    assert len(exported) == len(set(exported)), "a retried batch was recorded twice"
