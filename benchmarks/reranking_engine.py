"""The policy engine in-process with every rule on: 500 ranked candidates to 20, then how its time
grows with the candidates (200, 500, 1,000) and the results asked (10, 100).

python -m benchmarks.reranking_engine --artifacts artifacts
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from funnel.artifacts.catalog import Catalog, Embeddings, Users
from funnel.artifacts.store import latest_version
from funnel.policy.document import parse_policy
from funnel.policy.engine import PolicyEngine
from funnel.v1 import common_pb2

EVERY_RULE = """
version: bench
content: {blocked_item_ids: [i0000001], blocked_providers: [provider-00000], default_max_maturity: PG13}
rules:
  - name: exclude_consumed
  - name: dedupe
    near_duplicate_cosine: 0.98
  - name: freshness_boost
    half_life_days: 30
    weight: 0.02
  - name: business_boost
    items: {ITEM: 0.05}
    providers: {provider-00007: 0.01}
  - name: mmr
    lambda: 0.8
    candidates: 100
  - name: category_cap
    max_per_category: 2
    window: 5
  - name: provider_cap
    max_share: 0.3
  - name: provider_min_share
    min_share: 0.1
    max_catalog_items: 60
  - name: pin
    items: {ITEM: 3}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--repeats", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("results/reranking_engine.json"))
    args = parser.parse_args(argv)
    bundle = latest_version(args.artifacts / "bundles")
    if bundle is None:
        print(f"no bundle under {args.artifacts}; run `make artifacts` first", file=sys.stderr)
        return 1
    catalog, users = Catalog.load(bundle), Users.load(bundle)
    pinned = str(catalog.item_ids[np.flatnonzero((catalog.maturity <= 3) & (catalog.region_mask == -1))[10]])
    engine = PolicyEngine(
        catalog, users, Embeddings.load(bundle).items, parse_policy(EVERY_RULE.replace("ITEM", pinned))
    )
    context = common_pb2.Context(country="US")

    def timed(candidates: int, results: int) -> tuple[list[float], int]:
        rng = np.random.default_rng(7)
        timings, size = [], 0
        for n in range(args.repeats + 50):
            ids = [str(i) for i in catalog.item_ids[rng.choice(len(catalog), candidates, replace=False)]]
            scores = rng.random(candidates).astype(np.float32)
            started = time.perf_counter()
            result = engine.run(str(users.user_ids[n % len(users.user_ids)]), ids, scores, context, set(), results)
            if n >= 50:  # the first calls warm caches
                timings.append((time.perf_counter() - started) * 1000)
            size = len(result.positions)
        return timings, size

    timings, size = timed(500, 20)
    curve = []
    for candidates in (200, 500, 1000):
        for results in (10, 100):
            cell, cell_size = timed(candidates, results)
            curve.append({"candidates": candidates, "num_results": results, "result_size": cell_size,
                          "p50_ms": round(float(np.percentile(cell, 50)), 3),
                          "p99_ms": round(float(np.percentile(cell, 99)), 3)})  # fmt: skip
    summary = {
        "rules": [rule.name for rule in engine.rules],
        "candidates": 500,
        "num_results": 20,
        "p50_ms": round(float(np.percentile(timings, 50)), 3),
        "p99_ms": round(float(np.percentile(timings, 99)), 3),
        "last_result_size": size,
        "as_work_grows": curve,
    }
    print(json.dumps(summary))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
