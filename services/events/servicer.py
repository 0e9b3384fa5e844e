"""The Events gRPC service: validated batches written to the online store, acknowledged only once
they are durable there.

An events service of its own, not a method of the gateway: writes scale with the event rate and
reads with the request rate, and a burst of events (a client flushing its queue after being
offline) then competes with other writes for this service's CPU, never with recommendations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import grpc

from funnel.live.store import LiveStore, StoreError, connect
from funnel.runtime.errors import Unavailable
from funnel.runtime.metrics import EVENTS
from funnel.runtime.server import Runtime
from funnel.v1 import events_pb2, events_pb2_grpc
from services.events.settings import EventsSettings
from services.events.validation import check_events

log = logging.getLogger("funnel.events")


class EventsService(events_pb2_grpc.EventsServicer):
    service_names = [events_pb2.DESCRIPTOR.services_by_name["Events"].full_name]

    def __init__(self, runtime: Runtime, settings: EventsSettings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.store = LiveStore(connect(settings.state_store, settings.store_timeout_ms / 1000), settings.retention())
        self._waiting: asyncio.Task[None] | None = None
        self.store_ready = False  # its own flag: readiness also turns off while draining, writes must not
        events_pb2_grpc.add_EventsServicer_to_server(self, runtime.server)

    async def start(self) -> None:
        # Ready once the store has answered and keeps what it acknowledges; until then (the store
        # starts after this pod, say) every call is UNAVAILABLE and nothing is acknowledged.
        self._waiting = asyncio.create_task(self._wait_for_store())

    async def _wait_for_store(self) -> None:
        reported = ""
        while True:
            try:
                problem = await self.store.durability()
            except StoreError as exc:
                problem = f"store unreachable: {exc}"
            if problem is None or (not self.settings.require_fsync and not problem.startswith("store unreachable")):
                if problem:
                    log.warning("store does not fsync every write: acknowledged events can be lost on a crash",
                                extra={"store": problem})  # fmt: skip
                self.store_ready = True
                await self.runtime.readiness.set(True, "online store reachable")
                return
            if problem != reported:
                log.warning("not ready: the online store cannot acknowledge durably", extra={"store": problem})
                reported = problem
            await asyncio.sleep(self.settings.store_poll_seconds)

    async def stop(self) -> None:
        if self._waiting is not None:
            self._waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._waiting
        await self.store.close()

    async def RecordEvents(
        self, request: events_pb2.RecordEventsRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.RecordEventsResponse:
        s = self.settings
        records = check_events(request.events, s.max_events, s.max_clock_skew_seconds)
        if not self.store_ready:
            raise Unavailable("the online store is not reachable yet: nothing was recorded")
        try:
            recorded, duplicates = await asyncio.wait_for(
                self.store.record(records, int(time.time() * 1000)), s.store_timeout_ms / 1000
            )
        except (StoreError, TimeoutError) as exc:
            EVENTS.labels("unavailable").inc(len(records))
            # A write cut off by the timeout may still land: the same event ids make a retry safe.
            raise Unavailable(
                f"the online store did not acknowledge the events ({exc or 'timed out'}); retry with the same event ids"
            ) from None
        EVENTS.labels("recorded").inc(recorded)
        EVENTS.labels("duplicate").inc(duplicates)
        return events_pb2.RecordEventsResponse(recorded=recorded, duplicates=duplicates)
