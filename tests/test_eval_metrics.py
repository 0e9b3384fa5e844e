"""Beyond-accuracy metrics against small cases computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.metrics import (
    catalog_coverage,
    distinct_categories,
    gini,
    intra_list_distance,
    novelty,
    provider_exposure,
)

LISTS = [np.array([0, 1]), np.array([1, 2])]


def test_catalog_coverage_counts_each_item_shown_once():
    assert catalog_coverage(LISTS, 10) == pytest.approx(3 / 10)
    assert catalog_coverage([np.array([4, 4, 4])], 4 + 1) == pytest.approx(1 / 5)


def test_intra_list_distance_is_the_mean_pairwise_cosine_distance():
    vectors = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    # list [0, 1]: orthogonal -> distance 1; list [1, 2]: orthogonal -> 1; list [0, 2]: same direction -> 0
    assert intra_list_distance(LISTS, vectors) == pytest.approx(1.0)
    assert intra_list_distance([np.array([0, 2])], vectors) == pytest.approx(0.0)
    # three items: pairs (0,1)=1, (0,2)=0, (1,2)=1 -> 2/3
    assert intra_list_distance([np.array([0, 1, 2])], vectors) == pytest.approx(2 / 3)


def test_distinct_categories_is_the_mean_per_list():
    category = np.array([5, 5, 7])
    assert distinct_categories(LISTS, category) == pytest.approx((1 + 2) / 2)


def test_novelty_is_the_mean_self_information_of_shown_items():
    popularity = np.array([6.0, 0.0, 1.0])  # smoothed: 7, 1, 2 of 10
    expected = np.mean([-np.log2(0.7), -np.log2(0.1), -np.log2(0.1), -np.log2(0.2)])
    assert novelty(LISTS, popularity) == pytest.approx(expected)


def test_gini_of_equal_and_of_concentrated_exposure():
    assert gini(np.array([3.0, 3.0, 3.0, 3.0])) == pytest.approx(0.0)
    assert gini(np.array([0.0, 0.0, 0.0, 4.0])) == pytest.approx(0.75)  # (n-1)/n when one holds all
    assert gini(np.array([1.0, 3.0])) == pytest.approx(0.25)  # mean abs difference 1 / (2 * mean 2)
    assert gini(np.zeros(3)) == 0.0


def test_provider_exposure_counts_providers_never_shown():
    provider = np.array([0, 0, 1])
    exposure = provider_exposure(LISTS, provider, num_providers=4)  # exposure per provider: 3, 1, 0, 0
    assert exposure["provider_gini"] == pytest.approx(gini(np.array([3.0, 1.0, 0.0, 0.0])))
    assert exposure["provider_gini"] == pytest.approx(0.625)
    assert exposure["top1pct_provider_share"] == pytest.approx(3 / 4)  # one provider: the top one
