"""Do the manifests say what the services read and listen on?

Each Funnel container is traced to its image's Dockerfile, from there to the entry module and its
settings class; the container's environment and arguments are loaded by the very function the
process uses at start (`load_settings`), and the result is compared with the container's ports,
probes, volumes and the Services and other stages that point at it.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from urllib.parse import parse_qsl, urlsplit

from deploy.images import DOCKERFILES, image_basename, parse
from deploy.imports import REPO_ROOT
from deploy.manifests import Container, Manifests
from deploy.render import Object, object_id
from funnel.runtime.config import ServerSettings, env_name, load_settings
from funnel.runtime.errors import ConfigError
from funnel.runtime.server import LIVENESS_SERVICE
from funnel.triton.model_repository import CLUSTER_CONFIGS
from services.events.settings import EventsSettings
from services.gateway.settings import GatewaySettings
from services.ranking.settings import RankingSettings
from services.retrieval.settings import RetrievalSettings

LOOPBACK = ("127.0.0.1", "localhost", "[::1]")  # Triton on one of these runs in ranking's own pod


def settings_class(entry_module: str) -> type[ServerSettings]:
    """The settings dataclass an entry module's process loads (`<module>.settings`)."""
    module = importlib.import_module(f"{entry_module}.settings")
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, ServerSettings) and value is not ServerSettings:
            return value
    raise LookupError(f"{entry_module}.settings defines no ServerSettings subclass")


def container_env(manifests: Manifests, container: Container) -> tuple[dict[str, str], list[str]]:
    """The environment the container starts with (envFrom first, env over it), and what is unresolvable."""
    env: dict[str, str] = {}
    problems = []
    for source in container.spec.get("envFrom", []):
        name = source.get("configMapRef", {}).get("name", "")
        data = manifests.config_map_data(name)
        if data is None:
            problems.append(f"{container.name}: envFrom ConfigMap {name!r} does not exist")
        else:
            env.update(data)
    for variable in container.spec.get("env", []):
        if "value" in variable:
            env[variable["name"]] = str(variable["value"])
        elif variable["name"].startswith("FUNNEL_"):
            problems.append(f"{container.name}: {variable['name']} must be a literal value")
    return env, problems


def funnel_containers(manifests: Manifests) -> list[tuple[Container, str]]:
    """Containers running a Funnel image, with the entry module their Dockerfile runs."""
    found = []
    for container in manifests.containers():
        basename = image_basename(container.spec.get("image", ""))
        if basename in DOCKERFILES:
            found.append((container, parse(REPO_ROOT / DOCKERFILES[basename]).entry_module))
    return found


def wiring_problems(manifests: Manifests) -> list[str]:
    problems: list[str] = []
    loaded: dict[str, tuple[Container, ServerSettings]] = {}
    containers = funnel_containers(manifests)
    for container, module in containers:
        if module == "training.build":
            problems += _job_problems(container)
            continue
        settings, found = _load(manifests, container, module)
        problems += found
        if settings is not None:
            problems += _listening_problems(manifests, container, settings)
            problems += _file_problems(manifests, container, settings)
            loaded[container.name] = (container, settings)
    if not any(isinstance(settings, GatewaySettings) for _, settings in loaded.values()):
        problems.append("no gateway Deployment")
    for container, settings in loaded.values():
        if isinstance(settings, GatewaySettings | EventsSettings) and not settings.clients_file:
            problems.append(f"{container.name}: a public service must check its callers: set FUNNEL_CLIENTS_FILE "
                            "(the Secret funnel-clients: python -m deploy secrets)")  # fmt: skip
        if isinstance(settings, GatewaySettings):
            problems += _gateway_problems(manifests, container, settings, containers, loaded)
        if isinstance(settings, RankingSettings):
            problems += _triton_problems(manifests, container, settings)
        if getattr(settings, "state_store", ""):
            problems += _store_problems(manifests, container, settings)
    return problems


# The oldest release of each Redis line with the fixes for the Lua remote-code-execution CVEs of 2025;
# a line not listed is refused unless newer than all of them.
REDIS_FIXED = {(6, 2): (6, 2, 20), (7, 2): (7, 2, 11), (7, 4): (7, 4, 6), (8, 0): (8, 0, 4)}


def _store_problems(manifests: Manifests, container: Container, settings: ServerSettings) -> list[str]:
    """FUNNEL_STATE_STORE names a user of the store with a password file, and a Service of this
    namespace whose Redis listens on that port with append-only persistence fsynced before every
    reply (the events service refuses anything less), no eviction under a memory limit, protected
    mode, users from an ACL file (the default user off: `python -m deploy secrets`), and an image with
    the Lua fixes. An address outside the manifests (a managed Redis) is the operator's to check."""
    url: str = getattr(settings, "state_store", "")
    parsed = urlsplit(url)  # a Redis URL: the settings loaded (store_url_problem)
    problems = []
    if not parsed.username or not getattr(settings, "state_store_password_file", ""):
        problems.append(f"{container.name}: FUNNEL_STATE_STORE must name the store user of this service "
                        "(redis://<user>@host:port/db) and FUNNEL_STATE_STORE_PASSWORD_FILE its password")  # fmt: skip
    service = manifests.get("Service", (parsed.hostname or "").split(".")[0])
    if service is None:
        return problems
    port = parsed.port or 6379
    ports = [p for p in service["spec"]["ports"] if p["port"] == port]
    if not ports:
        return [*problems, f"{container.name}: FUNNEL_STATE_STORE: {object_id(service)} has no port {port}"]
    tls = parsed.scheme == "rediss"
    if tls:
        ca = dict(parse_qsl(parsed.query)).get("ssl_ca_certs", "")
        found = container.mount_for(ca) if ca else None
        if found is None or found["volume"] is None:
            problems.append(
                f"{container.name}: FUNNEL_STATE_STORE is rediss:// but its ssl_ca_certs is on no mounted volume"
            )
    for workload in manifests.pods_selected_by(service["spec"]["selector"]):
        redis = Container(workload, workload["spec"]["template"]["spec"]["containers"][0])
        target = redis.port(ports[0].get("targetPort", port))
        if target is None:
            problems.append(f"{object_id(service)}: port {port} reaches no port of {object_id(workload)}")
        flags = _redis_flags(redis)
        serves_tls = flags.get("--tls-port") == str(target)
        plaintext_off = flags.get("--port") == "0"
        if tls and not serves_tls:
            problems.append(
                f"{container.name}: speaks TLS (rediss://) to {object_id(workload)}, which serves none on {target}"
            )
        if not tls and plaintext_off:
            problems.append(
                f"{container.name}: speaks plaintext (redis://) to {object_id(workload)}, which serves TLS only"
            )
        problems += [f"{object_id(workload)}: {problem}" for problem in redis_problems(redis)]
    return problems


def _redis_flags(redis: Container) -> dict[str, str]:
    args = redis.spec.get("args", [])
    # Redis takes "--name value" pairs
    return {name: value for name, value in zip(args, [*args[1:], ""], strict=True) if name.startswith("--")}


def redis_problems(redis: Container) -> list[str]:
    flags = _redis_flags(redis)
    problems = []
    for flag in ("--tls-cert-file", "--tls-key-file", "--tls-ca-cert-file"):
        if flags.get(flag) and redis.mount_for(flags[flag]) is None:
            problems.append(f"{flag}={flags[flag]} is on no mounted volume")
    if flags.get("--appendonly") != "yes" or flags.get("--appendfsync") != "always":
        problems.append("Redis must run --appendonly yes --appendfsync always")
    if flags.get("--maxmemory-policy") != "noeviction" or not flags.get("--maxmemory"):
        problems.append("Redis must run --maxmemory-policy noeviction under a --maxmemory (acknowledged data is never "
                        "evicted; the memory alerts read the limit)")  # fmt: skip
    if flags.get("--protected-mode") != "yes":
        problems.append("Redis must run --protected-mode yes")
    acl = flags.get("--aclfile", "")
    found = redis.mount_for(acl) if acl else None
    if found is None or found["volume"] is None or "secret" not in found["volume"]:
        problems.append("Redis must load its users from --aclfile on a mounted Secret (python -m deploy secrets)")
    version = re.search(r":(\d+)\.(\d+)\.(\d+)", redis.spec.get("image", ""))
    if version is None:
        problems.append(f"Redis image {redis.spec.get('image')!r} names no version: pin one with the Lua fixes")
    else:
        release = tuple(int(part) for part in version.groups())
        fixed = REDIS_FIXED.get(release[:2])
        if (fixed is None and release[:2] < max(REDIS_FIXED)) or (fixed is not None and release < fixed):
            fixes = ", ".join(".".join(map(str, v)) for v in REDIS_FIXED.values())
            problems.append(f"Redis {'.'.join(map(str, release))} predates the fixes for the Lua remote-code-execution "
                            f"CVEs ({fixes} or later)")  # fmt: skip
    return problems


def _load(manifests: Manifests, container: Container, module: str) -> tuple[ServerSettings | None, list[str]]:
    env, problems = container_env(manifests, container)
    cls = settings_class(module)
    known = {env_name(field.name) for field in dataclasses.fields(cls)}
    for name in sorted(env):
        if name.startswith("FUNNEL_") and name not in known:
            problems.append(f"{container.name}: {name} is not a setting of {module} (it would be ignored)")
    try:
        settings = load_settings(cls, container.spec.get("args", []), env)
    except ConfigError as exc:
        return None, [*problems, f"{container.name}: {module} would refuse to start: {exc}"]
    except SystemExit:
        return None, [*problems, f"{container.name}: {module} does not accept args {container.spec.get('args')}"]
    return settings, problems


def _listening_problems(manifests: Manifests, container: Container, settings: ServerSettings) -> list[str]:
    name, problems = container.name, []
    if settings.host != "0.0.0.0":
        problems.append(f"{name}: listens on {settings.host}, unreachable from other pods (set FUNNEL_HOST=0.0.0.0)")
    if container.port("grpc") != settings.port:
        problems.append(
            f"{name}: the port named grpc is {container.port('grpc')}, the service listens on {settings.port}"
        )
    if not settings.metrics_port or container.port(settings.metrics_port) is None:
        problems.append(f"{name}: metrics port {settings.metrics_port} is not a container port")
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.spec.get(probe_name, {})
        if "grpc" not in probe:
            problems.append(f"{name}: {probe_name} must be a native gRPC probe")
            continue
        # With a probe port the kubelet asks there (plaintext health only), else on the gRPC port.
        probe_port = settings.probe_port or settings.port
        if probe["grpc"]["port"] != probe_port:
            problems.append(f"{name}: {probe_name} checks port {probe['grpc']['port']}, not {probe_port}")
        service = probe["grpc"].get("service", "")
        if service not in ("", LIVENESS_SERVICE):
            problems.append(f"{name}: {probe_name} asks for health service {service!r}, which is never set")
    if settings.tls_cert_file and not settings.probe_port:
        problems.append(f"{name}: serves TLS, which the kubelet's gRPC probes cannot speak: set FUNNEL_PROBE_PORT")
    if container.spec.get("livenessProbe", {}).get("grpc", {}).get("service") != LIVENESS_SERVICE:
        problems.append(f"{name}: livenessProbe must ask for {LIVENESS_SERVICE!r}, or a pod that is loading is killed")
    grace = container.pod.get("terminationGracePeriodSeconds", 30)
    if settings.drain_seconds + settings.grace_seconds >= grace:
        problems.append(
            f"{name}: drain {settings.drain_seconds} s + grace {settings.grace_seconds} s must be shorter than "
            f"terminationGracePeriodSeconds {grace}"
        )
    for service in manifests.services_for(container.workload):
        for port in service["spec"]["ports"]:
            if container.port(port.get("targetPort", port["port"])) == settings.port and port["port"] != settings.port:
                problems.append(f"{object_id(service)}: exposes the gRPC port as {port['port']}, not {settings.port}")
    return problems


def _file_problems(manifests: Manifests, container: Container, settings: ServerSettings) -> list[str]:
    problems = []
    files = ("clients_file", "user_token_key_file", "state_store_password_file")
    for field in ("artifact_dir", "policy_path", "tls_cert_file", "tls_key_file", "tls_ca_file", *files):
        path = getattr(settings, field, None)
        if not path:
            continue
        found = container.mount_for(path)
        if found is None or found["volume"] is None:
            problems.append(f"{container.name}: {field}={path} is on no mounted volume")
            continue
        config_map = (found["volume"].get("configMap") or {}).get("name")
        if config_map:
            key = path[len(found["mount"]["mountPath"].rstrip("/")) + 1 :]
            if key not in (manifests.config_map_data(config_map) or {}):
                problems.append(f"{container.name}: {field}={path} but ConfigMap {config_map} has no key {key!r}")
            if found["mount"].get("subPath"):
                problems.append(f"{container.name}: {field} is mounted with subPath, so ConfigMap edits never arrive")
    return problems


def _service_target(manifests: Manifests, target: str) -> tuple[Object | None, int | None, str]:
    """(Service, port, problem) for a `dns:///name:port` target."""
    if not target.startswith("dns:///"):
        return None, None, f"target {target!r} must be dns:///<headless service>:<port> to balance over pods"
    host, _, port_text = target[len("dns:///") :].rpartition(":")
    if not port_text.isdigit():
        return None, None, f"target {target!r} has no numeric port"
    port = int(port_text)
    service = manifests.get("Service", host.split(".")[0])
    if service is None:
        return None, None, f"target {target!r} names no Service"
    if service["spec"].get("clusterIP") != "None":
        return service, port, f"{object_id(service)} must be headless (clusterIP: None) for per-pod balancing"
    if port not in [p["port"] for p in service["spec"]["ports"]]:
        return service, port, f"target {target!r}: {object_id(service)} has no port {port}"
    return service, port, ""


def _gateway_problems(
    manifests: Manifests,
    gateway: Container,
    settings: GatewaySettings,
    containers: list[tuple[Container, str]],
    loaded: dict[str, tuple[Container, ServerSettings]],
) -> list[str]:
    """Each gateway target reaches pods of the right image, on the port they listen on; each shard
    target reaches the shard with that index. `loaded` holds the settings every backend loaded."""
    problems = []
    shard_targets = settings.shard_targets()
    expected = {
        **{f"retrieval shard {n}": (t, "retrieval", n) for n, t in enumerate(shard_targets)},
        "ranking": (settings.ranking_target, "ranking", None),
        "reranking": (settings.reranking_target, "reranking", None),
    }
    retrieval_deployments = {
        object_id(c.workload) for c, _ in containers if image_basename(c.spec["image"]) == "retrieval"
    }
    reached = set()
    for role, (target, image, shard) in expected.items():
        service, port, problem = _service_target(manifests, target)
        if problem:
            problems.append(f"{gateway.name}: {role}: {problem}")
        if service is None:
            continue
        selected = manifests.pods_selected_by(service["spec"]["selector"])
        backends = [c for c, _ in containers if c.workload in selected]
        if not backends or any(image_basename(c.spec["image"]) != image for c in backends):
            problems.append(f"{gateway.name}: {role} goes to {object_id(service)}, which does not select {image} pods")
            continue
        for container in backends:
            if container.name not in loaded:
                continue  # its settings failed to load: reported with the backend itself
            backend = loaded[container.name][1]
            if port is not None and backend.port != port:
                problems.append(f"{gateway.name}: {role} calls port {port}, {container.name} listens on {backend.port}")
            if shard is not None and isinstance(backend, RetrievalSettings):
                reached.add(object_id(container.workload))
                if (backend.shard_index, backend.shard_count) != (shard, len(shard_targets)):
                    problems.append(
                        f"{gateway.name}: {role} is {container.name}, which serves shard "
                        f"{backend.shard_index} of {backend.shard_count}, not {shard} of {len(shard_targets)}"
                    )
    for missing in sorted(retrieval_deployments - reached):
        problems.append(f"{gateway.name}: FUNNEL_RETRIEVAL_SHARDS never calls {missing}")
    return problems


def _triton_problems(manifests: Manifests, ranking: Container, settings: RankingSettings) -> list[str]:
    host, _, port_text = settings.triton_url.rpartition(":")
    if host in LOOPBACK:
        return _sidecar_problems(ranking, settings, int(port_text) if port_text.isdigit() else -1)
    if settings.triton_shared_memory:
        return [f"{ranking.name}: FUNNEL_TRITON_SHARED_MEMORY needs Triton in the same pod, on loopback"]
    service, port, problem = _service_target(manifests, settings.triton_url)
    if problem or service is None:
        return [f"{ranking.name}: FUNNEL_TRITON_URL: {problem}"]
    tritons = manifests.pods_selected_by(service["spec"]["selector"])
    if not tritons:
        return [f"{ranking.name}: {object_id(service)} selects no Triton pods"]
    problems = []
    for workload in tritons:
        container = Container(workload, workload["spec"]["template"]["spec"]["containers"][0])
        flags = _flags(container.spec.get("args", []))
        service_port = next(p for p in service["spec"]["ports"] if p["port"] == port)
        if container.port(service_port.get("targetPort", port)) != int(flags.get("--grpc-port", "8001")):
            problems.append(f"{object_id(service)}: port {port} does not reach Triton's --grpc-port")
        problems += _triton_container_problems(container, flags, settings)
    return problems


def _sidecar_problems(ranking: Container, settings: RankingSettings, port: int) -> list[str]:
    """Triton in ranking's own pod: it must be there, on that port, and share /dev/shm with ranking
    (as the same user, since a region is readable by its owner only) when tensors go through it."""
    sidecars = [
        Container(ranking.workload, spec)
        for spec in ranking.pod["containers"]
        if spec is not ranking.spec and "tritonserver" in [*spec.get("command", []), *spec.get("args", [])[:1]]
    ]
    if not sidecars:
        return [f"{ranking.name}: FUNNEL_TRITON_URL is on loopback but no Triton container shares the pod"]
    container = sidecars[0]
    flags = _flags(container.spec.get("args", []))
    problems = []
    if int(flags.get("--grpc-port", "8001")) != port:
        problems.append(f"{container.name}: --grpc-port is not the port of FUNNEL_TRITON_URL ({port})")
    if settings.triton_shared_memory:
        shared = [ranking.mount_for("/dev/shm"), container.mount_for("/dev/shm")]
        if any(m is None for m in shared) or shared[0]["volume"] != shared[1]["volume"]:
            problems.append(f"{container.name}: ranking and Triton must mount the same volume at /dev/shm")
        users = [c.spec.get("securityContext", {}).get("runAsUser", ranking.pod.get("securityContext", {}).get(
            "runAsUser")) for c in (ranking, container)]  # fmt: skip
        if users[0] != users[1]:
            problems.append(f"{container.name}: runs as user {users[1]}, ranking as {users[0]}: Triton could not "
                            "open ranking's shared-memory region")  # fmt: skip
    return problems + _triton_container_problems(container, flags, settings)


def _triton_container_problems(container: Container, flags: dict[str, str], settings: RankingSettings) -> list[str]:
    """What any Triton container serving ranking must get right, wherever it runs."""
    problems = []
    if flags.get("--load-model") != settings.model_name:
        problems.append(f"{container.name}: loads {flags.get('--load-model')!r}, ranking calls {settings.model_name!r}")
    if flags.get("--model-control-mode") != "explicit":
        problems.append(f"{container.name}: --model-control-mode must be explicit for ReloadModel")
    config = flags.get("--model-config-name", "")
    if config not in CLUSTER_CONFIGS:
        problems.append(
            f"{container.name}: --model-config-name={config!r}; the repository has {sorted(CLUSTER_CONFIGS)}"
        )
    gpus = container.spec.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
    if (CLUSTER_CONFIGS.get(config) == "KIND_GPU") != bool(gpus):
        problems.append(f"{container.name}: model config {config!r} and the GPU limit {gpus!r} disagree")
    repository = flags.get("--model-repository", "")
    if container.mount_for(repository) is None:
        problems.append(f"{container.name}: --model-repository={repository} is on no mounted volume")
    problems += _triton_tls_problems(container, flags, settings)
    http_port = int(flags.get("--http-port", "8000"))
    for probe_name, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        probe = container.spec.get(probe_name, {}).get("httpGet", {})
        if probe.get("path") != path or container.port(probe.get("port", -1)) != http_port:
            problems.append(f"{container.name}: {probe_name} must GET {path} on the HTTP port {http_port}")
    return problems


def _triton_tls_problems(container: Container, flags: dict[str, str], ranking: RankingSettings) -> list[str]:
    """Ranking's TLS and Triton's must agree, or every inference fails at the handshake."""
    mutual = flags.get("--grpc-use-ssl-mutual") == "true"
    tls = mutual or flags.get("--grpc-use-ssl") == "true"
    problems = []
    if tls != bool(ranking.tls_ca_file):
        side = (
            "Triton serves TLS but ranking calls in plaintext" if tls else "ranking calls with TLS, Triton is plaintext"
        )
        problems.append(f"{container.name}: {side}")
    if mutual and not ranking.tls_cert_file:
        problems.append(f"{container.name}: Triton requires client certificates; ranking has none")
    for flag in ("--grpc-server-cert", "--grpc-server-key", "--grpc-root-cert") if tls else ():
        if not flags.get(flag) or container.mount_for(flags[flag]) is None:
            problems.append(f"{container.name}: {flag}={flags.get(flag)} is on no mounted volume")
    return problems


def _job_problems(container: Container) -> list[str]:
    from training.build import argument_parser  # imports torch: only when a Job is there to check

    try:
        args = argument_parser().parse_args(container.spec.get("args", []))
    except SystemExit:
        return [f"{container.name}: training.build does not accept args {container.spec.get('args')}"]
    found = container.mount_for(str(args.out))
    if found is None or found["mount"].get("readOnly"):
        return [f"{container.name}: --out {args.out} is not on a writable volume"]
    return _torchrun_problems(container) if container.spec.get("command") else []


def _torchrun_problems(container: Container) -> list[str]:
    """A build under torchrun across the pods of an Indexed Job: as many nodes as the Job runs pods
    at once, each pod's completion index its node rank, and the rendezvous at pod 0's stable name
    (`<job>-0.<subdomain>`, which the pod's headless Service provides)."""
    command = container.spec["command"]
    if command[0] != "torchrun" or command[-2:] != ["-m", "training.build"]:
        return [f"{container.name}: the command must be torchrun ... -m training.build, not {' '.join(command)}"]
    flags = _flags(command)
    job, pod = container.workload, container.pod
    spec = job["spec"]
    name, subdomain = job["metadata"]["name"], pod.get("subdomain")
    problems = []
    if spec.get("completionMode") != "Indexed":
        problems.append(f"{container.name}: torchrun's node ranks need an Indexed Job")
    nodes = flags.get("--nnodes")
    if not (nodes == str(spec.get("completions")) == str(spec.get("parallelism"))):
        problems.append(f"{container.name}: --nnodes={nodes}, completions {spec.get('completions')} and "
                        f"parallelism {spec.get('parallelism')} must agree")  # fmt: skip
    if flags.get("--node-rank") != "$(JOB_COMPLETION_INDEX)":
        problems.append(f"{container.name}: --node-rank must be $(JOB_COMPLETION_INDEX)")
    if flags.get("--master-addr") != f"{name}-0.{subdomain}":
        problems.append(f"{container.name}: --master-addr={flags.get('--master-addr')}, pod 0 is {name}-0.{subdomain}")
    return problems


def _flags(args: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in args if arg.startswith("--") and "=" in arg)
