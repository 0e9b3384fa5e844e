"""Client channels to other stages: one channel per stage, balanced across its replicas."""

from __future__ import annotations

import json

import grpc

# Round-robin over every resolved address: a list of replicas locally, a headless Service's pod
# IPs in Kubernetes. Short reconnect backoff so a restarted replica is used again quickly.
_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


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


def channel_options(max_message_bytes: int = 4 * 1024 * 1024) -> list[tuple[str, int | str]]:
    """Options of every channel Funnel opens, Triton's included."""
    return [
        ("grpc.service_config", _SERVICE_CONFIG),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.enable_retries", 0),
    ]


def open_channel(spec: str, max_message_bytes: int = 4 * 1024 * 1024) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(grpc_target(spec), options=channel_options(max_message_bytes))
