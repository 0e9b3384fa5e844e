"""Prometheus metrics shared by every process, served on their own port."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from funnel.v1 import common_pb2

# Buckets cluster around a tens-of-milliseconds SLO, where the decisions are made.
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5)

RPC_REQUESTS = Counter("funnel_rpc_requests_total", "gRPC calls handled, by method and status code", ["method", "code"])
# Bytes of the serialized messages, as they cross the wire: what each hop of a request carries.
RPC_RECEIVED_BYTES = Counter("funnel_rpc_received_bytes_total", "Bytes of the request messages received", ["method"])
RPC_SENT_BYTES = Counter("funnel_rpc_sent_bytes_total", "Bytes of the response messages sent", ["method"])
RPC_LATENCY = Histogram(
    "funnel_rpc_latency_seconds", "Server-side latency of gRPC calls", ["method"], buckets=LATENCY_BUCKETS
)
STAGE_LATENCY = Histogram(
    "funnel_stage_latency_seconds",
    "Latency of each funnel stage as seen by the gateway, by outcome",
    ["stage", "outcome"],
    buckets=LATENCY_BUCKETS,
)
DEGRADED = Counter("funnel_degraded_total", "Degraded responses, by stage and cause", ["stage", "cause"])
# DEGRADED's `cause` label for each DegradationCause, as the benchmarks' reports spell it too.
CAUSE_LABELS = {
    value: name.removeprefix("DEGRADATION_CAUSE_").lower() for name, value in common_pb2.DegradationCause.items()
}
CANDIDATES = Histogram(
    "funnel_stage_candidates",
    "Items leaving each stage",
    ["stage"],
    buckets=(0, 1, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
)
# Calls being served right now, health and reflection included: what an autoscaler should follow
# for a stage that mostly waits on another (ranking waits on Triton; its CPU stays low).
IN_FLIGHT = Gauge("funnel_rpc_in_flight", "gRPC calls being handled now")
READY = Gauge("funnel_ready", "1 when the process reports SERVING")
LOADED_ARTIFACTS = Gauge(
    "funnel_loaded_artifacts", "Artifact versions alive in memory (2 during a swap, then 1 once released)", ["kind"]
)
POLICY_RELOADS = Counter("funnel_policy_reloads_total", "Policy file reloads, by result (loaded/rejected)", ["result"])
ARTIFACT_INFO = Gauge("funnel_artifact_info", "Versions of the artifacts this process serves", ["kind", "version"])
SHED = Counter(
    "funnel_rpc_shed_total",
    "Calls refused with RESOURCE_EXHAUSTED because the concurrency limit was reached",
    ["method"],
)
CONCURRENCY_LIMIT = Gauge("funnel_rpc_concurrency_limit", "Calls this process accepts at once right now (0 = no limit)")
RETRIES = Counter(
    "funnel_gateway_extra_calls_total", "Retries and hedges the gateway sent, by stage", ["stage", "kind"]
)
RETRY_BUDGET_EXHAUSTED = Counter(
    "funnel_gateway_retry_budget_exhausted_total", "Retries and hedges not sent for want of budget", ["stage", "kind"]
)
QUALITY_FACTOR = Gauge("funnel_gateway_quality_factor", "Share of the configured candidate counts requested now")


def start_metrics_server(host: str, port: int) -> None:
    """Serve /metrics on host:port in a daemon thread; port 0 turns metrics off."""
    if port:
        start_http_server(port, addr=host)


EVENTS = Counter(
    "funnel_events_total", "Events the events service handled, by result (recorded/duplicate/unavailable)", ["result"]
)
IMPRESSIONS = Counter(
    "funnel_gateway_impressions_total",
    "Answers whose served items the gateway recorded, by result (recorded/dropped_queue_full/dropped_store_error)",
    ["result"],
)
