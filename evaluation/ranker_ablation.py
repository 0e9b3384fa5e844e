"""`python -m evaluation.ranker_ablation`: what each ranker change adds, on the same candidates.

    python -m evaluation.ranker_ablation --size demo --out results/ranker-ablation-demo
    python -m evaluation.ranker_ablation --movielens data/ml-1m --holdout 1 --validation --out results/ranker-ml1m

The retrieval models and the ranker's impressions are fit once, as the build fits them; each
variant then trains a ranker on those same impressions and re-orders the same served candidates
for every held-out user. `--validation` scores on the training split's own latest interactions
(what tuning may read), never on the test part. `--ranker-settings` sets `RankerConfig` fields in
every variant (a tuning sweep), and a list of them runs each variant once per element.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from funnel.artifacts.activity import ItemActivity
from funnel.features import FeatureBatch, FeatureStore, UserContext
from training.build import load_data
from training.classification import auc
from training.fit import FitConfig, fit_retrieval, ranker_impressions, with_epochs, with_seed, with_settings
from training.offline_eval import HeldOutUsers
from training.protocol import HOLDOUT, accuracy, format_table, split
from training.ranker import RankerConfig, score, train_ranker


@dataclass(frozen=True)
class Variant:
    name: str
    settings: dict  # RankerConfig fields


VARIANTS = [
    Variant("engineered features only (no item ids)", {"item_dim": 0}),
    Variant("+ target attention over retrieval's item vectors, frozen", {"item_dim": 64, "train_item_table": False}),
    Variant("+ target attention, frozen, Adam with L2 decay", {"item_dim": 64, "optimizer": "adam"}),
    Variant("+ target attention, frozen, AdamW decay 1e-2", {"item_dim": 64, "weight_decay": 1e-2}),
    Variant("+ target attention, frozen, batches of whole cuts", {"item_dim": 64, "cut_batches": True}),
    Variant("+ target attention, frozen, listwise loss", {"item_dim": 64, "loss": "listwise"}),
    Variant("+ target attention, frozen, log loss and listwise", {"item_dim": 64, "loss": "both"}),
    Variant("+ target attention, item table trained from retrieval's", {"item_dim": 64, "train_item_table": True}),
    Variant("+ target attention, item table trained, 32 dims", {"item_dim": 32, "train_item_table": True}),
]


@dataclass
class HeldOutCandidates:
    """Served candidates and their features for each held-out user, computed once for every variant."""

    features: list[FeatureBatch]
    rows: list[np.ndarray]
    tower_scores: list[np.ndarray]  # the user vector's dot product with each candidate's item vector
    relevant: dict[int, set[int]]
    users: np.ndarray


def held_out_candidates(data, train, test, config: FitConfig, early_towers, max_users: int, seed: int):
    served, _ = fit_retrieval(data, train, config, start_from=early_towers)
    held = HeldOutUsers.sample(data, train, test, max_users, seed)
    queries = served.queries(held.histories, held.slots)
    found = served.retriever().retrieve(held.histories, queries)
    activity = ItemActivity.from_interactions(train.item, train.timestamp, data.num_items)
    store = FeatureStore(served.catalog, served.item_vectors, served.covisitation, activity)
    features, tower_scores = [], []
    for n, user in enumerate(held.users.tolist()):
        history, times = held.sequences.of_user(user)
        context = UserContext(history, int(times[-1]), int(held.slots[n]), queries[n])
        features.append(store.features(context, found[n].rows, found[n].sources))
        tower_scores.append(served.item_vectors[found[n].rows] @ queries[n])
    return HeldOutCandidates(features, [c.rows for c in found], tower_scores, held.relevant, held.users)


def ranked_metrics(model, held: HeldOutCandidates) -> dict[str, float]:
    lists, labels, scores = {}, [], []
    for n, user in enumerate(held.users.tolist()):
        predicted = score(model, held.features[n])
        lists[user] = held.rows[n][np.argsort(-predicted, kind="stable")]
        labels.append(np.isin(held.rows[n], list(held.relevant[user])).astype(np.float32))
        scores.append(predicted)
    return {**accuracy(lists, held.relevant), "auc": round(auc(np.concatenate(labels), np.concatenate(scores)), 4)}


def ranker_variants(
    config: FitConfig, only: tuple[str, ...], ranker_settings: dict | list[dict] | None
) -> list[tuple[str, RankerConfig]]:
    """(name, ranker configuration) of each variant to train. A list of settings is a sweep: each
    chosen variant once per element, named with it."""
    sweep = ranker_settings if isinstance(ranker_settings, list) else [ranker_settings or {}]
    if not all(isinstance(settings, dict) for settings in sweep):
        raise ValueError("ranker settings are an object of RankerConfig fields, or a list of such objects")
    chosen = [v for v in VARIANTS if not only or any(part in v.name for part in only)]
    return [
        (v.name + (f" {json.dumps(s)}" if len(sweep) > 1 else ""),
         with_settings(config, {"ranker": {**v.settings, **s}}).ranker)
        for v in chosen for s in sweep
    ]  # fmt: skip


def configured(
    seed: int, epochs: int, fit_settings: dict | None, only: tuple[str, ...], ranker_settings: dict | list[dict] | None
) -> tuple[FitConfig, list[tuple[str, RankerConfig]]]:
    """The fit's configuration (`epochs`: the two-tower epochs) and every variant's, built before any
    training, so a misspelt setting is refused by name at once."""
    config = with_settings(with_seed(with_epochs(FitConfig(), epochs), seed), fit_settings or {})
    return config, ranker_variants(config, only, ranker_settings)


def run(
    size: str, movielens: Path | None, seed: int, max_users: int, holdout: int = HOLDOUT, validation: bool = False,
    only: tuple[str, ...] = (), ranker_settings: dict | list[dict] | None = None, epochs: int = 10, progress=print,
    fit_settings: dict | None = None,
) -> dict:  # fmt: skip
    config, variants = configured(seed, epochs, fit_settings, only, ranker_settings)
    data = load_data(size, movielens, seed, 0.0)
    train, test = split(data.interactions, holdout)
    if validation:
        train, test = split(train, holdout)
    seconds: dict[str, float] = {}
    impressions = ranker_impressions(data, train, config, progress, seconds)
    started = time.monotonic()
    held = held_out_candidates(data, train, test, config, impressions.early.towers, max_users, seed)
    seconds["served retrieval models and held-out candidates"] = time.monotonic() - started
    users = held.users.tolist()
    retrieval_order = {u: held.rows[n] for n, u in enumerate(users)}
    # The candidates in the served user tower's order: its own top items (the ANN source alone's
    # top 10, which the fused candidates always hold).
    tower_order = {u: held.rows[n][np.argsort(-held.tower_scores[n], kind="stable")] for n, u in enumerate(users)}
    rows: dict[str, dict] = {
        "retrieval order": accuracy(retrieval_order, held.relevant),
        "user tower's order": accuracy(tower_order, held.relevant),
    }
    store = impressions.store
    for name, ranker_config in variants:
        progress(f"ranker variant: {name} {dataclasses.asdict(ranker_config)}")
        started = time.monotonic()
        training = train_ranker(impressions.rows, store.cardinalities(), store.item_vectors, ranker_config)
        trained = time.monotonic() - started
        rows[name] = {
            **ranked_metrics(training.model, held),
            "train_seconds": round(trained, 1),
            "best_epoch": training.best_epoch,
            "trained_parameters": sum(p.numel() for p in training.model.parameters() if p.requires_grad),
        }
        print(format_table(rows, ("recall@10", "ndcg@10", "recall@50", "auc")), flush=True)
    return {
        "data": data.source,
        "split": "validation (the training split's own latest interactions)" if validation else "test",
        "holdout": holdout,
        "users": len(held.users),
        "impressions": {"count": len(impressions.rows.labels), "positives": int(impressions.rows.labels.sum())},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "ranker_settings": ranker_settings or {},
        "fit_settings": fit_settings or {},
        "rows": rows,
    }


def markdown(result: dict, command: str) -> str:
    metrics = ("recall@10", "ndcg@10", "recall@50", "auc", "train_seconds", "best_epoch", "trained_parameters")
    lines = [
        f"# Ranker ablation: {result['data']}",
        "",
        f"`{command}`",
        "",
        f"Scored on the {result['split']}, {result['users']:,} users, {result['holdout']} held-out item(s) each; "
        f"every ranker trained on the same {result['impressions']['count']:,} impressions "
        f"({result['impressions']['positives']:,} positive) and re-ordering the same served candidates.",
        "",
        "| ranker | " + " | ".join(metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for name, row in result["rows"].items():
        lines.append(f"| {name} | " + " | ".join(str(row.get(m, "")) for m in metrics) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="demo")
    parser.add_argument("--movielens", type=Path)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-users", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=10, help="two-tower training epochs, as the build's")
    parser.add_argument("--holdout", type=int, default=HOLDOUT)
    parser.add_argument("--validation", action="store_true", help="score on the training split's latest items")
    parser.add_argument("--only", nargs="+", default=(), help="run the variants whose names contain one of these")
    parser.add_argument(
        "--ranker-settings", type=json.loads,
        help='RankerConfig fields as JSON, e.g. {"item_dim": 64}; a list of objects runs each variant once per object',
    )  # fmt: skip
    parser.add_argument(
        "--fit-settings", type=json.loads,
        help='FitConfig fields as JSON, nested as objects: {"refit_epochs": 2, "impressions": {"max_cuts": 5000}}',
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("results/ranker-ablation"))
    args = parser.parse_args(argv)
    try:  # the same configuration `run` builds first: bad settings as a usage error, before any work
        configured(args.seed, args.epochs, args.fit_settings, tuple(args.only), args.ranker_settings)
    except ValueError as error:
        parser.error(str(error))
    result = run(
        args.size, args.movielens, args.seed, args.max_users, args.holdout, args.validation, tuple(args.only),
        args.ranker_settings, args.epochs, fit_settings=args.fit_settings,
    )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ranker_ablation.json").write_text(json.dumps(result, indent=2))
    command = "python -m evaluation.ranker_ablation " + shlex.join(argv if argv is not None else sys.argv[1:])
    (args.out / "report.md").write_text(markdown(result, command))
    print(f"wrote {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
