"""Client channels to other stages: one channel per stage, balanced across its replicas."""

from __future__ import annotations

import json

import grpc

from funnel.runtime.tls import PLAINTEXT, Tls

# Round-robin over every resolved address: a list of replicas locally, a headless Service's pod
# IPs in Kubernetes. Short reconnect backoff so a restarted replica is used again quickly.
_ROUND_ROBIN = {"round_robin": {}}
# Between stages, two more defences, both in gRPC's own balancer:
# - client-side health checking: each replica's health service is watched and a replica that says
#   NOT_SERVING (draining after SIGTERM, or still loading) gets no new calls;
# - outlier detection: a replica failing at least half of 10+ calls in a 1 s interval is ejected for
#   5 s (doubling on each repeat, at most 30 s), then tried again; at most half the replicas at once,
#   and never the last one standing.
_STAGE_SERVICE_CONFIG = {
    "loadBalancingConfig": [
        {
            "outlier_detection_experimental": {
                "interval": "1s",
                "baseEjectionTime": "5s",
                "maxEjectionTime": "30s",
                "maxEjectionPercent": 50,
                "failurePercentageEjection": {
                    "threshold": 50,
                    "enforcementPercentage": 100,
                    "minimumHosts": 2,
                    "requestVolume": 10,
                },
                "childPolicy": [_ROUND_ROBIN],
            }
        }
    ],
    "healthCheckConfig": {"serviceName": ""},
}


def grpc_target(spec: str) -> str:
    """Turn an address spec into a gRPC target.

    `dns:///retrieval-0:50061` and other scheme-prefixed targets pass through; `127.0.0.1:50061,
    127.0.0.1:50062` becomes an `ipv4:` list; a single `host:port` is resolved by DNS.
    """
    spec = spec.strip()
    if not spec:
        raise ValueError("empty address")
    if ":///" in spec or spec.startswith(("ipv4:", "ipv6:", "unix:")):
        return spec
    addresses = [part.strip() for part in spec.split(",") if part.strip()]
    if len(addresses) == 1:
        return addresses[0]
    return "ipv4:" + ",".join(addresses)


def channel_options(
    max_message_bytes: int = 4 * 1024 * 1024, stage: bool = False, tls: Tls = PLAINTEXT
) -> list[tuple[str, int | str]]:
    """Options of every channel Funnel opens; `stage` adds health checking and outlier ejection
    (Triton's channel is plain round-robin: its health is read through its own API)."""
    service_config = _STAGE_SERVICE_CONFIG if stage else {"loadBalancingConfig": [_ROUND_ROBIN]}
    return [
        ("grpc.service_config", json.dumps(service_config)),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        # Only gRPC's transparent retries (a call that never reached a server, e.g. on a connection
        # that just died); the gateway decides every other retry itself, within its budget.
        ("grpc.enable_retries", 1),
        *tls.channel_options(),
    ]


def listed_hosts(spec: str) -> set[str]:
    """The hosts of a comma-separated replica list (empty for a single address or a resolver URI)."""
    if ":///" in spec or "," not in spec:
        return set()
    return {address.strip().rsplit(":", 1)[0] for address in spec.split(",") if address.strip()}


def open_channel(spec: str, max_message_bytes: int = 4 * 1024 * 1024, tls: Tls = PLAINTEXT) -> grpc.aio.Channel:
    """A channel to a stage: TLS when the process trusts a CA, plaintext otherwise."""
    options = channel_options(max_message_bytes, stage=True, tls=tls)
    hosts = listed_hosts(spec)
    if tls.calls_with_tls and not tls.server_name and len(hosts) == 1:
        # An `ipv4:` list has no single authority to verify; replicas on one host answer to its name.
        options.append(("grpc.ssl_target_name_override", hosts.pop()))
    if tls.calls_with_tls:
        return grpc.aio.secure_channel(grpc_target(spec), tls.channel_credentials(), options=options)
    return grpc.aio.insecure_channel(grpc_target(spec), options=options)
