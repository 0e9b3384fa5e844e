"""`python -m evaluation.ablation`: what each retrieval change adds, on the protocol's split.

    python -m evaluation.ablation --size demo --out results/ablation-demo
    python -m evaluation.ablation --movielens ../shared/data/ml-latest-small --out results/ablation-movielens
    python -m evaluation.ablation --movielens data/ml-1m --holdout 1 --validation --only tower --out results/towers-ml1m

Each variant fits the two-tower model (and co-visitation) on the training split and retrieves for
every held-out user as the served funnel does, scored on the held-out interactions beside the
baselines. A last table measures the hard filters: applied inside the search (as served) against
applied after it, by the share of candidates content policy removes downstream.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from funnel.artifacts.catalog import COUNTRIES
from funnel.fusion import DEFAULT_LIMITS
from funnel.policy.document import load_policy
from funnel.retrieval.allowed_items import AllowedItems
from funnel.sources import ANN
from funnel.v1 import common_pb2
from launcher.stack import REPO_ROOT
from training.baselines import evaluate_baselines
from training.build import load_data
from training.candidates import Retriever
from training.covisitation import CoVisitationConfig, build_covisitation
from training.fit import RetrievalModels, catalog_of
from training.offline_eval import HeldOutUsers
from training.protocol import HOLDOUT, accuracy, format_table, split
from training.two_tower import (
    SEQUENCE_TOWER,
    TwoTowerConfig,
    encode_histories,
    item_embeddings,
    latest_first,
    train_two_tower,
)


@dataclass(frozen=True)
class Variant:
    name: str
    towers: TwoTowerConfig
    fused: bool  # every source fused (as served), or the ANN source alone


SERVED = TwoTowerConfig()
VARIANTS = [
    Variant("ANN, mean-pooled history (before)", dataclasses.replace(SERVED, sequence_aware=False), False),
    Variant("ANN, sequence-aware user tower", SERVED, False),
    Variant("ANN, + mixed negatives (uniform)", dataclasses.replace(SERVED, uniform_negatives=1024), False),
    Variant("ANN, + user-id embedding", dataclasses.replace(SERVED, use_user_id=True), False),
    Variant("ANN, causal sequence tower, every position", SEQUENCE_TOWER, False),
    Variant("ANN + co-visitation + popular sources, fused (served)", SERVED, True),
]


def run(
    size: str, movielens: Path | None, seed: int, max_users: int, progress, holdout: int = HOLDOUT,
    validation: bool = False, only: tuple[str, ...] = (), tower_settings: dict | None = None,
) -> dict:  # fmt: skip
    """`validation`: score on the training split's own latest interactions (what tuning may read),
    never on the held-out test part. `only`: the variants whose names contain one of these.
    `tower_settings`: `TwoTowerConfig` fields set in every variant run (a tuning sweep)."""
    data = load_data(size, movielens, seed, 0.0)
    train, test = split(data.interactions, holdout)
    if validation:
        train, test = split(train, holdout)
    held = HeldOutUsers.sample(data, train, test, max_users, seed)
    users, relevant, histories, slots = held.users, held.relevant, held.histories, held.slots
    covisitation = build_covisitation(train, data.num_items, CoVisitationConfig())
    catalog = catalog_of(data, train)
    rows: dict[str, dict] = {}
    filters: dict[str, dict] = {}
    for variant in [v for v in VARIANTS if not only or any(part in v.name for part in only)]:
        started = time.monotonic()
        config = dataclasses.replace(variant.towers, seed=seed, **(tower_settings or {}))
        towers, _ = train_two_tower(data, train, config)
        vectors = item_embeddings(towers)
        ids = users + 1 if config.use_user_id else np.zeros(len(users), np.int64)
        queries = encode_histories(towers, vectors, latest_first(histories, config.history_length), slots, ids)
        limits = DEFAULT_LIMITS if variant.fused else {ANN: DEFAULT_LIMITS[ANN]}
        found = Retriever(catalog, vectors, covisitation, limits).retrieve(histories, queries)
        lists = {int(u): found[n].rows for n, u in enumerate(users)}
        # What ranking gets to choose from: the recall of the whole candidate list.
        pool_recall = [len(set(lists[u].tolist()) & relevant[u]) / len(relevant[u]) for u in lists]
        rows[variant.name] = {
            **accuracy(lists, relevant),
            "recall@all": round(float(np.mean(pool_recall)), 4),
            "candidates": round(float(np.mean([len(v) for v in lists.values()])), 1),
            "seconds": round(time.monotonic() - started, 1),
        }
        progress(f"{variant.name}: {rows[variant.name]}")
        if variant.fused:
            filters = filter_placement(data, RetrievalModels(towers, vectors, covisitation, catalog), histories,
                                       queries, users, relevant)  # fmt: skip
    baselines = evaluate_baselines(train, relevant, data.num_items, seed)
    return {
        "data": data.source,
        "split": f"each user's latest {holdout} held out" + (" of the training split (tuning)" if validation else ""),
        "users": len(users),
        "tower_settings": tower_settings or {},
        "variants": rows,
        "baselines": baselines.metrics,
        "baseline_notes": baselines.notes,
        "filters": filters,
    }


def filter_placement(data, models: RetrievalModels, histories, queries, users, relevant) -> dict:
    """Content policy inside the search (served) against after it: the candidates a user gets."""
    content = load_policy(REPO_ROOT / "config" / "policy.yaml").content
    allowed_items = AllowedItems(models.catalog, content)
    masks = [
        allowed_items.content_mask(common_pb2.Context(country=COUNTRIES[int(data.user_country[u])])) for u in users
    ]
    retriever = models.retriever()
    unfiltered = retriever.retrieve(histories, queries)
    inside = retriever.retrieve(histories, queries, masks)
    removed = [1 - masks[n][c.rows].mean() if len(c.rows) else 0.0 for n, c in enumerate(unfiltered)]
    after = {int(u): unfiltered[n].rows[masks[n][unfiltered[n].rows]] for n, u in enumerate(users)}
    served = {int(u): inside[n].rows for n, u in enumerate(users)}
    return {
        "after the search": {
            **accuracy(after, relevant),
            "removed_share": round(float(np.mean(removed)), 4),
            "candidates_kept": round(float(np.mean([len(v) for v in after.values()])), 1),
        },
        "inside the search (served)": {
            **accuracy(served, relevant),
            "removed_share": 0.0,
            "candidates_kept": round(float(np.mean([len(v) for v in served.values()])), 1),
        },
    }


def markdown(result: dict, command: str) -> str:
    metrics = ("recall@10", "recall@50", "recall@100", "ndcg@10")

    def table(first: str, rows: dict[str, dict], extra: tuple[str, ...] = ()) -> list[str]:
        columns = (*metrics, *extra)
        lines = [f"| {first} | " + " | ".join(columns) + " |", "|---" * (1 + len(columns)) + "|"]
        for name, m in rows.items():
            cells = [f"{m[k]:.4f}" for k in metrics]
            if "removed_share" in m:
                cells += [f"{m['removed_share']:.1%}", f"{m['candidates_kept']:.0f}"]
            elif extra:
                cells += [f"{m['recall@all']:.4f}", f"{m['candidates']:.0f}"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return lines

    baselines = {f"{name} (baseline)": m for name, m in result["baselines"].items()}
    filter_lines = []
    if result["filters"]:
        filter_lines = [
            "Hard filters (the default policy's content rules for each user's country), inside the search or after:",
            "",
            *table("where", result["filters"], ("removed downstream", "candidates kept")),
            "",
        ]
    return "\n".join(
        [
            f"# Retrieval ablation: {result['data']}",
            "",
            f"Command: `{command}`",
            "",
            f"{result['users']:,} held-out users, {result['split']}; candidates as served "
            "(history excluded, in served order), scored beside the baselines on the same split and users.",
            "",
            *table("variant", result["variants"], ("recall of all candidates", "candidates")),
            "",
            *table("baseline", baselines),
            "",
            *[f"- {note}" for note in result.get("baseline_notes", [])],
            "",
            *filter_lines,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="demo")
    parser.add_argument("--movielens", type=Path)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-users", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("results/ablation"))
    parser.add_argument("--holdout", type=int, default=HOLDOUT, help="latest interactions held out per user")
    parser.add_argument(
        "--validation", action="store_true", help="score on the training split's latest interactions (for tuning)"
    )
    parser.add_argument("--only", nargs="+", default=(), help="run the variants whose names contain one of these")
    parser.add_argument(
        "--tower-settings", type=json.loads, default=None,
        help='TwoTowerConfig fields for every variant run, as JSON: \'{"epochs": 20, "history_length": 200}\'',
    )  # fmt: skip
    args = parser.parse_args(argv)
    result = run(
        args.size, args.movielens, args.seed, args.max_users, lambda m: print(f"[ablation] {m}", flush=True),
        args.holdout, args.validation, tuple(args.only), args.tower_settings,
    )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.json").write_text(json.dumps(result, indent=2))
    command = "python -m evaluation.ablation " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    (args.out / "report.md").write_text(markdown(result, command))
    print(format_table({**result["variants"], **result["baselines"]}))
    print(f"[ablation] wrote {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
