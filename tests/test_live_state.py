"""Live data against real processes and a real Redis: an event recorded now shapes the next answer,
dismissed and served items stay out, replays change nothing, bad events are refused by name."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from funnel.artifacts.catalog import Catalog
from funnel.live.schema import Retention, user_key
from funnel.live.store import LiveStore, connect
from funnel.v1 import common_pb2, events_pb2
from funnel.v1.recommender_pb2 import RecommendRequest as Request
from services.gateway.impressions import ImpressionRecorder
from tests.live import (
    event,
    events_stub,
    served_items,
    store,
    stream_entries,
    stream_event_ids,
    wait_until,
)

VIEW, DISMISS = events_pb2.EVENT_TYPE_VIEW, events_pb2.EVENT_TYPE_DISMISS


def stage(reply, name: str) -> common_pb2.StageReport:
    return next(report for report in reply.stages if report.stage == name)


def category_share(catalog: Catalog, items, category: int) -> float:
    rows = catalog.index.rows([item.item_id for item in items])
    return float(np.mean(catalog.category[rows] == category))


def test_views_recorded_now_make_the_next_answer_about_their_category(stack, gateway, catalog):
    # A category that is a small part of the catalog, so a cold user's answer barely shows it.
    category = 3
    members = np.flatnonzero(catalog.category == category)
    viewed = [str(catalog.item_ids[row]) for row in members[np.argsort(-catalog.popularity[members])][:8]]
    user = "live-cold-category"
    before = gateway.Recommend(Request(user_id=user, num_results=10), timeout=5)
    assert stage(before, "live_state").status == common_pb2.STAGE_STATUS_OK

    reply = events_stub(stack).RecordEvents(
        events_pb2.RecordEventsRequest(events=[event(user, item, VIEW) for item in viewed]), timeout=5
    )
    assert (reply.recorded, reply.duplicates) == (len(viewed), 0)

    after = gateway.Recommend(Request(user_id=user, num_results=10), timeout=5)
    assert not after.degraded
    assert stage(after, "live_state").items_out >= len(viewed)
    share_before, share_after = (
        category_share(catalog, before.items, category),
        category_share(catalog, after.items, category),
    )
    assert share_after >= 0.5, f"category share {share_after:.0%} after 8 views (before: {share_before:.0%})"
    assert share_after >= share_before + 0.3
    assert not {item.item_id for item in after.items} & set(viewed), "what the user saw is not served again"


def test_a_dismissed_item_never_comes_back(stack, gateway):
    # Cold users get the same answer; the item one of them dismisses before asking is the top of it.
    top = gateway.Recommend(Request(user_id="live-cold-a", num_results=10), timeout=5).items[0].item_id
    again = gateway.Recommend(Request(user_id="live-cold-b", num_results=10), timeout=5)
    assert top in {item.item_id for item in again.items}, "without the dismissal the item is served"

    user = "live-cold-dismisser"
    events_stub(stack).RecordEvents(events_pb2.RecordEventsRequest(events=[event(user, top, DISMISS)]), timeout=5)
    for _ in range(5):
        reply = gateway.Recommend(Request(user_id=user, num_results=20), timeout=5)
        assert not reply.degraded
        assert top not in {item.item_id for item in reply.items}


def test_what_was_served_is_recorded_and_left_out_of_the_next_answer(stack, gateway):
    user = "live-served"
    client = store(stack)
    first = [item.item_id for item in gateway.Recommend(Request(user_id=user, num_results=10), timeout=5).items]
    assert wait_until(lambda: set(served_items(client, user)) == set(first)), "impressions recorded off the path"
    assert client.pttl(user_key(user, "served")) > 0, "served items expire"
    second = [item.item_id for item in gateway.Recommend(Request(user_id=user, num_results=10), timeout=5).items]
    assert len(second) == 10
    assert not set(first) & set(second), "each answer shows something new"


def test_replaying_the_same_event_ids_changes_nothing(stack):
    stub, client = events_stub(stack), store(stack)
    user = "live-replay"
    batch = [event(user, f"i000{n:04d}", VIEW) for n in range(100, 120)]
    first = stub.RecordEvents(events_pb2.RecordEventsRequest(events=batch), timeout=5)
    state = client.zrange(user_key(user, "recent"), 0, -1, withscores=True)
    entries = stream_entries(client, user)
    second = stub.RecordEvents(events_pb2.RecordEventsRequest(events=batch), timeout=5)
    assert (first.recorded, first.duplicates) == (20, 0)
    assert (second.recorded, second.duplicates) == (0, 20)
    assert client.zrange(user_key(user, "recent"), 0, -1, withscores=True) == state
    assert stream_entries(client, user) == entries
    twice = stub.RecordEvents(events_pb2.RecordEventsRequest(events=[batch[0], event(user, "x", event_id="dup"),
                                                                      event(user, "x", event_id="dup")]))  # fmt: skip
    assert (twice.recorded, twice.duplicates) == (1, 2), "a repeat inside one batch counts as a duplicate"


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"event_id": ""}, "events[1].event_id"),
        ({"user_id": "x" * 200}, "events[1].user_id"),
        ({"item_id": "a\nb"}, "events[1].item_id"),
        ({"kind": 0}, "events[1].type"),
        ({"kind": 42}, "events[1].type"),
        ({"timestamp": None}, "events[1].timestamp"),
        ({"seconds": -10}, "events[1].timestamp"),
        ({"seconds": 4_000_000_000}, "events[1].timestamp"),
        ({"value": float("nan")}, "events[1].value"),
        ({"value": float("inf")}, "events[1].value"),
    ],
)
def test_a_bad_event_refuses_the_batch_by_name_and_writes_nothing(stack, bad, field):
    from google.protobuf.timestamp_pb2 import Timestamp

    client = store(stack)
    good = event("live-bad", "i0000100")
    wrong = event("live-bad", "i0000101")
    if "kind" in bad:
        wrong.type = bad["kind"]
    elif "timestamp" in bad:
        wrong.ClearField("timestamp")
    elif "seconds" in bad:
        wrong.timestamp.CopyFrom(Timestamp(seconds=bad["seconds"]))
    else:
        for name, value in bad.items():
            setattr(wrong, name, value)
    entries, state = stream_entries(client, "live-bad"), client.zrange(user_key("live-bad", "recent"), 0, -1)
    with pytest.raises(grpc.RpcError) as error:
        events_stub(stack).RecordEvents(events_pb2.RecordEventsRequest(events=[good, wrong]), timeout=5)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in error.value.details()
    assert stream_entries(client, "live-bad") == entries
    assert client.zrange(user_key("live-bad", "recent"), 0, -1) == state
    assert good.event_id not in stream_event_ids(client)


def test_an_empty_or_oversized_batch_is_refused(stack):
    stub = events_stub(stack)
    for batch, message in [([], "must not be empty"), ([event("u", "i")] * 1001, "at most 1000")]:
        with pytest.raises(grpc.RpcError) as error:
            stub.RecordEvents(events_pb2.RecordEventsRequest(events=batch), timeout=5)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in error.value.details()


def test_unknown_items_are_recorded_and_ignored_by_serving(stack, gateway):
    user = "live-unknown-items"
    reply = events_stub(stack).RecordEvents(
        events_pb2.RecordEventsRequest(events=[event(user, "not-in-any-bundle", VIEW)]), timeout=5
    )
    assert reply.recorded == 1
    answer = gateway.Recommend(Request(user_id=user, num_results=5), timeout=5)
    assert len(answer.items) == 5 and not answer.degraded


def test_the_event_log_exports_to_the_file_the_build_reads(stack, gateway, tmp_path):
    import csv

    from training.export_events import export
    from training.own_data import load_files

    user = "live-export"
    recorded = [event(user, "i0000100", VIEW), event(user, "i0000101", DISMISS)]
    events_stub(stack).RecordEvents(events_pb2.RecordEventsRequest(events=recorded), timeout=5)
    served = [item.item_id for item in gateway.Recommend(Request(user_id=user, num_results=3), timeout=5).items]
    client = store(stack)
    assert wait_until(lambda: len(client.zrange(user_key(user, "served"), 0, -1)) == 3)

    exported = export(client, tmp_path / "all.csv", commit=False)
    rows = [row for row in csv.DictReader((tmp_path / "all.csv").open()) if row["user_id"] == user]
    assert {(row["item_id"], row["event_type"]) for row in rows} == {
        ("i0000100", "view"),
        ("i0000101", "dismiss"),
        *((item, "impression") for item in served),
    }
    assert exported.rows >= len(rows) and exported.last_id != "-"
    assert load_files(tmp_path / "all.csv").interactions is not None, "the build reads it"
    more = export(client, tmp_path / "since.csv", after=exported.last_id)
    assert more.rows == 0, "--after exports only what came since"


class CountingStore(LiveStore):
    """The real store, counting the answers each impressions write carries."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.writes: list[int] = []

    async def record_served(self, served, now_ms: int) -> tuple[int, int]:
        self.writes.append(len(served))
        return await super().record_served(served, now_ms)


@pytest.mark.parametrize(("linger_s", "writes"), [(0.3, [5]), (0.0, [1, 1, 1, 1, 1])])
def test_answers_given_while_the_recorder_lingers_share_one_store_write(stack, linger_s, writes):
    users = [f"linger-{linger_s}-{n}" for n in range(5)]

    async def serve_five() -> list[int]:
        live = CountingStore(connect(stack.redis.url, timeout_s=1.0), Retention())
        recorder = ImpressionRecorder(live, capacity=100, linger_s=linger_s)
        recorder.start()
        for n, user in enumerate(users):
            recorder.offer(user, [f"item-{n}", "item-x"], f"request-{n}", "test")
            await asyncio.sleep(0.02)  # answers 20 ms apart: 50 requests a second
        await recorder.stop()
        await live.close()
        return live.writes

    assert asyncio.run(serve_five()) == writes
    client = store(stack)
    for n, user in enumerate(users):
        assert set(served_items(client, user)) == {f"item-{n}", "item-x"}, "every answer recorded, none lost"
