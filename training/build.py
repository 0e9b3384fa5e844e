"""Build every artifact the stack serves, from a data set to a versioned bundle and a Triton repo.

    python -m training.build --out artifacts --size demo
    python -m training.build --out artifacts-movielens --movielens ../shared/data/ml-latest-small
    python -m training.build --out artifacts-eval --size demo --for-evaluation
    python -m training.build --out artifacts-mine --interactions events.csv --items items.csv

Steps: generate (or load) interactions; hold out each user's latest interactions (the protocol of
`training/protocol.py`); fit the retrieval models and the deep ranker on the rest; evaluate
everything offline on the held-out part beside the baselines; write `<out>/bundles/<version>/`
and `<out>/model_repository/ranker/<n>/`.

The bundle served by default knows every interaction: its history, co-visitation and popularity
come from all of them, so a user's latest actions are never forgotten (the models keep the weights
fit on the training split). `--for-evaluation` serves the training split instead and keeps the
held-out truth in the bundle, for `make eval` and the benchmarks. The manifest says which.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from training import device as training_device
from training import distributed
from training.dataset import TIE_ORDERS, Dataset
from training.fit import FitConfig, fit_models, with_device, with_epochs, with_seed, with_settings
from training.movielens import load_movielens
from training.offline_eval import evaluate_offline
from training.own_data import DataProblems, load_files
from training.protocol import HOLDOUT, format_table, split
from training.synthetic import SIZES, generate
from training.two_tower import SEQUENCE_TOWER, USER_TOWERS

# Users sampled for the held-out evaluation: at a million items a user's two held-out items are
# rarely found at all, so it takes this many for NDCG@10 to settle (the exact full-catalog searches
# stay affordable).
MAX_EVAL_USERS = 20_000


def progress(message: str) -> None:
    print(f"[build {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass(frozen=True)
class OwnFiles:
    """A person's own interactions and items files (`training/own_data.py`)."""

    interactions: list[Path]
    items: Path | None = None


def load_data(
    size: str, movielens: Path | None, seed: int, min_rating: float, files: OwnFiles | None = None
) -> Dataset:
    if files is not None:
        names = ", ".join(str(path) for path in files.interactions)
        progress(f"reading interactions from {names}" + (f" and items from {files.items}" if files.items else ""))
        return load_files(files.interactions, files.items)
    if movielens is not None:
        progress(f"loading MovieLens interactions from {movielens} (ratings >= {min_rating})")
        return load_movielens(movielens, min_rating)
    progress(f"generating the synthetic '{size}' data set")
    return generate(SIZES[size], seed=seed)


def build(
    out: Path, size: str, seed: int, epochs: int, movielens: Path | None = None, *, min_rating: float = 0.0,
    for_evaluation: bool = False, holdout: int = HOLDOUT, config: FitConfig | None = None,
    max_dense_items: int = 12_000, files: OwnFiles | None = None, ties: str = "hash",
) -> Path:  # fmt: skip
    from training.bundle import write_bundle  # imports torch-heavy modules only when building

    started = time.monotonic()
    config = with_seed(with_epochs(config or FitConfig(), epochs), seed)
    data = load_data(size, movielens, seed, min_rating, files)
    data.interactions = dataclasses.replace(data.interactions, ties=ties)
    train, test = split(data.interactions, holdout)
    progress(
        f"{data.num_items:,} items, {data.num_users:,} users, {len(train):,} train / {len(test):,} held-out "
        f"interactions (each user's latest {holdout})"
    )
    models = fit_models(data, train, config, progress)
    evaluation = evaluate_offline(data, train, test, models, seed, MAX_EVAL_USERS, max_dense_items, progress)
    print(format_table(evaluation["methods"]), flush=True)
    print("ranking the same candidates:\n" + format_table(evaluation["ranking_on_candidates"],
          ("recall@10", "recall@50", "ndcg@10", "auc")), flush=True)  # fmt: skip
    for note in evaluation["baselines"]["notes"]:
        print(f"  note: {note}", flush=True)

    served = train if for_evaluation else data.interactions
    purpose = "evaluation" if for_evaluation else "serving"
    metadata = {
        "data": {"source": data.source, "size": size if movielens is None and files is None else None, "seed": seed,
                 "min_rating": min_rating if movielens else None, "interactions": len(data.interactions)},
        "purpose": purpose,
        "served_history": {
            "interactions": len(served),
            "what": "the training split; each user's latest interactions held out in holdout_*.npy"
            if for_evaluation else "every interaction (models fit on the training split, tables refit on all)",
        },
        "protocol": {"holdout": holdout, "train": len(train), "held_out": len(test), "ties": ties},
        "training": {
            "two_tower_loss": models.tower_losses,
            "ranker_loss": models.ranker.losses,
            "ranker_validation_loss": models.ranker.validation_losses,
            "ranker_best_epoch": models.ranker.best_epoch,
            "ranker_impressions": {"count": models.ranker.examples, "positives": models.ranker.positives},
            "seconds": {k: round(v, 1) for k, v in models.seconds.items()},
            "device": config.towers.device,
            "settings": dataclasses.asdict(config),  # every setting the models were fit with
        },
        "offline_evaluation": evaluation,
    }  # fmt: skip
    tag = "files" if files is not None else "movielens" if movielens else size
    bundle, model_version = write_bundle(
        out, data, models, served, config, tag + ("-eval" if for_evaluation else ""), metadata,
        held_out=test if for_evaluation else None,
    )  # fmt: skip
    progress(
        f"wrote {purpose} bundle {bundle} ({len(served):,} interactions as history) and ranker version "
        f"{model_version} in {out / 'model_repository'} after {time.monotonic() - started:.0f} s"
    )
    return bundle


def argument_parser() -> argparse.ArgumentParser:
    """The command line (also read by the manifest checks, for the build-artifacts Job's args)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("artifacts"))
    parser.add_argument("--size", choices=sorted(SIZES), default="demo")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=10, help="two-tower training epochs")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--movielens", type=Path, help="a MovieLens folder to use instead of synthetic data")
    source.add_argument(
        "--interactions", type=Path, nargs="+",
        help="your own interactions, CSV or Parquet: user_id, item_id, timestamp[, event_type, weight] (see "
        "training/own_data.py for every column and default); several files are read as one (base data and "
        "the events `python -m training.export_events` wrote)",
    )  # fmt: skip
    parser.add_argument(
        "--items", type=Path,
        help="with --interactions: your items, CSV or Parquet: item_id[, category, provider, maturity, regions, "
        "published_at, title]",
    )  # fmt: skip
    parser.add_argument(
        "--min-rating", type=float, default=0.0, help="MovieLens: keep ratings at or above this (0 = every rating)"
    )
    parser.add_argument("--holdout", type=int, default=HOLDOUT, help="latest interactions held out per user")
    parser.add_argument(
        "--ties", choices=TIE_ORDERS, default="hash",
        help="how a user's interactions in the same second are ordered (so which is held out): hash, an order "
        "with no signal; file, the order read (a stable sort by time, as SASRec's preprocessing of MovieLens)",
    )  # fmt: skip
    parser.add_argument(
        "--user-tower", choices=USER_TOWERS, default="pooled",
        help="pooled: attention pooling of the latest 20 items; sequence: causal self-attention over the "
        "latest 50, trained on every position (docs/models.md)",
    )  # fmt: skip
    parser.add_argument(
        "--device", choices=training_device.DEVICES, default="cpu",
        help="where the towers and the ranker train: cuda falls back to the CPU with a message when torch sees "
        "no GPU; auto takes a GPU when present (training/device.py)",
    )  # fmt: skip
    parser.add_argument(
        "--fit-settings", type=json.loads, default={},
        help='settings of the fitted models as JSON (training/fit.py FitConfig, nested ones as objects), e.g. '
        '\'{"impressions": {"min_positive_cuts": 45000}, "ranker": {"loss": "both"}}\'',
    )  # fmt: skip
    parser.add_argument(
        "--for-evaluation", action="store_true",
        help="serve the training split and keep the held-out truth (make eval, benchmarks)",
    )  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser()
    args = parser.parse_args(argv)
    if args.items is not None and args.interactions is None:
        parser.error("--items goes with --interactions")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    files = OwnFiles(args.interactions, args.items) if args.interactions is not None else None
    device = training_device.resolve(args.device)
    config = with_device(FitConfig(towers=SEQUENCE_TOWER) if args.user_tower == "sequence" else FitConfig(), device)
    try:
        config = with_settings(config, args.fit_settings)
    except (TypeError, ValueError) as exc:
        parser.error(f"--fit-settings: {exc}")
    group = distributed.start(device)
    if group.world > 1:
        progress(f"process {group.rank} of {group.world}: the towers train on every process, the rest on process 0")
    if device != "cpu":
        progress(f"training on {device}")
    try:
        build(
            args.out, args.size, args.seed, args.epochs, args.movielens,
            min_rating=args.min_rating, for_evaluation=args.for_evaluation, holdout=args.holdout, files=files,
            config=config, ties=args.ties,
        )  # fmt: skip
    except DataProblems as exc:
        # Before any training: nothing was written.
        print(f"the data cannot be built from:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except distributed.WorkerDone:
        progress(f"process {group.rank}: towers trained, leaving the rest of the build to process 0")


if __name__ == "__main__":
    main()
