"""`--fit-settings`: a build's model settings from JSON, nested dataclasses by name."""

from __future__ import annotations

import pytest

from training.build import argument_parser
from training.fit import FitConfig, with_settings


def test_nested_settings_replace_only_what_they_name():
    base = FitConfig()
    config = with_settings(
        base, {"refit_epochs": 2, "impressions": {"min_positive_cuts": 45_000}, "ranker": {"loss": "both"}}
    )
    assert config.refit_epochs == 2
    assert config.impressions.min_positive_cuts == 45_000
    assert config.impressions.max_cuts == base.impressions.max_cuts
    assert config.ranker.loss == "both"
    assert config.ranker.learning_rate == base.ranker.learning_rate
    assert config.towers == base.towers
    assert with_settings(base, {}) == base


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"rankr": {}}, "FitConfig has no setting 'rankr'"),
        ({"ranker": {"los": "both"}}, "RankerConfig has no setting 'los'"),
        ({"ranker": {"loss": "pairwise"}}, "ranker loss 'pairwise'"),
        ({"ranker": "both"}, "RankerConfig settings are an object"),
        ([1], "FitConfig settings are an object"),
    ],
)
def test_unknown_settings_and_values_are_refused_by_name(settings, message):
    with pytest.raises(ValueError, match=message):
        with_settings(FitConfig(), settings)


def test_the_build_reads_them_as_json():
    args = argument_parser().parse_args(["--fit-settings", '{"ranker": {"loss": "both"}}'])
    assert with_settings(FitConfig(), args.fit_settings).ranker.loss == "both"
    assert argument_parser().parse_args([]).fit_settings == {}
