"""The replay through the served funnel, on the tiny planted data set (a real stack)."""

from __future__ import annotations

import json

import pytest

from evaluation.replay import VARIANTS, evaluate
from evaluation.report import write_report


@pytest.mark.processes
def test_replay_shows_what_ranking_and_reranking_add_and_repeats_exactly(artifacts, tmp_path):
    retrieval_only, with_ranking, served = VARIANTS[0], VARIANTS[1], VARIANTS[2]
    results = evaluate(
        artifacts, tmp_path / "run", max_users=1000, seed=7, concurrency=4, progress=print,
        variants=[retrieval_only, with_ranking, served, served],
    )  # fmt: skip
    first, ranked, full, again = (row["metrics"] for row in results["variants"])
    assert first["users"] == results["held_out_users"] > 100, "every held-out user was replayed"
    assert all(m["degraded"] == 0 for m in (first, ranked, full, again)), "no answer was degraded"
    assert ranked["ndcg@10"] > first["ndcg@10"], "the ranker improves NDCG over retrieval order"
    assert ranked["recall@10"] >= first["recall@10"]
    assert full["categories@10"] > ranked["categories@10"], "re-ranking diversifies the first screen"
    assert full["ild@10"] > ranked["ild@10"]
    assert again == full, "the same served funnel gives the same numbers"

    report = write_report(results, tmp_path / "report", "test")
    text = report.read_text()
    assert "| retrieval only |" in text and "| full funnel (served policy) |" in text
    assert "latest 2 interactions held out (time order, ties within a second broken by a fixed hash)" in text
    assert (tmp_path / "report" / "tradeoff.png").stat().st_size > 10_000
    json.dumps(results)  # what `make eval` writes is plain JSON


def test_a_policy_variant_keeps_content_rules_and_only_its_groups_rules():
    import yaml

    from evaluation.replay import RULE_GROUPS, variant_policy
    from funnel.policy.document import parse_policy
    from tests.conftest import POLICY

    served = yaml.safe_load(POLICY.read_text())
    variant = variant_policy(served, ("filters", "diversity"), "eval-test")
    assert variant["content"] == served["content"]
    assert [rule["name"] for rule in variant["rules"]] == ["exclude_consumed", "mmr", "category_cap"]
    assert parse_policy(yaml.safe_dump(variant)).version == "eval-test", "the re-ranking would accept it"
    named = {rule for rules in RULE_GROUPS.values() for rule in rules}
    assert {rule["name"] for rule in served["rules"]} <= named, "every served rule belongs to a group"


def test_tradeoff_reports_each_variant_against_filters_only():
    from evaluation.report import tradeoff

    def metrics(ndcg: float, categories: float, gini: float) -> dict:
        m = {"ndcg@10": ndcg, "recall@100": 0.5}
        for k in (10, 100):
            m |= {f"categories@{k}": categories, f"ild@{k}": 0.1, f"provider_gini@{k}": gini}
            m[f"top1pct_provider_share@{k}"] = 0.2
        return m

    results = {
        "variants": [
            {"variant": "retrieval only", "kind": "stages", "stages": "retrieval", "metrics": metrics(0.1, 2, 0.9)},
            {"variant": "filters only", "kind": "policy", "stages": "retrieval,ranking,reranking",
             "metrics": metrics(0.2, 3, 0.8)},
            {"variant": "filters + diversity", "kind": "policy", "stages": "retrieval,ranking,reranking",
             "metrics": metrics(0.15, 5, 0.7)},
        ]
    }  # fmt: skip
    (row,) = tradeoff(results)
    assert row["variant"] == "filters + diversity"
    assert abs(row["ndcg@10 change %"] + 25.0) < 1e-9
    assert row["categories@10 gained"] == 2
    assert abs(row["provider Gini@100 lowered"] - 0.1) < 1e-9


def test_gateway_stages_must_start_with_retrieval_and_name_known_stages():
    import pytest

    from funnel.runtime.config import load_settings
    from funnel.runtime.errors import ConfigError
    from services.gateway.settings import GatewaySettings

    base = ["--retrieval-shards", "a:1", "--ranking-target", "b:1", "--reranking-target", "c:1", "--artifact-dir", "x"]
    assert load_settings(GatewaySettings, [*base, "--stages", "retrieval"], {}).enabled_stages() == {"retrieval"}
    for bad in ("ranking,reranking", "retrieval,scoring"):
        with pytest.raises(ConfigError, match="stages must include retrieval"):
            load_settings(GatewaySettings, [*base, "--stages", bad], {})
