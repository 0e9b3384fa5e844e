"""The retrieval ablation's tuning options: a validation split, a subset of variants, tower settings."""

from __future__ import annotations

from evaluation.ablation import VARIANTS, markdown, run


def test_validation_runs_only_the_chosen_variants_with_the_given_tower_settings():
    notes: list[str] = []
    result = run(
        "tiny", None, 7, 200, notes.append, holdout=1, validation=True, only=("causal",),
        tower_settings={"epochs": 1, "history_length": 8},
    )  # fmt: skip
    chosen = [v.name for v in VARIANTS if "causal" in v.name]
    assert list(result["variants"]) == chosen == ["ANN, causal sequence tower, every position"]
    assert result["split"] == "each user's latest 1 held out of the training split (tuning)"
    assert result["tower_settings"] == {"epochs": 1, "history_length": 8}
    row = result["variants"][chosen[0]]
    assert 0.0 <= row["recall@10"] <= row["recall@100"] <= 1.0 and row["candidates"] > 0
    assert result["filters"] == {}, "the filter table needs the fused variant, which did not run"
    assert "Hard filters" not in markdown(result, "python -m evaluation.ablation …")
    assert len(notes) == 1
