"""The MovieLens loaders, on small files written here in each of the three formats."""

from __future__ import annotations

import numpy as np
import pytest

from training.movielens import MovieLensError, load_movielens


def test_ratings_csv_with_movies_csv(tmp_path):
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,10,4.0,964982703\n1,20,2.0,964982704\n2,10,5.0,964982705\n2,30,3.5,964982706\n"
    )
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\n10,"Heat (1995)",Action|Crime\n'
        "20,Toy Story (1995),Animation|Children\n30,Alien (1979),Horror\n"
    )
    assert len(load_movielens(tmp_path).interactions) == 4, "every rating is an interaction by default"
    data = load_movielens(tmp_path, min_rating=3.5)
    assert data.item_ids.tolist() == ["m10", "m20", "m30"]
    assert data.user_ids.tolist() == ["ml1", "ml2"]
    assert len(data.interactions) == 3, "the 2.0 rating is below min_rating and dropped"
    assert [data.category_names[c] for c in data.category] == ["Action", "Animation", "Horror"]
    assert [data.provider_names[p] for p in data.provider] == ["1990s", "1990s", "1970s"]
    assert data.source == f"movielens:{tmp_path.name}"


def test_ratings_dat_with_movies_dat(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    (tmp_path / "movies.dat").write_text(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
    )
    data = load_movielens(tmp_path, min_rating=3)
    assert sorted(data.item_ids.tolist()) == ["m1193", "m661"]
    assert len(data.interactions) == 3
    assert np.all(data.interactions.timestamp > 978_000_000)


def test_u_data_with_u_item_genre_flags(tmp_path):
    (tmp_path / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t4\t891717742\n22\t242\t1\t878887116\n")
    flags_242 = "|".join("1" if g in (5,) else "0" for g in range(19))  # Comedy
    flags_302 = "|".join("1" if g in (6, 16) else "0" for g in range(19))  # Crime, Thriller
    (tmp_path / "u.item").write_text(
        f"242|Kolya (1996)|24-Jan-1997||http://x|{flags_242}\n302|L.A. Confidential (1997)|01-Jan-1997||http://x|{flags_302}\n"
    )
    data = load_movielens(tmp_path, min_rating=3)
    assert len(data.interactions) == 2
    by_id = dict(zip(data.item_ids.tolist(), (data.category_names[c] for c in data.category), strict=True))
    assert by_id == {"m242": "Comedy", "m302": "Crime"}


def test_malformed_and_missing_files_are_named(tmp_path):
    with pytest.raises(MovieLensError, match=r"no ratings\.csv, ratings\.dat or u\.data"):
        load_movielens(tmp_path)
    (tmp_path / "u.data").write_text("196\t242\tthree\t881250949\n")
    (tmp_path / "u.item").write_text("")
    with pytest.raises(MovieLensError, match=r"u.data:1: expected user, item, rating, timestamp"):
        load_movielens(tmp_path)


def test_recbole_atomic_files_become_the_ml_1m_layout_the_loader_reads(tmp_path):
    from evaluation.movielens_1m import FetchError, convert

    items = (
        "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\n"
        "Toy Story (1995)\tToy Story\t1995\tAnimation Children's Comedy\n"
        "Heat (1995)\tHeat\t1995\tAction Crime Thriller\n"
    )
    inter = (
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "1m_7\tHeat (1995)\t5\t978300760\n1m_7\tToy Story (1995)\t3\t978302109\n1m_12\tHeat (1995)\t4\t978298413\n"
    )
    ratings, movies = convert(inter, items)
    assert ratings == ["7::2::5::978300760", "7::1::3::978302109", "12::2::4::978298413"], "file order kept"
    assert movies == ["1::Toy Story (1995)::Animation|Children's|Comedy", "2::Heat (1995)::Action|Crime|Thriller"]
    (tmp_path / "ratings.dat").write_text("".join(f"{line}\n" for line in ratings), encoding="latin-1")
    (tmp_path / "movies.dat").write_text("".join(f"{line}\n" for line in movies), encoding="latin-1")
    data = load_movielens(tmp_path)
    assert len(data.interactions) == 3 and data.num_users == 2 and data.num_items == 2
    with pytest.raises(FetchError, match="Jaws"):
        convert(inter + "1m_7\tJaws (1975)\t4\t978300761\n", items)
