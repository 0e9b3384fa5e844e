"""Replay held-out users through the served funnel, once per stage ablation and policy variant.

The stack is the one `make up` runs (Triton, retrieval, ranking, re-ranking, gateway) on an
evaluation bundle (`training.build --for-evaluation`): trained and served on the training part of
the protocol's split (`training/protocol.py`), with the held-out truth beside it. Each held-out
user sends one request through the gateway, as a client would. Stage ablations restart the gateway
with `--stages`; policy variants are written to the policy file the re-ranking (and retrieval)
hot-reload. Budgets are generous and the quality factor pinned at 1, so latency never changes
what is measured. The baselines (random, popularity, item-kNN, EASE^R) are computed on the same
split for the same users, and set beside every variant.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import yaml

from evaluation.metrics import catalog_coverage, distinct_categories, intra_list_distance, novelty, provider_exposure
from funnel.artifacts.catalog import COUNTRIES, Catalog, Embeddings, Users
from funnel.artifacts.store import latest_version, read_manifest
from funnel.policy.content import ContentFilter
from funnel.policy.document import ContentRules, parse_policy
from funnel.v1 import common_pb2, recommender_pb2, recommender_pb2_grpc
from launcher.stack import REPO_ROOT, Stack, StackConfig
from training.baselines import evaluate_baselines
from training.dataset import Interactions, at_most
from training.protocol import LIST_LENGTH, accuracy

# Coverage, diversity, novelty and exposure: on the top 10 (a first screen) and on the whole served
# list of 100, over which the policy's list constraints (caps, quotas) are defined.
LIST_KS = (10, 100)
ALL_STAGES = "retrieval,ranking,reranking"
# The default policy's rules by what they are for; a rule not named here joins no group.
RULE_GROUPS = {
    "filters": ("exclude_consumed",),
    "dedupe": ("dedupe",),
    "boosts": ("freshness_boost",),
    "diversity": ("mmr", "category_cap"),
    "fairness": ("provider_cap", "provider_min_share"),
}
EVAL_GATEWAY_FLAGS = [
    "--default-deadline-ms", "10000",
    "--retrieval-budget-ms", "3000",
    "--ranking-budget-ms", "3000",
    "--reranking-budget-ms", "3000",
    "--quality-floor", "1",
]  # fmt: skip


@dataclass(frozen=True)
class Variant:
    name: str
    stages: str
    rule_groups: tuple[str, ...] | None  # None: the served policy as it is

    @property
    def kind(self) -> str:
        return "stages" if self.rule_groups is None else "policy"


VARIANTS = [
    Variant("retrieval only", "retrieval", None),
    Variant("retrieval + ranking", "retrieval,ranking", None),
    Variant("full funnel (served policy)", ALL_STAGES, None),
    Variant("filters only", ALL_STAGES, ("filters",)),
    Variant("filters + dedupe", ALL_STAGES, ("filters", "dedupe")),
    Variant("filters + boosts", ALL_STAGES, ("filters", "boosts")),
    Variant("filters + diversity", ALL_STAGES, ("filters", "diversity")),
    Variant("filters + fairness", ALL_STAGES, ("filters", "fairness")),
]


class NotAnEvaluationBundle(SystemExit):
    """The bundle serves every interaction, held-out ones included: replaying it would leak."""


class HeldOut:
    """The held-out truth of a bundle, and what the metrics need from the catalog."""

    def __init__(self, bundle: Path, max_users: int, seed: int) -> None:
        manifest = read_manifest(bundle, verify=False)
        if manifest.get("purpose") != "evaluation" or not (bundle / "holdout_users.npy").is_file():
            raise NotAnEvaluationBundle(
                f"{bundle} is a serving bundle: its history holds the held-out interactions. Build one for "
                "evaluation: python -m training.build --for-evaluation ..."
            )
        self.manifest = manifest
        self.catalog = Catalog.load(bundle)
        self.users = Users.load(bundle)
        self.item_vectors = Embeddings.load(bundle).items
        rows = np.load(bundle / "holdout_users.npy")
        items = np.load(bundle / "holdout_items.npy")
        self.relevant: dict[int, set[int]] = {}
        for user, item in zip(rows.tolist(), items.tolist(), strict=True):
            self.relevant.setdefault(user, set()).add(item)
        everyone = np.array(sorted(self.relevant), dtype=np.int64)
        self.sample = at_most(everyone, max_users, np.random.default_rng(seed))

    def request(self, user: int) -> recommender_pb2.RecommendRequest:
        return recommender_pb2.RecommendRequest(
            user_id=str(self.users.user_ids[user]),
            num_results=LIST_LENGTH,
            context=common_pb2.Context(country=COUNTRIES[int(self.users.country[user])]),
            debug=True,  # the re-ranking then reports what each rule removed
        )

    def train(self) -> Interactions:
        """The interactions the bundle serves (its users' histories): what the baselines are fit on."""
        counts = np.diff(self.users.history_indptr)
        user = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        # Each history is stored in the order the bundle serves it: that order is the tie order.
        items = self.users.history_items.astype(np.int32)
        return Interactions(user, items, self.users.history_times, ties="file")

    def baselines(self, seed: int, content: ContentRules) -> dict:
        """On the same users, under the same hard filters the served funnel obeys for each of them."""
        sampled = {int(u): self.relevant[int(u)] for u in self.sample}
        content_filter = ContentFilter(self.catalog, content)
        rows = np.arange(len(self.catalog))
        by_country: dict[str, np.ndarray] = {}

        def allowed_for(user: int) -> np.ndarray:
            country = COUNTRIES[int(self.users.country[user])]
            if country not in by_country:
                by_country[country] = content_filter.allowed(rows, common_pb2.Context(country=country))
            return by_country[country]

        result = evaluate_baselines(self.train(), sampled, len(self.catalog), seed, allowed_for=allowed_for)
        return {"metrics": result.metrics, "notes": result.notes, "ease_lambda": result.ease_lambda}

    def score(self, lists: dict[int, np.ndarray]) -> dict[str, float]:
        users = sorted(lists)
        metrics: dict[str, float] = dict(accuracy(lists, {u: self.relevant[u] for u in users}))
        c = self.catalog
        for k in LIST_KS:
            shown = [lists[u][:k] for u in users]
            metrics[f"coverage@{k}"] = catalog_coverage(shown, len(c))
            metrics[f"ild@{k}"] = intra_list_distance(shown, self.item_vectors)
            metrics[f"categories@{k}"] = distinct_categories(shown, c.category)
            metrics[f"novelty@{k}"] = novelty(shown, c.popularity)
            exposure = provider_exposure(shown, c.provider, len(c.provider_names))
            metrics.update({f"{name}@{k}": value for name, value in exposure.items()})
        return metrics


def variant_policy(served: dict, groups: tuple[str, ...], version: str) -> dict:
    """The served policy with only the rules of `groups`; content rules are always kept."""
    keep = {rule for group in groups for rule in RULE_GROUPS[group]}
    policy = copy.deepcopy(served)
    policy["version"] = version
    policy["rules"] = [rule for rule in served["rules"] if rule["name"] in keep]
    return policy


@dataclass
class Replayed:
    lists: dict[int, np.ndarray]  # each user's served list, as catalog rows
    degraded: int  # answers the gateway marked degraded
    candidates: int  # candidates re-ranking received, summed over answers
    removed_by_content_policy: int  # of those, what content policy removed
    served_consumed: int  # served items the user had already interacted with


async def replay(
    address: str, held_out: HeldOut, concurrency: int, check: Callable[[recommender_pb2.RecommendResponse], None]
) -> Replayed:
    """One request per sampled user, as a client sends it."""
    out = Replayed({}, 0, 0, 0, 0)
    gate = asyncio.Semaphore(concurrency)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)

        async def one(user: int) -> None:
            async with gate:
                reply = await stub.Recommend(held_out.request(user), timeout=30)
            check(reply)
            out.degraded += reply.degraded
            rows = held_out.catalog.index.rows([item.item_id for item in reply.items])
            out.lists[user] = rows
            out.served_consumed += int(np.isin(rows, held_out.users.history(user)).sum())
            reranking = reply.stages[2]
            out.candidates += reranking.items_in
            out.removed_by_content_policy += sum(r.removed for r in reranking.rules if r.rule == "content_policy")

        await asyncio.gather(*(one(int(user)) for user in held_out.sample))
    return out


class Replayer:
    """A running stack and the means to switch stages and policy between replays."""

    def __init__(self, artifacts: Path, run_dir: Path, progress: Callable[[str], None]) -> None:
        self.progress = progress
        self.served_policy = yaml.safe_load((REPO_ROOT / "config" / "policy.yaml").read_text())
        self.policy_path = run_dir / "policy.yaml"
        self.policy_path.parent.mkdir(parents=True, exist_ok=True)
        self._write_policy(self.served_policy)
        self.stack = Stack(
            StackConfig(
                artifacts=artifacts,
                run_dir=run_dir,
                policy=self.policy_path,
                auto_ports=True,
                gateway_port=0,
                # Every variant asks for the same users: with live state, what one variant served would
                # be left out of the next one's answers. The bundle's history is the protocol's.
                live_state=False,
            )
        )
        self._gateways = 0

    def __enter__(self) -> Replayer:
        self.stack.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.stop()

    def _write_policy(self, policy: dict) -> None:
        staged = self.policy_path.with_suffix(".tmp")
        staged.write_text(yaml.safe_dump(policy, sort_keys=False))
        staged.replace(self.policy_path)  # atomic: the reloader never reads half a file

    def run(self, variant: Variant, held_out: HeldOut, concurrency: int) -> dict:
        version = self.served_policy["version"]
        if variant.rule_groups is not None:
            version = f"eval-{'-'.join(variant.rule_groups)}"
            self._write_policy(variant_policy(self.served_policy, variant.rule_groups, version))
        else:
            self._write_policy(self.served_policy)
        self._gateways += 1
        name = f"gateway-eval-{self._gateways}"
        self.stack.launch_like("gateway", name, [*EVAL_GATEWAY_FLAGS, "--stages", variant.stages])
        self.stack.wait_all_serving()
        address = self.stack.address(name)
        try:
            expect = f"policy:{version}" if "reranking" in variant.stages else None
            asyncio.run(self._wait_for_policy(address, held_out, expect))

            def check(reply: recommender_pb2.RecommendResponse) -> None:
                reranking = reply.stages[2]
                if expect and reranking.version != expect:
                    raise RuntimeError(f"{variant.name}: answered by {reranking.version}, expected {expect}")

            replayed = asyncio.run(replay(address, held_out, concurrency, check))
        finally:
            self.stack.stop_one(name)
        metrics = held_out.score(replayed.lists)
        metrics.update(
            {
                "users": len(replayed.lists),
                "degraded": replayed.degraded,
                "served_consumed": replayed.served_consumed,
                "content_policy_removed_share": replayed.removed_by_content_policy / max(1, replayed.candidates)
                if "reranking" in variant.stages
                else None,
            }
        )
        self.progress(
            f"{variant.name}: NDCG@10 {metrics['ndcg@10']:.4f}  R@100 {metrics['recall@100']:.4f}  "
            f"categories@100 {metrics['categories@100']:.2f}  provider Gini@100 {metrics['provider_gini@100']:.3f}  "
            f"({len(replayed.lists)} users, {replayed.degraded} degraded)"
        )
        return {
            "variant": variant.name,
            "kind": variant.kind,
            "stages": variant.stages,
            "rule_groups": list(variant.rule_groups or ()),
            "policy_version": version,
            "metrics": metrics,
        }

    async def _wait_for_policy(
        self, address: str, held_out: HeldOut, expect: str | None, timeout_s: float = 30
    ) -> None:
        """Until the re-ranking answers with the policy just written (its reload polls the file)."""
        async with grpc.aio.insecure_channel(address) as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while True:
                reply = await stub.Recommend(held_out.request(int(held_out.sample[0])), timeout=30)
                if expect is None or reply.stages[2].version == expect:
                    return
                if loop.time() > deadline:
                    raise TimeoutError(f"re-ranking still answers {reply.stages[2].version}, not {expect}")
                await asyncio.sleep(0.2)


def evaluate(artifacts: Path, run_dir: Path, max_users: int, seed: int, concurrency: int,
             progress: Callable[[str], None], variants: list[Variant] | None = None) -> dict:  # fmt: skip
    bundle = latest_version(artifacts / "bundles")
    if bundle is None:
        raise SystemExit(f"no bundle under {artifacts}/bundles: build one first (make artifacts)")
    held_out = HeldOut(bundle, max_users, seed)
    progress(f"bundle {bundle.name}: {len(held_out.relevant)} held-out users, replaying {len(held_out.sample)}")
    progress("baselines on the same split and users: random, popularity, item-kNN, EASE^R")
    baselines = held_out.baselines(seed, parse_policy((REPO_ROOT / "config" / "policy.yaml").read_text()).content)
    rows = []
    with Replayer(artifacts, run_dir, progress) as replayer:
        for variant in variants or VARIANTS:
            rows.append(replayer.run(variant, held_out, concurrency))
    return {
        "bundle": bundle.name,
        "items": len(held_out.catalog),
        "providers": len(held_out.catalog.provider_names),
        "held_out_users": len(held_out.relevant),
        "replayed_users": len(held_out.sample),
        "seed": seed,
        "protocol": held_out.manifest.get("protocol", {}),
        "data": held_out.manifest.get("data", {}),
        "list_k": list(LIST_KS),
        "baselines": baselines,
        "rule_groups": {group: list(rules) for group, rules in RULE_GROUPS.items()},
        "variants": rows,
    }
