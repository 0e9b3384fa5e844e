"""The build's --seed reaches every model and sampler (it once reached only the synthetic data)."""

from training.fit import FitConfig, with_epochs, with_seed


def test_one_seed_reaches_towers_impressions_and_ranker() -> None:
    config = with_seed(with_epochs(FitConfig(), 2), 11)
    assert (config.towers.seed, config.impressions.seed, config.ranker.seed) == (11, 11, 11)
    assert config.towers.epochs == 2


def test_default_seed_is_unchanged() -> None:
    default = FitConfig()
    assert with_seed(default, 7) == default
