"""What the gateway served, recorded as impressions off the request path.

A request only offers its answer to a bounded queue (never waits, never fails); one task drains it
in batches, one store round trip per batch. It lingers a little after the first answer of a batch,
so that under load one write (and one fsync on the store) carries several answers. A full queue or
a store error drops impressions, which `funnel_gateway_impressions_total{result="dropped_..."}`
counts: serving never slows for them. Each answer is recorded under the client that asked for it;
the user's served set is capped and expires; the log takes the answer while it has room under the
bounds the events service set (`not_logged_log_full` counts the others).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from funnel.live.store import LiveStore, Served, StoreError
from funnel.runtime.metrics import IMPRESSIONS

log = logging.getLogger("funnel.gateway.impressions")
_BATCH = 64
_RETRY_AFTER_S = 0.5  # after a store error, so a down store is not hammered


class ImpressionRecorder:
    def __init__(self, store: LiveStore, capacity: int, linger_s: float = 0.0) -> None:
        self.store = store
        self.linger_s = linger_s
        self.queue: asyncio.Queue[Served] = asyncio.Queue(capacity)
        self._task: asyncio.Task[None] | None = None
        self._recorded = IMPRESSIONS.labels("recorded")
        self._not_logged = IMPRESSIONS.labels("not_logged_log_full")
        self._dropped_full = IMPRESSIONS.labels("dropped_queue_full")
        self._dropped_error = IMPRESSIONS.labels("dropped_store_error")

    def start(self) -> None:
        self._task = asyncio.create_task(self._drain())

    def offer(self, user_id: str, items: Sequence[str], request_id: str, client: str) -> None:
        if not items:
            return
        try:
            self.queue.put_nowait(Served(user_id, items, request_id, client))
        except asyncio.QueueFull:
            self._dropped_full.inc()

    async def _drain(self) -> None:
        while True:
            batch = [await self.queue.get()]
            if self.linger_s > 0 and self.queue.qsize() < _BATCH - 1:
                await asyncio.sleep(self.linger_s)
            while len(batch) < _BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                _, not_logged = await self.store.record_served(batch, int(time.time() * 1000))
                self._recorded.inc(len(batch))
                self._not_logged.inc(not_logged)
            except StoreError as exc:
                self._dropped_error.inc(len(batch))
                log.warning("impressions not recorded", extra={"answers": len(batch), "error": str(exc)})
                await asyncio.sleep(_RETRY_AFTER_S)
            except Exception:  # a bug must not stop the recording for the life of the process
                self._dropped_error.inc(len(batch))
                log.exception("impressions not recorded", extra={"answers": len(batch)})
            finally:
                for _ in batch:
                    self.queue.task_done()

    async def flush(self, timeout_s: float = 2.0) -> None:
        """Wait until what is queued now was written (or dropped); for shutdown and tests."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), timeout_s)

    async def stop(self) -> None:
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
