"""Open-loop load: requests leave on a fixed schedule whatever the answers' latency, bounded in
count and time, so queueing shows up in the numbers instead of slowing the generator down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import numpy as np


@dataclass
class Sample:
    sent_at: float  # seconds since the run started
    latency_ms: float
    code: str
    detail: object = None  # whatever the caller extracts from the reply


async def open_loop(
    call: Callable[[int], Awaitable[object]], rate: float, duration_s: float, seed: int = 7, timeout_s: float = 30
) -> list[Sample]:
    """Poisson arrivals at `rate` per second for `duration_s`; each call is awaited concurrently."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, int(rate * duration_s * 1.5) + 10)
    schedule = np.cumsum(gaps)
    schedule = schedule[schedule < duration_s]
    started = time.perf_counter()
    samples: list[Sample] = []

    async def one(n: int, at: float) -> None:
        t = time.perf_counter()
        try:
            detail = await asyncio.wait_for(call(n), timeout_s)
            samples.append(Sample(at, (time.perf_counter() - t) * 1000, "OK", detail))
        except grpc.aio.AioRpcError as exc:
            samples.append(Sample(at, (time.perf_counter() - t) * 1000, exc.code().name, exc.details()))
        except TimeoutError:
            samples.append(Sample(at, (time.perf_counter() - t) * 1000, "CLIENT_TIMEOUT"))

    tasks = []
    for n, at in enumerate(schedule):
        delay = at - (time.perf_counter() - started)
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(n, float(at))))
    await asyncio.gather(*tasks)
    return samples


def summarise(samples: list[Sample], duration_s: float) -> dict[str, float]:
    ok = [s.latency_ms for s in samples if s.code == "OK"]
    return {
        "requests": len(samples),
        "errors": sum(s.code != "OK" for s in samples),
        "throughput_rps": round(len(ok) / duration_s, 1),
        "p50_ms": round(float(np.percentile(ok, 50)), 2) if ok else float("nan"),
        "p90_ms": round(float(np.percentile(ok, 90)), 2) if ok else float("nan"),
        "p99_ms": round(float(np.percentile(ok, 99)), 2) if ok else float("nan"),
    }
