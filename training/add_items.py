"""Add items to the served catalog without retraining: a new bundle version that is the served one
plus the new items, which every stage picks up by hot swap within its poll interval (5 s).

    python -m training.add_items --artifacts artifacts --items new_items.csv

The items file is the one `training.build --items` reads (CSV or Parquet). A new item gets the
mean direction of its category's items plus that of its provider's (unit norm), so the two-tower
search finds it for users who like that category (new items of one category and provider share a
vector until they are trained, and re-ranking's dedupe then keeps one of them per list), and the
age of a brand-new item, so the fresh source puts it first; it has no interactions yet (popularity
0, no co-visitation). Its category and provider must be ones the
bundle knows: the ranker embeds both, and a new one needs a rebuild. An id already in the catalog
is refused. Every problem is reported with its file, line and column; nothing is published then
(exit 2). The models and the ranker version are the served ones; the next `training.build` learns
the items from their interactions.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from funnel.artifacts.activity import ItemActivity
from funnel.artifacts.catalog import Catalog, Embeddings
from funnel.artifacts.covisitation import CoVisitation
from funnel.artifacts.store import MANIFEST, latest_version, new_version_name, read_manifest, write_manifest
from training.own_data import DataProblems, ItemRecord, read_items


def add_items(artifacts: Path, items: Path) -> Path:
    """Publish the served bundle plus the items of `items` as a new version; its directory."""
    bundles = artifacts / "bundles"
    served = latest_version(bundles)
    if served is None:
        raise DataProblems([f"{bundles}: no bundle to add items to; build one first (training.build)"])
    records = read_items(items)
    catalog = Catalog.load(served)
    _check(records, catalog, items)
    version = _later_than(served.name)
    target = bundles / version
    staging = bundles / f".{version}.tmp"  # not a version until renamed, and no manifest until then
    shutil.copytree(served, staging, ignore=shutil.ignore_patterns(MANIFEST))
    try:
        _extend(staging, served, catalog, records)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    metadata = {
        k: v for k, v in read_manifest(served, verify=False).items() if k not in ("version", "files", "created")
    }
    metadata["shapes"] = {**metadata.get("shapes", {}), "items": len(catalog) + len(records)}
    metadata["added_items"] = {"to": served.name, "count": len(records), "from": str(items)}
    write_manifest(target, version, metadata)  # last: the version is complete from here on
    return target


def _later_than(served: str, wait_s: float = 5.0) -> str:
    """A version name that sorts after `served` (versions are ordered by name): a bundle built in
    this very second may sort after "<same second>-items", so wait for the next second."""
    deadline = time.monotonic() + wait_s
    while (version := new_version_name("items")) <= served:
        if time.monotonic() > deadline:
            raise DataProblems([f"the served bundle {served} is dated in the future: check the clock"])
        time.sleep(0.1)
    return version


def _check(records: list[ItemRecord], catalog: Catalog, path: Path) -> None:
    known_categories, known_providers = set(catalog.category_names), set(catalog.provider_names)
    problems = []
    for record in records:
        where = f"{path} (item {record.item_id!r})"
        if catalog.index.row(record.item_id) >= 0:
            problems.append(f"{where}, column item_id: already in the catalog")
        if record.category not in known_categories:
            problems.append(f"{where}, column category: {record.category!r} is not a category of the bundle "
                            "(the ranker embeds categories: a new one needs training.build)")  # fmt: skip
        if record.provider not in known_providers:
            problems.append(f"{where}, column provider: {record.provider!r} is not a provider of the bundle "
                            "(the ranker embeds providers: a new one needs training.build)")  # fmt: skip
    if problems:
        raise DataProblems(problems[:20], max(0, len(problems) - 20))


def _extend(directory: Path, served: Path, catalog: Catalog, records: list[ItemRecord]) -> None:
    n = len(records)
    category = np.array([catalog.category_names.index(r.category) for r in records], dtype=catalog.category.dtype)
    provider = np.array([catalog.provider_names.index(r.provider) for r in records], dtype=catalog.provider.dtype)
    activity = ItemActivity.load(served)
    published = np.array([activity.latest if r.published_at is None else r.published_at for r in records])
    extended = Catalog(
        item_ids=np.concatenate([catalog.item_ids, [r.item_id for r in records]]),
        category=np.concatenate([catalog.category, category]),
        provider=np.concatenate([catalog.provider, provider]),
        maturity=np.concatenate([catalog.maturity, [r.maturity for r in records]]).astype(catalog.maturity.dtype),
        region_mask=np.concatenate([catalog.region_mask, [r.region_mask for r in records]]).astype(np.int64),
        # Age as of the bundle's clock (its latest interaction): a brand-new item is 0 days old.
        age_days=np.concatenate([catalog.age_days, np.maximum(0.0, (activity.latest - published) / 86_400.0)]).astype(
            catalog.age_days.dtype
        ),
        popularity=np.concatenate([catalog.popularity, np.zeros(n)]).astype(catalog.popularity.dtype),
        category_names=catalog.category_names,
        provider_names=catalog.provider_names,
    )
    extended.save(directory)
    embeddings = Embeddings.load(served)
    Embeddings(
        embeddings.users,
        np.concatenate([embeddings.items, _cold_vectors(embeddings.items, catalog, category, provider)]),
    ).save(directory)
    covisitation = CoVisitation.load(served)
    covisitation.indptr = np.concatenate([covisitation.indptr, np.full(n, covisitation.indptr[-1])])  # no neighbours
    covisitation.save(directory)
    activity.first_seen = np.concatenate([activity.first_seen, np.full(n, -1, dtype=activity.first_seen.dtype)])
    activity.save(directory)


def _cold_vectors(items: np.ndarray, catalog: Catalog, categories: np.ndarray, providers: np.ndarray) -> np.ndarray:
    """For each new item, its category's and its provider's mean item directions, summed, at unit
    norm: near what users of that category like, and apart from new items of other providers."""

    def direction(members: np.ndarray) -> np.ndarray:
        mean = (items[members] if members.any() else items).mean(axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-12)

    out = np.empty((len(categories), items.shape[1]), dtype=items.dtype)
    for n, (category, provider) in enumerate(zip(categories.tolist(), providers.tolist(), strict=True)):
        vector = direction(catalog.category == category) + direction(catalog.provider == provider)
        out[n] = vector / max(float(np.linalg.norm(vector)), 1e-12)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--items", type=Path, required=True, help="the new items, CSV or Parquet")
    args = parser.parse_args(argv)
    try:
        bundle = add_items(args.artifacts, args.items)
    except DataProblems as exc:
        print(f"no items were added:\n{exc}", file=sys.stderr)
        return 2
    added = json.loads((bundle / MANIFEST).read_text())["added_items"]["count"]
    print(f"published {bundle} with {added} new items; every stage swaps to it within its poll interval")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
