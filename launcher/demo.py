"""Sends a few requests through the gateway and prints the answers as readable tables.

python -m launcher.demo --target 127.0.0.1:50051 --artifacts artifacts
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from funnel.artifacts.catalog import MATURITY_NAMES, Catalog
from funnel.artifacts.store import latest_version
from funnel.v1 import common_pb2, recommender_pb2, recommender_pb2_grpc

STATUS = {v: k.removeprefix("STAGE_STATUS_") for k, v in common_pb2.StageStatus.items()}


def scenarios(user_ids: list[str]) -> list[tuple[str, recommender_pb2.RecommendRequest]]:
    known = user_ids[1]
    return [
        (
            f"known user {known}, US, web",
            recommender_pb2.RecommendRequest(
                user_id=known, num_results=8, context=common_pb2.Context(country="US", device="web")
            ),
        ),
        (
            "same user in DE with a G maturity ceiling, excluding the first answer's top item",
            None,  # filled in after the first answer
        ),
        (
            "a user the system has never seen (cold start)",
            recommender_pb2.RecommendRequest(
                user_id="new-visitor-42", num_results=5, context=common_pb2.Context(country="GB", device="ios")
            ),
        ),
    ]


def print_answer(
    title: str, response: recommender_pb2.RecommendResponse, elapsed_ms: float, catalog: Catalog | None
) -> None:
    print(f"\n=== {title}")
    print(f"request_id {response.request_id}   end-to-end {elapsed_ms:.1f} ms   degraded={response.degraded}")
    print(f"  {'#':>2}  {'item':<10} {'score':>7}  {'source':<17}{'category':<14}{'provider':<16}{'rating':<6}")
    for rank, item in enumerate(response.items, 1):
        category = provider = rating = ""
        if catalog is not None and (row := catalog.index.row(item.item_id)) >= 0:
            category = catalog.category_names[catalog.category[row]]
            provider = catalog.provider_names[catalog.provider[row]]
            rating = MATURITY_NAMES[catalog.maturity[row]]
        print(
            f"  {rank:>2}  {item.item_id:<10} {item.score:>7.4f}  {item.source:<17}"
            f"{category:<14}{provider:<16}{rating:<6}"
        )
    print(f"  {'stage':<10} {'status':<9} {'ms':>7} {'in':>5} {'out':>5}  version / message")
    for stage in response.stages:
        note = stage.version + (f"  ({stage.message})" if stage.message else "")
        print(
            f"  {stage.stage:<10} {STATUS[stage.status]:<9} {stage.latency_ms:>7.1f} "
            f"{stage.items_in:>5} {stage.items_out:>5}  {note}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--timeout", type=float, default=1.0, help="client deadline in seconds")
    parser.add_argument("--events-target", default="127.0.0.1:50091", help="the Events service (live events)")
    parser.add_argument("--token-file", type=Path, help="the client's bearer token (make up's: <run-dir>/credentials)")
    args = parser.parse_args(argv)
    token = args.token_file.read_text().strip() if args.token_file else None

    bundle = latest_version(args.artifacts / "bundles")
    catalog = Catalog.load(bundle) if bundle else None
    user_ids = [f"u{n:07d}" for n in range(3)]
    if bundle is not None:
        from funnel.artifacts.catalog import Users

        user_ids = [str(u) for u in Users.load(bundle).user_ids[:3]]

    with authenticated(grpc.insecure_channel(args.target), token) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        stub.Recommend(recommender_pb2.RecommendRequest(user_id=user_ids[0], num_results=1), timeout=5)  # warm-up
        first: recommender_pb2.RecommendResponse | None = None
        for title, request in scenarios(user_ids):
            if request is None and first is not None:
                request = recommender_pb2.RecommendRequest(
                    user_id=user_ids[1],
                    num_results=8,
                    debug=True,
                    exclude_item_ids=[first.items[0].item_id] if first.items else [],
                    context=common_pb2.Context(country="DE", max_maturity=common_pb2.MATURITY_RATING_G),
                )
            started = time.perf_counter()
            try:
                response = stub.Recommend(request, timeout=args.timeout)
            except grpc.RpcError as exc:
                print(f"\n=== {title}\n  failed: {exc.code().name}: {exc.details()}")
                return 1
            print_answer(title, response, (time.perf_counter() - started) * 1000, catalog)
            if request.debug and response.items:
                print("  reasons for #1: " + " | ".join(response.items[0].reasons))
            first = first or response
        if catalog is not None:
            return live_events(stub, args.events_target, catalog, args.timeout, token)
    return 0


class _Bearer(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self.metadata = (("authorization", f"Bearer {token}"),)

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(details._replace(metadata=(*(details.metadata or ()), *self.metadata)), request)


def authenticated(channel: grpc.Channel, token: str | None) -> grpc.Channel:
    """`channel`, every call on it carrying the client's token when there is one."""
    return grpc.intercept_channel(channel, _Bearer(token)) if token else channel


def live_events(
    stub: recommender_pb2_grpc.RecommenderStub, target: str, catalog: Catalog, timeout: float, token: str | None
) -> int:
    """A visitor views five items of one category; their very next answer follows."""
    from google.protobuf.timestamp_pb2 import Timestamp

    from funnel.v1 import events_pb2, events_pb2_grpc

    user = f"visitor-{time.strftime('%H%M%S')}"  # new on every run: the store remembers earlier runs' visitors
    category = int(np.bincount(catalog.category).argsort()[len(catalog.category_names) // 2])
    members = np.flatnonzero(catalog.category == category)
    viewed = [str(catalog.item_ids[row]) for row in members[np.argsort(-catalog.popularity[members])][:5]]
    now = Timestamp()
    now.GetCurrentTime()
    events = [
        events_pb2.Event(
            event_id=f"demo-{user}-{time.time_ns()}-{n}",
            user_id=user,
            item_id=item,
            type=events_pb2.EVENT_TYPE_VIEW,
            timestamp=now,
        )
        for n, item in enumerate(viewed)
    ]
    request = recommender_pb2.RecommendRequest(user_id=user, num_results=8, context=common_pb2.Context(country="US"))
    with authenticated(grpc.insecure_channel(target), token) as channel:
        try:
            before = stub.Recommend(request, timeout=timeout)
            reply = events_pb2_grpc.EventsStub(channel).RecordEvents(
                events_pb2.RecordEventsRequest(events=events), timeout=timeout
            )
        except grpc.RpcError as exc:
            print(f"\n=== live events: skipped ({exc.code().name}: {exc.details()})")
            return 0
        started = time.perf_counter()
        after = stub.Recommend(request, timeout=timeout)
    name = catalog.category_names[category]

    def share(response: recommender_pb2.RecommendResponse) -> str:
        rows = catalog.index.rows([item.item_id for item in response.items])
        return f"{np.mean(catalog.category[rows] == category):.0%}"

    print(f"\n=== {user} views 5 items of {name} (RecordEvents: {reply.recorded} recorded); the next answer")
    print_answer(f"{user} after the views: {share(after)} {name}, was {share(before)}", after,
                 (time.perf_counter() - started) * 1000, catalog)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
