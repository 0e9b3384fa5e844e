"""Does the funnel keep full ranking's quality at a fraction of its cost? Measured, per catalog size.

    python -m benchmarks.full_ranking --artifacts artifacts-100k artifacts-1m --users 2000   (make bench)

For held-out users, one request at a time, each asking for the best 100 items:
- the funnel, served: a request through the gateway of a running stack (retrieval, ranking on
  Triton, re-ranking), with the default policy and with a policy of hard filters only (so the
  accuracy that diversity and fairness rules trade away is visible);
- full ranking, served: every item scored by the ranker on Triton, through the ranking service's
  own client (requests of the model's max batch, sent concurrently, batched again by Triton): what
  ranking everything would cost on the serving path (on a few users: it is slow);
- full ranking, in-process: the same TorchScript file in this process with torch on every core,
  batches of 65,536 rows and no RPC: a lower bound on its cost (on --full-users of the sample).
Held-out interactions are rare among a million items, so a mean over a few hundred users is noisy:
quality ratios are paired (the funnel on the very users full ranking ran for) and carry a 95%
bootstrap interval over users.
Full ranking scores every item as one candidate list: the ranker's retrieval features (its rank
and source) are those of an ANN search that returned the whole catalog, i.e. each item's place in
the user tower's order.
Both obey the same hard filters (content policy for the user's country, items the user consumed),
and are scored on the user's held-out interactions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import torch
import yaml

from benchmarks.e2e_load import Scenario, start_stack
from funnel.artifacts.catalog import COUNTRIES
from funnel.artifacts.store import latest_version
from funnel.features import BundleFeatures, UserContext
from funnel.policy.content import ContentFilter
from funnel.policy.document import load_policy
from funnel.sources import ANN, source_code
from funnel.triton.client import TritonRanker
from funnel.triton.model_repository import TritonModelConfig
from funnel.v1 import common_pb2, recommender_pb2, recommender_pb2_grpc
from launcher.ports import reserve_port, start_server
from launcher.stack import REPO_ROOT
from launcher.triton import TritonServer
from training.evaluate import ndcg_at_k, recall_at_k

POLICY = REPO_ROOT / "config" / "policy.yaml"
CHUNK = 65_536  # rows per ranker call: large batches are torch's best case
RESULTS = 100
BOOTSTRAP = 2000


class Judge:
    """The held-out truth and the hard filters both methods must obey."""

    def __init__(self, bundle: Path, users: int, seed: int) -> None:
        self.tables = BundleFeatures(bundle)
        self.catalog = self.tables.catalog
        self.users = self.tables.users
        self.store = self.tables.store
        holdout_users = np.load(bundle / "holdout_users.npy")
        holdout_items = np.load(bundle / "holdout_items.npy")
        order = np.argsort(holdout_users, kind="stable")
        ids, starts = np.unique(holdout_users[order], return_index=True)
        groups = np.split(holdout_items[order], starts[1:])
        self.relevant = {int(u): set(g.tolist()) for u, g in zip(ids, groups, strict=True)}
        self.sample = np.sort(np.random.default_rng(seed).choice(ids, min(users, len(ids)), replace=False))
        self.content = ContentFilter(self.catalog, load_policy(POLICY).content)
        self._allowed: dict[str, np.ndarray] = {}

    def country(self, user: int) -> str:
        return COUNTRIES[int(self.users.country[user])]

    def allowed(self, country: str) -> np.ndarray:
        """Items the content policy lets this country see (computed once per country)."""
        if country not in self._allowed:
            rows = np.arange(len(self.catalog))
            self._allowed[country] = self.content.apply(rows, common_pb2.Context(country=country)).keep
        return self._allowed[country]

    def score(self, user: int, ranked_rows: np.ndarray) -> dict[str, float]:
        relevant = self.relevant[user]
        return {
            "ndcg@10": ndcg_at_k(ranked_rows, relevant, 10),
            "recall@10": recall_at_k(ranked_rows, relevant, 10),
            f"recall@{RESULTS}": recall_at_k(ranked_rows, relevant, RESULTS),
        }


def everything_as_candidates(judge: Judge, user: int) -> tuple[UserContext, np.ndarray, np.ndarray]:
    """Every item as one list of candidates: (context, rank of each item, source codes). With no
    retrieval to place them, each item's rank is its place in the user tower's order over the
    whole catalog, as if ANN had returned everything."""
    context = judge.tables.context(user)
    n = len(judge.catalog)
    if context.query is None:
        return context, np.zeros(n, dtype=np.float32), np.full(n, source_code(ANN), dtype=np.int64)
    order = np.argsort(-(judge.store.item_vectors @ context.query), kind="stable")
    rank = np.empty(n, dtype=np.float32)
    rank[order] = np.arange(n, dtype=np.float32)
    return context, rank, np.full(n, source_code(ANN), dtype=np.int64)


def full_ranking(judge: Judge, model: torch.jit.ScriptModule, user: int) -> np.ndarray:
    """Every item scored by the ranker; the best 10 the filters allow."""
    rows = np.arange(len(judge.catalog))
    scores = np.empty(len(rows), dtype=np.float32)
    context, rank, sources = everything_as_candidates(judge, user)
    with torch.inference_mode():
        for start in range(0, len(rows), CHUNK):
            part = slice(start, start + CHUNK)
            batch = judge.store.features(context, rows[part], sources[part], positions=rank[part])
            out = model(torch.from_numpy(batch.dense), torch.from_numpy(batch.categorical))
            scores[start : start + CHUNK] = out.numpy().ravel()
    return top_allowed(judge, user, scores)


def top_allowed(judge: Judge, user: int, scores: np.ndarray) -> np.ndarray:
    scores[~judge.allowed(judge.country(user))] = -np.inf
    scores[judge.users.history(user)] = -np.inf
    best = np.argpartition(-scores, RESULTS)[:RESULTS]
    return best[np.argsort(-scores[best], kind="stable")]


def triton_method(judge: Judge, artifacts: Path, users: np.ndarray, run_dir: Path) -> Measured:
    """Every item scored through Triton by the ranking service's client, one user at a time."""
    run_dir.mkdir(parents=True, exist_ok=True)
    repository, log = artifacts / "model_repository", run_dir / "triton.log"
    triton = start_server(lambda: TritonServer(repository, reserve_port(), reserve_port(), reserve_port(), log), 120)
    try:
        rows = np.arange(len(judge.catalog))
        loop = asyncio.new_event_loop()

        async def connect() -> TritonRanker:  # the client's channel belongs to the loop it is made in
            return TritonRanker(triton.grpc_url, "ranker", TritonModelConfig().max_batch_size)

        ranker = loop.run_until_complete(connect())

        def run(user: int) -> np.ndarray:
            context, rank, sources = everything_as_candidates(judge, user)
            features = judge.store.features(context, rows, sources, positions=rank)
            scores = loop.run_until_complete(ranker.score(features, None, timeout_s=600)).values
            return top_allowed(judge, user, scores.astype(np.float32))

        try:
            return measure("full ranking (Triton, served)", users, run, judge)
        finally:
            loop.run_until_complete(ranker.close())
            loop.close()
    finally:
        triton.stop()


@dataclass
class Measured:
    """One method's per-user metrics and latencies, in the order of the users it ran for."""

    name: str
    users: np.ndarray
    metrics: dict[str, np.ndarray]
    latencies_ms: np.ndarray

    def summary(self) -> dict:
        return {
            "name": self.name,
            "users": len(self.users),
            **{metric: round(float(values.mean()), 4) for metric, values in self.metrics.items()},
            "p50_ms": round(float(np.median(self.latencies_ms)), 2),
            "p99_ms": round(float(np.percentile(self.latencies_ms, 99)), 2),
        }

    def on(self, users: np.ndarray) -> dict[str, np.ndarray]:
        """This method's metrics for a subset of its users, in that subset's order."""
        where = {int(u): i for i, u in enumerate(self.users)}
        picked = np.array([where[int(u)] for u in users])
        return {metric: values[picked] for metric, values in self.metrics.items()}


def measure(name: str, users: np.ndarray, run, judge: Judge) -> Measured:
    latencies, scored = [], []
    for user in users:
        started = time.perf_counter()
        ranked = run(int(user))
        latencies.append((time.perf_counter() - started) * 1000)
        scored.append(judge.score(int(user), ranked))
    metrics = {metric: np.array([s[metric] for s in scored]) for metric in scored[0]}
    measured = Measured(name, np.asarray(users), metrics, np.array(latencies))
    figures = "  ".join(f"{m} {v.mean():.4f}" for m, v in metrics.items())
    print(f"    {name:32} {figures}  p50 {np.median(latencies):8.1f} ms", flush=True)
    return measured


def paired_ratio(numerator: np.ndarray, denominator: np.ndarray, seed: int) -> dict:
    """mean(numerator) / mean(denominator) over the same users, with a 95% bootstrap interval."""
    if denominator.sum() == 0:
        return {"ratio": float("nan"), "low": float("nan"), "high": float("nan")}
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(numerator), size=(BOOTSTRAP, len(numerator)))
    top, bottom = numerator[draws].mean(axis=1), denominator[draws].mean(axis=1)
    ratios = np.divide(top, bottom, out=np.full(BOOTSTRAP, np.nan), where=bottom > 0)
    low, high = np.nanpercentile(ratios, [2.5, 97.5])
    return {"ratio": float(numerator.mean() / denominator.mean()), "low": float(low), "high": float(high)}


def funnel_method(name: str, judge: Judge, artifacts: Path, policy: Path, env: dict, run_dir: Path) -> Measured:
    stack = start_stack(Scenario(name, artifacts, env=env), run_dir, policy=policy)
    try:
        with grpc.insecure_channel(stack.address("gateway")) as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)

            def run(user: int) -> np.ndarray:
                request = recommender_pb2.RecommendRequest(
                    user_id=str(judge.users.user_ids[user]),
                    num_results=RESULTS,
                    context=common_pb2.Context(country=judge.country(user)),
                )
                reply = stub.Recommend(request, timeout=5)
                return judge.catalog.index.rows([item.item_id for item in reply.items])

            for user in judge.sample[:20]:  # warm-up
                run(int(user))
            return measure(name, judge.sample, run, judge)
    finally:
        stack.stop()


def filters_only_policy(directory: Path) -> Path:
    """The default policy's content rules with only the exclusion filter: no boosts, diversity or caps."""
    document = yaml.safe_load(POLICY.read_text())
    document["version"] = f"{document['version']}-filters-only"
    document["rules"] = [{"name": "exclude_consumed"}]
    path = directory / "filters-only.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def compare(artifacts: Path, users: int, seed: int, run_dir: Path, full_users: int, triton_users: int) -> dict:
    bundle = latest_version(artifacts / "bundles")
    if bundle is None:
        raise SystemExit(f"no bundle under {artifacts}")
    judge = Judge(bundle, users, seed)
    items = len(judge.catalog)
    print(f"== {items:,} items, {len(judge.sample)} held-out users", flush=True)
    repository = artifacts / "model_repository" / "ranker"
    version = max(int(p.name) for p in repository.iterdir() if p.name.isdigit())
    model = torch.jit.load(str(repository / str(version) / "model.pt"), map_location="cpu").eval()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    env = {"FUNNEL_INDEX_FACTORY": "IVF4096,Flat", "FUNNEL_SEARCH_PARAMS": "nprobe=64"} if items >= 500_000 else {}
    with tempfile.TemporaryDirectory() as tmp:
        funnels = [
            funnel_method("funnel (default policy)", judge, artifacts, POLICY, env, run_dir / "default"),
            funnel_method(
                "funnel (hard filters only)", judge, artifacts, filters_only_policy(Path(tmp)), env, run_dir / "filters"
            ),
        ]
    # A paired subset, spread over the sample (its order is by user id, so take every n-th).
    paired = judge.sample[:: max(1, len(judge.sample) // full_users)][:full_users]
    full = measure("full ranking (in-process torch)", paired, lambda u: full_ranking(judge, model, u), judge)
    served = triton_method(judge, artifacts, paired[:triton_users], run_dir / "triton")
    truth = full.on(paired)
    ratios = []
    for funnel in funnels:
        mine, latency = funnel.on(paired), float(np.median(funnel.latencies_ms))
        ratios.append({
            "funnel": funnel.name,
            "paired_users": len(paired),
            "speedup_in_process": float(np.median(full.latencies_ms)) / latency,
            "speedup_served": float(np.median(served.latencies_ms)) / latency,
            **{
                f"quality_{metric}": paired_ratio(mine[metric], truth[metric], seed)
                for metric in ("ndcg@10", f"recall@{RESULTS}")
            },
        })  # fmt: skip
    return {
        "items": items,
        "users": len(judge.sample),
        "results": RESULTS,
        "methods": [m.summary() for m in (*funnels, full, served)],
        "ratios": ratios,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, nargs="+", required=True, help="one artifact root per size")
    parser.add_argument("--users", type=int, default=2000, help="held-out users asked through the funnel")
    parser.add_argument("--full-users", type=int, default=200, help="of those, users full ranking runs for")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--triton-users", type=int, default=20, help="users for full ranking through Triton")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    sizes = [
        compare(a, args.users, args.seed, args.out / "run" / f"full-{a.name}", args.full_users, args.triton_users)
        for a in args.artifacts
    ]
    path = args.out / "full_ranking.json"
    path.write_text(json.dumps({"sizes": sizes}, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
