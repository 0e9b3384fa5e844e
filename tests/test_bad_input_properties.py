"""Hostile input, generated: every public and internal request message with arbitrary field values
(empty, huge, negative, NaN, unicode, duplicate and unknown ids), and raw bytes that are no message
at all. Every answer is OK or a specific error with a message; never UNKNOWN, never INTERNAL from an
uncaught exception; and every process is still serving afterwards."""

from __future__ import annotations

import math

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from funnel.v1 import recommender_pb2
from funnel.v2 import candidates_pb2, ranking_pb2, reranking_pb2, retrieval_pb2
from launcher.health import health_status

OK, INVALID = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# (process in the stack, method, request type)
TARGETS = [
    ("gateway", "/funnel.v1.Recommender/Recommend", recommender_pb2.RecommendRequest),
    ("retrieval-0-0", "/funnel.v2.Retrieval/Retrieve", retrieval_pb2.RetrieveRequest),
    ("ranking-0", "/funnel.v2.Ranking/Rank", ranking_pb2.RankRequest),
    ("reranking-0", "/funnel.v2.Reranking/Rerank", reranking_pb2.RerankRequest),
]
# Real ids beside random ones, so that generated requests also reach the code behind validation.
KNOWN_IDS = ["u0000001", "u0000002", "i0000010", "i0000011", "i0000500", "ann", "popular", "fresh", "US", "DE"]

texts = st.one_of(
    st.sampled_from(KNOWN_IDS),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=200, max_size=3000),
    st.just(""),
)
SCALARS = {
    FieldDescriptor.TYPE_STRING: texts,
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_ENUM: st.integers(-5, 20),  # unknown enum values included
    FieldDescriptor.TYPE_FLOAT: st.floats(allow_nan=True, allow_infinity=True, width=32),
    FieldDescriptor.TYPE_DOUBLE: st.floats(allow_nan=True, allow_infinity=True),
}


def messages(descriptor, depth: int = 0) -> st.SearchStrategy:
    """Any message of this type, field by field, from its descriptor."""
    fields = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            fields[field.name] = st.dictionaries(SCALARS[key.type], _value(value, depth), max_size=6)
            continue
        single = _value(field, depth)
        if field.is_repeated:
            fields[field.name] = st.one_of(st.lists(single, max_size=8), st.lists(single, min_size=300, max_size=2500))
        else:
            fields[field.name] = single
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: _build(descriptor, values))


def _value(field, depth: int) -> st.SearchStrategy:
    if field.message_type is not None:
        return messages(field.message_type, depth + 1) if depth < 2 else st.just(None)
    return SCALARS[field.type]


def _build(descriptor, values: dict):
    from google.protobuf import message_factory

    message = message_factory.GetMessageClass(descriptor)()
    for name, value in values.items():
        field = descriptor.fields_by_name[name]
        target = getattr(message, name)
        if isinstance(value, dict):
            for key, item in value.items():
                if field.message_type.fields_by_name["value"].message_type is not None:
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif isinstance(value, list):
            for item in value:
                if item is None:
                    continue
                target.add().CopyFrom(item) if field.message_type is not None else target.append(item)
        elif value is not None:
            if field.message_type is not None:
                target.CopyFrom(value)
            else:
                setattr(message, name, value)
    return message


def check_answer(channel: grpc.Channel, method: str, payload: bytes) -> None:
    call = channel.unary_unary(method)
    try:
        call(payload, timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() in ALLOWED, f"{method}: {exc.code()} {exc.details()!r}"
        assert exc.details(), f"{method}: {exc.code()} without a message"


@pytest.mark.parametrize("process, method, request_type", TARGETS, ids=[t[0] for t in TARGETS])
def test_generated_requests_get_ok_or_a_specific_error(stack, process, method, request_type):
    with grpc.insecure_channel(
        stack.address(process), options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as channel:

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(messages(request_type.DESCRIPTOR))
        def run(request) -> None:
            check_answer(channel, method, request.SerializeToString())

        run()
    assert health_status(stack.address(process)) == "SERVING"


@pytest.mark.parametrize("process, method, request_type", TARGETS, ids=[t[0] for t in TARGETS])
def test_bytes_that_are_no_message_get_invalid_argument(stack, process, method, request_type):
    with grpc.insecure_channel(stack.address(process)) as channel:

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(st.binary(min_size=1, max_size=2000))
        def run(payload: bytes) -> None:
            # Most random bytes do not parse; those that do are ordinary (odd) requests.
            check_answer(channel, method, payload)

        run()
        with pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary(method)(b"\xff\xff\xff", timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid message" in refused.value.details()
    assert health_status(stack.address(process)) == "SERVING"


def status_of(channel: grpc.Channel, method: str, request) -> tuple[grpc.StatusCode, str]:
    try:
        channel.unary_unary(method)(request.SerializeToString(), timeout=10)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("score_column", ["ranking_scores", "retrieval_scores"])
def test_a_nan_score_is_refused_naming_its_column_and_an_astral_plane_id_is_taken_as_an_id(stack, score_column):
    """Two values people forget: a NaN score, alone or beside a good candidate, is refused with
    INVALID_ARGUMENT naming its column (never silently ranked); an id of astral-plane characters is a
    valid id: re-ranking answers it, ranking refuses it as one its catalog does not hold."""
    nan, strange = ("i0000010", math.nan), ("\U0001f600" * 10, 1.0)
    nan_refused = f"candidates.{score_column} holds a non-finite value"
    cases = {
        "reranking-0": ("/funnel.v2.Reranking/Rerank", (OK, ""), lambda c: reranking_pb2.RerankRequest(
            user_id="u0000001", num_results=5, candidates=c)),
        "ranking-0": ("/funnel.v2.Ranking/Rank", (INVALID, "1 candidate item ids are not in the catalog"),
                      lambda c: ranking_pb2.RankRequest(user_id="u0000001", candidates=c)),
    }  # fmt: skip
    for process, (method, strange_answer, request_with) in cases.items():
        with grpc.insecure_channel(stack.address(process)) as channel:
            for pairs, (expected, message) in (
                ([nan], (INVALID, nan_refused)),
                ([strange], strange_answer),
                ([nan, strange], (INVALID, nan_refused)),
            ):
                columns = {"item_ids": [i for i, _ in pairs], score_column: [score for _, score in pairs]}
                code, details = status_of(channel, method, request_with(candidates_pb2.CandidateList(**columns)))
                assert code == expected and details.startswith(message), f"{process} {pairs}: {code} {details!r}"
