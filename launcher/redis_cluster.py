"""A Redis Cluster on loopback from the same `redis-server` binary: masters, each with its replicas,
every node with the single server's durability (append-only, fsync always, no eviction).

Used by the tests and benchmarks of the online store past one Redis; in Kubernetes a cluster comes
from its own operator or chart, with the same settings. `cluster-require-full-coverage no`: while
one master is down (until its replica takes over) only its slots refuse writes; the other
partitions of the log keep taking events.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from launcher.ports import reserve_port_pair
from launcher.redis import RedisServer, server_binary

BUS_OFFSET = 10_000  # Redis 6.2 listens for its cluster bus on the client port + 10000


@dataclass
class ClusterNode:
    server: RedisServer
    node_id: str = ""
    role: str = ""  # "master" or "slave", as the node said when roles were last refreshed
    master_port: int = 0  # a replica's master's port, then


@dataclass
class StoreCluster:
    run_dir: Path
    masters: int = 3
    replicas_per_master: int = 1
    node_timeout_ms: int = 1000
    acl_file: Path | None = None
    admin: tuple[str, str] | None = None  # (user, password) that may create the cluster when the default is off
    nodes: list[ClusterNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Any node's address: a cluster client finds the others from it."""
        return self.nodes[0].server.url

    def start(self, timeout_s: float = 60.0) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config = None
        if self.admin:
            # With the default user off, a replica logs into its master as the admin user; in a file,
            # so the password shows in no process listing.
            config = self.run_dir / "replication.conf"
            config.write_text(f"masteruser {self.admin[0]}\nmasterauth {self.admin[1]}\n")
            config.chmod(0o600)
        for n in range(self.masters * (1 + self.replicas_per_master)):
            server = RedisServer(
                self.run_dir / f"node-{n}", reserve_port_pair(BUS_OFFSET), self.run_dir / f"node-{n}.log",
                acl_file=self.acl_file, config_file=config,
                extra_args=(
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(self.node_timeout_ms), "--cluster-require-full-coverage", "no",
                ),
            )  # fmt: skip
            server.start()
            self.nodes.append(ClusterNode(server))
        for node in self.nodes:
            node.server.wait_ready(timeout_s)
        self._create(timeout_s)
        self.wait_healthy(timeout_s)

    def _create(self, timeout_s: float) -> None:
        cli = server_binary().with_name("redis-cli")
        auth = ["--user", self.admin[0], "--pass", self.admin[1]] if self.admin else []
        addresses = [f"{node.server.host}:{node.server.port}" for node in self.nodes]
        subprocess.run(
            [str(cli), *auth, "--no-auth-warning", "--cluster", "create", *addresses,
             "--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"],
            check=True, capture_output=True, timeout=timeout_s,
        )  # fmt: skip

    def admin_client(self, node: ClusterNode) -> redis.Redis:
        user, password = self.admin or (None, None)
        return redis.Redis(
            node.server.host, node.server.port, username=user, password=password, decode_responses=True,
            socket_timeout=2,
        )  # fmt: skip

    def refresh_roles(self) -> None:
        """Each live node's id and role, as the cluster now sees them."""
        for node in self.nodes:
            if not self.alive(node):
                continue
            with self.admin_client(node) as client:
                node.node_id = str(client.execute_command("CLUSTER", "MYID"))
                replication = client.info("replication")
                node.role = replication["role"]
                node.master_port = int(replication.get("master_port", 0))

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        """Until every live node says the cluster is ok and every live replica follows its master."""
        deadline = time.monotonic() + timeout_s
        problem = ""
        while time.monotonic() < deadline:
            problem = self._problem()
            if not problem:
                self.refresh_roles()
                return
            time.sleep(0.1)
        raise TimeoutError(f"the cluster did not settle within {timeout_s:.0f} s: {problem}")

    def _problem(self) -> str:
        for node in self.nodes:
            if not self.alive(node):
                continue
            try:
                with self.admin_client(node) as client:
                    info = client.cluster("info")
                    if info.get("cluster_state") != "ok":
                        return f"{node.server.port}: cluster_state {info.get('cluster_state')}"
                    replication = client.info("replication")
                    if replication["role"] == "slave" and replication.get("master_link_status") != "up":
                        return f"{node.server.port}: replica not yet linked to its master"
            except redis.RedisError as exc:
                return f"{node.server.port}: {exc}"
        return ""

    def wait_promoted(self, victim: ClusterNode, timeout_s: float = 60.0) -> None:
        """Until a node that followed `victim` (when roles were last refreshed) says it is a master:
        asked of the followers, since the victim itself may be paused."""
        followers = [n for n in self.nodes if n is not victim and n.master_port == victim.server.port]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node in followers:
                with self.admin_client(node) as client:
                    if client.info("replication")["role"] == "master":
                        return
            time.sleep(0.05)
        raise TimeoutError(f"no replica of {victim.server.port} was promoted within {timeout_s:.0f} s")

    def masters_now(self) -> list[ClusterNode]:
        self.refresh_roles()
        return [node for node in self.nodes if self.alive(node) and node.role == "master"]

    @staticmethod
    def alive(node: ClusterNode) -> bool:
        return node.server.process is not None and node.server.process.poll() is None

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL: no shutdown, no last write to disk beyond what fsync already did."""
        assert node.server.process is not None
        os.kill(node.server.process.pid, signal.SIGKILL)
        node.server.process.wait(timeout=5)
        node.server.process = None

    def pause(self, node: ClusterNode) -> None:
        """SIGSTOP: to the others, a node cut off by the network; its clients' commands wait in its sockets."""
        assert node.server.process is not None
        os.kill(node.server.process.pid, signal.SIGSTOP)

    def resume(self, node: ClusterNode) -> None:
        assert node.server.process is not None
        os.kill(node.server.process.pid, signal.SIGCONT)

    def restart(self, node: ClusterNode, timeout_s: float = 30.0) -> None:
        node.server.start()
        node.server.wait_ready(timeout_s)

    def stop(self) -> None:
        for node in self.nodes:
            node.server.stop()
