"""The benchmark instruments themselves, on the test stack at a low rate: records, report, plots."""

from __future__ import annotations

from benchmarks.e2e_load import STAGES, Traffic, sustainable_rate, sweep, to_step
from benchmarks.loadgen import Sample
from benchmarks.profile import summarise
from benchmarks.report import PARTS, breakdown, write_report


def test_a_sweep_records_every_request_and_the_report_draws_it(stack, artifacts, tmp_path):
    traffic = Traffic(artifacts)
    steps = sweep(stack.address("gateway"), traffic, [10, 20], seconds=2, slo_ms=1000, label="test")
    assert [s.rate for s in steps] == [10, 20]
    for step in steps:
        assert step.sent > 5 and step.ok == step.sent and not step.errors
        assert len(step.e2e_ms) == step.ok
        for stage in STAGES:
            assert len(step.server_ms[stage]) == step.ok
            # A stage's server time is part of the gateway's wait for it, which is part of the request.
            assert all(0 < s < c for s, c in zip(step.server_ms[stage], step.stage_ms[stage], strict=True))
        assert (step.overhead_ms() > 0).all()
    assert sustainable_rate(steps, slo_ms=1000) == 20

    results = {
        "machine": {"cores": "2", "cpu": "test", "python": "3.11"},
        "slo_ms": 1000,
        "seconds_per_step": 2,
        "grpc_hop_floor": {"p50_ms_0_candidates": 0.6, "p50_ms_360_candidates": 0.9},
        "scenarios": [
            {
                "scenario": {"name": "test"},
                "steps": [s.__dict__ | {"summary": s.summary()} for s in steps],
                "sustainable_rps": 20.0,
            }
        ],
    }
    report = write_report(results, tmp_path, reference_rate=20)
    text = report.read_text()
    assert "| test | 20 req/s |" in text and "about 3.3 ms of overhead" in text
    for plot in ("latency_cdf.png", "latency_vs_rate.png", "stage_breakdown.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    parts = breakdown(results["scenarios"][0]["steps"][-1])
    assert set(parts) == set(PARTS) and all(v >= 0 for v in parts.values())


def test_errors_stop_a_sweep_and_count_against_the_rate():
    ok = {"degraded": False, "stages": {s: (5.0, 4.0) for s in STAGES}}
    samples = [Sample(0.1 * n, 20.0, "OK", ok) for n in range(9)] + [Sample(1.0, 5.0, "UNAVAILABLE")]
    step = to_step(10, 1, samples)
    assert step.errors == {"UNAVAILABLE": 1} and step.ok == 9
    assert step.summary()["error_rate"] == 0.1
    assert sustainable_rate([step], slo_ms=50) == 0


def test_profile_summary_ranks_functions_by_samples():
    raw = "main (a.py:1);work (b.py:3) 30\nmain (a.py:1);idle (c.py:9) 10\nmain (a.py:2);work (b.py:4) 10\n"
    summary = summarise(raw, top=5)
    assert summary["samples"] == 50
    assert summary["own"][0] == ("work (b.py)", 80.0)
    assert ("main (a.py)", 100.0) in summary["inclusive"]


def test_cpu_per_request_is_counted_for_every_process_of_the_stack(stack, artifacts):
    from benchmarks.e2e_load import cpu_per_request

    result = cpu_per_request(stack, stack.address("gateway"), Traffic(artifacts), rate=10, seconds=2)
    assert set(result["ms"]) >= {"gateway", "ranking-0", "reranking-0", "triton"}
    assert all(ms > 0 for ms in result["ms"].values()), result
    assert result["total_ms"] == round(sum(result["ms"].values()), 2)
