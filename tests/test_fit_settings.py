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


def test_a_ranker_ablation_sweep_trains_each_chosen_variant_once_per_setting():
    from evaluation.ranker_ablation import ranker_variants

    config = with_settings(FitConfig(), {"ranker": {"learning_rate": 0.01}})
    swept = ranker_variants(config, ("log loss and listwise",), [{}, {"hidden": 128, "item_summary": 32}])
    assert [name.endswith(suffix) for (name, _), suffix in zip(swept, ("{}", "32}"), strict=True)] == [True, True]
    assert [(c.loss, c.hidden, c.item_summary, c.learning_rate) for _, c in swept] == [
        ("both", 64, 16, 0.01), ("both", 128, 32, 0.01)
    ]
    (name, single), = ranker_variants(config, ("log loss and listwise",), {"hidden": 32})
    assert single.hidden == 32 and not name.endswith("}")
    with pytest.raises(ValueError, match="RankerConfig has no setting 'hiden'"):
        ranker_variants(config, (), [{"hiden": 3}])
    with pytest.raises(ValueError, match="or a list of such objects"):
        ranker_variants(config, (), [5])
