"""Build every artifact the stack serves, from a data set to a versioned bundle and a Triton repo.

    python -m training.build --out artifacts --size demo
    python -m training.build --out artifacts-movielens --movielens ../shared/data/ml-latest-small

Steps: generate (or load) interactions, split them in time, train the two-tower model, train the
DCN-v2 ranker on retrieval's own candidates, evaluate both on the held-out interactions, then write
`<out>/bundles/<version>/` (catalog, users, vectors, user tower, metrics) and
`<out>/model_repository/ranker/<n>/`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from funnel.artifacts.catalog import Catalog, Embeddings, Users
from funnel.artifacts.store import new_version_name, write_manifest
from funnel.features import FeatureStore
from services.ranking.model_repository import TritonModelConfig, next_version, write_model_version
from training.dataset import Dataset, Interactions, at_most, temporal_split
from training.movielens import load_movielens
from training.ranker import RankerConfig, build_impressions, export_torchscript, train_ranker
from training.ranking_eval import evaluate_ranking, format_ranking_table
from training.retrieval_eval import evaluate_retrieval, format_table
from training.synthetic import SIZES, generate
from training.two_tower import TwoTowerConfig, compute_embeddings, export_user_tower, train_two_tower

# Users sampled for the held-out evaluations and for ranker impressions at large sizes: enough for
# stable means, and the exact full-catalog searches stay affordable at a million items.
MAX_EVAL_USERS = 5000
MAX_RANKER_USERS = 20000


def progress(message: str) -> None:
    print(f"[build {time.strftime('%H:%M:%S')}] {message}", flush=True)


def users_table(data: Dataset, train: Interactions) -> Users:
    order = np.lexsort((train.timestamp, train.user))
    counts = np.bincount(train.user, minlength=data.num_users)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    items = train.item[order].astype(np.int32)
    affinity = np.zeros((data.num_users, len(data.category_names)), dtype=np.float32)
    np.add.at(affinity, (train.user, data.category[train.item]), 1.0)
    affinity /= np.maximum(counts, 1)[:, None]
    return Users(data.user_ids, indptr, items, affinity, data.user_country.astype(np.int8))


def top_candidates(
    embeddings: Embeddings, user_rows: np.ndarray, k: int, seen: Users | None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k items (and scores) per user, skipping items in the user's history."""
    index = faiss.IndexFlatIP(embeddings.items.shape[1])
    index.add(embeddings.items)
    extra = int(np.diff(seen.history_indptr).max()) if seen is not None else 0
    scores, found = index.search(embeddings.users[user_rows], k + extra)
    rows = np.empty((len(user_rows), k), dtype=np.int64)
    kept_scores = np.empty((len(user_rows), k), dtype=np.float32)
    for n, user in enumerate(user_rows):
        keep = ~np.isin(found[n], seen.history(int(user))) if seen is not None else np.ones(len(found[n]), bool)
        rows[n], kept_scores[n] = found[n][keep][:k], scores[n][keep][:k]
    return rows, kept_scores


def load_data(size: str, movielens: Path | None, seed: int) -> Dataset:
    if movielens is not None:
        progress(f"loading MovieLens interactions from {movielens}")
        return load_movielens(movielens)
    progress(f"generating the synthetic '{size}' data set")
    return generate(SIZES[size], seed=seed)


def build(out: Path, size: str, seed: int, epochs: int, movielens: Path | None = None) -> Path:
    data = load_data(size, movielens, seed)
    train, test = temporal_split(data.interactions, holdout=2)
    # The ranker learns from interactions the embeddings never saw, as it will in serving.
    embedding_train, ranker_positives = temporal_split(train, holdout=2)
    progress(f"{data.num_items} items, {data.num_users} users, {len(train)} train / {len(test)} test interactions")

    progress("training the two-tower model (InfoNCE over in-batch negatives, logQ-corrected)")
    tower_config = TwoTowerConfig(epochs=epochs, seed=seed)
    towers, tower_losses = train_two_tower(data, embedding_train, tower_config)
    popularity = np.bincount(train.item, minlength=data.num_items).astype(np.float32)
    catalog = Catalog(
        data.item_ids, data.category, data.provider, data.maturity, data.region_mask, data.age_days,
        popularity, data.category_names, data.provider_names,
    )  # fmt: skip
    users = users_table(data, train)
    embeddings = compute_embeddings(towers, data, [users.history(u) for u in range(data.num_users)])
    store = FeatureStore(catalog, users, embeddings)

    progress("evaluating retrieval on held-out interactions over the full item set")
    retrieval_metrics = evaluate_retrieval(test, users, embeddings, popularity, seed, MAX_EVAL_USERS)
    print(format_table(retrieval_metrics), flush=True)

    progress("training the ranker on retrieval candidates")
    # Features as they were before the ranker's positives happened: history, affinity and user
    # vectors from the embedding-training period only, so no positive leaks into its own features.
    ranker_users = np.unique(ranker_positives.user)
    if len(ranker_users) > MAX_RANKER_USERS:
        ranker_users = at_most(ranker_users, MAX_RANKER_USERS, np.random.default_rng(seed))
        ranker_positives = ranker_positives.take(np.isin(ranker_positives.user, ranker_users))
    seen = users_table(data, embedding_train)
    early_popularity = np.bincount(embedding_train.item, minlength=data.num_items).astype(np.float32)
    early_embeddings = compute_embeddings(towers, data, [seen.history(u) for u in range(data.num_users)])
    early_catalog = dataclasses.replace(catalog, popularity=early_popularity)
    early_store = FeatureStore(early_catalog, seen, early_embeddings)
    ranker_config = RankerConfig(seed=seed)
    candidate_rows = np.zeros((data.num_users, ranker_config.candidates), dtype=np.int64)
    candidate_rows[ranker_users] = top_candidates(early_embeddings, ranker_users, ranker_config.candidates, seen)[0]
    features, labels = build_impressions(ranker_positives, candidate_rows, early_store, ranker_config)
    progress(f"DCN-v2 ranker on {int(labels.sum())} positive and {int((1 - labels).sum())} negative impressions")
    ranker, ranker_losses = train_ranker(features, labels, store.cardinalities(), ranker_config)

    progress("evaluating the ranker against retrieval order on held-out users' candidates")
    test_users = np.unique(test.user)
    test_users = at_most(test_users, MAX_EVAL_USERS, np.random.default_rng(seed))
    test_candidates, test_scores = top_candidates(embeddings, test_users, 200, users)
    metrics = evaluate_ranking(test, test_candidates, test_scores, test_users, store, ranker)
    print(format_ranking_table(metrics), flush=True)

    version = new_version_name("movielens" if movielens else size)
    bundle = out / "bundles" / version
    bundle.mkdir(parents=True, exist_ok=False)
    catalog.save(bundle)
    users.save(bundle)
    embeddings.save(bundle)
    export_user_tower(towers, str(bundle / "user_tower.pt"))
    (bundle / "retrieval_eval.json").write_text(json.dumps(retrieval_metrics, indent=2))
    np.save(bundle / "holdout_users.npy", test.user, allow_pickle=False)
    np.save(bundle / "holdout_items.npy", test.item, allow_pickle=False)

    repository = out / "model_repository"
    model_version = next_version(repository, "ranker")
    with tempfile.TemporaryDirectory() as tmp:
        scripted = Path(tmp) / "model.pt"
        export_torchscript(ranker, str(scripted))
        write_model_version(repository, scripted, model_version, TritonModelConfig())
    write_manifest(
        bundle,
        version,
        {
            "data": {"source": data.source, "size": size if movielens is None else None, "seed": seed},
            "shapes": {"items": data.num_items, "users": data.num_users, "dim": int(embeddings.items.shape[1])},
            "user_tower": {"history_length": tower_config.history_length, "dim": tower_config.dim},
            "ranker_model_version": model_version,
            "training": {"two_tower_loss": tower_losses, "ranker_loss": ranker_losses},
            "retrieval_metrics": retrieval_metrics,
            "ranking_metrics": metrics,
        },
    )
    progress(f"wrote bundle {bundle} and ranker version {model_version} in {repository}")
    return bundle


def argument_parser() -> argparse.ArgumentParser:
    """The command line (also read by the manifest checks, for the build-artifacts Job's args)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("artifacts"))
    parser.add_argument("--size", choices=sorted(SIZES), default="demo")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=10, help="two-tower training epochs")
    parser.add_argument("--movielens", type=Path, help="a MovieLens folder to use instead of synthetic data")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = argument_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    build(args.out, args.size, args.seed, args.epochs, args.movielens)


if __name__ == "__main__":
    main()
