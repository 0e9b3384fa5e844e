"""Cross-cutting behaviour of every unary call, written once: request ids, the caller's identity and
scope, admission, metrics, access logs, error mapping.

It is applied when a service registers its methods (`InstrumentedServer`), not as a grpc.aio
interceptor: an interceptor is awaited on every call and builds a new handler each time, which cost
about 0.1 ms of CPU a call here. Health and reflection are registered on the bare server, so they
are never shed, never need a token and never fill the access log.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.trace import SpanKind

from funnel.runtime.admission import ConcurrencyLimit
from funnel.runtime.clients import CALLER, Clients
from funnel.runtime.door import Door
from funnel.runtime.errors import FunnelError, InvalidArgument, PermissionDenied, ResourceExhausted
from funnel.runtime.logs import REQUEST_ID
from funnel.runtime.metrics import IN_FLIGHT, RPC_LATENCY, RPC_RECEIVED_BYTES, RPC_REQUESTS, RPC_SENT_BYTES, SHED
from funnel.runtime.quotas import ClientQuotas
from funnel.runtime.tracing import context_from, trace_metadata, tracer, tracing_on
from funnel.runtime.user_tokens import METHOD_USERS, UserTokens

REQUEST_ID_KEY = "x-request-id"
# Trailer with the server's own time on the call, so a caller can tell its wait from the work.
SERVER_TIME_KEY = "x-server-ms"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

log = logging.getLogger("funnel.rpc")
Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def request_id_from(metadata: Sequence[tuple[str, Any]] | None) -> str:
    """The caller's request id when it is well formed, else a fresh one."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _SAFE_REQUEST_ID.match(value):
            return value
    return uuid.uuid4().hex


def outgoing_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata for a downstream call: the current request id, and the trace context when tracing."""
    request_id = REQUEST_ID.get()
    return (((REQUEST_ID_KEY, request_id),) if request_id else ()) + trace_metadata()


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request whose bytes do not parse, so the call ends INVALID_ARGUMENT
    (grpc would otherwise answer UNKNOWN with the parser's exception)."""

    error: str


class CallPolicy:
    """What every served call goes through, in this order:

    - binds the request id (from `x-request-id` or new) for logs and downstream calls, and echoes
      it in trailing metadata;
    - with a credentials file, identifies the caller by its bearer token, checks the method's scope
      (UNAUTHENTICATED, PERMISSION_DENIED), a bound client's user token, and the client's rate limit
      (RESOURCE_EXHAUSTED with a `retry-after-ms` trailer) before the call costs anything: it takes
      no admission slot and its bytes are not parsed;
    - refuses a call at once with RESOURCE_EXHAUSTED when the concurrency limit is reached;
    - parses the request (bytes that are no message: INVALID_ARGUMENT) and, for a client bound to
      its users, checks that the request acts for the user token's subject (PERMISSION_DENIED);
    - counts calls and records latency by method and final status, and the bytes of the messages
      each way by method, and writes one access-log line per call (with the client's name, never
      its token) when asked to;
    - turns FunnelError into its status and any other exception into INTERNAL with a short message
      and the request id, never UNKNOWN with a stack trace. The stack goes to the log.
    """

    def __init__(
        self,
        access_log: bool = True,
        clients: Callable[[], Clients] | None = None,
        limit: ConcurrencyLimit | None = None,
        quotas: ClientQuotas | None = None,
        user_tokens: UserTokens | None = None,
    ) -> None:
        self.access_log = access_log
        self.clients = clients  # the current credentials (re-read when the file changes), or None: no checks
        self.limit = limit
        self.door = Door(quotas, user_tokens)

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """`handler` with the policy around it (unary-unary methods; others pass through)."""
        if handler is None or handler.unary_unary is None:
            return handler
        behavior = _traced(handler.unary_unary, method) if tracing_on() else handler.unary_unary
        return grpc.unary_unary_rpc_method_handler(
            self._around(behavior, method, _tolerant(handler.request_deserializer)),
            # The bytes stay bytes until the caller is known and admitted: parsing is the call's cost.
            request_deserializer=_counted_bytes(RPC_RECEIVED_BYTES.labels(method).inc),
            response_serializer=_counted(handler.response_serializer, RPC_SENT_BYTES.labels(method).inc),
        )

    def _around(self, behavior: Behavior, method: str, parse: Callable[[bytes], Any]) -> Behavior:
        limit, clients, access_log, door = self.limit, self.clients, self.access_log, self.door
        counters: dict[Any, Callable[[], None]] = {}  # per final status, filled as statuses occur

        def count(code: Any) -> None:
            if code not in counters:
                counters[code] = RPC_REQUESTS.labels(method, getattr(code, "name", str(code))).inc
            counters[code]()

        observe = RPC_LATENCY.labels(method).observe
        shed = SHED.labels(method).inc

        async def handle(data: bytes, context: grpc.aio.ServicerContext) -> Any:
            metadata = context.invocation_metadata()
            caller = subject = None
            if clients is not None:
                caller = clients().identify(metadata)
                refusal, subject = door.check(caller, metadata, method)
                if refusal is not None:
                    # Turned away at the door, as cheaply as gRPC allows: no request id, no exception,
                    # no log line per call (a flood would spend the process on them), no slot taken.
                    code, message, trailer = refusal.code, refusal.message, refusal.trailer
                    if refusal.hold_s and caller is not None:
                        await door.hold(caller.name, refusal.hold_s)
                    count(code)
                    context.set_code(code)
                    context.set_details(message)
                    context.set_trailing_metadata(trailer)
                    return None
            request_id = request_id_from(metadata)
            token = REQUEST_ID.set(request_id)
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            trailer = ((REQUEST_ID_KEY, request_id),)
            caller_token = CALLER.set(caller)
            admitted = False
            IN_FLIGHT.inc()
            try:
                admitted = limit is None or limit.try_acquire()
                if not admitted:
                    shed()
                    raise ResourceExhausted(
                        f"overloaded: {limit.in_flight} calls in flight, limit {int(limit.limit)}; retry with backoff"
                    )
                request = parse(data)
                if isinstance(request, Undecodable):
                    raise InvalidArgument(f"the request is not a valid message for {method}: {request.error}")
                if subject is not None:
                    others = sorted(METHOD_USERS[method](request) - {subject})
                    if others:
                        raise PermissionDenied(f"the user token is {subject!r}'s; this call acts for {others[0]!r}")
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
                count(code)
                observe(elapsed)
                if access_log:
                    extra = {"method": method, "code": code.name, "ms": round(elapsed * 1000, 2)}
                    log.info("rpc", extra=extra | ({"client": caller.name} if caller is not None else {}))
                CALLER.reset(caller_token)
                REQUEST_ID.reset(token)

        return handle


class InstrumentedServer:
    """What a service registers its servicers on: the grpc.aio server, with every method handler
    wrapped once, at registration, by the call policy."""

    def __init__(self, server: grpc.aio.Server, policy: CallPolicy) -> None:
        self.server = server
        self.policy = policy

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self.server.add_generic_rpc_handlers([_WrappedGeneric(handler, self.policy) for handler in handlers])

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        wrapped = {name: self.policy.wrap(handler, f"/{service}/{name}") for name, handler in handlers.items()}
        self.server.add_registered_method_handlers(service, wrapped)


class _WrappedGeneric(grpc.GenericRpcHandler):
    """A generic handler whose method handlers are wrapped the first time each is asked for."""

    def __init__(self, inner: grpc.GenericRpcHandler, policy: CallPolicy) -> None:
        self.inner = inner
        self.policy = policy
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method not in self._wrapped:
            handler = self.inner.service(handler_call_details)
            if handler is None:
                return None
            self._wrapped[method] = self.policy.wrap(handler, method)
        return self._wrapped[method]


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    if deserializer is None:
        return lambda data: data

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # any parser failure means the caller sent bad bytes
            return Undecodable(str(exc) or type(exc).__name__)

    return parse


def _counted_bytes(received: Callable[[int], None]) -> Callable[[bytes], bytes]:
    def take(data: bytes) -> bytes:
        received(len(data))
        return data

    return take


def _counted(serializer: Callable[[Any], bytes] | None, sent: Callable[[int], None]) -> Callable[[Any], bytes] | None:
    if serializer is None:
        return None

    def serialize(message: Any) -> bytes:
        data = serializer(message)
        sent(len(data))
        return data

    return serialize


def _traced(behavior: Behavior, method: str) -> Behavior:
    """One SERVER span per call, a child of the caller's span when its metadata carries one."""

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        parent = context_from(context.invocation_metadata())
        with tracer.start_as_current_span(method.lstrip("/"), context=parent, kind=SpanKind.SERVER) as span:
            span.set_attribute("rpc.system", "grpc")
            span.set_attribute("funnel.request_id", REQUEST_ID.get())
            return await behavior(request, context)

    return handle
