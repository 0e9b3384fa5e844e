"""OpenTelemetry tracing: off by default, on through the standard OTEL_* variables, one span per
stage call, the trace carried across processes. Spans go to an OTLP collector on loopback."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from funnel.runtime.tracing import tracing_requested
from funnel.v1 import common_pb2, recommender_pb2, recommender_pb2_grpc
from launcher.ports import bind_reserved_port
from tests.conftest import POLICY

SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Receives OTLP/gRPC trace exports, as an OpenTelemetry collector would."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, object]] = []  # (service.name, span)
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            for resource_spans in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans.append((attributes.get("service.name", ""), span))
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def collector():
    sink = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = bind_reserved_port(server)
    server.start()
    yield sink, f"http://127.0.0.1:{port}"
    server.stop(0)


def otel_env(endpoint: str, service: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_SERVICE_NAME": service,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within 0.1 s instead of 5 s
    }


def test_tracing_is_off_unless_the_standard_variables_ask_for_it():
    assert not tracing_requested({})
    assert tracing_requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert tracing_requested({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing_requested({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"})
    assert not tracing_requested({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"})


def test_one_span_per_stage_call_and_the_trace_crosses_processes(
    collector, stack, artifacts, start_service, start_gateway
):
    sink, endpoint = collector
    reranking = start_service(
        "services.reranking",
        ["--artifact-dir", str(artifacts), "--policy-path", str(POLICY)],
        env=otel_env(endpoint, "test-reranking"),
    )
    shards = f"{stack.address('retrieval-0-0')};{stack.address('retrieval-1-0')}"
    gateway = start_gateway(
        shards, stack.address("ranking-0"), reranking.address, env=otel_env(endpoint, "test-gateway")
    )
    with grpc.insecure_channel(gateway.address) as channel:
        reply = recommender_pb2_grpc.RecommenderStub(channel).Recommend(
            recommender_pb2.RecommendRequest(
                user_id="u0000002", num_results=5, context=common_pb2.Context(country="US")
            ),
            timeout=5,
        )
    assert not reply.degraded

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with sink.lock:
            names = {(service, span.name) for service, span in sink.spans}
        if ("test-reranking", "funnel.v2.Reranking/Rerank") in names and ("test-gateway", "reranking") in names:
            break
        time.sleep(0.1)
    with sink.lock:
        spans = list(sink.spans)

    root = next(s for service, s in spans if service == "test-gateway" and s.name == "funnel.v1.Recommender/Recommend")
    assert root.kind == SERVER
    stage_spans = {s.name: s for service, s in spans if service == "test-gateway" and s.kind == CLIENT}
    assert set(stage_spans) == {"retrieval", "ranking", "reranking"}
    for span in stage_spans.values():
        assert span.trace_id == root.trace_id and span.parent_span_id == root.span_id
        assert {a.key: a.value.string_value for a in span.attributes}["funnel.outcome"] == "ok"
    # Two shards: two retrieval calls, each its own span (the dict kept one).
    assert sum(1 for service, s in spans if service == "test-gateway" and s.name == "retrieval") == 2
    # The re-ranking process continues the gateway's trace under the gateway's call span.
    remote = next(s for service, s in spans if service == "test-reranking" and s.name == "funnel.v2.Reranking/Rerank")
    assert remote.kind == SERVER
    assert remote.trace_id == root.trace_id and remote.parent_span_id == stage_spans["reranking"].span_id
    # Processes without the variables (the stack's) sent nothing.
    assert {service for service, _ in spans} == {"test-gateway", "test-reranking"}
