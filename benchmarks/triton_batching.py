"""Triton dynamic batching on and off, same model, same run; and the ranking service's own overhead.

    python -m benchmarks.triton_batching --artifacts artifacts

Three copies of the ranker are served by one Triton: `ranker` with dynamic batching (a queue
delay of `--queue-delay-us`), `ranker_nobatch` without, and `ranker_served` as the ranking
service's model is configured. Closed-loop clients (1, 2, 4, 8, 16 concurrent) each send
500-candidate requests for a fixed time: throughput. Then the tail as the ranking service meets it:
open-loop Poisson arrivals at a low rate, 250-600 candidates each, so calls overlap now and then;
batching or not, a call should take a few milliseconds, and the slowest calls show whether it does.
Everything shares this 2-core machine, clients included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as triton
from tritonclient.utils import InferenceServerException

from benchmarks.loadgen import open_loop
from funnel.artifacts.store import latest_version
from funnel.features import BundleFeatures
from funnel.triton.model_repository import CATEGORICAL_INPUT, DENSE_INPUT, TritonModelConfig, write_model_version
from launcher.ports import reserve_port, start_server
from launcher.triton import TritonServer

CONCURRENCY = (1, 2, 4, 8, 16)
OPEN_LOOP_MODELS = ("ranker_served", "ranker_nobatch")
TICKS = os.sysconf("SC_CLK_TCK")


def request_tensors(dense: np.ndarray, categorical: np.ndarray) -> list[triton.InferInput]:
    """The ranker's input tensors in tritonclient's standard form."""
    tensors = [
        triton.InferInput(DENSE_INPUT, list(dense.shape), "FP32"),
        triton.InferInput(CATEGORICAL_INPUT, list(categorical.shape), "INT64"),
    ]
    tensors[0].set_data_from_numpy(np.ascontiguousarray(dense, dtype=np.float32))
    tensors[1].set_data_from_numpy(np.ascontiguousarray(categorical, dtype=np.int64))
    return tensors


def cpu_seconds(root_pid: int) -> float:
    """CPU time of a process and all its descendants (Triton and its python-backend stubs)."""
    total, pids = 0.0, [root_pid]
    while pids:
        pid = pids.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        pids.extend(int(c) for c in children)
    return total


async def closed_loop(url: str, model: str, inputs: list, concurrency: int, seconds: float) -> dict:
    client = triton.InferenceServerClient(url)
    latencies: list[float] = []
    errors = 0  # calls Triton refused (queued past its timeout, say): counted, not fatal
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await client.infer(model, inputs)
            except InferenceServerException:
                errors += 1
                continue
            latencies.append((time.perf_counter() - started) * 1000)

    for _ in range(3):  # warm-up
        await client.infer(model, inputs)
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await client.close()
    return {
        "model": model, "concurrency": concurrency, "requests": len(latencies), "errors": errors,
        "throughput_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
    }  # fmt: skip


async def open_loop_tail(url: str, model: str, inputs: list[list], rate: float, seconds: float) -> dict:
    """Poisson arrivals of varied requests: the latency of every call, slowest ones included."""
    client = triton.InferenceServerClient(url)
    for request in inputs[:3]:  # warm-up
        await client.infer(model, request)

    async def call(n: int) -> None:
        await client.infer(model, inputs[n % len(inputs)])

    samples = await open_loop(call, rate, seconds, seed=3)
    await client.close()
    latencies = np.array([s.latency_ms for s in samples if s.code == "OK"])
    return {
        "model": model, "rate": rate, "requests": len(latencies), "errors": len(samples) - len(latencies),
        **{f"p{q}_ms": round(float(np.percentile(latencies, q)), 2) for q in (50, 99, 99.9)},
        "max_ms": round(float(latencies.max()), 2), "over_20_ms": int((latencies > 20).sum()),
    }  # fmt: skip


def varied_inputs(tables: BundleFeatures, count: int = 64) -> list[list]:
    """Requests of 250-600 candidates for different users, as retrieval hands them to ranking."""
    rng = np.random.default_rng(0)
    inputs = []
    for n in range(count):
        rows = rng.choice(len(tables.catalog.item_ids), int(rng.integers(250, 601)), replace=False)
        batch = tables.store.features(tables.context(n % len(tables.users)), rows)
        inputs.append(request_tensors(batch.dense, batch.categorical))
    return inputs


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def service_overhead(tables: BundleFeatures, repeats: int = 300) -> dict:
    """Per-request cost of what the ranking service adds around Triton: id lookup, features, tensors."""
    store = tables.store
    ids = [str(i) for i in store.catalog.item_ids[:500]]
    timings = {"id_lookup": [], "features": [], "request_tensors": []}
    for n in range(repeats):
        t0 = time.perf_counter()
        rows = store.catalog.index.rows(ids)
        t1 = time.perf_counter()
        batch = store.features(tables.context(n % len(tables.users)), rows)
        t2 = time.perf_counter()
        request_tensors(batch.dense, batch.categorical)
        t3 = time.perf_counter()
        for key, (a, b) in zip(timings, ((t0, t1), (t1, t2), (t2, t3)), strict=True):
            timings[key].append((b - a) * 1000)
    return {key: round(float(np.median(values)), 3) for key, values in timings.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--queue-delay-us", type=int, default=2000)
    parser.add_argument(
        "--max-batch", type=int, default=1024, help="rows per batch Triton may form (the served config)"
    )
    parser.add_argument("--open-rate", type=float, default=25.0, help="rate of the open-loop tail step")
    parser.add_argument("--open-seconds", type=float, default=60.0, help="length of the open-loop tail step")
    parser.add_argument("--out", type=Path, default=Path("results/triton_batching.json"))
    args = parser.parse_args(argv)
    bundle = latest_version(args.artifacts / "bundles")
    if bundle is None:
        print(f"no bundle under {args.artifacts}; run `make artifacts` first", file=sys.stderr)
        return 1
    tables = BundleFeatures(bundle)
    batch = tables.store.features(tables.context(1), np.arange(500))
    inputs = request_tensors(batch.dense, batch.categorical)

    source = args.artifacts / "model_repository" / "ranker"
    version = max(int(p.name) for p in source.iterdir() if p.name.isdigit())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp)
        for name, batching in (("ranker", True), ("ranker_nobatch", False)):
            config = TritonModelConfig(
                name=name,
                dynamic_batching=batching,
                max_queue_delay_us=args.queue_delay_us,
                max_batch_size=args.max_batch,
            )
            write_model_version(repository, source / str(version) / "model.pt", 1, config)
        served = TritonModelConfig(name="ranker_served")
        write_model_version(repository, source / str(version) / "model.pt", 1, served)
        models = ["ranker", "ranker_nobatch", "ranker_served"]
        server = start_server(
            lambda: TritonServer(
                repository, reserve_port(), reserve_port(), reserve_port(), repository / "triton.log", models=models
            ),
            120,
        )
        try:
            header = f"{'model':<16}{'clients':>8}{'requests':>10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
            print(header + f"{'server':>9}{'client':>9}  (cores busy){'errors':>8}", flush=True)
            for concurrency in CONCURRENCY:
                for model in ("ranker_nobatch", "ranker"):
                    server_before, client_before = cpu_seconds(server.process.pid), _own_cpu()
                    row = asyncio.run(closed_loop(server.grpc_url, model, inputs, concurrency, args.seconds))
                    # Cores busy during the run: tells whether Triton or the load generator was the limit.
                    row["server_cores"] = round((cpu_seconds(server.process.pid) - server_before) / args.seconds, 2)
                    row["client_cores"] = round((_own_cpu() - client_before) / args.seconds, 2)
                    rows.append(row)
                    print(
                        f"{model:<16}{concurrency:>8}{row['requests']:>10}{row['throughput_rps']:>9.1f}"
                        f"{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}{row['server_cores']:>9.2f}{row['client_cores']:>9.2f}"
                        f"{row['errors']:>21}",
                        flush=True,
                    )
            varied = varied_inputs(tables)
            tails = []
            for model in OPEN_LOOP_MODELS:
                tail = asyncio.run(open_loop_tail(server.grpc_url, model, varied, args.open_rate, args.open_seconds))
                tails.append(tail)
                print(f"open loop, {model}: {tail}", flush=True)
        finally:
            server.stop()
            shutil.rmtree(repository, ignore_errors=True)
    speedups = {}
    for concurrency in CONCURRENCY:
        on = next(r for r in rows if r["model"] == "ranker" and r["concurrency"] == concurrency)
        off = next(r for r in rows if r["model"] == "ranker_nobatch" and r["concurrency"] == concurrency)
        speedups[concurrency] = {
            "throughput_x": round(on["throughput_rps"] / off["throughput_rps"], 2),
            "p99_on_ms": on["p99_ms"],
            "p99_off_ms": off["p99_ms"],
        }
        gain = speedups[concurrency]["throughput_x"]
        p99 = f"p99 {on['p99_ms']:.1f} vs {off['p99_ms']:.1f} ms"
        print(f"concurrency {concurrency:>2}: batching {gain:.2f}x throughput, {p99}")
    overhead = service_overhead(tables)
    print(f"ranking service overhead per 500-candidate request (median ms): {overhead}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "rows": rows,
                "speedups": speedups,
                "service_overhead_ms": overhead,
                "open_loop_tail": tails,
                "served_config": {
                    "dynamic_batching": served.dynamic_batching,
                    "max_queue_delay_us": served.max_queue_delay_us,
                    "python_instances": served.python_instances,
                },
                "queue_delay_us": args.queue_delay_us,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
