"""Every benchmark's entry point, as its `make bench…` target runs it, on the tiny bundle for a second
or so: each one starts, measures and writes its results, so none rots unseen between the sessions
that run the real thing. (The figures here mean nothing; `tests/test_bench.py` checks what the
instruments measure.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from launcher.stack import REPO_ROOT

pytestmark = pytest.mark.processes  # each benchmark is a process of its own, most start a stack


def run_benchmark(module: str, *args: str, timeout_s: float = 300) -> str:
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert result.returncode == 0, f"benchmarks.{module} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_ann_indexes_measures_every_faiss_setting(tmp_path):
    out = tmp_path / "ann.json"
    run_benchmark("ann_indexes", "--sizes", "5000", "--queries", "20", "--out", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert {row["index"].split(",")[0] for row in rows} >= {"Flat", "HNSW32"}
    assert all(0 <= row["recall@100"] <= 1 and row["p50_ms"] > 0 for row in rows)


def test_scale_measures_each_index_and_sharded_fan_out_and_the_plan_is_computed_from_it(tmp_path):
    out = tmp_path / "scale"
    run_benchmark("scale", "--sizes", "3000", "6000", "--queries", "50", "--exact-timed", "10", "--out", str(out))
    scale = json.loads((out / "scale.json").read_text())
    assert {row["index"] for row in scale["rows"]} >= {"Flat", "IVF-PQ32 + SQ8 refine", "IVF-SQ8", "IVF-Flat", "HNSW32"}
    assert all(0 <= row["recall@100"] <= 1 and row["p50_ms"] > 0 for row in scale["rows"])
    assert [row["shards"] for row in scale["sharded"]] == [2, 4]
    assert scale["catalog_bytes_per_item"] > 8, "at least the item id's own bytes"
    assert not list(out.glob("vectors-*.npy")), "the vectors' files are removed"
    plan = run_benchmark("capacity", str(out / "scale.json"), "--out", str(out / "plan.md"))
    assert plan.count("| 1,000,000,000 |") == 3 and (out / "plan.md").read_text() == plan.rstrip("\n") + "\n"


def test_cost_curves_measure_results_history_and_candidates(artifacts, tmp_path):
    run_benchmark("cost_curves", "--artifacts", str(artifacts), "--rate", "5", "--seconds", "1", "--repeats", "1",
                  "--candidates", "500", "--out", str(tmp_path))  # fmt: skip
    curves = json.loads((tmp_path / "cost_curves.json").read_text())
    assert [row["point"] for row in curves["rows"]] == [
        "500 candidates, 10 results", "500 candidates, 100 results", "history of 10, 10 results",
        "history of 200, 10 results", "history of 2,000, 10 results",
    ]  # fmt: skip
    assert all(row["answered"] > 0 and row["total_ms"] > 0 for row in curves["rows"])
    assert set(curves["ratios"]) == {"100 results / 10 results (target <= 1.5)", "history 2,000 / 10 (target <= 1.3)"}


def test_large_catalog_grows_the_bundle_and_serves_it_from_one_and_two_shard_processes(artifacts, tmp_path):
    run_benchmark("large_catalog", "--artifacts", str(artifacts), "--items", "30000", "--shards", "1", "2",
                  "--rate", "5", "--seconds", "1", "--index-factory", "Flat", "--search-params", "",
                  "--out", str(tmp_path))  # fmt: skip
    result = json.loads((tmp_path / "large_catalog.json").read_text())
    assert [row["shards"] for row in result["rows"]] == [1, 2]
    assert all(row["errors"] == 0 and row["fan-out and merge"]["p50_ms"] > 0 for row in result["rows"])
    assert not (tmp_path / "artifacts").exists(), "the grown bundle is removed"


def test_store_cluster_kills_a_master_under_load_and_counts_what_was_lost(tmp_path):
    run_benchmark("store_cluster", "--seconds", "1", "--kills", "1", "--writers", "4", "--acks", "1",
                  "--out", str(tmp_path))  # fmt: skip
    rows = json.loads((tmp_path / "store_cluster.json").read_text())
    assert [(row["fault"], row["replica_acks"]) for row in rows] == [("kill", 1), ("pause", 1)]
    for row in rows:
        assert row["acknowledged"][0] > 0 and row["lost"] == [0] and row["recorded_twice"] == [0]
        assert 0 < row["failover_s"][0] < 60 and row["record_p50_ms"] > 0


def test_retrieval_service_is_measured_at_a_rate_and_across_a_hot_swap(artifacts, tmp_path):
    out = tmp_path / "retrieval.json"
    run_benchmark(
        "retrieval_service", "--artifacts", str(artifacts), "--rate", "20", "--seconds", "2", "--out", str(out)
    )
    result = json.loads(out.read_text())
    assert result["steady"]["errors"] == 0 and result["hot_swap"]["errors"] == 0
    assert result["hot_swap"]["served_after_swap"] > 0


def test_reranking_engine_times_every_rule(artifacts, tmp_path):
    out = tmp_path / "reranking.json"
    run_benchmark("reranking_engine", "--artifacts", str(artifacts), "--repeats", "20", "--out", str(out))
    result = json.loads(out.read_text())
    assert len(result["rules"]) >= 8 and 0 < result["p50_ms"]
    grid = {(row["candidates"], row["num_results"]) for row in result["as_work_grows"]}
    assert grid == {(c, r) for c in (200, 500, 1000) for r in (10, 100)}
    assert all(row["p50_ms"] > 0 and 0 < row["result_size"] <= row["num_results"] for row in result["as_work_grows"])


def test_triton_batching_compares_batching_on_and_off(artifacts, tmp_path):
    out = tmp_path / "triton.json"
    run_benchmark(
        "triton_batching", "--artifacts", str(artifacts), "--seconds", "0.3", "--open-seconds", "2", "--out", str(out)
    )
    result = json.loads(out.read_text())
    assert {"ranker", "ranker_nobatch"} <= {row["model"] for row in result["rows"]}
    assert result["speedups"] and result["open_loop_tail"] and result["service_overhead_ms"]


def test_full_ranking_compares_the_funnel_with_ranking_every_item(artifacts, tmp_path):
    run_benchmark(
        "full_ranking", "--artifacts", str(artifacts), "--users", "30", "--full-users", "5", "--triton-users", "2",
        "--out", str(tmp_path),
    )  # fmt: skip
    (size,) = json.loads((tmp_path / "full_ranking.json").read_text())["sizes"]
    assert size["users"] == 30 and len(size["methods"]) >= 3


def test_overload_runs_both_configurations_at_one_and_three_times_the_rate(artifacts, tmp_path):
    run_benchmark("overload", "--artifacts", str(artifacts), "--rate", "10", "--seconds", "1", "--out", str(tmp_path))
    configs = json.loads((tmp_path / "overload.json").read_text())["configs"]
    assert len(configs) == 2 and all(len(config["steps"]) == 2 for config in configs.values())


def test_live_state_compares_both_gateways_and_records_events_under_load(artifacts, tmp_path):
    run_benchmark(
        "live_state", "--artifacts", str(artifacts), "--rounds", "10", "--rate", "5", "--events-rates", "200",
        "--seconds", "1", "--out", str(tmp_path),
    )  # fmt: skip
    result = json.loads((tmp_path / "live.json").read_text())
    assert result["hydration"] and len(result["events under load"]) == 1


def test_e2e_load_and_its_report_run_one_scenario_end_to_end(artifacts, tmp_path):
    run_benchmark(
        "e2e_load", "--artifacts", str(artifacts), "--scenarios", "demo", "--rates", "10", "--through", "10",
        "--seconds", "1", "--min-requests", "10", "--cpu-rate", "10", "--profile-rate", "10", "--out", str(tmp_path),
        timeout_s=600,
    )  # fmt: skip
    (scenario,) = json.loads((tmp_path / "results.json").read_text())["scenarios"]
    assert scenario["scenario"]["name"] == "demo" and scenario["steps"] and scenario["payload_bytes"]
    run_benchmark("report", str(tmp_path))
    assert (tmp_path / "report.md").read_text().strip()


def test_quota_flood_compares_a_neighbour_alone_and_beside_a_flooding_client(artifacts, tmp_path):
    run_benchmark(
        "quota_flood", "--artifacts", str(artifacts), "--seconds", "2", "--rounds", "1", "--rate", "5",
        "--out", str(tmp_path),
    )  # fmt: skip
    result = json.loads((tmp_path / "quota_flood.json").read_text())
    assert set(result["neighbour"]) == {"alone", "beside the flood"} and result["p99_ratio"] > 0
    (flooder,) = result["flooder_calls_per_s"]
    assert flooder["RESOURCE_EXHAUSTED"] > 0, "the flood was over its quota"


def test_soak_keeps_every_acknowledged_event_and_exports_it(artifacts, tmp_path):
    run_benchmark(
        "soak", "--artifacts", str(artifacts), "--seconds", "8", "--events-per-s", "100", "--export-every-s", "3",
        "--cohort-s", "4", "--recommend-rate", "5", "--out", str(tmp_path),
    )  # fmt: skip
    result = json.loads((tmp_path / "soak.json").read_text())
    assert result["events_acknowledged"] > 0 and result["acknowledged_missing_from_the_export"] == 0
    assert result["bytes"]["log entry"] > 0 and result["exports"]["failed"] == []
