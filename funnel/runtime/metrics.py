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
CREDENTIAL_RELOADS = Counter(
    "funnel_credentials_reloads_total", "Credentials file reloads, by result (loaded/rejected)", ["result"]
)
POLICY_RELOADS = Counter("funnel_policy_reloads_total", "Policy file reloads, by result (loaded/rejected)", ["result"])
FOREIGN_USER_VECTORS = Counter(
    "funnel_ranking_foreign_user_vectors_total",
    "User vectors set aside because another bundle version's user tower made them (a rollout in progress)",
)
ARTIFACT_INFO = Gauge("funnel_artifact_info", "Versions of the artifacts this process serves", ["kind", "version"])
SHED = Counter(
    "funnel_rpc_shed_total",
    "Calls refused with RESOURCE_EXHAUSTED because the concurrency limit was reached",
    ["method"],
)
QUOTA_REFUSED = Counter(
    "funnel_rpc_quota_refused_total", "Calls refused because their client was over its rate limit", ["client"]
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
    "funnel_events_total",
    "Events the events service handled, by result (recorded/duplicate/unavailable/conflict/user_over_quota/log_full)",
    ["result"],
)
# The online store as the events service sees it, every `--store-check-seconds`: what the alert
# rules in k8s/components/alerts read (memory near maxmemory, the log near its bound, no fsync).
STORE_USED_MEMORY = Gauge("funnel_store_used_memory_bytes", "Memory the online store uses")
STORE_MAX_MEMORY = Gauge("funnel_store_maxmemory_bytes", "The online store's maxmemory (0: none set)")
STORE_DURABLE = Gauge("funnel_store_durable", "1 while the online store fsyncs every write before it answers")
LOG_ENTRIES = Gauge("funnel_event_log_entries", "Entries in the event log, exported ones within retention included")
LOG_UNEXPORTED = Gauge("funnel_event_log_unexported", "Events logged and not yet exported: what the bound counts")
LOG_MAX_EVENTS = Gauge("funnel_event_log_max_events", "The event log's bound of unexported entries")
IMPRESSIONS = Counter(
    "funnel_gateway_impressions_total",
    "Answers whose served items the gateway recorded, by result (recorded/not_logged_log_full/dropped_queue_full/"
    "dropped_store_error)",
    ["result"],
)
