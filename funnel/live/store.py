"""The Redis client every live-state reader and writer uses: one Lua script records a batch of
events, another reads a user's state: one command each way.

Durability is the server's: with `appendonly yes` and `appendfsync always` Redis writes and
fsyncs the append-only file before it answers, so an answered `record` is on disk. `durability()`
says what the server is configured to do, so the events service can refuse to acknowledge events
it could lose.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from funnel.live.schema import (
    DISMISSED,
    RECENT,
    SERVED,
    STREAM,
    LiveState,
    Retention,
    event_key,
    user_key,
)

# KEYS: the stream, then per event its idempotency key and the user's state key.
# ARGV: retention and the writer's clock, then 7 fields per event.
_RECORD = """
local idem_ttl, recent_cap, dismissed_cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local served_ttl, maxlen, now = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local recorded, duplicates = 0, 0
for i = 0, (#KEYS - 1) / 2 - 1 do
  local a = 6 + i * 7
  local id, user, item, kind = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local ts, value, group = tonumber(ARGV[a + 5]), ARGV[a + 6], ARGV[a + 7]
  if redis.call('SET', KEYS[2 + 2 * i], '1', 'NX', 'EX', idem_ttl) then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*',
      'event_id', id, 'user_id', user, 'item_id', item, 'type', kind, 'ts', ARGV[a + 5], 'value', value)
    local key = KEYS[3 + 2 * i]
    -- GT: an event replayed late never moves an item back in time.
    if group == 'recent' then
      redis.call('ZADD', key, 'GT', ts, item)
      redis.call('ZREMRANGEBYRANK', key, 0, -recent_cap - 1)
    elseif group == 'dismissed' then
      redis.call('ZADD', key, 'GT', ts, item)
      redis.call('ZREMRANGEBYRANK', key, 0, -dismissed_cap - 1)
    elseif ts > now - served_ttl then
      redis.call('ZADD', key, 'GT', ts, item)
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now - served_ttl)
      redis.call('PEXPIRE', key, served_ttl)
    end
    recorded = recorded + 1
  else
    duplicates = duplicates + 1
  end
end
return {recorded, duplicates}
"""


# One script, so a read is one command: cheaper for the client than a pipeline of three.
# KEYS: recent, dismissed, served; ARGV: how many of each, the oldest served time still in.
READ_SCRIPT = """
local recent = redis.call('ZRANGE', KEYS[1], -tonumber(ARGV[1]), -1)
local dismissed = redis.call('ZREVRANGE', KEYS[2], 0, tonumber(ARGV[2]) - 1)
local served = {}
if tonumber(ARGV[3]) > 0 then
  served = redis.call('ZREVRANGEBYSCORE', KEYS[3], '+inf', ARGV[4], 'LIMIT', 0, tonumber(ARGV[3]))
end
return {recent, dismissed, served}
"""


@dataclass(frozen=True)
class EventRecord:
    """One validated event, as the store writes it."""

    event_id: str
    user_id: str
    item_id: str
    kind: str  # an EVENT_TYPES name
    group: str  # RECENT, DISMISSED or SERVED
    timestamp_ms: int
    value: float


class StoreError(Exception):
    """The store could not be reached or refused the command: nothing may be assumed written."""


def connect(url: str, timeout_s: float) -> aioredis.Redis:
    """A client that never retries on its own (`LiveStore` does, once, for a stale connection):
    callers own their budgets and their retries."""
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


class LiveStore:
    def __init__(self, client: aioredis.Redis, retention: Retention) -> None:
        self.client = client
        self.retention = retention
        self._record = client.register_script(_RECORD)
        self._read = client.register_script(READ_SCRIPT)

    async def record(self, events: Sequence[EventRecord], now_ms: int) -> tuple[int, int]:
        """Write a batch; (recorded, duplicates). The script runs as one unit (no other command sees
        part of it); a StoreError means nothing is acknowledged, though an error inside the script
        (the store out of memory) can leave its first events written, which a retry with the same
        event ids completes without doubling them."""
        r = self.retention
        keys = [STREAM]
        args: list[str | int | float] = [
            r.idempotency_ttl_s,
            r.recent_cap,
            r.dismissed_cap,
            r.served_ttl_ms,
            r.stream_max_events,
            now_ms,
        ]
        for event in events:
            keys += [event_key(event.event_id), user_key(event.user_id, event.group)]
            args += [
                event.event_id, event.user_id, event.item_id, event.kind, event.timestamp_ms,
                repr(event.value), event.group,
            ]  # fmt: skip
        recorded, duplicates = await _once_more_if_stale(lambda: self._record(keys=keys, args=args))
        return int(recorded), int(duplicates)

    async def read(self, user_id: str, now_ms: int, recent: int, dismissed: int, served: int) -> LiveState:
        """A user's live state in one round trip: the newest `recent` interactions (oldest first),
        `dismissed` dismissals and `served` items served within the TTL (newest first); 0 = none."""
        keys = [user_key(user_id, group) for group in (RECENT, DISMISSED, SERVED)]
        args = [recent, dismissed, served, now_ms - self.retention.served_ttl_ms]
        recent_items, dismissed_items, served_items = await _once_more_if_stale(
            lambda: self._read(keys=keys, args=args)
        )
        # ZRANGE with a start of -0 would read everything: an empty part is asked as none.
        return LiveState(recent_items if recent else [], dismissed_items if dismissed else [], served_items)

    async def record_served(self, served: Sequence[tuple[str, Sequence[str], str]], now_ms: int) -> None:
        """What the gateway served: (user, items, request id) per answer, in one round trip. Each
        answer is one log entry (its items joined by newlines, which no item id may contain)."""
        ttl = self.retention.served_ttl_ms

        def write() -> Awaitable[list[Any]]:
            pipe = self.client.pipeline(transaction=False)
            for user_id, items, request_id in served:
                key = user_key(user_id, SERVED)
                pipe.zadd(key, dict.fromkeys(items, now_ms), gt=True)
                pipe.zremrangebyscore(key, "-inf", now_ms - ttl)
                pipe.pexpire(key, ttl)
                pipe.xadd(
                    STREAM,
                    {"event_id": request_id, "user_id": user_id, "item_id": "\n".join(items), "type": "impression",
                     "ts": now_ms, "value": "0"},
                    maxlen=self.retention.stream_max_events, approximate=True,
                )  # fmt: skip
            return pipe.execute()

        await _once_more_if_stale(write)

    async def ping(self) -> None:
        await _once_more_if_stale(self.client.ping)

    async def durability(self) -> str | None:
        """None when every acknowledged write is fsynced (appendonly yes, appendfsync always), else
        what the server is configured to do instead; 'unknown' where CONFIG is not allowed."""
        try:
            config = await self.client.config_get("append*")
        except ResponseError:
            return "unknown (CONFIG GET is not allowed on this server)"
        except RedisError as exc:
            raise StoreError(_describe(exc)) from exc
        if config.get("appendonly") != "yes" or config.get("appendfsync") != "always":
            return f"appendonly={config.get('appendonly')}, appendfsync={config.get('appendfsync')}"
        return None

    async def close(self) -> None:
        await self.client.aclose()


async def _once_more_if_stale(command: Callable[[], Awaitable[Any]]) -> Any:
    """Run a command; when its connection was closed under it (the store restarted since the pool
    opened it), once more on a fresh one. Safe for every write here: events are idempotent by id,
    served items by set semantics (at worst an impression is logged twice)."""
    try:
        try:
            return await command()
        except RedisConnectionError:
            return await command()
    except RedisError as exc:
        raise StoreError(_describe(exc)) from exc


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
