"""The benchmark instruments themselves, on the test stack at a low rate: records, report, plots."""

from __future__ import annotations

from benchmarks.e2e_load import STAGES, Traffic, sustainable_rate, sweep, to_step, wide_requests
from benchmarks.loadgen import Sample
from benchmarks.profile import summarise
from benchmarks.report import PARTS, breakdown, write_report


def test_a_sweep_records_every_request_and_the_report_draws_it(stack, artifacts, tmp_path):
    traffic = Traffic(artifacts)
    steps = sweep(stack.address("gateway"), traffic, [10, 20], seconds=2, slo_ms=1000, label="test", min_requests=30)
    assert [s.rate for s in steps] == [10, 20]
    assert [s.seconds for s in steps] == [3.0, 2.0], "a step lasts long enough for its fewest requests"
    for step in steps:
        assert step.sent > 5 and step.ok == step.sent and not step.errors
        assert len(step.e2e_ms) == step.ok
        for stage in STAGES:
            assert len(step.server_ms[stage]) == step.ok
            # A stage's server time is part of the gateway's wait for it, which is part of the request.
            assert all(0 < s < c for s, c in zip(step.server_ms[stage], step.stage_ms[stage], strict=True))
        assert (step.overhead_ms() > 0).all()
        assert sum(step.causes.values()) >= step.degraded, "every degraded answer names its stage and cause"
    assert sustainable_rate(steps, slo_ms=1000) == 20
    wide = wide_requests(stack.address("gateway"), artifacts, concurrency=2, seconds=1)
    assert wide["answered"] > 2 and wide["p50_ms"] <= wide["p99_ms"]
    assert sum(wide["causes"].values()) >= wide["degraded"], "every degraded answer names its stage and cause"

    cpu = {"rate": 10, "ms": {"gateway": 2.0, "retrieval-0-0": 1.5, "ranking-0": 1.0, "triton": 0.5},
           "total_ms": 5.0, "load_generator_ms": 1.0, "capacity_rps": 333.0}  # fmt: skip
    floor = {"rate": 10, "ms": {"gateway": 1.0, "retrieval-0": 0.5, "ranking": 0.5, "triton": 0.5}, "total_ms": 2.5,
             "latency": {"rate": 25, "answered": 250, "p50_ms": 4.2, "p99_ms": 7.0}}  # fmt: skip
    results = {
        "machine": {"cores": "2", "cpu": "test", "python": "3.11"},
        "slo_ms": 1000,
        "seconds_per_step": 2,
        "min_requests_per_step": 30,
        "cpu_rate": 10,
        "scenarios": [
            {
                "scenario": {"name": "test"},
                "steps": [s.__dict__ | {"summary": s.summary()} for s in steps],
                "sustainable_rps": 20.0,
                "cpu_per_request": cpu,
                "floor": floor,
                "payload_bytes": {"public": (40, 300)},
                "wide_requests": {
                    "answered": 80,
                    "degraded": 1,
                    "p50_ms": 30.0,
                    "p99_ms": 60.0,
                    "causes": {"ranking: deadline": 1},
                },
            }
        ],
    }
    results["scenarios"][0]["steps"][0]["causes"] = {"live_state: deadline": 2}
    report = write_report(results, tmp_path, reference_rate=20)
    text = report.read_text()
    assert "| test | 20 req/s |" in text
    assert "2 s and at least 30 requests per rate" in text
    assert "| - | 4.2 ms |" in text, "no 25 req/s step here, so no overhead; the bare stack's end to end beside it"
    assert "| retrieval-0-0 | " in text and "| 1.50 | 0.50 | 3.0x |" in text, "each replica beside its stand-in"
    assert "| **total** |" in text and "**5.00** | **2.50** | **2.00x** |" in text
    assert "| test | 80 | 1 | 30.0 ms | 60.0 ms | ranking: deadline 1 |" in text
    assert " | live_state: deadline 2 | " in text, "each step says why its answers degraded"
    for plot in ("latency_cdf.png", "latency_vs_rate.png", "stage_breakdown.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    parts = breakdown(results["scenarios"][0]["steps"][-1])
    assert set(parts) == set(PARTS) and all(v >= 0 for v in parts.values())


def test_errors_stop_a_sweep_and_count_against_the_rate():
    ok = {"degraded": False, "stages": {s: (5.0, 4.0) for s in STAGES}, "causes": []}
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
    assert set(result["ms"]) >= {"gateway", "ranking-0", "reranking-0", "triton", "redis"}
    # Redis spends about 0.1 ms a request, under one 10 ms clock tick over this short run: it is
    # counted (above), and may read 0; every other process spends several ticks.
    assert all(ms > 0 for name, ms in result["ms"].items() if name != "redis"), result
    assert result["total_ms"] == round(sum(result["ms"].values()), 3)
    assert result["load_generator_ms"] > 0 and "load generator" not in str(result["ms"])


def test_the_floor_carries_the_bytes_the_stack_carries_through_bare_processes_of_the_same_shape(
    stack, artifacts, tmp_path
):
    from benchmarks.grpc_floor import floor_cpu
    from benchmarks.payloads import measure_payloads

    payloads = measure_payloads(stack, Traffic(artifacts).requests[:5], shared_memory=True)
    assert payloads.retrieval[1] > 1000, "a shard's answer carries hundreds of candidates"
    assert payloads.ranking[0] > payloads.ranking[1] > 100, "ids and sources go, one score per item comes back"
    assert payloads.triton[0] < 1000, "tensors go through shared memory, not the message"
    # The live-state read: the script call with its keys, and at least three empty lists back.
    assert payloads.live[0] > 50 and payloads.live[1] >= len("*3\r\n*0\r\n*0\r\n*0\r\n"), payloads
    floor = floor_cpu(payloads, shards=2, rate=10, seconds=2, log_dir=tmp_path, latency_rate=20)
    assert set(floor["ms"]) == {"gateway", "retrieval-0", "retrieval-1", "ranking", "reranking", "triton", "redis"}
    # Redis may spend under one clock tick in so short a run (see above).
    assert floor["answered"] >= 10 and all(ms > 0 for name, ms in floor["ms"].items() if name != "redis"), floor
    latency = floor["latency"]
    assert latency["rate"] == 20 and latency["answered"] >= 20, floor
    # Four bare hops and a Redis read, each well over 50 µs even on loopback.
    assert 0.2 < latency["p50_ms"] <= latency["p99_ms"], floor


def test_the_live_data_bench_compares_both_gateways_and_counts_acknowledged_events(stack, artifacts, catalog):
    import asyncio

    from benchmarks.live_state import events_under_load, hydration

    frozen = stack.launch_like("gateway", "gateway-frozen-bench", ["--state-store", ""])
    try:
        stack.wait_all_serving()
        items = catalog.item_ids.tolist()
        traffic = Traffic(artifacts, seed=21)
        read = asyncio.run(
            hydration(stack.address("gateway"), f"127.0.0.1:{frozen.port}", stack.address("events"), traffic, items, 8)
        )
    finally:
        stack.stop_one("gateway-frozen-bench")
    assert read["requests per arm"] == 8
    assert 0 < read["live_state step p50 ms"] <= read["live_state step p99 ms"]
    assert read["p50 ms, live"] > 0 and read["p50 ms, frozen sent the same lists"] > 0
    load = asyncio.run(events_under_load(stack.address("gateway"), stack.address("events"), traffic, items, 10, 400, 2))
    assert load["events acknowledged per second"] > 200 and not load["RecordEvents failures"]
    assert load["Recommend answered"] > 5 and load["Recommend errors"] == 0
