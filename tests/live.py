"""Helpers for the live-state tests: events, the events stub, and a look into the real Redis."""

from __future__ import annotations

import itertools
import time

import grpc
import pytest
import redis
from google.protobuf.timestamp_pb2 import Timestamp

from funnel.live.schema import STREAM, user_key
from funnel.v1 import events_pb2, events_pb2_grpc
from launcher.stack import Stack

_ids = itertools.count()


def event(
    user: str, item: str, kind: int = events_pb2.EVENT_TYPE_VIEW, event_id: str = "", **fields
) -> events_pb2.Event:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return events_pb2.Event(
        event_id=event_id or f"test-{time.monotonic_ns()}-{next(_ids)}",
        user_id=user,
        item_id=item,
        type=kind,
        timestamp=fields.pop("timestamp", stamp),
        **fields,
    )


def events_stub(stack: Stack) -> events_pb2_grpc.EventsStub:
    return events_pb2_grpc.EventsStub(grpc.insecure_channel(stack.address("events")))


def record_events(address: str, events: list[events_pb2.Event], metadata=()) -> events_pb2.RecordEventsResponse:
    """One RecordEvents call to the events service at `address`, with `metadata` (a token, say)."""
    with grpc.insecure_channel(address) as channel:
        return events_pb2_grpc.EventsStub(channel).RecordEvents(
            events_pb2.RecordEventsRequest(events=events), timeout=5, metadata=metadata
        )


def refused(call) -> grpc.RpcError:
    """The error `call()` raised (it must raise one)."""
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value


def store(stack: Stack) -> redis.Redis:
    assert stack.redis is not None
    return redis.Redis.from_url(stack.redis.url, decode_responses=True)


def stream_event_ids(client: redis.Redis) -> set[str]:
    return {fields["event_id"] for _, fields in client.xrange(STREAM)}


def stream_entries(client: redis.Redis, user: str) -> int:
    """The user's entries in the event log: other writers (the gateway's impressions, recorded off
    the request path a little after each answer) may append to the log at any moment."""
    return sum(fields["user_id"] == user for _, fields in client.xrange(STREAM))


def served_items(client: redis.Redis, user: str) -> list[str]:
    return client.zrange(user_key(user, "served"), 0, -1)


def wait_until(condition, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())
