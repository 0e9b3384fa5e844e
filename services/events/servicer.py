"""The Events gRPC service: validated batches written to the online store under the calling
client's name, acknowledged only once they are durable there.

An events service of its own, not a method of the gateway: writes scale with the event rate and
reads with the request rate, and a burst of events (a client flushing its queue after being
offline) then competes with other writes for this service's CPU, never with recommendations.

It watches the store all along (`--store-check-seconds`): until the store has answered, and whenever
it answers that it does not fsync every write, the service acknowledges nothing (UNAVAILABLE) and
is NOT_SERVING; a check that merely times out once it was ready changes nothing (writes fail on
their own meanwhile). Memory and the log's fill are published as metrics for the alert rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import grpc

from funnel.live.store import LiveStore, LogFull, PayloadConflict, StoreError, UserOverQuota, connect
from funnel.runtime.clients import ANONYMOUS, CALLER
from funnel.runtime.errors import AlreadyExists, ResourceExhausted, Unavailable
from funnel.runtime.metrics import (
    EVENTS,
    LOG_ENTRIES,
    LOG_MAX_EVENTS,
    LOG_UNEXPORTED,
    STORE_DURABLE,
    STORE_MAX_MEMORY,
    STORE_USED_MEMORY,
)
from funnel.runtime.server import Runtime
from funnel.v1 import events_pb2, events_pb2_grpc
from services.events.settings import EventsSettings
from services.events.validation import check_events, drop_repeats

log = logging.getLogger("funnel.events")
UNREACHABLE = "store unreachable"


class EventsService(events_pb2_grpc.EventsServicer):
    service_names = [events_pb2.DESCRIPTOR.services_by_name["Events"].full_name]

    def __init__(self, runtime: Runtime, settings: EventsSettings) -> None:
        self.runtime = runtime
        self.settings = settings
        client = connect(settings.state_store, settings.store_timeout_ms / 1000, settings.state_store_password_file,
                         settings.state_store_cluster)  # fmt: skip
        self.store = LiveStore(client, settings.retention(), settings.log_bounds(), settings.replica_acks,
                               settings.replica_timeout_ms)  # fmt: skip
        self._watching: asyncio.Task[None] | None = None
        self.store_ready = False  # its own flag: readiness also turns off while draining, writes must not
        LOG_MAX_EVENTS.set(settings.log_max_events)
        events_pb2_grpc.add_EventsServicer_to_server(self, runtime.server)

    async def start(self) -> None:
        # Ready once the store has answered and keeps what it acknowledges; until then (the store
        # starts after this pod, say) every call is UNAVAILABLE and nothing is acknowledged.
        self._watching = asyncio.create_task(self._watch_store())

    async def _watch_store(self) -> None:
        reported = ""
        while True:
            problem = await self._store_problem()
            if problem.startswith(UNREACHABLE) and self.store_ready:
                # A check that timed out (a store paused, a blip) says nothing about its durability:
                # writes meanwhile fail on their own (UNAVAILABLE); the next check decides.
                await asyncio.sleep(self.settings.store_check_seconds)
                continue
            if problem != reported:
                if problem:
                    log.warning("not ready: the online store cannot acknowledge durably", extra={"store": problem})
                else:
                    log.info("the online store acknowledges durably")
                reported = problem
            ready = not problem
            if ready != self.store_ready:
                self.store_ready = ready
                await self.runtime.readiness.set(ready, problem or "online store reachable and durable")
            await asyncio.sleep(self.settings.store_check_seconds)

    async def _store_problem(self) -> str:
        """Empty when the store is reachable and keeps what it acknowledges; publishes its metrics."""
        try:
            durability = await self.store.durability()
            await self.store.publish_bounds()  # every check: a store restarted empty gets them back at once
            used, maximum = await self.store.memory()
            status = await self.store.log_status()
        except StoreError as exc:
            STORE_DURABLE.set(0)
            return f"{UNREACHABLE}: {exc}"
        STORE_USED_MEMORY.set(used)
        STORE_MAX_MEMORY.set(maximum)
        LOG_ENTRIES.set(status.entries)
        LOG_UNEXPORTED.set(status.unexported)
        STORE_DURABLE.set(0 if durability else 1)
        if durability and self.settings.require_fsync:
            return durability
        if durability:
            log.warning("store does not fsync every write: acknowledged events can be lost on a crash",
                        extra={"store": durability})  # fmt: skip
        return ""

    async def stop(self) -> None:
        if self._watching is not None:
            self._watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watching
        await self.store.close()

    async def RecordEvents(
        self, request: events_pb2.RecordEventsRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.RecordEventsResponse:
        s = self.settings
        records, repeats = drop_repeats(check_events(request.events, s.max_events, s.max_clock_skew_seconds))
        if not self.store_ready:
            raise Unavailable("the online store is not reachable or not durable: nothing was recorded")
        caller = CALLER.get()
        client = caller.name if caller is not None else ANONYMOUS
        try:
            recorded, duplicates = await asyncio.wait_for(
                self.store.record(records, int(time.time() * 1000), client), s.store_timeout_ms / 1000
            )
        except PayloadConflict as exc:
            EVENTS.labels("conflict").inc(len(records))
            raise AlreadyExists(
                f"events[{exc.index}].event_id {records[exc.index].event_id!r} was recorded before with another "
                "payload; nothing in this batch was recorded (a retry sends the same payload; a new event needs "
                "a new id)"
            ) from None
        except UserOverQuota as exc:
            EVENTS.labels("user_over_quota").inc(len(records))
            user = records[exc.index].user_id
            raise ResourceExhausted(
                f"user {user!r} sent more than {s.user_events_per_window} events in {s.user_window_seconds} s; "
                "nothing in this batch was recorded; retry in the next window"
            ) from None
        except LogFull as exc:
            EVENTS.labels("log_full").inc(len(records))
            raise ResourceExhausted(
                f"{exc}: nothing was recorded; retry after the log is exported (python -m training.export_events)"
            ) from None
        except (StoreError, TimeoutError) as exc:
            EVENTS.labels("unavailable").inc(len(records))
            # A write cut off by the timeout may still land: the same event ids make a retry safe.
            raise Unavailable(
                f"the online store did not acknowledge the events ({exc or 'timed out'}); retry with the same event ids"
            ) from None
        EVENTS.labels("recorded").inc(recorded)
        EVENTS.labels("duplicate").inc(duplicates + repeats)
        return events_pb2.RecordEventsResponse(recorded=recorded, duplicates=duplicates + repeats)
