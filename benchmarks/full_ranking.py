"""Does the funnel keep full ranking's quality at a fraction of its cost? Measured, per catalog size.

    python -m benchmarks.full_ranking --artifacts artifacts-100k artifacts-1m --users 200   (make bench)

For the same held-out users, one request at a time:
- the funnel, served: a request through the gateway of a running stack (retrieval, ranking on
  Triton, re-ranking), with the default policy and with a policy of hard filters only (so the
  accuracy that diversity and fairness rules trade away is visible);
- full ranking, served: every item scored by the ranker on Triton, through the ranking service's
  own client (requests of the model's max batch, sent concurrently, batched again by Triton): what
  ranking everything would cost on the serving path (on fewer users: it is slow);
- full ranking, in-process: the same TorchScript file in this process with torch on every core,
  batches of 65,536 rows and no RPC: a lower bound on its cost.
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
from pathlib import Path

import grpc
import numpy as np
import torch
import yaml

from benchmarks.e2e_load import Scenario, start_stack
from funnel.artifacts.catalog import COUNTRIES
from funnel.artifacts.store import latest_version
from funnel.features import BundleFeatures, UserContext
from funnel.launcher.processes import free_port
from funnel.launcher.stack import REPO_ROOT
from funnel.launcher.triton import TritonServer
from funnel.policy.content import ContentFilter
from funnel.policy.document import load_policy
from funnel.sources import ANN, source_code
from funnel.v1 import common_pb2, recommender_pb2, recommender_pb2_grpc
from services.ranking.model_repository import TritonModelConfig
from services.ranking.triton import TritonRanker
from training.evaluate import ndcg_at_k, recall_at_k

POLICY = REPO_ROOT / "config" / "policy.yaml"
CHUNK = 65_536  # rows per ranker call: large batches are torch's best case


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

    def score(self, user: int, ranked_rows: np.ndarray) -> tuple[float, float]:
        relevant = self.relevant[user]
        return ndcg_at_k(ranked_rows, relevant, 10), recall_at_k(ranked_rows, relevant, 10)


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
    best = np.argpartition(-scores, 10)[:10]
    return best[np.argsort(-scores[best], kind="stable")]


def triton_method(judge: Judge, artifacts: Path, users: np.ndarray, run_dir: Path) -> dict:
    """Every item scored through Triton by the ranking service's client, one user at a time."""
    run_dir.mkdir(parents=True, exist_ok=True)
    triton = TritonServer(artifacts / "model_repository", free_port(), free_port(), free_port(), run_dir / "triton.log")
    triton.start()
    try:
        triton.wait_ready()
        rows = np.arange(len(judge.catalog))
        loop = asyncio.new_event_loop()

        async def connect() -> TritonRanker:  # the client's channel belongs to the loop it is made in
            return TritonRanker(triton.grpc_url, "ranker", TritonModelConfig().max_batch_size)

        ranker = loop.run_until_complete(connect())

        def run(user: int) -> np.ndarray:
            context, rank, sources = everything_as_candidates(judge, user)
            features = judge.store.features(context, rows, sources, positions=rank)
            scores = loop.run_until_complete(ranker.score(features, timeout_s=600)).values
            return top_allowed(judge, user, scores.astype(np.float32))

        try:
            return measure("full ranking (Triton, served)", users, run, judge)
        finally:
            loop.run_until_complete(ranker.close())
            loop.close()
    finally:
        triton.stop()


def measure(name: str, users: np.ndarray, run, judge: Judge) -> dict:
    latencies, ndcg, recall = [], [], []
    for user in users:
        started = time.perf_counter()
        ranked = run(int(user))
        latencies.append((time.perf_counter() - started) * 1000)
        n, r = judge.score(int(user), ranked)
        ndcg.append(n)
        recall.append(r)
    print(f"    {name:32} NDCG@10 {np.mean(ndcg):.4f}  Recall@10 {np.mean(recall):.4f}  "
          f"p50 {np.median(latencies):8.1f} ms", flush=True)  # fmt: skip
    return {
        "name": name,
        "users": len(users),
        "ndcg@10": round(float(np.mean(ndcg)), 4),
        "recall@10": round(float(np.mean(recall)), 4),
        "p50_ms": round(float(np.median(latencies)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
    }


def funnel_method(name: str, judge: Judge, artifacts: Path, policy: Path, env: dict, run_dir: Path) -> dict:
    stack = start_stack(Scenario(name, artifacts, env=env), run_dir, policy=policy)
    try:
        with grpc.insecure_channel(stack.address("gateway")) as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)

            def run(user: int) -> np.ndarray:
                request = recommender_pb2.RecommendRequest(
                    user_id=str(judge.users.user_ids[user]),
                    num_results=10,
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


def compare(artifacts: Path, users: int, seed: int, run_dir: Path, triton_users: int) -> dict:
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
        methods = [
            funnel_method("funnel (default policy)", judge, artifacts, POLICY, env, run_dir / "default"),
            funnel_method(
                "funnel (hard filters only)", judge, artifacts, filters_only_policy(Path(tmp)), env, run_dir / "filters"
            ),
        ]
    full = measure("full ranking (in-process torch)", judge.sample, lambda u: full_ranking(judge, model, u), judge)
    served = triton_method(judge, artifacts, judge.sample[:triton_users], run_dir / "triton")
    methods += [full, served]
    ratios = [
        {
            "funnel": m["name"],
            "against": against["name"],
            "speedup": against["p50_ms"] / m["p50_ms"],
            "quality": m["ndcg@10"] / full["ndcg@10"] if full["ndcg@10"] else float("nan"),
        }
        for m in methods[:2]
        for against in (full, served)
    ]
    return {"items": items, "users": len(judge.sample), "methods": methods, "ratios": ratios}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, nargs="+", required=True, help="one artifact root per size")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--triton-users", type=int, default=20, help="users for full ranking through Triton")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    sizes = [
        compare(a, args.users, args.seed, args.out / "run" / f"full-{a.name}", args.triton_users)
        for a in args.artifacts
    ]
    path = args.out / "full_ranking.json"
    path.write_text(json.dumps({"sizes": sizes}, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
