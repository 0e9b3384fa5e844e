"""Bringing your own files: every malformed case gets its own clear error with file, line and
column, and the build stops before training (exit 2); good files give the dataset they describe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from funnel.artifacts.catalog import COUNTRIES, MATURITY_NAMES, WORLDWIDE
from launcher.stack import REPO_ROOT
from training.own_data import DataProblems, load_files

INTERACTIONS = "user_id,item_id,timestamp,event_type,weight\n"
ITEMS = "item_id,category,provider,maturity,regions,published_at,title\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_good_files_give_the_dataset_they_describe(tmp_path):
    interactions = write(
        tmp_path / "events.csv",
        INTERACTIONS
        + "u2,b,1700000100,view,1\n"
        + "u10,a,2023-11-14T22:15:00Z,,\n"  # ISO time, default type and weight
        + "u2,a,1700000300.5,purchase,19.99\n"
        + "u2,c,1700000400,impression,\n"  # an exposure, not an interaction
        + "u10,c,1700000500,dismiss,\n",
    )
    items = write(
        tmp_path / "items.csv",
        ITEMS + "a,drama,studio-1,R,US|DE,1690000000,A\nb,,,,,,\nc,comedy,studio-2,1,GB,2023-01-01,C\n",
    )
    data = load_files(interactions, items)
    assert data.item_ids.tolist() == ["a", "b", "c"]
    assert data.user_ids.tolist() == ["u2", "u10"], "natural order"
    assert len(data.interactions) == 3, "impressions and dismissals are not interactions"
    a, b = 0, 1
    assert [data.category_names[k] for k in data.category] == ["drama", "unknown", "comedy"]
    assert [data.provider_names[k] for k in data.provider] == ["studio-1", "unknown", "studio-2"]
    assert data.maturity.tolist() == [MATURITY_NAMES.index("R"), 2, 1]
    assert data.region_mask[a] == (1 << COUNTRIES.index("US")) | (1 << COUNTRIES.index("DE"))
    assert data.region_mask[b] == WORLDWIDE
    latest = 1700000300
    assert data.age_days[a] == pytest.approx((latest - 1690000000) / 86400, rel=1e-5)
    assert data.age_days[b] == pytest.approx((latest - 1700000100) / 86400, rel=1e-5), "first interaction"
    assert data.interactions.timestamp.min() == 1700000100


def test_without_an_items_file_every_item_gets_the_defaults(tmp_path):
    data = load_files(write(tmp_path / "e.csv", "user_id,item_id,timestamp\nu,x,1700000000\nu,y,1700000001\n"))
    assert data.item_ids.tolist() == ["x", "y"] and data.category_names == ["unknown"]
    assert (data.region_mask == WORLDWIDE).all()


def test_parquet_files_read_like_csv(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "events.parquet"
    pq.write_table(
        pa.table({"user_id": ["u", "u"], "item_id": ["x", None], "timestamp": [1700000000, 1700000001]}), path
    )
    with pytest.raises(DataProblems) as error:
        load_files(path)
    assert error.value.problems == [f"{path} row 2, column item_id: empty"]


@pytest.mark.parametrize(
    ("interactions", "items", "expected"),
    [
        ("user_id,item,timestamp\nu,x,1\n", None, "events.csv:1, column item_id: missing (the header has"),
        (INTERACTIONS + "u,x,yesterday,,\n", None, "events.csv:2, column timestamp: 'yesterday' is neither"),
        (INTERACTIONS + "u,x,-5,,\n", None, "events.csv:2, column timestamp: '-5' is not a time after 1970"),
        (INTERACTIONS + ",x,1700000000,,\n", None, "events.csv:2, column user_id: empty"),
        (INTERACTIONS + "u,x,1700000000,watch,\n", None, "events.csv:2, column event_type: 'watch' is not one of"),
        (INTERACTIONS + "u,x,1700000000,view,nan\n", None, "events.csv:2, column weight: 'nan' is not a finite"),
        (INTERACTIONS + "u,x,1700000000,view,\nu,zz,1700000001,view,\n", ITEMS + "x,,,,,,\n",
         "events.csv:3, column item_id: 'zz' is not in the items file"),
        (INTERACTIONS + "u,x,1700000000,,\n", ITEMS + "x,,,,,,\nx,,,,,,\n",
         "items.csv:3, column item_id: 'x' appears twice"),
        (INTERACTIONS + "u,x,1700000000,,\n", ITEMS + "x,,,PG17,,,\n",
         "items.csv:2, column maturity: 'PG17' is not one of"),
        (INTERACTIONS + "u,x,1700000000,,\n", ITEMS + "x,,,,US|XX,,\n", "items.csv:2, column regions: XX not among"),
        (INTERACTIONS + "u,x,1700000000,,\n", ITEMS + "x,,,,,soon,\n", "items.csv:2, column published_at: 'soon'"),
        (INTERACTIONS + "u,x,1700000000,impression,\n", None, "no interactions (impressions and dismissals"),
        (INTERACTIONS, None, "no interactions"),
        ("", None, "events.csv:1, column user_id: missing (the header has nothing)"),
    ],
)  # fmt: skip
def test_each_malformed_case_gets_its_own_clear_error(tmp_path, interactions, items, expected):
    events = write(tmp_path / "events.csv", interactions)
    catalog = write(tmp_path / "items.csv", items) if items is not None else None
    with pytest.raises(DataProblems) as error:
        load_files(events, catalog)
    assert expected in str(error.value), str(error.value)


def test_a_missing_file_and_many_problems_are_reported_at_once(tmp_path):
    with pytest.raises(DataProblems, match=r"nope\.csv, column -: no such file"):
        load_files(tmp_path / "nope.csv")
    rows = "".join(f"u,x,bad{n},,\n" for n in range(30))
    with pytest.raises(DataProblems) as error:
        load_files(write(tmp_path / "events.csv", INTERACTIONS + rows))
    assert len(error.value.problems) == 20 and str(error.value).endswith("... and 10 more")


@pytest.mark.processes
def test_the_build_stops_before_training_with_exit_2(tmp_path):
    events = write(tmp_path / "events.csv", INTERACTIONS + "u,x,never,,\n")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "training.build", "--out", str(out), "--interactions", str(events)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "events.csv:2, column timestamp: 'never'" in result.stderr
    assert not out.exists(), "nothing was written"


def test_own_files_build_a_bundle_with_their_own_ids(tmp_path):
    from funnel.artifacts.catalog import Catalog
    from funnel.artifacts.store import latest_version
    from training.build import OwnFiles, build

    rng = np.random.default_rng(3)
    lines = [f"user-{u},item-{rng.integers(0, 60)},{1700000000 + u * 1000 + k}" for u in range(80) for k in range(8)]
    events = write(tmp_path / "events.csv", "user_id,item_id,timestamp\n" + "\n".join(lines) + "\n")
    build(tmp_path / "out", "tiny", seed=7, epochs=1, files=OwnFiles([events]))
    catalog = Catalog.load(latest_version(tmp_path / "out" / "bundles"))
    assert set(catalog.item_ids.tolist()) <= {f"item-{n}" for n in range(60)}


def test_base_data_and_exported_events_are_read_as_one(tmp_path):
    from training.export_events import COLUMNS

    base = write(tmp_path / "base.csv", "user_id,item_id,timestamp\nu,x,1700000000\n")
    exported = write(
        tmp_path / "events.csv",
        ",".join(COLUMNS) + "\nu,y,1700000100.250,view,0.0,e-1\nu,x,1700000200.000,impression,0,r-1\n",
    )
    data = load_files([base, exported])
    assert data.item_ids.tolist() == ["x", "y"] and len(data.interactions) == 2
    assert data.source == "files:base.csv+events.csv"
