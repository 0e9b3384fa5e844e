"""Fitting every model the funnel serves, from one training split.

The retrieval models are first fit on each user's earlier interactions, to draw the ranker's
impressions at cuts of their later ones (so ranker features never come from models that saw what
they predict). The served ones are then fit on the whole split: the co-visitation table and
popularity always, the towers only with `refit_epochs` (see there).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from funnel.artifacts.activity import ItemActivity
from funnel.artifacts.catalog import Catalog
from funnel.artifacts.covisitation import CoVisitation
from funnel.features import FeatureStore, country_slots
from training import distributed
from training.candidates import Retriever
from training.covisitation import CoVisitationConfig, build_covisitation
from training.dataset import Dataset, Interactions
from training.impressions import ImpressionConfig, Impressions, Sequences, choose_cuts, draw_impressions, tail_mask
from training.ranker import RankerConfig, RankerTraining, train_ranker
from training.two_tower import (
    TwoTower,
    TwoTowerConfig,
    encode_histories,
    item_embeddings,
    latest_first,
    train_two_tower,
)


@dataclass(frozen=True)
class FitConfig:
    towers: TwoTowerConfig = field(default_factory=TwoTowerConfig)
    # Epochs the served towers continue the early ones on the whole split. 0 serves the early towers
    # as they are: the ranker then reads features from the very models it learnt them from. Refit
    # towers score more sharply than the ones the ranker learnt from, and on the small synthetic set
    # that shift cost the ranker its lead over retrieval order (3 epochs: NDCG@10 0.119 against
    # retrieval's 0.121; none: 0.116 against 0.099); on ml-latest-small it gained 3% either way.
    refit_epochs: int = 0
    covisitation: CoVisitationConfig = field(default_factory=CoVisitationConfig)
    impressions: ImpressionConfig = field(default_factory=ImpressionConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)


@dataclass
class RetrievalModels:
    """What the first stage serves, fit on one set of interactions."""

    towers: TwoTower
    item_vectors: np.ndarray
    covisitation: CoVisitation
    catalog: Catalog  # popularity from the same interactions

    def retriever(self) -> Retriever:
        return Retriever(self.catalog, self.item_vectors, self.covisitation)

    def queries(self, histories: list[np.ndarray], country: np.ndarray) -> np.ndarray:
        """The user tower's vector for each history (oldest first), as the service computes it."""
        matrix = latest_first(histories, self.towers.config.history_length)
        no_ids = np.zeros(len(histories), np.int64)
        return encode_histories(self.towers, self.item_vectors, matrix, country, no_ids)


@dataclass
class FittedModels:
    retrieval: RetrievalModels
    ranker: RankerTraining
    tower_losses: list[float]
    seconds: dict[str, float]


def catalog_of(data: Dataset, interactions: Interactions) -> Catalog:
    popularity = np.bincount(interactions.item, minlength=data.num_items).astype(np.float32)
    return Catalog(
        data.item_ids, data.category, data.provider, data.maturity, data.region_mask, data.age_days,
        popularity, data.category_names, data.provider_names,
    )  # fmt: skip


def fit_retrieval(
    data: Dataset, interactions: Interactions, config: FitConfig, start_from: TwoTower | None = None
) -> tuple[RetrievalModels, list[float]]:
    towers_config = config.towers
    if start_from is not None:
        towers_config = dataclasses.replace(config.towers, epochs=config.refit_epochs)
    if start_from is not None and config.refit_epochs == 0:
        towers, losses = start_from, []
    else:
        towers, losses = train_two_tower(data, interactions, towers_config, start_from)
    covisitation = build_covisitation(interactions, data.num_items, config.covisitation)
    return RetrievalModels(towers, item_embeddings(towers), covisitation, catalog_of(data, interactions)), losses


def home_country_slots(data: Dataset) -> np.ndarray:
    return country_slots(data.user_country.astype(np.int64))


@dataclass
class RankerImpressions:
    """The ranker's training rows, with the early retrieval models and feature store they came from."""

    early: RetrievalModels
    early_losses: list[float]
    store: FeatureStore
    rows: Impressions


def ranker_impressions(
    data: Dataset, train: Interactions, config: FitConfig, progress, seconds: dict
) -> RankerImpressions:
    """Early retrieval models, cuts in each user's tail and the candidates retrieval gave there."""
    started = time.monotonic()
    tail = tail_mask(train, config.impressions)
    early = train.take(~tail)
    progress(f"retrieval models on each user's earlier {len(early):,} interactions (for the ranker's impressions)")
    early_models, early_losses = fit_retrieval(data, early, config)
    seconds["retrieval models (early)"] = time.monotonic() - started
    distributed.towers_trained()

    started = time.monotonic()
    sequences = Sequences.of(train, data.num_users)
    tails = Sequences.of(train.take(tail), data.num_users)
    users = np.unique(train.user)
    cuts = choose_cuts(sequences, tails, config.impressions, users)
    # Windowed popularity reads only what happened before each cut, so the whole split may serve it.
    activity = ItemActivity.from_interactions(train.item, train.timestamp, data.num_items)
    store = FeatureStore(early_models.catalog, early_models.item_vectors, early_models.covisitation, activity)
    rows = draw_impressions(
        cuts, sequences, home_country_slots(data), early_models.queries, early_models.retriever(), store,
        config.impressions,
    )  # fmt: skip
    seconds["ranker impressions"] = time.monotonic() - started
    progress(
        f"deep ranker on {len(rows.labels):,} impressions ({int(rows.labels.sum()):,} positive) from the "
        f"{rows.positive_cuts:,} of {rows.cuts_drawn:,} cuts (of {len(users):,} users' histories) whose candidates "
        "held a next item"
    )
    return RankerImpressions(early_models, early_losses, store, rows)


def fit_models(data: Dataset, train: Interactions, config: FitConfig, progress) -> FittedModels:
    seconds: dict[str, float] = {}
    impressions = ranker_impressions(data, train, config, progress, seconds)
    started = time.monotonic()
    store = impressions.store
    ranker = train_ranker(impressions.rows, store.cardinalities(), store.item_vectors, config.ranker)
    seconds["ranker"] = time.monotonic() - started

    started = time.monotonic()
    progress(f"retrieval tables on all {len(train):,} training interactions (served)")
    served, losses = fit_retrieval(data, train, config, start_from=impressions.early.towers)
    seconds["retrieval models (served)"] = time.monotonic() - started
    return FittedModels(served, ranker, impressions.early_losses + losses, seconds)


def with_epochs(config: FitConfig, epochs: int) -> FitConfig:
    return dataclasses.replace(config, towers=dataclasses.replace(config.towers, epochs=epochs))


def with_seed(config: FitConfig, seed: int) -> FitConfig:
    """The one seed of a build, given to every model and sampler it fits."""
    return dataclasses.replace(
        config,
        towers=dataclasses.replace(config.towers, seed=seed),
        impressions=dataclasses.replace(config.impressions, seed=seed),
        ranker=dataclasses.replace(config.ranker, seed=seed),
    )


def with_settings(config: Any, settings: dict) -> Any:
    """`config` (a dataclass) with `settings` replaced; a dict given for a dataclass field replaces
    that field's own fields, e.g. {"refit_epochs": 2, "impressions": {"tail_fraction": 0.2}}."""
    kind = type(config).__name__
    if not isinstance(settings, dict):
        raise ValueError(f"{kind} settings are an object of field names, not {settings!r}")
    fields = {f.name for f in dataclasses.fields(config)}
    changes = {}
    for name, value in settings.items():
        if name not in fields:
            raise ValueError(f"{kind} has no setting {name!r}; it has {', '.join(sorted(fields))}")
        current = getattr(config, name)
        # A nested configuration is set field by field; a value in its place would replace it whole.
        changes[name] = with_settings(current, value) if dataclasses.is_dataclass(current) else value
    return dataclasses.replace(config, **changes)


def with_device(config: FitConfig, device: str) -> FitConfig:
    """Both trained models on `device` (a resolved one: training/device.py)."""
    return dataclasses.replace(
        config,
        towers=dataclasses.replace(config.towers, device=device),
        ranker=dataclasses.replace(config.ranker, device=device),
    )
