"""The online store on a Redis Cluster (3 masters, a replica each) with one master SIGKILLed under
load: what is lost, how long its users wait, and what replica acks cost, with and without them.

    python -m benchmarks.store_cluster --seconds 6 --kills 3 --out results/bench-cluster

Writers call the events service's own store code (`LiveStore.record`) in this process, so the
figures are the store's, not gRPC's: `--writers` at once, each a batch of `--batch` events of one
user at a time (users spread over every master), each unacknowledged batch retried with the same
ids until it is acknowledged, as a client must. After `--seconds`, the master owning the most
slots' share of the users is killed; once its replica took over, the killed node is restarted (as
Kubernetes restarts a pod) and follows the new master; writing goes on `--seconds` more. Then the
whole log is exported and every acknowledged event looked for. Reported per setting of replica
acks: events a second and record latency before the kill, the failover (kill to a master serving
the slots again), the longest any batch waited, acknowledged events, lost ones, recorded twice.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis.cluster

from funnel.live.schema import Retention
from funnel.live.store import EventRecord, LiveStore, StoreError, connect
from launcher.redis_cluster import StoreCluster
from training.export_events import export

PAUSE_S = 4.0  # past the failover (node timeout 1 s, then the election)


@dataclass
class Trial:
    acknowledged: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)  # acknowledged at the first attempt, before the kill
    waits_s: list[float] = field(default_factory=list)  # first attempt to acknowledgement, every batch
    refusals: int = 0
    steady_events: int = 0
    steady_s: float = 0.0
    failover_s: float = 0.0


async def write(store: LiveStore, users: list[str], batch: int, trial: Trial, stop: asyncio.Event,
                steady: asyncio.Event) -> None:  # fmt: skip
    n = 0
    while not stop.is_set():
        user = users[n % len(users)]
        now = int(time.time() * 1000)
        events = [EventRecord(f"{user}-{n}-{k}", user, f"i{k}", "view", "recent", now, 1.0, "bench")
                  for k in range(batch)]  # fmt: skip
        n += 1
        started = time.perf_counter()
        attempts = 0
        while True:
            attempts += 1
            try:
                await store.record(events, int(time.time() * 1000), "bench")
                break
            except StoreError:
                trial.refusals += 1
                await asyncio.sleep(0.02)
        waited = time.perf_counter() - started
        trial.acknowledged.extend(event.event_id for event in events)
        trial.waits_s.append(waited)
        if steady.is_set():
            trial.steady_events += batch
            if attempts == 1:
                trial.latencies_ms.append(waited * 1000)


async def run_trial(cluster: StoreCluster, fault: str, acks: int, seconds: float, writers: int, batch: int) -> Trial:
    trial = Trial()
    # Longer than the pause, so a command sent to the paused master is still waited for when it wakes.
    timeout_s = PAUSE_S + 3 if fault == "pause" else 1.5
    store = LiveStore(connect(cluster.url, timeout_s, cluster=True), Retention(user_events_per_window=0),
                      replica_acks=acks, replica_timeout_ms=1000)  # fmt: skip
    users = [f"bench-user-{n}" for n in range(writers * 8)]
    stop, steady = asyncio.Event(), asyncio.Event()
    steady.set()
    tasks = [asyncio.create_task(write(store, users[k::writers], batch, trial, stop, steady)) for k in range(writers)]
    started = time.monotonic()
    await asyncio.sleep(seconds)
    steady.clear()
    trial.steady_s = time.monotonic() - started
    victim = cluster.masters_now()[0]
    faulted = time.monotonic()
    if fault == "kill":
        cluster.kill(victim)
        await asyncio.to_thread(cluster.wait_healthy, 60)
        trial.failover_s = time.monotonic() - faulted
        await asyncio.to_thread(cluster.restart, victim)
    else:
        cluster.pause(victim)
        await asyncio.to_thread(cluster.wait_promoted, victim, 60)
        trial.failover_s = time.monotonic() - faulted
        await asyncio.sleep(max(0.0, PAUSE_S - trial.failover_s))
        cluster.resume(victim)  # it wakes a master with its clients' commands waiting, then learns it is not
    await asyncio.to_thread(cluster.wait_healthy, 60)
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    await store.close()
    return trial


def exported_ids(cluster: StoreCluster, out: Path) -> list[str]:
    client = redis.cluster.RedisCluster.from_url(cluster.url, decode_responses=True)
    try:
        export(client, out)
    finally:
        client.close()
    with out.open() as handle:
        return [row["event_id"] for row in csv.DictReader(handle)]


def summary(fault: str, acks: int, trials: list[Trial], lost: list[int], twice: list[int]) -> dict:
    latencies = np.concatenate([t.latencies_ms for t in trials])
    return {
        "fault": fault,
        "replica_acks": acks,
        "kills": len(trials),
        "steady_events_per_s": round(float(np.mean([t.steady_events / t.steady_s for t in trials])), 1),
        "record_p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "record_p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "failover_s": [round(t.failover_s, 2) for t in trials],
        "longest_wait_s": [round(max(t.waits_s), 2) for t in trials],
        "refused_attempts": [t.refusals for t in trials],
        "acknowledged": [len(t.acknowledged) for t in trials],
        "lost": lost,
        "recorded_twice": twice,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| fault | replica acks | events/s before it | record p50 / p99 ms | failover s | longest wait s | "
        "acknowledged | lost | recorded twice |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['fault']} | {r['replica_acks']} | {r['steady_events_per_s']:,.0f} | "
            f"{r['record_p50_ms']} / {r['record_p99_ms']} | "
            f"{', '.join(map(str, r['failover_s']))} | {', '.join(map(str, r['longest_wait_s']))} | "
            f"{', '.join(f'{n:,}' for n in r['acknowledged'])} | {', '.join(map(str, r['lost']))} | "
            f"{', '.join(map(str, r['recorded_twice']))} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="writing before the kill, and after the restart")
    parser.add_argument("--kills", type=int, default=3, help="trials per setting, each on a fresh cluster")
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--acks", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--faults", nargs="+", choices=("kill", "pause"), default=["kill", "pause"],
        help=f"kill: SIGKILL, then a restart once the replica took over; pause: SIGSTOP for {PAUSE_S:.0f} s "
        "(a master cut off from the others while its clients still reach it), then SIGCONT",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("results/bench-cluster"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="funnel-cluster-") as scratch:
        for fault in args.faults:
            for acks in args.acks:
                trials, lost, twice = [], [], []
                for k in range(args.kills):
                    cluster = StoreCluster(Path(scratch) / f"{fault}-{acks}-{k}")
                    try:
                        cluster.start()
                        trial = asyncio.run(run_trial(cluster, fault, acks, args.seconds, args.writers, args.batch))
                        ids = exported_ids(cluster, Path(scratch) / f"export-{fault}-{acks}-{k}.csv")
                    finally:
                        cluster.stop()
                    trials.append(trial)
                    lost.append(len(set(trial.acknowledged) - set(ids)))
                    twice.append(len(ids) - len(set(ids)))
                    print(f"{fault}, replica acks {acks}, trial {k + 1}: {len(trial.acknowledged):,} acknowledged, "
                          f"{lost[-1]} lost, failover {trial.failover_s:.2f} s", flush=True)  # fmt: skip
                rows.append(summary(fault, acks, trials, lost, twice))
    text = table(rows)
    print(text)
    (args.out / "store_cluster.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "store_cluster.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
