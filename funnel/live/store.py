"""The Redis client every live-state reader and writer uses: one Lua script records a batch of
events, one records what the gateway served, another reads a user's state: one command each.

Durability is the server's: with `appendonly yes` and `appendfsync always` Redis writes and
fsyncs the append-only file before it answers, so an answered `record` is on disk. `durability()`
says what the server is configured to do, so the events service can refuse to acknowledge events
it could lose. The log never loses what it acknowledged: an entry is trimmed only once the export
has it (`funnel/live/schema.py`), and a full log refuses the write instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, RedisError, ResponseError
from redis.retry import Retry

from funnel.live.connection import on_one_connection
from funnel.live.schema import DISMISSED, RECENT, SERVED, Layout, LiveState, LogBounds, Retention
from funnel.live.scripts import READ_SCRIPT, RECORD_SCRIPT, SERVED_SCRIPT


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


class ReplicasBehind(StoreError):
    """The master wrote the batch, but fewer replicas than required confirmed it in time."""


Client = aioredis.Redis | RedisCluster


def connect(url: str, timeout_s: float, password_file: str = "", cluster: bool = False) -> Client:
    """A client that never retries on its own (`LiveStore` does, once, for a stale connection):
    callers own their budgets and their retries. The password comes from a file (a mounted Secret),
    never from the URL or a flag, so it shows in no process listing, pod spec or log line.

    `cluster`: a Redis Cluster client, given any node's address. It follows MOVED and ASK itself;
    after a lost connection (a master down) it learns the slots anew on its next command, so the
    one retry reaches the replica promoted meanwhile."""
    options: dict[str, Any] = {
        "password": read_password(password_file) if password_file else None,
        "decode_responses": True,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 0),
    }
    if cluster:
        # Partial coverage: a client starting while one master is down still serves the other slots.
        return RedisCluster.from_url(url, require_full_coverage=False, **options)
    return aioredis.Redis.from_url(url, health_check_interval=0, **options)


def read_password(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise StoreError(f"the store's password file {path}: {exc.strerror}") from None


class LiveStore:
    """One Redis or a Redis Cluster: the layout (funnel/live/schema.py) follows the client.

    `replica_acks` > 0: an event batch is acknowledged only once that many replicas of its master
    confirmed it (WAIT, within `replica_timeout_ms`), so a master that dies right after answering
    cannot take acknowledged events with it when its replica is promoted."""

    def __init__(
        self, client: Client, retention: Retention, bounds: LogBounds | None = None, replica_acks: int = 0,
        replica_timeout_ms: int = 1000,
    ) -> None:  # fmt: skip
        self.client = client
        self.cluster = isinstance(client, RedisCluster)
        self.layout = Layout.cluster() if self.cluster else Layout()
        self.retention = retention
        self.bounds = bounds or LogBounds()  # the events service's; the gateway reads them from the store
        self.replica_acks = replica_acks
        self.replica_timeout_ms = replica_timeout_ms
        self._record = client.register_script(RECORD_SCRIPT)
        self._served = client.register_script(SERVED_SCRIPT)
        self._read = client.register_script(READ_SCRIPT)

    async def record(self, events: Sequence[EventRecord], now_ms: int, client: str) -> tuple[int, int]:
        """Write a batch for `client`; (recorded, duplicates). PayloadConflict, UserOverQuota or
        LogFull mean nothing was written. Any other StoreError means nothing is acknowledged; an
        error inside the script (the store out of memory) can leave its first events written,
        which a retry with the same ids completes.

        The events of one log partition are checked and written by one script, as one unit. A
        batch across partitions (a cluster, several users) is checked in every partition first, so
        those three refusals still leave all of it unwritten; the writes then run per partition,
        and one that fails (a master down) may leave the others' written: the batch is not
        acknowledged, and its retry records the rest and counts the written ones as duplicates."""
        parts = self._partitions([event.user_id for event in events])
        await self._connected()
        if len(parts) == 1:
            return await self._record_part(events, *parts[0], now_ms, client, check_only=False)
        await asyncio.gather(*(self._record_part(events, *part, now_ms, client, check_only=True) for part in parts))
        done = await asyncio.gather(*(self._record_part(events, *part, now_ms, client, check_only=False)
                                      for part in parts))  # fmt: skip
        return sum(recorded for recorded, _ in done), sum(duplicates for _, duplicates in done)

    async def _record_part(
        self, events: Sequence[EventRecord], partition: int, rows: list[int], now_ms: int, client: str,
        check_only: bool,
    ) -> tuple[int, int]:  # fmt: skip
        r, b, layout = self.retention, self.bounds, self.layout
        log = layout.log(partition)
        keys = [log.stream, log.seq, log.exported]
        window_ms = r.user_window_s * 1000
        args: list[str | int | float] = [
            r.idempotency_ttl_s, r.recent_cap, r.dismissed_cap, r.served_ttl_ms, r.served_cap, r.user_ttl_s * 1000,
            now_ms, client, b.max_events, b.retention_ms, r.user_events_per_window, window_ms, int(check_only),
        ]  # fmt: skip
        for row in rows:
            event = events[row]
            keys += [
                layout.event_key(event.user_id, client, event.event_id),
                layout.user_key(event.user_id, event.group),
                layout.user_key(event.user_id, f"quota:{now_ms // window_ms}"),
            ]
            args += [
                event.event_id, event.user_id, event.item_id, event.kind, event.timestamp_ms,
                repr(event.value), event.group, event.digest,
            ]  # fmt: skip
        if check_only or not self.replica_acks:
            first, second = await _once_more_if_stale(lambda: self._record(keys=keys, args=args))
        else:
            first, second = await _once_more_if_stale(lambda: self._acknowledged_by_replicas(keys, args))
        if int(first) == -1:
            raise PayloadConflict(rows[int(second)])
        if int(first) == -2:
            raise LogFull(int(second))
        if int(first) == -3:
            raise UserOverQuota(rows[int(second)])
        return int(first), int(second)

    async def _acknowledged_by_replicas(self, keys: list[Any], args: list[Any]) -> Any:
        """The record script, then WAIT on the same connection: WAIT counts the replicas that have
        this connection's writes, so it must follow them on it."""
        commands: list[tuple[Any, ...]] = [
            ("EVAL", RECORD_SCRIPT, len(keys), *keys, *args),
            ("WAIT", self.replica_acks, self.replica_timeout_ms),
        ]
        try:
            result, acked = await on_one_connection(self.client, keys[0], commands)
        except (RedisConnectionError, MovedError):
            if self.cluster:
                await self.client.aclose()  # the next command learns the slots anew
            raise RedisConnectionError("the master of the batch's slot moved or went away") from None
        if int(result[0]) >= 0 and int(acked) < self.replica_acks:
            raise ReplicasBehind(
                f"written on the master, but {acked} of the {self.replica_acks} replicas required confirmed it "
                f"within {self.replica_timeout_ms} ms"
            )
        return result

    async def read(self, user_id: str, now_ms: int, recent: int, dismissed: int, served: int) -> LiveState:
        """A user's live state in one round trip: the newest `recent` interactions (oldest first),
        `dismissed` dismissals and `served` items served within the TTL (newest first); 0 = none."""
        keys = [self.layout.user_key(user_id, group) for group in (RECENT, DISMISSED, SERVED)]
        args = [recent, dismissed, served, now_ms - self.retention.served_ttl_ms]
        recent_items, dismissed_items, served_items = await _once_more_if_stale(
            lambda: self._read(keys=keys, args=args)
        )
        # ZRANGE with a start of -0 would read everything: an empty part is asked as none.
        return LiveState(recent_items if recent else [], dismissed_items if dismissed else [], served_items)

    async def record_served(self, served: Sequence[Served], now_ms: int) -> tuple[int, int]:
        """What the gateway served, one round trip per log partition: each user's served set is
        updated (capped and expiring), and each answer is one log entry (its items joined by
        newlines, which no item id may contain) while the log has room. (answers logged, answers
        left out of the log)."""
        parts = self._partitions([s.user_id for s in served])
        await self._connected()
        done = await asyncio.gather(*(self._served_part([served[row] for row in rows], partition, now_ms)
                                      for partition, rows in parts))  # fmt: skip
        return sum(logged for logged, _ in done), sum(left_out for _, left_out in done)

    async def _served_part(self, served: Sequence[Served], partition: int, now_ms: int) -> tuple[int, int]:
        r, log = self.retention, self.layout.log(partition)
        keys = [log.stream, log.seq, log.exported, log.config]
        keys += [self.layout.user_key(s.user_id, SERVED) for s in served]
        args: list[str | int] = [now_ms, r.served_ttl_ms, r.served_cap]
        for s in served:
            args += [s.client, s.user_id, "\n".join(s.items), s.request_id]
        logged, left_out = await _once_more_if_stale(lambda: self._served(keys=keys, args=args))
        return int(logged), int(left_out)

    async def _connected(self) -> None:
        """A cluster client learns the slots before commands run side by side: several first
        commands at once on an unready client broke each other's connections (redis-py 8.1)."""
        if self.cluster:
            await _once_more_if_stale(self.client.initialize)

    def _partitions(self, users: Sequence[str]) -> list[tuple[int, list[int]]]:
        """(partition, the rows of `users` in it), in the order partitions first appear."""
        rows: dict[int, list[int]] = {}
        for row, user in enumerate(users):
            rows.setdefault(self.layout.partition(user), []).append(row)
        return list(rows.items())

    async def publish_bounds(self) -> None:
        """Write this writer's log bounds where every writer reads them (the events service does)."""
        b = self.bounds
        mapping = {"max_events": b.max_events, "retention_ms": b.retention_ms}

        async def publish() -> None:
            pipe = self.client.pipeline(transaction=False)
            for partition in range(self.layout.partitions):
                pipe.hset(self.layout.log(partition).config, mapping=mapping)
            await pipe.execute()

        await _once_more_if_stale(publish)

    async def log_status(self) -> LogStatus:
        """The whole log's, every partition summed."""

        async def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for partition in range(self.layout.partitions):
                log = self.layout.log(partition)
                pipe.xlen(log.stream)
                pipe.get(log.seq)
                pipe.hget(log.exported, "seq")
            return await pipe.execute()

        answers = await _once_more_if_stale(read)
        entries = sum(int(n) for n in answers[0::3])
        last_seq, exported_seq = (sum(int(n or 0) for n in answers[k::3]) for k in (1, 2))
        return LogStatus(entries, last_seq - exported_seq, last_seq, exported_seq)

    async def memory(self) -> tuple[int, int]:
        """(used_memory, maxmemory) in bytes; maxmemory 0 = no limit set. On a cluster, the master
        nearest its limit's: the first whose writes would fail."""
        if not self.cluster:
            info = await _once_more_if_stale(lambda: self.client.info("memory"))
            return int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
        per_node = await _once_more_if_stale(lambda: self.client.info("memory", target_nodes=RedisCluster.PRIMARIES))
        pairs = [(int(i.get("used_memory", 0)), int(i.get("maxmemory", 0))) for i in per_node.values()]
        return max(pairs, key=lambda pair: pair[0] / pair[1] if pair[1] else pair[0] / 2**62)

    async def ping(self) -> None:
        await _once_more_if_stale(self.client.ping)

    async def durability(self) -> str | None:
        """None when every acknowledged write is fsynced (appendonly yes, appendfsync always) on
        every node (a replica becomes the master one day), else what is configured instead;
        'unknown' where CONFIG is not allowed."""
        try:
            if self.cluster:
                nodes = await self.client.config_get("append*", target_nodes=RedisCluster.ALL_NODES)
            else:
                nodes = {"": await self.client.config_get("append*")}
        except ResponseError:
            return "unknown (CONFIG GET is not allowed on this server)"
        except RedisError as exc:
            raise StoreError(_describe(exc)) from exc
        for node, config in sorted(nodes.items()):
            if config.get("appendonly") != "yes" or config.get("appendfsync") != "always":
                where = f"{node}: " if node else ""
                return f"{where}appendonly={config.get('appendonly')}, appendfsync={config.get('appendfsync')}"
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
        except AttributeError as exc:
            if not _closed_under_us(exc):
                raise
            return await command()
    except RedisError as exc:
        raise StoreError(_describe(exc)) from exc
    except AttributeError as exc:
        if not _closed_under_us(exc):
            raise
        raise StoreError("the connection was closed while the command used it") from exc


def _closed_under_us(exc: AttributeError) -> bool:
    """redis-py 8.1's cluster client closes a node's idle connections after a failover while another
    command may have just taken one of them: that command then writes to a stream already set to
    None. Nothing was sent on it, so it is a lost connection like any other."""
    return exc.obj is None and exc.name in {"writelines", "drain", "write", "read", "readline", "readexactly"}


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
