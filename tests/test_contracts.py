"""The columnar stage contracts: candidate lists round-trip exactly, the fast wire codec agrees with
protobuf's own accessors, bad columns are refused naming the column, and the exact cheaper forms of
numpy idioms on the request path give the same answers as the idioms."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from funnel.arrays import best_first, member_of
from funnel.artifacts.covisitation import CoVisitation
from funnel.candidates import Candidates
from funnel.fusion import WEIGHTS, K, fuse
from funnel.runtime.errors import InvalidArgument
from funnel.sources import RETRIEVAL_SOURCES, SOURCE_CODES
from funnel.v2 import candidates_pb2, ranking_pb2, ranking_pb2_grpc, reranking_pb2, reranking_pb2_grpc
from funnel.wire import FLOAT32, read_columns, write_column

RNG = np.random.default_rng(7)


def random_candidates(count: int, ranked: bool) -> Candidates:
    return Candidates(
        [f"item-{n}-\u00e9" for n in RNG.permutation(count)],
        RNG.integers(0, 8, count).astype(np.int32),
        RNG.standard_normal(count).astype(np.float32),
        RNG.standard_normal(count).astype(np.float32) if ranked else None,
    )


@pytest.mark.parametrize("count", [0, 1, 7, 540, 3000])
def test_a_candidate_list_round_trips_through_the_wire_exactly(count):
    for ranked in (False, True):
        original = random_candidates(count, ranked)
        data = original.to_message().SerializeToString()
        back = Candidates.read(candidates_pb2.CandidateList.FromString(data))
        assert back.item_ids == original.item_ids
        assert back.sources.tolist() == original.sources.tolist()
        assert back.retrieval_scores.tolist() == original.retrieval_scores.tolist()
        assert (back.ranking_scores is None) == (not ranked or count == 0)
        if ranked and count:
            assert back.ranking_scores.tolist() == original.ranking_scores.tolist()


def test_the_fast_codec_writes_what_the_generated_code_reads_and_reads_what_it_writes():
    original = random_candidates(300, ranked=True)
    written = original.to_message()
    assert list(written.sources) == original.sources.tolist()
    assert list(written.retrieval_scores) == original.retrieval_scores.tolist()
    assert list(written.ranking_scores) == original.ranking_scores.tolist()
    generated = candidates_pb2.CandidateList(
        item_ids=original.item_ids,
        sources=original.sources.tolist(),
        retrieval_scores=original.retrieval_scores.tolist(),
    )
    read = Candidates.read(generated)
    assert read.sources.tolist() == original.sources.tolist()
    assert read.retrieval_scores.tolist() == original.retrieval_scores.tolist() and read.ranking_scores is None


def test_a_message_a_client_wrote_unpacked_reads_the_same():
    """Parsers must accept repeated scalars unpacked too; the codec reads what protobuf parsed."""
    unpacked = b"".join(b"\x15" + np.float32(v).tobytes() for v in (0.5, -1.25)) + b"\x2a\x01a\x2a\x01b"
    read = Candidates.read(candidates_pb2.CandidateList.FromString(unpacked))
    assert read.item_ids == ["a", "b"] and read.retrieval_scores.tolist() == [0.5, -1.25]


def test_a_list_can_be_sent_with_the_ids_and_the_latest_scores_alone():
    ranked = random_candidates(50, ranked=True)
    message = ranked.to_message(sources=False, scores="latest")
    assert list(message.item_ids) == ranked.item_ids and not message.sources and not message.retrieval_scores
    assert list(message.ranking_scores) == ranked.ranking_scores.tolist()
    unranked = random_candidates(50, ranked=False).to_message(sources=False, scores="latest")
    assert unranked.retrieval_scores and not unranked.ranking_scores


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"sources": [1, 2]}, "candidates.sources has 2 entries, candidates.item_ids 3"),
        ({"retrieval_scores": [0.1]}, "candidates.retrieval_scores has 1 entries, candidates.item_ids 3"),
        ({"ranking_scores": [0.1, 0.2, 0.3, 0.4]}, "candidates.ranking_scores has 4 entries"),
        ({"sources": [1, 2, 99]}, "candidates.sources holds an unknown CandidateSource"),
        ({"sources": [1, 2, -1]}, "candidates.sources holds an unknown CandidateSource"),
        ({"ranking_scores": [0.1, float("nan"), 0.3]}, "candidates.ranking_scores holds a non-finite value"),
    ],
)
def test_bad_columns_are_refused_naming_the_column(columns, message):
    bad = candidates_pb2.CandidateList(item_ids=["a", "b", "c"], **columns)
    with pytest.raises(InvalidArgument) as refused:
        Candidates.read(bad)
    assert message in refused.value.message


def test_wire_columns_of_a_scores_answer_agree_with_the_accessors():
    scores = RNG.random(123).astype(np.float32)
    response = ranking_pb2.RankResponse(model_version="7")
    write_column(response, 1, scores, FLOAT32)
    parsed = ranking_pb2.RankResponse.FromString(response.SerializeToString())
    assert list(parsed.scores) == scores.tolist() and parsed.model_version == "7"
    assert read_columns(parsed, {"scores": (1, FLOAT32, FLOAT32)})["scores"].tolist() == scores.tolist()


@pytest.mark.parametrize("stage", ["ranking-0", "reranking-0"])
def test_stages_refuse_unequal_columns_with_invalid_argument_naming_the_field(stack, stage):
    candidates = candidates_pb2.CandidateList(item_ids=["i0000001", "i0000002"], sources=[1], ranking_scores=[1, 0])
    with grpc.insecure_channel(stack.address(stage)) as channel, pytest.raises(grpc.RpcError) as refused:
        if stage == "ranking-0":
            ranking_pb2_grpc.RankingStub(channel).Rank(
                ranking_pb2.RankRequest(user_id="u0000001", candidates=candidates), timeout=5
            )
        else:
            reranking_pb2_grpc.RerankingStub(channel).Rerank(
                reranking_pb2.RerankRequest(user_id="u0000001", num_results=2, candidates=candidates), timeout=5
            )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "candidates.sources has 1 entries, candidates.item_ids 2" in refused.value.details()


@pytest.mark.parametrize("stage", ["ranking-0", "reranking-0"])
def test_carried_rows_are_used_for_their_own_bundle_only_and_refused_beyond_its_catalog(stack, artifacts, stage):
    from funnel.artifacts.store import latest_version, read_manifest

    version = read_manifest(latest_version(artifacts / "bundles"), verify=False)["version"]
    ids = ["i0000001", "i0000002"]

    def call(rows: list[int], catalog_version: str):
        candidates = candidates_pb2.CandidateList(
            item_ids=ids, ranking_scores=[1.0, 0.5], catalog_rows=rows, catalog_version=catalog_version
        )
        with grpc.insecure_channel(stack.address(stage)) as channel:
            if stage == "ranking-0":
                request = ranking_pb2.RankRequest(user_id="u0000001", candidates=candidates)
                return ranking_pb2_grpc.RankingStub(channel).Rank(request, timeout=5)
            request = reranking_pb2.RerankRequest(user_id="u0000001", num_results=2, candidates=candidates)
            return reranking_pb2_grpc.RerankingStub(channel).Rerank(request, timeout=5)

    # Another version's rows are ignored (the ids are looked up), whatever they say.
    call([999_999_999, 5], "some-other-bundle")
    with pytest.raises(grpc.RpcError) as refused:
        call([999_999_999, 5], version)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "catalog_rows holds a row beyond" in refused.value.details()
    with pytest.raises(grpc.RpcError) as unversioned:
        call([1, 2], "")
    assert "catalog_rows needs candidates.catalog_version" in unversioned.value.details()


def test_source_codes_are_the_contracts_enum_values():
    for name, code in SOURCE_CODES.items():
        enum = "CANDIDATE_SOURCE_" + ("UNSPECIFIED" if name == "unknown" else name.upper())
        assert candidates_pb2.CandidateSource.Value(enum) == code


def running_sum_fusion(ranked, weights=WEIGHTS):
    """Reciprocal rank fusion as first written: a running sum per key, the best source by gain."""
    fused, best = {}, {}
    for source, keys in ranked.items():
        weight = weights.get(source, 0.5)
        for rank, key in enumerate(keys, 1):
            gain = weight / (K + rank)
            fused[key] = fused.get(key, 0.0) + gain
            if key not in best or gain > best[key][0]:
                best[key] = (gain, source)
    return [(key, fused[key], best[key][1]) for key in sorted(fused, key=fused.__getitem__, reverse=True)]


def test_vectorised_fusion_equals_the_running_sum_bit_for_bit():
    for _ in range(300):
        ranked = {
            source: RNG.choice(80, int(RNG.integers(0, 60)), replace=False).tolist() for source in RETRIEVAL_SOURCES
        }
        assert fuse(ranked) == running_sum_fusion(ranked)


def test_best_first_and_member_of_equal_the_numpy_idioms():
    for _ in range(500):
        scores = RNG.integers(0, 15, int(RNG.integers(0, 200))).astype(np.float32)  # many ties
        k = int(RNG.integers(0, 220))
        assert best_first(scores, k).tolist() == np.argsort(-scores, kind="stable")[:k].tolist()
        values, members = RNG.integers(0, 60, 100), RNG.integers(0, 60, int(RNG.integers(0, 30)))
        assert member_of(values, members).tolist() == np.isin(values, members).tolist()


def test_co_visitation_scores_the_same_through_a_dense_vector_or_a_sort(monkeypatch):
    import funnel.artifacts.covisitation as module

    items = 400
    indptr = np.concatenate([[0], np.cumsum(RNG.integers(0, 25, items))])
    table = CoVisitation(
        indptr, RNG.integers(0, items, indptr[-1]).astype(np.int32), RNG.random(indptr[-1]).astype(np.float32)
    )
    for _ in range(100):
        history = RNG.integers(0, items, int(RNG.integers(1, 40)))
        monkeypatch.setattr(module, "_DENSE_FACTOR", 10**9)
        dense = table.scores(history)
        monkeypatch.setattr(module, "_DENSE_FACTOR", 0)
        sorted_ = table.scores(history)
        assert dense[0].tolist() == sorted_[0].tolist() and dense[1].tolist() == sorted_[1].tolist()
