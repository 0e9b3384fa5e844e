"""The Redis client every live-state reader and writer uses: one Lua script records a batch of
events, one records what the gateway served, another reads a user's state: one command each.

Durability is the server's: with `appendonly yes` and `appendfsync always` Redis writes and
fsyncs the append-only file before it answers, so an answered `record` is on disk. `durability()`
says what the server is configured to do, so the events service can refuse to acknowledge events
it could lose. The log never loses what it acknowledged: an entry is trimmed only once the export
has it (`funnel/live/schema.py`), and a full log refuses the write instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from funnel.live.schema import (
    DISMISSED,
    LOG_CONFIG,
    LOG_EXPORTED,
    LOG_SEQ,
    RECENT,
    SERVED,
    STREAM,
    LiveState,
    LogBounds,
    Retention,
    event_key,
    user_key,
)

# Room in the log for `wanted` more entries. Exported entries older than the retention go first;
# when that is not room enough, every exported entry; an entry the export has not read, never.
_ROOM = """
local function room(stream, exported_key, wanted, now, retention, max_events)
  local exported = redis.call('HGET', exported_key, 'id')
  if exported then
    local ms, sq = string.match(exported, '^(%d+)-(%d+)$')
    local after = ms .. '-' .. string.format('%.0f', tonumber(sq) + 1)
    local cutoff = now - retention
    if cutoff < tonumber(ms) then
      redis.call('XTRIM', stream, 'MINID', string.format('%.0f', cutoff) .. '-0')
    else
      redis.call('XTRIM', stream, 'MINID', after)
    end
    if redis.call('XLEN', stream) + wanted > max_events then
      redis.call('XTRIM', stream, 'MINID', after)
    end
  end
  return redis.call('XLEN', stream) + wanted <= max_events
end
"""

# KEYS: the stream, the sequence, the export checkpoint, then per event its idempotency key, the
# user's state key and the user's quota counter for this window. ARGV: 12 settings, then 8 fields per
# event. Returns {recorded, duplicates}; or, with nothing written, {-1, i} when event i reuses an id
# with another payload, {-2, entries} when the log is full, {-3, i} when event i's user is over quota.
_RECORD = (
    _ROOM
    + """
local idem_ttl, recent_cap, dismissed_cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local served_ttl, served_cap, user_ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local now, client, max_events, retention = tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10])
local user_cap, window = tonumber(ARGV[11]), tonumber(ARGV[12])
local n = (#KEYS - 3) / 3
local fresh, wanted, per_user, first_of = {}, 0, {}, {}
for i = 0, n - 1 do
  local seen = redis.call('GET', KEYS[4 + 3 * i])
  if seen then
    if seen ~= ARGV[12 + i * 8 + 8] then return {-1, i} end
  else
    fresh[i] = true
    wanted = wanted + 1
    local quota = KEYS[6 + 3 * i]
    per_user[quota] = (per_user[quota] or 0) + 1
    if first_of[quota] == nil then first_of[quota] = i end
  end
end
if user_cap > 0 then
  for quota, count in pairs(per_user) do
    if tonumber(redis.call('GET', quota) or '0') + count > user_cap then return {-3, first_of[quota]} end
  end
end
if wanted > 0 and not room(KEYS[1], KEYS[3], wanted, now, retention, max_events) then
  return {-2, redis.call('XLEN', KEYS[1])}
end
for quota, count in pairs(per_user) do
  redis.call('INCRBY', quota, count)
  redis.call('PEXPIRE', quota, window)
end
for i = 0, n - 1 do
  if fresh[i] then
    local a = 12 + i * 8
    local id, user, item, kind = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
    local ts, value, group = tonumber(ARGV[a + 5]), ARGV[a + 6], ARGV[a + 7]
    redis.call('SET', KEYS[4 + 3 * i], ARGV[a + 8], 'EX', idem_ttl)
    redis.call('XADD', KEYS[1], '*', 'seq', redis.call('INCR', KEYS[2]), 'client', client,
      'event_id', id, 'user_id', user, 'item_id', item, 'type', kind, 'ts', ARGV[a + 5], 'value', value)
    local key = KEYS[5 + 3 * i]
    -- GT: an event replayed late never moves an item back in time.
    if group == 'recent' then
      redis.call('ZADD', key, 'GT', ts, item)
      redis.call('ZREMRANGEBYRANK', key, 0, -recent_cap - 1)
      redis.call('PEXPIRE', key, user_ttl)
    elseif group == 'dismissed' then
      redis.call('ZADD', key, 'GT', ts, item)
      redis.call('ZREMRANGEBYRANK', key, 0, -dismissed_cap - 1)
      redis.call('PEXPIRE', key, user_ttl)
    elseif ts > now - served_ttl then
      redis.call('ZADD', key, 'GT', ts, item)
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now - served_ttl)
      redis.call('ZREMRANGEBYRANK', key, 0, -served_cap - 1)
      redis.call('PEXPIRE', key, served_ttl)
    end
  end
end
return {wanted, n - wanted}
"""
)

# What the gateway served. KEYS: the stream, the sequence, the export checkpoint, the log's bounds,
# then each answer's served key. ARGV: now, served TTL and cap, then per answer: client, user, the
# items joined by newlines, the request id. The served sets are always updated; the answers go to
# the log while it has room under the bounds the events service set. Returns {logged, not logged}.
_SERVED = (
    _ROOM
    + """
local now, served_ttl, served_cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local max_events = tonumber(redis.call('HGET', KEYS[4], 'max_events') or '0')
local retention = tonumber(redis.call('HGET', KEYS[4], 'retention_ms') or '0')
local n = #KEYS - 4
local logging = max_events > 0 and room(KEYS[1], KEYS[3], n, now, retention, max_events)
for i = 1, n do
  local a = 3 + (i - 1) * 4
  local key, items = KEYS[4 + i], {}
  for item in string.gmatch(ARGV[a + 3], '[^\\n]+') do
    items[#items + 1] = now
    items[#items + 1] = item
  end
  redis.call('ZADD', key, 'GT', unpack(items))
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - served_ttl)
  redis.call('ZREMRANGEBYRANK', key, 0, -served_cap - 1)
  redis.call('PEXPIRE', key, served_ttl)
  if logging then
    redis.call('XADD', KEYS[1], '*', 'seq', redis.call('INCR', KEYS[2]), 'client', ARGV[a + 1],
      'event_id', ARGV[a + 4], 'user_id', ARGV[a + 2], 'item_id', ARGV[a + 3], 'type', 'impression',
      'ts', ARGV[1], 'value', '0')
  end
end
if logging then return {n, 0} end
return {0, n}
"""
)

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
    digest: str  # of the payload: an id reused with another payload is refused, not taken for a retry


@dataclass(frozen=True)
class LogStatus:
    entries: int  # in the stream now, exported ones within their retention included
    unexported: int  # written and not yet exported: what the bound counts
    last_seq: int
    exported_seq: int


class StoreError(Exception):
    """The store could not be reached or refused the command: nothing may be assumed written."""


class PayloadConflict(StoreError):
    """An event id this client already used for this user came with another payload."""

    def __init__(self, index: int) -> None:
        super().__init__(f"event {index} reuses an id with another payload")
        self.index = index


class UserOverQuota(StoreError):
    """A user sent more events in this window than the per-user cap allows."""

    def __init__(self, index: int) -> None:
        super().__init__(f"event {index}'s user is over the per-user cap")
        self.index = index


class LogFull(StoreError):
    """The log holds as many unexported events as its bound allows: an export must run first."""

    def __init__(self, entries: int) -> None:
        super().__init__(f"the event log holds {entries:,} entries not yet exported, its bound")
        self.entries = entries


def connect(url: str, timeout_s: float, password_file: str = "") -> aioredis.Redis:
    """A client that never retries on its own (`LiveStore` does, once, for a stale connection):
    callers own their budgets and their retries. The password comes from a file (a mounted Secret),
    never from the URL or a flag, so it shows in no process listing, pod spec or log line."""
    return aioredis.Redis.from_url(
        url,
        password=read_password(password_file) if password_file else None,
        decode_responses=True,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


def read_password(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise StoreError(f"the store's password file {path}: {exc.strerror}") from None


class LiveStore:
    def __init__(self, client: aioredis.Redis, retention: Retention, bounds: LogBounds | None = None) -> None:
        self.client = client
        self.retention = retention
        self.bounds = bounds or LogBounds()  # the events service's; the gateway reads them from the store
        self._record = client.register_script(_RECORD)
        self._served = client.register_script(_SERVED)
        self._read = client.register_script(READ_SCRIPT)

    async def record(self, events: Sequence[EventRecord], now_ms: int, client: str) -> tuple[int, int]:
        """Write a batch for `client`; (recorded, duplicates). The script runs as one unit and checks
        everything before it writes: PayloadConflict, UserOverQuota or LogFull mean nothing was written. Any other
        StoreError means nothing is acknowledged; an error inside the script (the store out of
        memory) can leave its first events written, which a retry with the same ids completes."""
        r, b = self.retention, self.bounds
        keys = [STREAM, LOG_SEQ, LOG_EXPORTED]
        window_ms = r.user_window_s * 1000
        args: list[str | int | float] = [
            r.idempotency_ttl_s, r.recent_cap, r.dismissed_cap, r.served_ttl_ms, r.served_cap, r.user_ttl_s * 1000,
            now_ms, client, b.max_events, b.retention_ms, r.user_events_per_window, window_ms,
        ]  # fmt: skip
        for event in events:
            keys += [
                event_key(event.user_id, client, event.event_id),
                user_key(event.user_id, event.group),
                user_key(event.user_id, f"quota:{now_ms // window_ms}"),
            ]
            args += [
                event.event_id, event.user_id, event.item_id, event.kind, event.timestamp_ms,
                repr(event.value), event.group, event.digest,
            ]  # fmt: skip
        first, second = await _once_more_if_stale(lambda: self._record(keys=keys, args=args))
        if int(first) == -1:
            raise PayloadConflict(int(second))
        if int(first) == -2:
            raise LogFull(int(second))
        if int(first) == -3:
            raise UserOverQuota(int(second))
        return int(first), int(second)

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

    async def record_served(self, served: Sequence[Served], now_ms: int) -> tuple[int, int]:
        """What the gateway served, in one round trip: each user's served set is updated (capped and
        expiring), and each answer is one log entry (its items joined by newlines, which no item id
        may contain) while the log has room. (answers logged, answers left out of the log)."""
        r = self.retention
        keys = [STREAM, LOG_SEQ, LOG_EXPORTED, LOG_CONFIG, *(user_key(s.user_id, SERVED) for s in served)]
        args: list[str | int] = [now_ms, r.served_ttl_ms, r.served_cap]
        for s in served:
            args += [s.client, s.user_id, "\n".join(s.items), s.request_id]
        logged, left_out = await _once_more_if_stale(lambda: self._served(keys=keys, args=args))
        return int(logged), int(left_out)

    async def publish_bounds(self) -> None:
        """Write this writer's log bounds where every writer reads them (the events service does)."""
        b = self.bounds
        await _once_more_if_stale(
            lambda: self.client.hset(LOG_CONFIG, mapping={"max_events": b.max_events, "retention_ms": b.retention_ms})
        )

    async def log_status(self) -> LogStatus:
        async def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            pipe.xlen(STREAM)
            pipe.get(LOG_SEQ)
            pipe.hget(LOG_EXPORTED, "seq")
            return await pipe.execute()

        entries, last, exported = await _once_more_if_stale(read)
        last_seq, exported_seq = int(last or 0), int(exported or 0)
        return LogStatus(int(entries), last_seq - exported_seq, last_seq, exported_seq)

    async def memory(self) -> tuple[int, int]:
        """(used_memory, maxmemory) in bytes; maxmemory 0 = no limit set."""
        info = await _once_more_if_stale(lambda: self.client.info("memory"))
        return int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))

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


@dataclass(frozen=True)
class Served:
    """One answer the gateway served: to whom, which items, for which client and request."""

    user_id: str
    items: Sequence[str]
    request_id: str
    client: str


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
