"""What the store holds and under which keys: one place, read by every writer and reader.

Per user (hash-tagged by user id, so one user's keys share a Redis Cluster slot); each expires
after the user's inactivity (`user_ttl`), so a user who left costs nothing:
- `funnel:u:{<user>}:recent`    sorted set item -> latest event time (ms): positive interactions,
  capped to the newest `recent_cap`;
- `funnel:u:{<user>}:dismissed` sorted set item -> time: never served again, capped;
- `funnel:u:{<user>}:served`    sorted set item -> time served: left out for `served_ttl`, capped
  to `served_cap`, the key itself expires after it;
- `funnel:u:{<user>}:event:<client>:<event_id>` an idempotency key: the digest of the event's
  payload, for as long as a client may retry (`idempotency_ttl`). Scoped by user and client, so
  no one's id can shadow another's event;
- `funnel:u:{<user>}:quota:<window>` the events the user sent in this window (`user_window`),
  held under `user_events_per_window`.
The log: the stream `funnel:events` (every event and impression, with the client that wrote it and a
sequence number), `funnel:log:seq` (the last sequence number given), `funnel:log:exported` (how far
the export got: stream id and sequence number) and `funnel:log:config` (its bound and retention,
written by the events service, read by every writer: set in one place). Nothing unexported is ever
trimmed.

On a Redis Cluster (`Layout.cluster()`) the log is partitioned as a Kafka topic is: 64 partitions,
a user's events always in the same one (CRC-32 of the user id), each partition its own stream,
sequence, checkpoint and bounds. Every key of a partition, its users' keys included, carries the
partition's hash tag (`funnel:{p7}:events`, `funnel:{p7}:u:<user>:recent`), so a script that
records a user's events and appends them to the log touches one slot, as Redis Cluster requires
of a script. Hash-tagging by user alone would not do: the log is shared by all users.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from funnel.live.kinds import DISMISSED, INTERACTION_TYPES, RECENT, SERVED, STATE_OF_TYPE
from funnel.runtime.config import setting
from funnel.v1 import events_pb2

__all__ = ["DISMISSED", "INTERACTION_TYPES", "RECENT", "SERVED", "STATE_OF_TYPE"]

STREAM = "funnel:events"
EVENT_TYPES = {
    value: name.removeprefix("EVENT_TYPE_").lower()
    for name, value in events_pb2.EventType.items()
    if value != events_pb2.EVENT_TYPE_UNSPECIFIED
}
# Every event goes to the log whatever its group; STATE_OF_TYPE says what else it does.
assert set(STATE_OF_TYPE) == set(EVENT_TYPES.values()), "every event type has a state group"


def store_url_problem(url: str) -> str | None:
    """A settings check: the online store's address is a Redis URL (empty passes: no store)."""
    if not url:
        return None
    parsed = urlsplit(url)
    if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
        return "must be a redis://host:port/db (or rediss://) URL"
    try:
        parsed.port  # noqa: B018 - parsing it is the check
    except ValueError:
        return "has a port that is not a number"
    return None


def password_file_setting() -> Any:
    """The setting of every process that logs into the store as its own user (funnel/live/acl.py)."""
    return setting(
        "", help="file holding the password of the store's user named in state_store (a mounted Secret); empty: none"
    )


def cluster_setting() -> Any:
    """The setting of every process that reads or writes the store: one Redis, or a Redis Cluster."""
    return setting(
        False,
        help="state_store is any node of a Redis Cluster: the client finds the others, and the event log is "
        "partitioned across them (64 partitions by user); every reader and writer of one store must agree",
    )


def user_key(user_id: str, group: str) -> str:
    return f"funnel:u:{{{user_id}}}:{group}"


LOG_SEQ = "funnel:log:seq"
LOG_EXPORTED = "funnel:log:exported"
LOG_CONFIG = "funnel:log:config"


def event_key(user_id: str, client: str, event_id: str) -> str:
    return f"funnel:u:{{{user_id}}}:event:{client}:{event_id}"


# Enough to spread over 64 masters; each export reads every partition once.
CLUSTER_PARTITIONS = 64


@dataclass(frozen=True)
class LogKeys:
    """One partition of the log: its stream, sequence, export checkpoint and bounds."""

    stream: str
    seq: str
    exported: str
    config: str


@dataclass(frozen=True)
class Layout:
    """Which key holds what: one Redis (`partitions` 1, the names above) or a cluster's partitions."""

    partitions: int = 1

    @classmethod
    def cluster(cls) -> Layout:
        return cls(CLUSTER_PARTITIONS)

    def partition(self, user_id: str) -> int:
        return zlib.crc32(user_id.encode()) % self.partitions if self.partitions > 1 else 0

    def log(self, partition: int) -> LogKeys:
        if self.partitions == 1:
            return LogKeys(STREAM, LOG_SEQ, LOG_EXPORTED, LOG_CONFIG)
        tag = f"funnel:{{p{partition}}}"
        return LogKeys(f"{tag}:events", f"{tag}:log:seq", f"{tag}:log:exported", f"{tag}:log:config")

    def user_key(self, user_id: str, group: str) -> str:
        if self.partitions == 1:
            return user_key(user_id, group)
        return f"funnel:{{p{self.partition(user_id)}}}:u:{user_id}:{group}"

    def event_key(self, user_id: str, client: str, event_id: str) -> str:
        if self.partitions == 1:
            return event_key(user_id, client, event_id)
        return f"funnel:{{p{self.partition(user_id)}}}:u:{user_id}:event:{client}:{event_id}"


@dataclass(frozen=True)
class Retention:
    """How much live state is kept per user (writers trim to it; readers read within it)."""

    recent_cap: int = 200
    dismissed_cap: int = 1000
    served_ttl_ms: int = 30 * 60 * 1000
    served_cap: int = 1000  # items one user's served set holds at most: one caller cannot grow it without end
    user_ttl_s: int = 90 * 24 * 3600  # a user's state is dropped after this long without an event
    idempotency_ttl_s: int = 24 * 3600  # how long a client may retry a batch and have it recognised
    user_events_per_window: int = 1000  # events one user may send in a window (0: no cap)
    user_window_s: int = 60


@dataclass(frozen=True)
class LogBounds:
    """The event log's bound and retention, set once (by the events service) for every writer.

    The log never drops an event that was not exported: an exported entry is trimmed once it is
    older than `retention_ms`, sooner when the log is full; when `max_events` unexported entries
    are waiting, writes are refused (events) or left out of the log (impressions) until an export
    runs."""

    max_events: int = 10_000_000
    retention_ms: int = 24 * 3600 * 1000


@dataclass(frozen=True)
class ReadLimits:
    """How much of a user's live state one request reads by default (the gateway's
    `--live-recent-items`, `--live-dismissed-items` and `--served-filter-items`)."""

    recent: int = 50
    dismissed: int = 500
    served: int = 300


@dataclass
class LiveState:
    """One user's live state as the gateway read it."""

    recent: list[str] = field(default_factory=list)  # oldest first, newest last
    dismissed: list[str] = field(default_factory=list)  # newest first
    served: list[str] = field(default_factory=list)  # newest first, within the TTL
