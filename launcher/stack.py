"""The local stack: Triton, Redis, every stage replica, the events service and the gateway as
processes on 127.0.0.1.

Used by `make up` / `make down` (state kept in `.run/stack.json`, fixed ports) and by the tests,
evaluations and benchmarks (`auto_ports`: ports reserved by `launcher/ports.py`, and a process that
finds one taken started again on new ones). Every process runs in its own process group so stopping
it leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from funnel.runtime.clients import RECOMMEND, RECORD_EVENTS, new_credential
from launcher.health import wait_listening, wait_serving
from launcher.ports import ATTEMPTS, PortTaken, reserve_port, start_server
from launcher.processes import alive, spawn, stop_group, stop_groups, tail
from launcher.redis import RedisServer
from launcher.triton import TritonServer

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class StackConfig:
    artifacts: Path
    run_dir: Path = REPO_ROOT / ".run"
    policy: Path = REPO_ROOT / "config" / "policy.yaml"
    retrieval_shards: int = 1
    retrieval_replicas: int = 1
    ranking_replicas: int = 1
    reranking_replicas: int = 1
    gateway_port: int = 50051
    # Fixed ports for `make up`; tests pass auto_ports=True and get reserved ones (launcher/ports.py).
    auto_ports: bool = False
    triton_ports: tuple[int, int, int] = (8000, 8001, 8002)  # http, grpc, metrics
    first_stage_port: int = 50061
    first_metrics_port: int = 9101
    startup_timeout_s: float = 180.0
    # Ranking and Triton share this host: input tensors go through Triton's system shared memory.
    triton_shared_memory: bool = True
    # Users' live state in a Redis server (and the events service writing it); off: answers use
    # the bundle's stored history only, as before live data (the replay evaluations run so).
    live_state: bool = True
    redis_port: int = 6390
    events_port: int = 50091
    # The public services (gateway, events) check callers against a credentials file made in the run
    # directory: a `demo` client (recommend, record_events) whose token is `credentials/demo.token`.
    credentials: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    gateway_env: dict[str, str] = field(default_factory=dict)  # on top of extra_env, gateway only


@dataclass
class ProcessInfo:
    name: str
    pid: int
    port: int
    metrics_port: int
    log: str


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.processes: list[ProcessInfo] = []
        self._next_port = config.first_stage_port
        self._next_metrics = config.first_metrics_port
        self.triton: TritonServer | None = None
        self.redis: RedisServer | None = None
        self._launches: dict[str, tuple[str, list[str], dict[str, str] | None, bool]] = {}
        self._children: dict[str, subprocess.Popen] = {}  # by name: exit statuses during start-up
        self._fixed_ports: set[str] = set()  # names launched on ports they were given, never moved

    # -- ports -----------------------------------------------------------------------------
    def _port(self) -> int:
        if self.config.auto_ports:
            return reserve_port()
        self._next_port += 1
        return self._next_port - 1

    def _metrics_port(self) -> int:
        if self.config.auto_ports:
            return reserve_port()
        self._next_metrics += 1
        return self._next_metrics - 1

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        c = self.config
        logs = c.run_dir / "logs"
        public = ["--clients-file", str(write_demo_credentials(c.run_dir / "credentials"))] if c.credentials else []

        def make_triton() -> TritonServer:
            http, grpc_port, metrics = (self._port(), self._port(), self._port()) if c.auto_ports else c.triton_ports
            self._progress(f"starting Triton on 127.0.0.1:{grpc_port}")
            return TritonServer(c.artifacts / "model_repository", grpc_port, http, metrics, logs / "triton.log")

        # Triton loads its model (about 4 s) while the store and the stages start; it is waited for
        # before anyone is told the stages' addresses.
        triton = make_triton()
        triton.start()
        self._list_triton(triton)
        store_flags = self._start_store(public) if c.live_state else []

        shards = []
        policy = ["--policy-path", str(c.policy)]  # retrieval applies its content rules inside the search
        for shard in range(c.retrieval_shards):
            shards.append(
                [
                    self.launch(
                        f"retrieval-{shard}-{r}",
                        "services.retrieval",
                        ["--shard-index", str(shard), "--shard-count", str(c.retrieval_shards), *policy],
                    )
                    for r in range(c.retrieval_replicas)
                ]
            )
        ranking = self._launch_ranking(triton)
        reranking = [
            self.launch(f"reranking-{r}", "services.reranking", ["--policy-path", str(c.policy)])
            for r in range(c.reranking_replicas)
        ]
        try:
            triton.wait_ready(c.startup_timeout_s)
        except PortTaken:
            if not c.auto_ports:
                raise
            # Something outside the reservations took one of its ports: Triton made again on new
            # ones, and the ranking replicas started again with its new address.
            self.processes.remove(self.get("triton"))
            triton.stop()
            triton = start_server(make_triton, c.startup_timeout_s, ATTEMPTS - 1)
            self._list_triton(triton)
            for info in ranking:
                self.stop_one(info.name)
            ranking = self._launch_ranking(triton)
        self.triton = triton
        # Launched together, each then held to its ports (or moved to new ones) before anyone is told them.
        shards = [[self.listening(p) for p in replicas] for replicas in shards]
        ranking, reranking = [self.listening(p) for p in ranking], [self.listening(p) for p in reranking]
        shard_targets = [",".join(f"127.0.0.1:{p.port}" for p in replicas) for replicas in shards]
        self.wait_all_serving()
        gateway = self.launch(
            "gateway",
            "services.gateway",
            [
                "--retrieval-shards",
                ";".join(shard_targets),
                "--ranking-target",
                ",".join(f"127.0.0.1:{p.port}" for p in ranking),
                "--reranking-target",
                ",".join(f"127.0.0.1:{p.port}" for p in reranking),
                "--policy-path",
                str(c.policy),
                *store_flags,
                *public,
            ],
            port=c.gateway_port or None,
            env=c.gateway_env,
        )
        self.listening(gateway)
        self.wait_all_serving()

    def _list_triton(self, triton: TritonServer) -> None:
        """A started Triton, first among the processes (ready or not: `stop` must reach it either way)."""
        assert triton.process is not None
        info = ProcessInfo("triton", triton.process.pid, triton.grpc_port, triton.metrics_port, str(triton.log_path))
        self.processes.insert(0, info)

    def _launch_ranking(self, triton: TritonServer) -> list[ProcessInfo]:
        c = self.config
        args = ["--triton-url", triton.grpc_url, "--triton-shared-memory", str(c.triton_shared_memory).lower()]
        return [self.launch(f"ranking-{r}", "services.ranking", args) for r in range(c.ranking_replicas)]

    def _start_store(self, public: list[str]) -> list[str]:
        """Redis and the events service writing it; the gateway's flags for reading it."""
        c = self.config

        def make_redis() -> RedisServer:
            port = self._port() if c.auto_ports else c.redis_port
            redis = RedisServer(c.run_dir / "redis", port, c.run_dir / "logs" / "redis.log")
            self._progress(f"starting Redis on 127.0.0.1:{port} (append-only, fsync always, {redis.data_dir})")
            return redis

        self.redis = r = start_server(make_redis, c.startup_timeout_s, ATTEMPTS if c.auto_ports else 1)
        assert r.process is not None
        self.processes.append(ProcessInfo("redis", r.process.pid, r.port, 0, str(r.log_path)))
        store = ["--state-store", r.url]
        port = None if c.auto_ports else c.events_port
        events = self.launch("events", "services.events", [*store, *public], port=port, artifacts=False)
        self.listening(events)
        return store

    def restart_store(self) -> None:
        """Start Redis again on its port and data directory, after it stopped or was killed."""
        assert self.redis is not None, "the stack runs without live state"
        old = self.get("redis")
        if alive(old.pid):
            raise RuntimeError("redis is still running")
        self.processes.remove(old)
        process = self.redis.start()
        self.processes.insert(0, ProcessInfo("redis", process.pid, old.port, 0, old.log))
        self.redis.wait_ready(self.config.startup_timeout_s)

    def launch(
        self,
        name: str,
        module: str,
        args: list[str],
        port: int | None = None,
        env: dict[str, str] | None = None,
        metrics_port: int | None = None,
        artifacts: bool = True,
    ) -> ProcessInfo:
        """Start one service process; `listening` holds it to its ports, `wait_all_serving` waits
        until it is ready."""
        c = self.config
        if port or metrics_port:
            self._fixed_ports.add(name)
        else:
            self._fixed_ports.discard(name)
        port = port or self._port()
        metrics_port = metrics_port or self._metrics_port()
        self._launches[name] = (module, args, env, artifacts)
        log = c.run_dir / "logs" / f"{name}.log"
        command = [
            sys.executable,
            "-m",
            module,
            "--port",
            str(port),
            "--metrics-port",
            str(metrics_port),
            *(["--artifact-dir", str(c.artifacts.resolve())] if artifacts else []),
            *args,
        ]
        process_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **c.extra_env, **(env or {})}
        process = spawn(command, log, env=process_env, cwd=REPO_ROOT)
        self._children[name] = process
        info = ProcessInfo(name, process.pid, port, metrics_port, str(log))
        self.processes.append(info)
        self._progress(f"started {name} on 127.0.0.1:{port}")
        return info

    def listening(self, info: ProcessInfo) -> ProcessInfo:
        """`info` once its process holds its ports; on reserved ports, the same process started
        again on new ones while one is taken (something outside the reservations bound it)."""
        for attempt in range(ATTEMPTS):
            try:
                wait_listening(self.address(info.name), self._children[info.name], self.config.startup_timeout_s)
                return info
            except PortTaken:
                if info.name in self._fixed_ports or attempt == ATTEMPTS - 1:
                    raise PortTaken(f"{info.name}: a port it was given is taken\n{tail(Path(info.log))}") from None
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"{info.name}: {exc}\n--- last log lines ---\n{tail(Path(info.log))}") from None
            self._progress(f"{info.name}: a port was taken; starting it again on new ports")
            place = self.processes.index(info)
            self.processes.remove(info)
            module, args, env, artifacts = self._launches[info.name]
            info = self.launch(info.name, module, args, env=env, artifacts=artifacts)
            self.processes.insert(place, self.processes.pop())  # where it was: stop order is start order reversed
        raise AssertionError("unreachable")

    def launch_like(self, name: str, new_name: str, extra_args: list[str] | None = None) -> ProcessInfo:
        """One more replica of a running process, on new ports (later flags override earlier ones)."""
        module, args, env, artifacts = self._launches[name]
        return self.listening(self.launch(new_name, module, [*args, *(extra_args or [])], env=env, artifacts=artifacts))

    def stop_one(self, name: str) -> None:
        info = self.get(name)
        stop_group(info.pid)
        self.processes.remove(info)

    def relaunch(self, name: str) -> ProcessInfo:
        """Start a process that stopped (or was killed) again, on the same ports: a restarted pod."""
        old = self.get(name)
        if alive(old.pid):
            raise RuntimeError(f"{name} is still running")
        self.processes.remove(old)
        module, args, env, artifacts = self._launches[name]
        return self.launch(
            name, module, args, port=old.port, env=env, metrics_port=old.metrics_port, artifacts=artifacts
        )

    def wait_all_serving(self) -> None:
        for info in self.processes:
            if info.name in ("triton", "redis"):  # no gRPC health service: waited for when started
                continue
            try:
                wait_serving(f"127.0.0.1:{info.port}", self.config.startup_timeout_s, lambda pid=info.pid: alive(pid))
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"{info.name}: {exc}\n--- last log lines ---\n{tail(Path(info.log))}") from None

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.get(name).port}"

    def get(self, name: str) -> ProcessInfo:
        return next(p for p in self.processes if p.name == name)

    def stop(self) -> None:
        stop_in_tiers(self.processes)
        self.processes.clear()

    # -- state file for `make up` / `make down` --------------------------------------------
    def save_state(self) -> Path:
        path = self.config.run_dir / "stack.json"
        path.write_text(json.dumps([asdict(p) for p in self.processes], indent=2))
        return path

    @staticmethod
    def stop_from_state(run_dir: Path) -> list[str]:
        path = run_dir / "stack.json"
        if not path.exists():
            return []
        infos = [ProcessInfo(**entry) for entry in json.loads(path.read_text())]
        stop_in_tiers(infos)
        path.unlink()
        return [info.name for info in infos]

    def _progress(self, message: str) -> None:
        print(f"[stack {time.strftime('%H:%M:%S')}] {message}", flush=True)


# Callers before what they call, so nothing calls a stopped process: the gateway (no new request
# comes in), then the stages and the events service (none calls another), then what they call.
# Within a tier the processes drain together: Triton alone takes about 4 s to unload its model.
CALLED_LAST = ("redis", "triton")


def stop_in_tiers(processes: list[ProcessInfo]) -> None:
    gateways = [p.pid for p in processes if p.name.startswith("gateway")]
    called = [p.pid for p in processes if p.name in CALLED_LAST]
    stages = [p.pid for p in processes if p.pid not in gateways and p.pid not in called]
    for tier in (gateways, stages, called):
        stop_groups(tier)


def write_demo_credentials(folder: Path) -> Path:
    """A credentials file with one client, `demo` (recommend, record_events), and its token beside it
    (`demo.token`, readable by this user only), made anew for each stack; the file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    token, line = new_credential("demo", [RECOMMEND, RECORD_EVENTS])
    token_file = folder / "demo.token"
    token_file.touch(mode=0o600)
    token_file.write_text(token + "\n")
    clients = folder / "clients"
    clients.write_text("# made by the local launcher for this stack's run; a token is in demo.token\n" + line + "\n")
    return clients
