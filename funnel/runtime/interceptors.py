"""Cross-cutting behaviour of every unary call, written once: request ids, metrics, error mapping."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.trace import SpanKind

from funnel.runtime.admission import ConcurrencyLimit
from funnel.runtime.auth import BearerTokens
from funnel.runtime.errors import FunnelError, InvalidArgument, ResourceExhausted, Unauthenticated
from funnel.runtime.logs import REQUEST_ID
from funnel.runtime.metrics import IN_FLIGHT, RPC_LATENCY, RPC_REQUESTS, SHED
from funnel.runtime.tracing import context_from, trace_metadata, tracer

REQUEST_ID_KEY = "x-request-id"
# Trailer with the server's own time on the call, so a caller can tell its wait from the work.
SERVER_TIME_KEY = "x-server-ms"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

log = logging.getLogger("funnel.rpc")
# Health probes arrive every few seconds from every balancer; logging each would drown the log.
_QUIET = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def request_id_from(metadata: tuple[tuple[str, Any], ...] | None) -> str:
    """The caller's request id when it is well formed, else a fresh one."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _SAFE_REQUEST_ID.match(value):
            return value
    return uuid.uuid4().hex


def outgoing_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata for a downstream call: the current request id, and the trace context when tracing."""
    request_id = REQUEST_ID.get()
    return (((REQUEST_ID_KEY, request_id),) if request_id else ()) + trace_metadata()


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every unary-unary handler.

    - binds the request id (from `x-request-id` or new) for logs and downstream calls, and echoes
      it in trailing metadata;
    - counts calls and records latency by method and final status, and writes one access-log
      line per call (health and reflection excepted);
    - refuses a call at once with RESOURCE_EXHAUSTED when the concurrency limit is reached
      (health and reflection are never shed: a busy pod must not look dead to its probes);
    - turns FunnelError into its status and any other exception into INTERNAL with a short message
      and the request id, never UNKNOWN with a stack trace. The stack goes to the log.
    """

    def __init__(
        self, access_log: bool = True, tokens: BearerTokens | None = None, limit: ConcurrencyLimit | None = None
    ) -> None:
        self.access_log = access_log
        self.tokens = tokens
        self.limit = limit

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        request_id = request_id_from(metadata)
        quiet = method.startswith(_QUIET)
        behavior = handler.unary_unary if quiet else _traced(handler.unary_unary, method, metadata)
        if self.tokens is not None and not quiet and not self.tokens.accepts(metadata):
            behavior = _refuse_unauthenticated
        return grpc.unary_unary_rpc_method_handler(
            _wrap(behavior, method, request_id, self.access_log and not quiet, None if quiet else self.limit),
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request whose bytes do not parse, so the call ends INVALID_ARGUMENT
    (grpc would otherwise answer UNKNOWN with the parser's exception)."""

    error: str


async def _refuse_unauthenticated(request: Any, context: grpc.aio.ServicerContext) -> Any:
    raise Unauthenticated("missing or invalid bearer token in the 'authorization' metadata")


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # any parser failure means the caller sent bad bytes
            return Undecodable(str(exc) or type(exc).__name__)

    return parse


def _traced(
    behavior: Callable[..., Awaitable[Any]], method: str, metadata: tuple[tuple[str, Any], ...] | None
) -> Callable[..., Awaitable[Any]]:
    """One SERVER span per call, a child of the caller's span when its metadata carries one."""

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        parent = context_from(metadata)
        with tracer.start_as_current_span(method.lstrip("/"), context=parent, kind=SpanKind.SERVER) as span:
            span.set_attribute("rpc.system", "grpc")
            span.set_attribute("funnel.request_id", REQUEST_ID.get())
            return await behavior(request, context)

    return handle


def _wrap(
    behavior: Callable[..., Awaitable[Any]],
    method: str,
    request_id: str,
    access_log: bool,
    limit: ConcurrencyLimit | None,
) -> Callable[..., Awaitable[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        trailer = ((REQUEST_ID_KEY, request_id),)
        context.set_trailing_metadata(trailer)
        admitted = limit is None or limit.try_acquire()
        IN_FLIGHT.inc()
        try:
            if not admitted:
                SHED.labels(method).inc()
                raise ResourceExhausted(
                    f"overloaded: {limit.in_flight} calls in flight, limit {int(limit.limit)}; retry with backoff"
                )
            if isinstance(request, Undecodable):
                raise InvalidArgument(f"the request is not a valid message for {method}: {request.error}")
            reply = await behavior(request, context)
            server_ms = f"{(time.perf_counter() - started) * 1000:.3f}"
            context.set_trailing_metadata((*trailer, (SERVER_TIME_KEY, server_ms)))
            return reply
        except FunnelError as exc:
            code = exc.code
            log.info("rpc refused", extra={"method": method, "code": code.name, "detail": exc.message})
            await context.abort(code, exc.message, trailer)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("unhandled error", extra={"method": method})
            await context.abort(code, f"internal error (request id {request_id})", trailer)
        finally:
            elapsed = time.perf_counter() - started
            if admitted and limit is not None:
                limit.release(elapsed)
            IN_FLIGHT.dec()
            RPC_REQUESTS.labels(method, code.name).inc()
            RPC_LATENCY.labels(method).observe(elapsed)
            if access_log:
                log.info("rpc", extra={"method": method, "code": code.name, "ms": round(elapsed * 1000, 2)})
            REQUEST_ID.reset(token)

    return handle
