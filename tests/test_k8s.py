"""The Kubernetes deployment, checked offline: rendering, strict schemas, wiring, hardening, network.

Every check is shown to pass on both overlays and to fail on a manifest broken the way real ones
break (a typo in a variable, a probe on the wrong port, a shard told the wrong index...).
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from deploy.manifests import Manifests
from deploy.render import OVERLAYS, render
from deploy.schema_checks import VERSIONS
from deploy.validate import manifest_problems
from deploy.wiring_checks import container_env, funnel_containers
from funnel.live.acl import ROLES, acl_file
from funnel.runtime.clients import new_credential
from launcher.health import health_status, wait_listening, wait_serving
from launcher.ports import PortTaken, reserve_port, retry_on_port_taken, start_server
from launcher.processes import alive, spawn, stop_group, tail
from launcher.redis import RedisServer
from launcher.stack import REPO_ROOT

Objects = list[dict]


@pytest.fixture(scope="module")
def rendered() -> dict[str, Objects]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


def problems_of(objects: Objects) -> list[str]:
    return [problem for found in manifest_problems(objects).values() for problem in found]


def find(objects: Objects, kind: str, name: str) -> dict:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def container(objects: Objects, name: str) -> dict:
    return find(objects, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]


def env_var(objects: Objects, deployment: str, variable: str) -> dict:
    return next(e for e in container(objects, deployment)["env"] if e["name"] == variable)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_passes_every_check(rendered, overlay):
    objects = rendered[overlay]
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    assert {"ServiceAccount", "ConfigMap", "PersistentVolumeClaim", "Namespace"} <= kinds
    assert VERSIONS[0] == "1.30.0" and VERSIONS[1] >= "1.37.0"
    assert problems_of(objects) == []


def test_every_stage_and_shard_scales_on_its_own(rendered):
    for overlay, objects in rendered.items():
        deployments = {o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"}
        stages = {"gateway", "retrieval-0", "retrieval-1", "ranking", "reranking", "events"}
        # With the sidecar, Triton is part of every ranking pod and scales with ranking.
        assert deployments == stages | ({"triton"} if overlay != "dev-sidecar" else set()), overlay
        targets = {o["spec"]["scaleTargetRef"]["name"] for o in objects if o["kind"] == "HorizontalPodAutoscaler"}
        assert targets == deployments
    prod = rendered["prod"]
    assert find(prod, "Deployment", "retrieval-1")["spec"]["replicas"] == 3
    assert find(prod, "HorizontalPodAutoscaler", "gateway")["spec"]["maxReplicas"] == 20
    assert "podAntiAffinity" in find(prod, "Deployment", "ranking")["spec"]["template"]["spec"]["affinity"]
    assert find(rendered["dev"], "Deployment", "ranking")["spec"]["replicas"] == 1
    # Only prod runs Triton on a GPU, with the GPU model configuration.
    assert "--model-config-name=libtorch-gpu" in container(prod, "triton")["args"]
    assert container(prod, "triton")["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "--model-config-name=libtorch" in container(rendered["dev"], "triton")["args"]


def test_the_policy_config_map_is_the_repository_policy_file(rendered):
    policy = (REPO_ROOT / "config" / "policy.yaml").read_text()
    for objects in rendered.values():
        assert find(objects, "ConfigMap", "funnel-policy")["data"]["policy.yaml"] == policy


def _set(path: list, value: object) -> Callable[[Objects], None]:
    def mutate(objects: Objects) -> None:
        target = find(objects, path[0], path[1])
        for key in path[2:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _env(deployment: str, variable: str, value: str) -> Callable[[Objects], None]:
    def mutate(objects: Objects) -> None:
        env_var(objects, deployment, variable)["value"] = value

    return mutate


def _container(deployment: str, edit: Callable[[dict], None]) -> Callable[[Objects], None]:
    def mutate(objects: Objects) -> None:
        edit(container(objects, deployment))

    return mutate


def _remove(kind: str, name: str) -> Callable[[Objects], None]:
    def mutate(objects: Objects) -> None:
        objects.remove(find(objects, kind, name))

    return mutate


def _rename_env(deployment: str, old: str, new: str) -> Callable[[Objects], None]:
    def mutate(objects: Objects) -> None:
        env_var(objects, deployment, old)["name"] = new

    return mutate


def _triton_arg(old: str, new: str) -> Callable[[Objects], None]:
    def mutate(objects: Objects) -> None:
        args = container(objects, "triton")["args"]
        args[args.index(old)] = new

    return mutate


def _redis_flag(flag: str, value: str | None) -> Callable[[Objects], None]:
    """Redis run with `flag` set to `value` (None: without the flag)."""

    def mutate(objects: Objects) -> None:
        args = find(objects, "StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]["args"]
        at = args.index(flag)
        if value is None:
            del args[at : at + 2]
        else:
            args[at + 1] = value

    return mutate


def _remove_env(deployment: str, variable: str) -> Callable[[Objects], None]:
    def mutate(objects: Objects) -> None:
        env = container(objects, deployment)["env"]
        env.remove(env_var(objects, deployment, variable))

    return mutate


def _redis_image(image: str) -> Callable[[Objects], None]:
    def mutate(objects: Objects) -> None:
        find(objects, "StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]["image"] = image

    return mutate


def _redis_arg(old: str, new: str) -> Callable[[Objects], None]:
    def mutate(objects: Objects) -> None:
        args = find(objects, "StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]["args"]
        args[args.index(old)] = new

    return mutate


def _open_triton(objects: Objects) -> None:
    """Triton takes calls from anyone and no policy limits where pods may call."""
    find(objects, "NetworkPolicy", "triton")["spec"]["ingress"][0].pop("from")
    for name in ("funnel-default-deny", "funnel-allow-dns"):
        objects.remove(find(objects, "NetworkPolicy", name))


def _job_out_read_only(objects: Objects) -> None:
    job = find(objects, "Job", "build-artifacts")["spec"]["template"]["spec"]["containers"][0]
    job["volumeMounts"][0]["readOnly"] = True


BROKEN = {
    "a misspelt variable": (
        _rename_env("gateway", "FUNNEL_RANKING_TARGET", "FUNNEL_RANKING_TARGT"),
        "FUNNEL_RANKING_TARGT is not a setting of services.gateway",
    ),
    "the gRPC port": (
        _container("retrieval-1", lambda c: c["ports"][-1].update(containerPort=50062)),
        "the port named grpc is 50062",
    ),
    "a probe port": (
        _container("reranking", lambda c: c["readinessProbe"]["grpc"].update(port=50082)),
        "readinessProbe checks port 50082",
    ),
    "liveness on readiness": (
        _container("ranking", lambda c: c["livenessProbe"]["grpc"].pop("service")),
        "livenessProbe must ask for 'liveness'",
    ),
    "an unknown health service": (
        _container("gateway", lambda c: c["readinessProbe"]["grpc"].update(service="funnel.v1.Gateway")),
        "which is never set",
    ),
    "missing limits": (_container("ranking", lambda c: c["resources"].pop("limits")), "no cpu limit"),
    "a writable root": (
        _container("gateway", lambda c: c["securityContext"].update(readOnlyRootFilesystem=False)),
        "readOnlyRootFilesystem must be true",
    ),
    "capabilities kept": (
        _container("triton", lambda c: c["securityContext"]["capabilities"].update(drop=["NET_RAW"])),
        "capabilities.drop must be [ALL]",
    ),
    "no startup probe": (_container("retrieval-0", lambda c: c.pop("startupProbe")), "no startupProbe"),
    "no autoscaler": (_remove("HorizontalPodAutoscaler", "reranking"), "needs exactly one HorizontalPodAutoscaler"),
    "a budget over two shards": (
        _set(
            ["PodDisruptionBudget", "retrieval-0", "spec", "selector", "matchLabels"],
            {"app.kubernetes.io/name": "retrieval"},
        ),
        "also selects Deployment/retrieval-1",
    ),
    "two shards with one index": (_env("retrieval-1", "FUNNEL_SHARD_INDEX", "0"), "serves shard 0 of 2, not 1 of 2"),
    "a shard the gateway never calls": (
        _env("gateway", "FUNNEL_RETRIEVAL_SHARDS", "dns:///retrieval-0:50061"),
        "never calls Deployment/retrieval-1",
    ),
    "a shard index out of range": (_env("retrieval-1", "FUNNEL_SHARD_INDEX", "2"), "would refuse to start"),
    "an unknown Triton config": (
        _triton_arg("--model-config-name=libtorch", "--model-config-name=onnx"),
        "--model-config-name='onnx'",
    ),
    "a GPU config without a GPU": (
        _triton_arg("--model-config-name=libtorch", "--model-config-name=libtorch-gpu"),
        "and the GPU limit None disagree",
    ),
    "Triton behind a ClusterIP": (_env("ranking", "FUNNEL_TRITON_URL", "triton:8001"), "must be dns:///"),
    "a target without a port": (_env("gateway", "FUNNEL_RANKING_TARGET", "dns:///ranking:grpc"), "no numeric port"),
    "a stage behind a ClusterIP": (_set(["Service", "reranking", "spec", "clusterIP"], "10.0.0.7"), "must be headless"),
    "a policy path off the volume": (
        _env("reranking", "FUNNEL_POLICY_PATH", "/etc/funnel/policy.yaml"),
        "policy_path=/etc/funnel/policy.yaml is on no mounted volume",
    ),
    "a drain longer than the grace period": (_env("gateway", "FUNNEL_DRAIN_SECONDS", "40"), "must be shorter than"),
    "a service listening on loopback": (_env("ranking", "FUNNEL_HOST", "127.0.0.1"), "listens on 127.0.0.1"),
    "ranking cut off from Triton": (_remove("NetworkPolicy", "ranking-to-triton"), "ranking -> triton:8001 is blocked"),
    "Triton open to every pod": (_open_triton, "retrieval -> triton:8001 is open"),
    "an unknown field": (_container("gateway", lambda c: c.update(bogus=1)), "'bogus' was unexpected"),
    "an unpinned image": (_container("gateway", lambda c: c.update(image="funnel/gateway:latest")), "no pinned tag"),
    "a Job writing to a read-only volume": (_job_out_read_only, "is not on a writable volume"),
    "no metrics port": (
        _container("ranking", lambda c: c["ports"].pop(0)),
        "metrics port 9090 is not a container port",
    ),
    "a store that fsyncs once a second": (_redis_arg("always", "everysec"), "must run --appendonly yes"),
    "a store address on the wrong port": (
        _env("events", "FUNNEL_STATE_STORE", "redis://events@redis:6380/0"),
        "Service/redis has no port 6380",
    ),
    "a store address that is no URL": (_env("gateway", "FUNNEL_STATE_STORE", "redis:6379"), "must be a redis://"),
    "a store user without a password": (
        _env("gateway", "FUNNEL_STATE_STORE", "redis://redis:6379/0"),
        "must name the store user of this service",
    ),
    "a store without users": (_redis_flag("--aclfile", None), "must load its users from --aclfile"),
    "a store in unprotected mode": (_redis_flag("--protected-mode", "no"), "must run --protected-mode yes"),
    "a store image with the Lua CVEs": (
        _redis_image("redis:6.2.14-alpine"),
        "Redis 6.2.14 predates the fixes for the Lua remote-code-execution CVEs",
    ),
    "a store that evicts": (_redis_flag("--maxmemory-policy", "allkeys-lru"), "must run --maxmemory-policy noeviction"),
    "a public service open to anyone": (
        _remove_env("events", "FUNNEL_CLIENTS_FILE"),
        "Deployment/events:app: a public service must check its callers",
    ),
    "the gateway cut off from the store": (
        _remove("NetworkPolicy", "gateway-to-online-store"),
        "gateway -> online-store:6379 is blocked",
    ),
}


BROKEN_IN_PROD = {
    "a plaintext client of a store that serves TLS only": (
        _env("gateway", "FUNNEL_STATE_STORE", "redis://gateway@redis:6379/0"),
        "speaks plaintext (redis://) to StatefulSet/redis, which serves TLS only",
    ),
    "a TLS client whose CA is not mounted": (
        _env("events", "FUNNEL_STATE_STORE", "rediss://events@redis:6379/0?ssl_ca_certs=/nowhere/ca.crt"),
        "its ssl_ca_certs is on no mounted volume",
    ),
    "a TLS store whose key is not mounted": (
        _redis_flag("--tls-key-file", "/nowhere/tls.key"),
        "--tls-key-file=/nowhere/tls.key is on no mounted volume",
    ),
}
# Every case, with the overlay it breaks (the store's TLS is in prod only).
CASES = {**{case: ("dev", *broken) for case, broken in BROKEN.items()},
         **{case: ("prod", *broken) for case, broken in BROKEN_IN_PROD.items()}}  # fmt: skip


def test_a_budget_the_gateway_refuses_is_caught(rendered):
    objects = copy.deepcopy(rendered["dev"])
    budgets = next(
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("funnel-budgets")
    )
    budgets["data"]["FUNNEL_RANKING_BUDGET_MS"] = "-5"
    assert any("ranking_budget_ms=-5.0 must be > 0" in p for p in problems_of(objects))


def test_each_stage_starts_from_its_rendered_environment_and_answers_its_probes(rendered, artifacts, tmp_path):
    """The dev overlay's containers, run as local processes with the environment the manifests give
    them: only the address, ports and file locations are moved onto this machine."""
    manifests = Manifests(rendered["dev"])
    started: list[Container] = []
    # The Redis StatefulSet's settings, on this machine: the store the gateway and events service use,
    # with the users of the Secret funnel-store-acl; and the Secrets' other files, written here.
    passwords = {role: f"password-of-{role}" for role in ROLES}
    (tmp_path / "users.acl").write_text(acl_file(passwords))
    for role, password in passwords.items():
        (tmp_path / f"{role}.password").write_text(password)
    (tmp_path / "clients").write_text(new_credential("app", ["recommend", "record_events"])[1] + "\n")
    acl = tmp_path / "users.acl"
    store = start_server(
        lambda: RedisServer(tmp_path / "redis", reserve_port(), tmp_path / "redis.log", acl_file=acl), 30
    )
    try:
        for spec, module in funnel_containers(manifests):
            if module == "training.build":
                continue
            env, problems = container_env(manifests, spec)
            assert problems == []
            env.update(FUNNEL_HOST="127.0.0.1", FUNNEL_ARTIFACT_DIR=str(artifacts), FUNNEL_DRAIN_SECONDS="0")
            if "FUNNEL_POLICY_PATH" in env:
                env["FUNNEL_POLICY_PATH"] = str(REPO_ROOT / "config" / "policy.yaml")
            if "FUNNEL_STATE_STORE" in env:
                user = urlsplit(env["FUNNEL_STATE_STORE"]).username
                env["FUNNEL_STATE_STORE"] = f"redis://{user}@{store.host}:{store.port}/0"
                env["FUNNEL_STATE_STORE_PASSWORD_FILE"] = str(tmp_path / f"{user}.password")
            if "FUNNEL_CLIENTS_FILE" in env:
                env["FUNNEL_CLIENTS_FILE"] = str(tmp_path / "clients")
            base = {k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")}
            log = tmp_path / f"{spec.workload['metadata']['name']}.log"
            started.append(Container(spec, module, {**base, **env}, log))
        for container in started:  # all spawned at once, then each held to its ports or moved to new ones
            container.listening()

        for container in started:
            spec, process, address, log = container.spec, container.process, container.address, container.log
            name = spec.workload["metadata"]["name"]
            probes = {kind: spec.spec[kind]["grpc"].get("service", "") for kind in ("readinessProbe", "livenessProbe")}
            deadline = time.monotonic() + 90
            while health_status(address, probes["livenessProbe"]) != "SERVING":
                assert alive(process.pid) and time.monotonic() < deadline, f"{name} never came up\n{tail(log)}"
                time.sleep(0.2)
            if name == "ranking":
                # No Triton at dns:///triton:8001 here: alive, but rightly not ready.
                assert health_status(address, probes["readinessProbe"]) == "NOT_SERVING"
            else:
                wait_serving(address, 90, lambda p=process: alive(p.pid))
                assert health_status(address, probes["readinessProbe"]) == "SERVING"
            with urllib.request.urlopen(f"http://127.0.0.1:{container.metrics_port}/metrics", timeout=5) as reply:
                assert b"funnel_rpc_in_flight" in reply.read()
    finally:
        for container in started:
            stop_group(container.process.pid)
        store.stop()


class Container:
    """One container of an overlay as a local process, its ports reserved on this machine."""

    def __init__(self, spec, module: str, env: dict[str, str], log) -> None:
        self.spec, self.module, self.env, self.log = spec, module, env, log
        self.spawn()

    def spawn(self) -> None:
        self.port, self.metrics_port = reserve_port(), reserve_port()
        ports = {"FUNNEL_PORT": str(self.port), "FUNNEL_METRICS_PORT": str(self.metrics_port)}
        env = {**self.env, **ports, "PYTHONPATH": str(REPO_ROOT)}
        self.process = spawn([sys.executable, "-m", self.module], self.log, env=env, cwd=REPO_ROOT)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def listening(self) -> None:
        def attempt() -> None:
            try:
                wait_listening(self.address, self.process, 90)
            except PortTaken:
                self.spawn()  # on new ports, for the next attempt
                raise

        retry_on_port_taken(attempt)


def test_overlays_deploy_the_images_of_this_version(rendered):
    from deploy.__main__ import project_version

    for objects in rendered.values():
        manifests = Manifests(objects)
        tags = {spec.spec["image"].rsplit(":", 1)[1] for spec, _ in funnel_containers(manifests)}
        assert tags == {project_version()}


@pytest.mark.processes
def test_make_k8s_validate_passes():
    result = subprocess.run(
        ["make", "--no-print-directory", "k8s-validate"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("  ok   ") == 4 * len(OVERLAYS) and "FAIL" not in result.stdout
    assert "images: ok" in result.stdout


@pytest.mark.processes
def test_images_without_a_docker_engine_say_so_and_build_nothing(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "deploy", "images"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={"PATH": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)},  # no docker on this PATH
    )
    assert result.returncode == 2
    assert "no Docker engine reachable" in result.stderr
    assert "docker build -f services/retrieval/Dockerfile -t funnel/retrieval:" in result.stderr


def _drop_env(deployment: str, variable: str) -> Callable[[Objects], None]:
    def mutate(objects: Objects) -> None:
        env = container(objects, deployment)["env"]
        env.remove(next(e for e in env if e["name"] == variable))

    return mutate


def _triton_plaintext(objects: Objects) -> None:
    args = container(objects, "triton")["args"]
    args[:] = [a for a in args if not a.startswith(("--grpc-use-ssl", "--grpc-server-", "--grpc-root-cert"))]


TLS_BROKEN = {
    "probes on a TLS port": (_drop_env("ranking", "FUNNEL_PROBE_PORT"), "set FUNNEL_PROBE_PORT"),
    "Triton left in plaintext": (_triton_plaintext, "ranking calls with TLS, Triton is plaintext"),
    "a certificate off the volume": (
        _env("retrieval-0", "FUNNEL_TLS_CERT_FILE", "/certs/tls.crt"),
        "tls_cert_file=/certs/tls.crt is on no mounted volume",
    ),
}


def test_prod_runs_every_hop_over_mutual_tls_with_plaintext_probe_ports(rendered):
    objects = rendered["prod"]
    assert not problems_of(objects)
    for name in ("retrieval-0", "retrieval-1", "ranking", "reranking", "gateway"):
        app = container(objects, name)
        env = {e["name"]: e.get("value") for e in app["env"]}
        assert env["FUNNEL_TLS_CA_FILE"] == "/etc/funnel/tls/ca.crt"
        assert env["FUNNEL_TLS_REQUIRE_CLIENT_CERT"] == ("false" if name == "gateway" else "true")
        assert {app[p]["grpc"]["port"] for p in ("startupProbe", "readinessProbe", "livenessProbe")} == {8086}
    assert "--grpc-use-ssl-mutual=true" in container(objects, "triton")["args"]


def test_the_sidecar_overlay_runs_triton_in_each_ranking_pod_sharing_memory_on_loopback(rendered):
    objects = rendered["dev-sidecar"]
    pod = find(objects, "Deployment", "ranking")["spec"]["template"]["spec"]
    app, triton = pod["containers"]
    assert triton["name"] == "triton" and "--grpc-address=127.0.0.1" in triton["args"]
    env = {e["name"]: e.get("value") for e in app["env"]}
    assert env["FUNNEL_TRITON_URL"] == "127.0.0.1:8001" and env["FUNNEL_TRITON_SHARED_MEMORY"] == "true"
    shm = {v["name"]: v for v in pod["volumes"]}["dshm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    for spec in (app, triton):
        assert {"name": "dshm", "mountPath": "/dev/shm"} in spec["volumeMounts"]
    assert not [
        o for o in objects if o["kind"] in ("Service", "HorizontalPodAutoscaler") and "triton" in o["metadata"]["name"]
    ]


def _sidecar(edit: Callable[[dict, dict, dict], None]) -> Callable[[Objects], None]:
    def mutate(objects: Objects) -> None:
        pod = find(objects, "Deployment", "ranking")["spec"]["template"]["spec"]
        edit(pod, pod["containers"][0], pod["containers"][1])

    return mutate


SIDECAR_BROKEN = {
    "Triton as another user": (
        _sidecar(lambda pod, app, triton: triton["securityContext"].update(runAsUser=1000)),
        "runs as user 1000, ranking as 10001",
    ),
    "no shared /dev/shm": (
        _sidecar(lambda pod, app, triton: app["volumeMounts"].remove({"name": "dshm", "mountPath": "/dev/shm"})),
        "must mount the same volume at /dev/shm",
    ),
    "no Triton in the pod": (_sidecar(lambda pod, app, triton: pod["containers"].pop()), "no Triton container"),
    "another port": (
        _sidecar(lambda pod, app, triton: triton["args"].append("--grpc-port=9001")),
        "--grpc-port is not the port of FUNNEL_TRITON_URL",
    ),
}


def test_shared_memory_with_a_triton_in_other_pods_is_caught(rendered):
    objects = copy.deepcopy(rendered["dev"])
    container(objects, "ranking")["env"].append({"name": "FUNNEL_TRITON_SHARED_MEMORY", "value": "true"})
    assert any("needs Triton in the same pod" in problem for problem in problems_of(objects))


def test_the_deploy_command_makes_every_secret_the_overlays_mount(rendered, tmp_path):
    import base64
    import hashlib

    from deploy.secrets import funnel_secrets, issued_by_your_ca
    from funnel.runtime.clients import parse_clients

    clients = tmp_path / "clients"
    result = subprocess.run(
        [sys.executable, "-m", "deploy", "credentials", "new", "web", "--scopes", "recommend,record_events",
         "--rate", "50", "--file", str(clients)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token not in clients.read_text(), "the file keeps the token's digest only"
    client = parse_clients(clients.read_text()).identify((("authorization", f"Bearer {token}"),))
    assert client is not None and client.name == "web" and client.rate_per_s == 50

    made = {s["metadata"]["name"]: s for s in funnel_secrets("funnel", clients)}
    for objects in rendered.values():
        mounted = {
            volume["secret"]["secretName"]
            for spec in Manifests(objects).containers()
            for volume in spec.workload["spec"]["template"]["spec"].get("volumes", [])
            if "secret" in volume and not issued_by_your_ca(volume["secret"]["secretName"])
        }
        assert mounted <= set(made), f"mounted but never made: {mounted - set(made)}"
    data = {name: {k: base64.b64decode(v).decode() for k, v in s["data"].items()} for name, s in made.items()}
    users = data["funnel-store-acl"]["users.acl"]
    assert "user default off" in users
    for role in ("gateway", "events", "export"):
        password = data[f"funnel-store-{role}"]["password"]
        assert password not in users and hashlib.sha256(password.encode()).hexdigest() in users


def test_the_alert_rules_read_metrics_the_services_publish():
    import yaml
    from prometheus_client import REGISTRY

    import funnel.runtime.metrics  # noqa: F401  (registers every metric)

    rules = yaml.safe_load((REPO_ROOT / "k8s/components/prometheus/alert-rules.yaml").read_text())
    groups = yaml.safe_load(rules["data"]["funnel.rules.yaml"])["groups"]
    families = list(REGISTRY.collect())  # a counter's family is named without its _total
    published = {m.name for m in families} | {f"{m.name}_total" for m in families if m.type == "counter"}
    named = {name for group in groups for rule in group["rules"] for name in re.findall(r"funnel_\w+", rule["expr"])}
    assert named and named <= published, named - published
    assert {"FunnelStoreMemoryHigh", "FunnelStoreMemoryCritical", "FunnelEventLogFull", "FunnelStoreNotDurable"} <= {
        rule["alert"] for group in groups for rule in group["rules"]
    }


def test_the_distributed_overlay_trains_on_an_indexed_job_meeting_at_pod_0(rendered):
    objects = rendered["dev-distributed"]
    assert not any(o["kind"] == "Job" and o["metadata"]["name"] == "build-artifacts" for o in objects)
    job = find(objects, "Job", "distributed-build")
    pod = job["spec"]["template"]["spec"]
    command = pod["containers"][0]["command"]
    assert job["spec"]["completionMode"] == "Indexed" and command[-2:] == ["-m", "training.build"]
    service = find(objects, "Service", "funnel-training")
    assert service["spec"]["clusterIP"] == "None" and pod["subdomain"] == "funnel-training"
    assert "--master-addr=distributed-build-0.funnel-training" in command


def _torchrun_flag(flag: str, value: str):
    def mutate(objects: Objects) -> None:
        command = find(objects, "Job", "distributed-build")["spec"]["template"]["spec"]["containers"][0]["command"]
        index = next(n for n, arg in enumerate(command) if arg.startswith(flag + "="))
        command[index] = f"{flag}={value}"

    return mutate


TORCHRUN_BROKEN = {
    "more nodes than pods": (_torchrun_flag("--nnodes", "3"), "--nnodes=3, completions 2 and parallelism 2"),
    "a fixed node rank": (_torchrun_flag("--node-rank", "0"), "--node-rank must be $(JOB_COMPLETION_INDEX)"),
    "a rendezvous nowhere": (
        _torchrun_flag("--master-addr", "trainer-0.funnel-training"),
        "pod 0 is distributed-build-0.funnel-training",
    ),
}


# Every check with the overlay it breaks and what it must say.
EVERY_CASE = {
    **CASES,
    **{case: ("prod", *broken) for case, broken in TLS_BROKEN.items()},
    **{case: ("dev-sidecar", *broken) for case, broken in SIDECAR_BROKEN.items()},
    **{case: ("dev-distributed", *broken) for case, broken in TORCHRUN_BROKEN.items()},
}


@pytest.mark.parametrize("case", sorted(EVERY_CASE))
def test_each_check_catches_what_it_is_for(rendered, case):
    overlay, mutate, expected = EVERY_CASE[case]
    objects = copy.deepcopy(rendered[overlay])
    mutate(objects)
    problems = problems_of(objects)
    assert any(expected in problem for problem in problems), problems
