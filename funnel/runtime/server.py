"""The grpc.aio server bootstrap every Funnel process runs.

It owns what is the same everywhere: the call policy around every method, the standard health service (whose status the
service sets from its real readiness), reflection, metrics, a thread pool for CPU-heavy work, and a
graceful shutdown on SIGTERM: health goes NOT_SERVING, the server keeps answering for
`drain_seconds` so balancers can move away, then stops taking calls and lets in-flight ones finish
for up to `grace_seconds`.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from funnel.runtime import exits
from funnel.runtime.admission import ConcurrencyLimit
from funnel.runtime.calls import CallPolicy, InstrumentedServer
from funnel.runtime.clients import ClientsFile
from funnel.runtime.config import ServerSettings, unreadable_files
from funnel.runtime.errors import ConfigError
from funnel.runtime.logs import configure_logging
from funnel.runtime.metrics import READY, start_metrics_server
from funnel.runtime.quotas import ClientQuotas
from funnel.runtime.tls import PLAINTEXT, Tls
from funnel.runtime.tracing import configure_tracing, shutdown_tracing
from funnel.runtime.user_tokens import UserTokens

log = logging.getLogger("funnel.server")
# Health service name that answers SERVING while the process runs, whatever its readiness: the
# liveness probe asks for it, so a pod still loading its index is not restarted for being unready.
LIVENESS_SERVICE = "liveness"
T = TypeVar("T")


class Readiness:
    """SERVING or NOT_SERVING for the whole server and each of its services, set by the service."""

    def __init__(self, health: health_aio.HealthServicer, service_names: list[str]) -> None:
        self._health = health
        self._names = ["", *service_names]
        self.serving = False

    async def set(self, serving: bool, reason: str = "") -> None:
        if serving == self.serving:
            return
        self.serving = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self._names:
            await self._health.set(name, status)
        READY.set(1 if serving else 0)
        log.info("readiness changed", extra={"serving": serving, "reason": reason})


class Runtime:
    """What a service gets from the bootstrap."""

    def __init__(
        self, server: InstrumentedServer, settings: ServerSettings, executor: ThreadPoolExecutor, tls: Tls = PLAINTEXT
    ) -> None:
        self.server = server  # register servicers here: each method gets the call policy
        self.settings = settings
        self.tls = tls  # also what the service's own outgoing calls use
        self._executor = executor
        self.readiness: Readiness  # set by serve() once the service names are known

    async def run_cpu(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run CPU-heavy work (loading artifacts, building indexes) off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def run_call_work(self, fn: Callable[..., T], *args: Any) -> T:
        """One call's own work: inline when it is short (the default), else on the thread pool."""
        if self.settings.inline_work:
            return fn(*args)
        return await self.run_cpu(fn, *args)


class Service(Protocol):
    """A stage: registers its servicers, then loads what it needs and reports readiness."""

    service_names: list[str]

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def run(name: str, settings: ServerSettings, build: Callable[[Runtime], Service]) -> None:
    """Entry point of every process: serve until SIGTERM or SIGINT, then shut down gracefully."""
    configure_logging(name, settings.log_level)
    try:
        if problems := unreadable_files(settings):
            raise ConfigError("; ".join(problems))
        configure_tracing(name)
        clients = ClientsFile(settings.clients_file) if settings.clients_file else None
        user_tokens = (
            UserTokens(settings.user_token_key_file, settings.user_token_algorithms.split(","),
                       settings.user_token_audience, settings.user_token_issuer)
            if settings.user_token_key_file else None
        )  # fmt: skip
        tls = Tls.from_settings(settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(exits.CONFIG_ERROR) from None
    try:
        if not asyncio.run(serve(name, settings, build, clients, tls, user_tokens)):
            raise SystemExit(exits.START_FAILED)
    finally:
        shutdown_tracing()


async def serve(
    name: str,
    settings: ServerSettings,
    build: Callable[[Runtime], Service],
    clients: ClientsFile | None = None,
    tls: Tls = PLAINTEXT,
    user_tokens: UserTokens | None = None,
) -> bool:
    """Serve until a stop signal; False when start-up (loading artifacts) failed."""
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    if settings.max_connection_age_seconds > 0:
        age_ms = int(settings.max_connection_age_seconds * 1000)
        options += [("grpc.max_connection_age_ms", age_ms), ("grpc.max_connection_age_grace_ms", age_ms)]
    limit = ConcurrencyLimit(settings.max_in_flight, settings.latency_target_ms / 1000)
    server = grpc.aio.server(options=options)
    executor = ThreadPoolExecutor(max_workers=settings.worker_threads, thread_name_prefix=f"{name}-cpu")
    quotas = ClientQuotas(settings.client_rate_per_s, settings.client_burst) if clients is not None else None
    policy = CallPolicy(settings.access_log, clients, limit, quotas, user_tokens)
    runtime = Runtime(InstrumentedServer(server, policy), settings, executor, tls)
    service = build(runtime)

    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    runtime.readiness = Readiness(health, service.service_names)
    for service_name in ["", *service.service_names]:
        await health.set(service_name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [*service.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )

    address = f"{settings.host}:{settings.port}"
    try:
        port = (
            server.add_secure_port(address, tls.server_credentials())
            if tls.serves_tls
            else server.add_insecure_port(address)
        )
    except RuntimeError:  # grpcio raises where older versions returned 0
        port = 0
    if not port:
        _exit_port_in_use(f"{name}: cannot listen on {address}")
    try:
        start_metrics_server(settings.host, settings.metrics_port)
    except OSError as exc:
        _exit_port_in_use(f"{name}: cannot serve metrics on {settings.host}:{settings.metrics_port} ({exc})")
    probes = await _start_probe_server(settings, health)
    await server.start()
    log.info(
        "listening",
        extra={
            "address": f"{settings.host}:{port}",
            "metrics_port": settings.metrics_port,
            "tls": "mutual" if tls.require_client_cert else "on" if tls.serves_tls else "off",
            "probe_port": settings.probe_port,
        },
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    # Loading runs beside serving so that health answers NOT_SERVING while an index or model loads.
    starting = asyncio.create_task(_start_and_freeze(service), name=f"{name}-start")
    rotating = asyncio.create_task(clients.watch(settings.clients_poll_seconds)) if clients is not None else None
    starting.add_done_callback(functools.partial(_report_start_failure, stop))
    await stop.wait()

    log.info("shutting down", extra={"drain_seconds": settings.drain_seconds, "grace_seconds": settings.grace_seconds})
    await health.enter_graceful_shutdown()
    READY.set(0)
    await asyncio.sleep(settings.drain_seconds)
    await server.stop(settings.grace_seconds)
    if probes is not None:
        await probes.stop(0)
    starting.cancel()
    if rotating is not None:
        rotating.cancel()
    await service.stop()
    executor.shutdown(wait=False, cancel_futures=True)
    failed = starting.done() and not starting.cancelled() and starting.exception() is not None
    log.info("stopped", extra={"start_failed": failed})
    return not failed


async def _start_probe_server(settings: ServerSettings, health: health_aio.HealthServicer) -> grpc.aio.Server | None:
    """The health service alone on a plaintext port, sharing the main server's statuses: probes
    read readiness without a certificate, and nothing else is reachable there."""
    if not settings.probe_port:
        return None
    probes = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health, probes)
    try:
        bound = probes.add_insecure_port(f"{settings.host}:{settings.probe_port}")
    except RuntimeError:
        bound = 0
    if not bound:
        _exit_port_in_use(f"cannot listen on {settings.host}:{settings.probe_port} (probe port)")
    await probes.start()
    return probes


def _exit_port_in_use(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(exits.PORT_IN_USE)


async def _start_and_freeze(service: Service) -> None:
    await service.start()
    # Everything loaded so far (modules, tables, models) lives as long as the process: out of the
    # collector's sight, so its collections walk only what requests allocate, never the whole heap.
    gc.collect()
    gc.freeze()


def _report_start_failure(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        # A service that cannot load its artifacts must not linger half-alive.
        # The reason on one line beside the traceback: what an operator reads in the pod's last log.
        log.error("start-up failed", exc_info=error, extra={"error": f"{type(error).__name__}: {error}"})
        stop.set()
