"""Loads real interactions in the MovieLens formats into the same Dataset the synthetic data uses.

Formats, told apart by the files in the folder:
  ratings.csv + movies.csv   (ml-latest, ml-25m, ...)     userId,movieId,rating,timestamp
  ratings.dat + movies.dat   (ml-1m)                      UserID::MovieID::Rating::Timestamp
  u.data + u.item            (ml-100k)                    user<TAB>item<TAB>rating<TAB>timestamp

Every rating is an interaction by default: a rating means the movie was watched, whatever the
score, so it is history a recommender must know (and must not recommend again). `min_rating`
keeps only ratings at or above it, for those who want "liked" as the signal. A movie's first genre
is its category.
MovieLens has no providers, maturity ratings or regions: the provider is the release decade, every
movie is rated PG and available everywhere, and age is days from release year to the last rating.
It is a preset of `training/own_data.py`: the same items and interactions a person's own files give.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from training.dataset import Dataset
from training.own_data import ItemRecord, natural_order, to_dataset

U_ITEM_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_YEAR = re.compile(r"\((\d{4})\)\s*$")


class MovieLensError(ValueError):
    """The folder holds no MovieLens data set, or a file in it is malformed."""


def load_movielens(folder: Path, min_rating: float = 0.0) -> Dataset:
    folder = Path(folder)
    if (folder / "ratings.csv").exists():
        ratings = _read_ratings_csv(folder / "ratings.csv")
        movies = _read_movies_csv(folder / "movies.csv")
    elif (folder / "ratings.dat").exists():
        ratings = _read_delimited(folder / "ratings.dat", "::")
        movies = _read_movies_dat(folder / "movies.dat")
    elif (folder / "u.data").exists():
        ratings = _read_delimited(folder / "u.data", "\t")
        movies = _read_u_item(folder / "u.item")
    else:
        raise MovieLensError(f"{folder}: no ratings.csv, ratings.dat or u.data")
    return _to_dataset(ratings, movies, min_rating, folder.name)


def _read_ratings_csv(path: Path) -> list[tuple[str, str, float, int]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:4]] != ["userId", "movieId", "rating", "timestamp"]:
            raise MovieLensError(f"{path}: expected the header userId,movieId,rating,timestamp")
        return [_rating(row, path, n) for n, row in enumerate(reader, 2)]


def _read_delimited(path: Path, separator: str) -> list[tuple[str, str, float, int]]:
    with path.open(encoding="latin-1") as handle:
        return [
            _rating(line.rstrip("\n").split(separator), path, n) for n, line in enumerate(handle, 1) if line.strip()
        ]


def _rating(fields: list[str], path: Path, line: int) -> tuple[str, str, float, int]:
    try:
        return fields[0].strip(), fields[1].strip(), float(fields[2]), int(fields[3])
    except (IndexError, ValueError):
        raise MovieLensError(f"{path}:{line}: expected user, item, rating, timestamp") from None


def _read_movies_csv(path: Path) -> dict[str, tuple[str, list[str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return {row["movieId"]: (row["title"], row["genres"].split("|")) for row in reader}


def _read_movies_dat(path: Path) -> dict[str, tuple[str, list[str]]]:
    movies = {}
    with path.open(encoding="latin-1") as handle:
        for line in handle:
            if line.strip():
                movie_id, title, genres = line.rstrip("\n").split("::")
                movies[movie_id] = (title, genres.split("|"))
    return movies


def _read_u_item(path: Path) -> dict[str, tuple[str, list[str]]]:
    movies = {}
    with path.open(encoding="latin-1") as handle:
        for line in handle:
            if line.strip():
                fields = line.rstrip("\n").split("|")
                flags = fields[5 : 5 + len(U_ITEM_GENRES)]
                movies[fields[0]] = (
                    fields[1],
                    [g for g, flag in zip(U_ITEM_GENRES, flags, strict=False) if flag == "1"],
                )
    return movies


def _to_dataset(
    ratings: list[tuple[str, str, float, int]], movies: dict[str, tuple[str, list[str]]], min_rating: float, name: str
) -> Dataset:
    """The preset of `training.own_data`: MovieLens as items and interactions files would say it."""
    kept = [r for r in ratings if r[2] >= min_rating]
    if not kept:
        raise MovieLensError(f"no rating reaches min_rating={min_rating}")
    item_keys = sorted({r[1] for r in kept} | set(movies), key=natural_order)
    items = []
    for key in item_keys:
        title, genres = movies.get(key, ("", []))
        year = _year(title)
        items.append(
            ItemRecord(
                item_id=f"m{key}",
                category=(genres or ["unknown"])[0],
                provider=f"{year // 10 * 10}s" if year else "unknown-decade",
                published_at=((year or 1970) - 1970) * 365.25 * 86_400.0,
            )
        )
    interactions = [(f"ml{user}", f"m{item}", float(ts)) for user, item, _, ts in kept]
    return to_dataset(items, interactions, f"movielens:{name}")


def _year(title: str) -> int:
    match = _YEAR.search(title.strip())
    return int(match.group(1)) if match else 0


def write_files(folder: Path, out: Path, min_rating: float = 0.0) -> tuple[Path, Path]:
    """The MovieLens folder as the two files `training.build --interactions/--items` reads, so the
    preset and a person's own data (exported events included) can be built together."""
    data = load_movielens(folder, min_rating)
    out.mkdir(parents=True, exist_ok=True)
    interactions, items = out / "interactions.csv", out / "items.csv"
    with interactions.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "timestamp", "event_type"])
        i = data.interactions
        for user, item, ts in zip(i.user.tolist(), i.item.tolist(), i.timestamp.tolist(), strict=True):
            writer.writerow([data.user_ids[user], data.item_ids[item], ts, "rating"])
    with items.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "category", "provider", "maturity", "regions", "published_at"])
        last = int(data.interactions.timestamp.max())
        for n, item_id in enumerate(data.item_ids.tolist()):
            published = last - float(data.age_days[n]) * 86_400.0
            writer.writerow([item_id, data.category_names[data.category[n]], data.provider_names[data.provider[n]],
                             int(data.maturity[n]), "", f"{published:.0f}"])  # fmt: skip
    return interactions, items


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write a MovieLens folder as interactions.csv and items.csv")
    parser.add_argument("--movielens", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--min-rating", type=float, default=0.0)
    args = parser.parse_args()
    print(*write_files(args.movielens, args.out, args.min_rating))
