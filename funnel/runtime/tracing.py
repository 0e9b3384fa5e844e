"""OpenTelemetry tracing, off unless the standard OTEL_* environment variables turn it on.

On when OTEL_TRACES_EXPORTER names an exporter (`otlp` or `console`) or an OTLP endpoint is set
(OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), unless OTEL_SDK_DISABLED=true
or OTEL_TRACES_EXPORTER=none. The exporter and resource read their own standard variables
(endpoint, headers, OTEL_EXPORTER_OTLP_INSECURE, OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES...).
Off, every span below is the API's no-op span: nothing is recorded or sent.

Each server call is a SERVER span whose parent comes from the caller's `traceparent` metadata
(W3C trace context); the gateway adds one CLIENT span per stage call and sends its context on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context

from funnel.runtime.errors import ConfigError

log = logging.getLogger("funnel.tracing")
tracer = trace.get_tracer("funnel")

EXPORTERS = ("otlp", "console")
_enabled = False  # set once at start-up by configure_tracing


def tracing_on() -> bool:
    """Whether spans are recorded and sent: when off, callers skip the span machinery entirely."""
    return _enabled


def tracing_requested(env: Mapping[str, str] = os.environ) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return bool(exporter or endpoint)


def configure_tracing(process: str, env: Mapping[str, str] = os.environ) -> bool:
    """Install a tracer provider when the environment asks for one; True when tracing is on."""
    if not tracing_requested(env):
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    name = (env.get("OTEL_TRACES_EXPORTER") or "otlp").split(",")[0].strip().lower()
    exporter: SpanExporter
    if name == "console":
        exporter = ConsoleSpanExporter()
    elif name == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    else:
        raise ConfigError(f"OTEL_TRACES_EXPORTER={name!r} is not supported; use one of {', '.join(EXPORTERS)}, none")
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, which win over this default.
    resource = Resource.create({SERVICE_NAME: f"funnel-{process}"}) if "OTEL_SERVICE_NAME" not in env else None
    provider = TracerProvider(resource=resource or Resource.create())
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    global _enabled
    _enabled = True
    log.info("tracing on", extra={"exporter": name})
    return True


def shutdown_tracing() -> None:
    """Flush spans still buffered (on shutdown)."""
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if callable(shutdown):
        shutdown()


def context_from(metadata: Iterable[tuple[str, object]] | None) -> Context:
    """The caller's trace context, from its gRPC metadata."""
    carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
    return propagate.extract(carrier)


def trace_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata carrying the current span's context downstream; empty when tracing is off."""
    if not _enabled:
        return ()
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())
