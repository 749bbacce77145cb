"""`make grid`'s pure parts: the profile it runs with, its arguments and its last line."""

from __future__ import annotations

import pytest

from experiment_grid import DEFAULT_VARIANTS, _split, grid_profile, summary_line
from run_lineage import load_profile


def test_each_cell_scores_only_its_own_policy_and_the_profile_is_kept():
    profile = load_profile("gpu")
    grid = grid_profile(profile)
    evaluation = grid["ops"]["evaluation_report"]["config"]
    assert evaluation["score_start_policies"] is False
    assert grid["ops"]["generalization_report"]["config"]["score_start_policies"] is False
    assert (
        evaluation["max_new_tokens"]
        == profile["ops"]["evaluation_report"]["config"]["max_new_tokens"]
    )
    assert grid["ops"]["rl_checkpoint"] == profile["ops"]["rl_checkpoint"]
    assert "score_start_policies" not in profile["ops"]["evaluation_report"]["config"]  # a copy
    assert grid_profile({})["ops"]["evaluation_report"]["config"] == {"score_start_policies": False}


def test_the_default_grid_covers_the_done_when_methods():
    assert {"vanilla", "think_answer", "sft_only", "grpo_only", "eagrl"} <= set(DEFAULT_VARIANTS)


def test_the_last_line_counts_cells_variants_and_misses():
    state = {
        "tjh-mortality|vanilla": "ok",
        "tjh-mortality|eagrl": "ok",
        "mimic_iv-mortality|eagrl": "ok",
        "tjh-mortality|grpo_only": "failed",
    }
    line = summary_line(state, ["vanilla", "grpo_only", "eagrl"])
    assert line == "grid: cells=3 variants=vanilla,eagrl missing=1"


def test_unknown_names_are_refused_with_the_known_ones():
    assert _split("vanilla, eagrl", ["vanilla", "eagrl"], "variants") == ["vanilla", "eagrl"]
    with pytest.raises(SystemExit, match=r"unknown variants \['few_shot'\]; choose from"):
        _split("vanilla,few_shot", ["vanilla", "eagrl"], "variants")
