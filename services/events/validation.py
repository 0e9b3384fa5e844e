"""Checks on a batch of events: the first bad field refuses the whole batch, naming the event."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence

from funnel.live.schema import EVENT_TYPES, STATE_OF_TYPE
from funnel.live.store import EventRecord
from funnel.runtime.errors import AlreadyExists, InvalidArgument
from funnel.v1 import events_pb2
from funnel.validation import check_id

# Events may be old (a backfill, a replay of history): only a time before 1970 is refused.
_EARLIEST_S = 1


def check_events(events: Sequence[events_pb2.Event], max_events: int, max_skew_s: float) -> list[EventRecord]:
    if not events:
        raise InvalidArgument("events must not be empty")
    if len(events) > max_events:
        raise InvalidArgument(f"events: {len(events)} in one call, at most {max_events} allowed")
    latest_s = time.time() + max_skew_s
    return [_check_event(n, event, latest_s) for n, event in enumerate(events)]


def drop_repeats(records: list[EventRecord]) -> tuple[list[EventRecord], int]:
    """The batch with each (user, event id) once, and how many repeats were dropped. A repeat is a
    duplicate when its payload is the same; with another payload the batch is refused."""
    first: dict[tuple[str, str], EventRecord] = {}
    unique: list[EventRecord] = []
    for n, record in enumerate(records):
        earlier = first.setdefault((record.user_id, record.event_id), record)
        if earlier is record:
            unique.append(record)
        elif earlier.digest != record.digest:
            raise AlreadyExists(
                f"events[{n}].event_id repeats events[{records.index(earlier)}]'s for the same user with another "
                "payload; nothing in this batch was recorded"
            )
    return unique, len(records) - len(unique)


def _check_event(n: int, event: events_pb2.Event, latest_s: float) -> EventRecord:
    where = f"events[{n}]"
    check_id(event.event_id, f"{where}.event_id")
    check_id(event.user_id, f"{where}.user_id")
    check_id(event.item_id, f"{where}.item_id")
    kind = EVENT_TYPES.get(event.type)
    if kind is None:
        raise InvalidArgument(f"{where}.type must be one of {', '.join(EVENT_TYPES.values())} (got {event.type})")
    if not event.HasField("timestamp"):
        raise InvalidArgument(f"{where}.timestamp is required")
    seconds, nanos = event.timestamp.seconds, event.timestamp.nanos
    if not 0 <= nanos < 1_000_000_000:
        raise InvalidArgument(f"{where}.timestamp.nanos must be in [0, 1e9)")
    if seconds < _EARLIEST_S or seconds > latest_s:
        raise InvalidArgument(f"{where}.timestamp must be between 1970 and now (got {seconds} s)")
    if not math.isfinite(event.value):
        raise InvalidArgument(f"{where}.value must be a finite number")
    timestamp_ms = seconds * 1000 + nanos // 1_000_000
    payload = "\x1f".join((event.item_id, kind, str(timestamp_ms), repr(event.value)))
    return EventRecord(
        event_id=event.event_id,
        user_id=event.user_id,
        item_id=event.item_id,
        kind=kind,
        group=STATE_OF_TYPE[kind],
        timestamp_ms=timestamp_ms,
        value=event.value,
        digest=hashlib.blake2b(payload.encode(), digest_size=16).hexdigest(),
    )
