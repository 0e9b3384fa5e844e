"""Writing what the stack serves: a versioned bundle and a new ranker version in the Triton repository.

The bundle's data tables (history, co-visitation, popularity, activity, stored user vectors) come
from the `served` interactions: all of them for a serving bundle, so no user's latest actions are
forgotten; the training split for an evaluation bundle, which also carries the held-out truth.
Model weights come from the fit on the training split either way.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from funnel.artifacts.activity import ItemActivity
from funnel.artifacts.catalog import Embeddings, Users
from funnel.artifacts.store import new_version_name, write_manifest
from funnel.triton.model_repository import TritonModelConfig, next_version, write_model_version
from training.covisitation import build_covisitation
from training.dataset import Dataset, Interactions, chronological
from training.fit import FitConfig, FittedModels, catalog_of, home_country_slots
from training.ranker import export_torchscript
from training.two_tower import export_user_tower


def users_table(data: Dataset, interactions: Interactions) -> Users:
    order = chronological(interactions)
    counts = np.bincount(interactions.user, minlength=data.num_users)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return Users(
        data.user_ids, indptr, interactions.item[order].astype(np.int32),
        interactions.timestamp[order].astype(np.int64), data.user_country.astype(np.int8),
    )  # fmt: skip


def write_bundle(
    out: Path, data: Dataset, models: FittedModels, served: Interactions, config: FitConfig, tag: str,
    metadata: dict, held_out: Interactions | None = None,
) -> tuple[Path, int]:  # fmt: skip
    """Write the bundle and the ranker version; returns (bundle directory, model version)."""
    retrieval = models.retrieval
    catalog = catalog_of(data, served)
    users = users_table(data, served)
    # An evaluation bundle serves the very split the models were fit on: its table is already built.
    covisitation = retrieval.covisitation
    if held_out is None:
        covisitation = build_covisitation(served, data.num_items, config.covisitation)
    activity = ItemActivity.from_interactions(served.item, served.timestamp, data.num_items)
    histories = [users.history(u).astype(np.int64) for u in range(len(users))]
    user_vectors = retrieval.queries(histories, home_country_slots(data))

    version = new_version_name(tag)
    bundle = out / "bundles" / version
    bundle.mkdir(parents=True, exist_ok=False)
    catalog.save(bundle)
    users.save(bundle)
    Embeddings(users=user_vectors.astype(np.float32), items=retrieval.item_vectors.astype(np.float32)).save(bundle)
    covisitation.save(bundle)
    activity.save(bundle)
    export_user_tower(retrieval.towers, str(bundle / "user_tower.pt"))
    if held_out is not None:
        np.save(bundle / "holdout_users.npy", held_out.user, allow_pickle=False)
        np.save(bundle / "holdout_items.npy", held_out.item, allow_pickle=False)
        # When each happened: the streaming replay feeds them in time order (evaluation/streaming.py).
        np.save(bundle / "holdout_times.npy", held_out.timestamp, allow_pickle=False)
    (bundle / "offline_eval.json").write_text(json.dumps(metadata.get("offline_evaluation", {}), indent=2))

    repository = out / "model_repository"
    model_version = next_version(repository, "ranker")
    with tempfile.TemporaryDirectory() as tmp:
        scripted = Path(tmp) / "model.pt"
        export_torchscript(models.ranker.model, str(scripted))
        write_model_version(repository, scripted, model_version, TritonModelConfig())
    write_manifest(
        bundle,
        version,
        {
            **metadata,
            "shapes": {"items": data.num_items, "users": data.num_users, "dim": int(retrieval.item_vectors.shape[1])},
            "user_tower": {
                "history_length": config.towers.history_length, "dim": config.towers.dim,
                "kind": config.towers.user_tower,
            },
            "ranker_model_version": model_version,
        },
    )
    return bundle, model_version
