"""What the funnel knows a user has done: the served bundle holds every interaction, and nothing a
user interacted with (stored history or this session) is ever served again."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from evaluation.replay import HeldOut, NotAnEvaluationBundle
from funnel.artifacts.catalog import COUNTRIES, Users
from funnel.artifacts.store import latest_version, read_manifest
from funnel.v1 import common_pb2, recommender_pb2, recommender_pb2_grpc
from tests.fakes import Fault, faulty_reranking, fixed_retrieval
from training.build import build
from training.dataset import chronological
from training.fit import FitConfig
from training.protocol import split
from training.ranker import RankerConfig
from training.synthetic import SIZES, generate


@pytest.fixture(scope="module")
def serving_bundle(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("serving")
    # What the bundle holds is asked here, not how well it ranks: one ranker epoch (of up to 30).
    return build(out, "tiny", seed=7, epochs=1, config=FitConfig(ranker=RankerConfig(max_epochs=1)))


def test_the_bundle_served_after_evaluation_holds_every_interaction_held_out_ones_included(serving_bundle):
    data = generate(SIZES["tiny"], seed=7)
    _, held_out = split(data.interactions)
    users = Users.load(serving_bundle)
    assert len(users.history_items) == len(data.interactions), "every interaction is history"
    for user, items in held_out.items_by_user().items():
        history = users.history(user)
        assert np.array_equal(history[-len(items) :], items), "the held-out ones are the latest of the history"
    order = chronological(data.interactions)
    first = data.interactions.user[order] == 0
    assert users.history(0).tolist() == data.interactions.item[order][first].tolist()
    manifest = read_manifest(serving_bundle)
    assert manifest["purpose"] == "serving"
    assert manifest["protocol"]["ties"] == "hash", "the tie order the split was made with is recorded"
    assert manifest["served_history"]["interactions"] == len(data.interactions)
    assert not (serving_bundle / "holdout_users.npy").exists()


def test_replaying_a_serving_bundle_is_refused_because_it_would_leak(serving_bundle):
    with pytest.raises(NotAnEvaluationBundle, match="serving bundle"):
        HeldOut(serving_bundle, max_users=10, seed=7)


def test_the_evaluation_bundle_keeps_the_held_out_interactions_out_of_its_history(artifacts):
    bundle = latest_version(artifacts / "bundles")
    users = Users.load(bundle)
    held_users, held_items = np.load(bundle / "holdout_users.npy"), np.load(bundle / "holdout_items.npy")
    assert len(held_users) > 0
    assert not any(item in set(users.history(u).tolist()) for u, item in zip(held_users, held_items, strict=True))
    assert read_manifest(bundle)["purpose"] == "evaluation"


def request(users: Users, user: int, session: list[str] = ()) -> recommender_pb2.RecommendRequest:
    return recommender_pb2.RecommendRequest(
        user_id=str(users.user_ids[user]), num_results=50, recent_item_ids=session,
        context=common_pb2.Context(country=COUNTRIES[int(users.country[user])]),
    )  # fmt: skip


def test_no_item_the_user_interacted_with_is_served_stored_or_from_this_session(gateway, artifacts, catalog):
    users = Users.load(latest_version(artifacts / "bundles"))
    served = 0
    for user in range(0, len(users), 6):
        history = set(catalog.item_ids[users.history(user)].tolist())
        first = gateway.Recommend(request(users, user), timeout=5)
        ids = [item.item_id for item in first.items]
        assert not history & set(ids), f"user {user} was served items from their history"
        session = ids[:5]  # they watch the first five now
        again = gateway.Recommend(request(users, user, session), timeout=5)
        assert not (history | set(session)) & {item.item_id for item in again.items}
        served += len(ids)
    assert served > 50 * 90, "the check looked at full answers"


def test_the_gateway_safety_net_leaves_out_consumed_items_too(stack, artifacts, catalog, start_gateway):
    users = Users.load(latest_version(artifacts / "bundles"))
    user = 3
    history = [str(i) for i in catalog.item_ids[users.history(user)]]
    others = [str(i) for i in catalog.item_ids if str(i) not in set(history)][:200]
    session = others[:2]
    # A retrieval that answers with the user's own history first: only the safety net stands between
    # those items and the answer once re-ranking fails.
    with fixed_retrieval(history + others) as retrieval, faulty_reranking(Fault(code=grpc.StatusCode.INTERNAL)) as rr:
        gateway = start_gateway(retrieval, stack.address("ranking-0"), rr, "--stages", "retrieval,reranking")
        with grpc.insecure_channel(gateway.address) as channel:
            reply = recommender_pb2_grpc.RecommenderStub(channel).Recommend(request(users, user, session), timeout=5)
    assert reply.stages[2].status == common_pb2.STAGE_STATUS_DEGRADED
    served = {item.item_id for item in reply.items}
    assert len(served) == 50 and not served & (set(history) | set(session))
