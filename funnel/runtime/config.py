"""Settings from flags and environment variables, validated before anything starts.

A settings class is a frozen dataclass whose fields are declared with `setting(...)`. Each field
`foo_bar` is read from the flag `--foo-bar`, else from the variable `FUNNEL_FOO_BAR`, else from its
default. Every problem is collected and reported at once, and the process exits before it binds a
port: a misconfigured pod should crash-loop loudly, not serve wrong answers.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from funnel.runtime import exits
from funnel.runtime.errors import ConfigError

ENV_PREFIX = "FUNNEL_"
_MISSING = dataclasses.MISSING

T = TypeVar("T")
Check = Callable[[Any], str | None]


def setting(default: Any = _MISSING, *, help: str, checks: Sequence[Check] = ()) -> Any:
    """Declare one setting. No default means required."""
    return dataclasses.field(default=default, metadata={"help": help, "checks": tuple(checks)})


def positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def port_number(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be a port number 0..65535"


def one_of(*allowed: str) -> Check:
    def check(value: str) -> str | None:
        return None if value in allowed else f"must be one of {', '.join(allowed)}"

    return check


def non_empty(value: Any) -> str | None:
    return None if value else "must not be empty"


def unreadable_files(settings: Any) -> list[str]:
    """The `*_file` settings naming a file this process cannot read (a Secret not mounted, say):
    checked at start, where the files are, not where the manifests are rendered."""
    return [
        f"{field.name}={value!r} is not a readable file"
        for field in dataclasses.fields(settings)
        if field.name.endswith("_file") and (value := getattr(settings, field.name))
        and not (os.path.isfile(value) and os.access(value, os.R_OK))
    ]


def shown(value: Any) -> str:
    """A value as a problem message may show it: a URL's password is masked."""
    return re.sub(r"(://[^:/@\s]*:)[^@/\s]*@", r"\1***@", repr(value))


def port_setting(default: int, help: str = "gRPC port") -> Any:
    return setting(default, help=help, checks=[port_number])


def client_rate_setting(default: float, calls: str = "calls") -> Any:
    """The per-client token bucket's rate, one definition for every public process (its default may differ)."""
    return setting(
        default,
        help=f"with clients_file: {calls} a second each client may make to this replica (a token bucket; a "
        "client's own rate= in the credentials file overrides it); beyond it RESOURCE_EXHAUSTED with "
        "retry-after-ms; 0 = none",
        checks=[non_negative],
    )


def client_burst_setting(default: int) -> Any:
    return setting(
        default, help="calls a client may make at once before its rate applies (0 = twice the rate)",
        checks=[non_negative],
    )  # fmt: skip


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _parse(raw: str, kind: Any) -> Any:
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    return kind(raw)


def load_settings(cls: type[T], argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> T:
    """Build `cls` from flags (`argv`), then environment, then defaults; raise ConfigError."""
    env = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    parser = argparse.ArgumentParser(prog=cls.__name__, add_help=True)
    for field in fields:
        parser.add_argument(
            flag_name(field.name),
            dest=field.name,
            default=None,
            help=f"{field.metadata.get('help', '')} (env {env_name(field.name)})",
        )
    namespace = parser.parse_args(list(argv) if argv is not None else [])

    values: dict[str, Any] = {}
    problems: list[str] = []
    for field in fields:
        raw = getattr(namespace, field.name)
        origin = flag_name(field.name)
        if raw is None and env_name(field.name) in env:
            raw, origin = env[env_name(field.name)], env_name(field.name)
        if raw is None:
            if field.default is _MISSING and field.default_factory is _MISSING:
                problems.append(f"{field.name}: required (set {origin} or {env_name(field.name)})")
            continue
        try:
            values[field.name] = _parse(raw, hints[field.name])
        except ValueError as exc:
            problems.append(f"{field.name}: {origin}={shown(raw)} is invalid: {exc}")
    if problems:
        raise ConfigError("; ".join(problems))

    settings = cls(**values)
    for field in fields:
        for check in field.metadata.get("checks", ()):
            message = check(getattr(settings, field.name))
            if message:
                problems.append(f"{field.name}={shown(getattr(settings, field.name))} {message}")
    cross_check = getattr(settings, "validate", None)
    if callable(cross_check):
        problems.extend(cross_check())
    if problems:
        raise ConfigError("; ".join(problems))
    return settings


def load_or_exit(cls: type[T], argv: Sequence[str] | None = None) -> T:
    """Entry-point helper: print every configuration problem and exit (status CONFIG_ERROR, 2)."""
    try:
        return load_settings(cls, sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(exits.CONFIG_ERROR) from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """Settings every gRPC process shares."""

    host: str = setting("127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    port: int = port_setting(50051)
    metrics_port: int = setting(0, help="Prometheus /metrics port; 0 disables", checks=[port_number])
    log_level: str = setting("INFO", help="log level", checks=[one_of("DEBUG", "INFO", "WARNING", "ERROR")])
    drain_seconds: float = setting(
        0.5,
        help="after SIGTERM, time spent NOT_SERVING while still accepting calls, so balancers move away",
        checks=[non_negative],
    )
    grace_seconds: float = setting(
        10.0, help="after draining, time in-flight calls get to finish", checks=[non_negative]
    )
    worker_threads: int = setting(
        2, help="threads for CPU-heavy work (loading artifacts; per-call work unless inline_work)", checks=[positive]
    )
    inline_work: bool = setting(
        True,
        help="run each call's own work (search, features, rules) on the event loop: right when it takes "
        "under about a millisecond, as in every stage here (a thread-pool round trip costs about 0.1 ms of "
        "CPU and a wake-up); turn off where one call's work is long (exact search over millions of items), "
        "so health checks and other calls are not held behind it",
    )
    access_log: bool = setting(True, help="write one JSON log line per served call")
    max_message_bytes: int = setting(4 * 1024 * 1024, help="largest gRPC message accepted", checks=[positive])
    clients_file: str = setting(
        "",
        help="credentials file (a mounted Secret): named clients, their scopes and the SHA-256 digests of their "
        "tokens (funnel/runtime/clients.py); when set, every call but health and reflection needs "
        "'authorization: Bearer <token>' of a client with the method's scope (else UNAUTHENTICATED or "
        "PERMISSION_DENIED); re-read when it changes",
    )
    client_rate_per_s: float = client_rate_setting(0.0)
    client_burst: int = client_burst_setting(0)
    user_token_key_file: str = setting(
        "",
        help="key that verifies end-user tokens (JWT in 'x-user-token'): a PEM public key (RS256, ES256) or a shared "
        "secret (HS256); clients marked bind_user act only for the subject of such a token; re-read when it changes",
    )
    user_token_algorithms: str = setting("RS256,ES256", help="algorithms a user token may be signed with, by ','")
    user_token_audience: str = setting("", help="the audience a user token must name (empty: it must name none)")
    user_token_issuer: str = setting("", help="the issuer a user token must name (empty: not checked)")
    clients_poll_seconds: float = setting(
        1.0, help="how often the credentials file is checked for changes (rotation without a restart)",
        checks=[positive],
    )  # fmt: skip
    max_connection_age_seconds: float = setting(
        0.0,
        help="close client connections after this long (0 = never), so clients re-resolve DNS and "
        "spread onto replicas an autoscaler added; set in Kubernetes",
        checks=[non_negative],
    )
    max_in_flight: int = setting(
        64,
        help="calls served at once; more are refused at once with RESOURCE_EXHAUSTED (0 = no limit); "
        "with latency_target_ms, the ceiling of the adaptive limit",
        checks=[non_negative],
    )
    latency_target_ms: float = setting(
        0.0,
        help="when > 0, the concurrency limit adapts (AIMD) to keep this process's own latency under this "
        "target, shedding the excess instead of queueing it",
        checks=[non_negative],
    )
    probe_port: int = setting(
        0,
        help="when > 0, a plaintext port serving only the health service, for probes that cannot speak TLS "
        "(the kubelet's gRPC probes) while the main port requires it",
        checks=[port_number],
    )
    tls_cert_file: str = setting(
        "",
        help="PEM certificate chain: with tls_key_file the gRPC port serves TLS, and calls to other "
        "stages present it as this process's client certificate",
    )
    tls_key_file: str = setting("", help="PEM private key of tls_cert_file")
    tls_ca_file: str = setting(
        "",
        help="PEM CA bundle trusted for peers: calls to other stages and Triton use TLS and verify their "
        "certificates against it; with tls_require_client_cert, callers need a certificate it signed",
    )
    tls_require_client_cert: bool = setting(
        False, help="mutual TLS: refuse callers without a certificate signed by tls_ca_file"
    )
    tls_server_name: str = setting(
        "", help="name expected in the certificates of the servers this process calls (default: the target's host)"
    )

    def validate(self) -> list[str]:
        problems = []
        if self.probe_port and self.probe_port in (self.port, self.metrics_port):
            problems.append("probe_port must differ from port and metrics_port")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            problems.append("tls_cert_file and tls_key_file must be set together")
        if self.tls_require_client_cert and not (self.tls_cert_file and self.tls_ca_file):
            problems.append("tls_require_client_cert needs tls_cert_file, tls_key_file and tls_ca_file")
        return problems
