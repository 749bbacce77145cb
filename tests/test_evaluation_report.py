"""Evaluation layer: bootstrap and calibration against closed forms, feature-order permutations,
and the report in its three formats (JSON, Markdown, self-contained HTML)."""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from eagrl_pipeline.evaluation.calibration import calibration_points, expected_calibration_error
from eagrl_pipeline.evaluation.report import (
    EXPERT_PERMUTATION_NOTE,
    ModelPredictions,
    build_report,
    evaluate_predictions,
    relative_improvement,
    render_markdown,
    write_report,
)
from eagrl_pipeline.evaluation.robustness import (
    FEATURE_LINE,
    PERMUTATION_LEVELS,
    n_moved,
    patient_seed,
    permute_feature_columns,
    permute_prompt_features,
    permuted_positions,
)
from eagrl_pipeline.prompts import feature_specs, serialize_patient

SEED_DICTIONARY = Path(__file__).resolve().parents[1] / "dbt_project/seeds/feature_dictionary.csv"
N_PATIENTS = 40


def _llm(name: str, strength: float, seed: int, unparsed: int = 0) -> ModelPredictions:
    """A seeded LLM whose probabilities separate the classes by ``strength``."""
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], N_PATIENTS // 2)
    prob = np.clip(0.5 + strength * (y - 0.5) + rng.normal(0, 0.15, y.size), 0, 1)
    prob[:unparsed] = np.nan
    features = [["LDH", "CRP"] if i % 3 else ["LDH"] for i in range(y.size)]
    features[0] = None  # an answer listing no features counts as an empty list
    return ModelPredictions(
        name=name,
        kind="llm",
        patient_ids=[f"p{i:02d}" for i in range(y.size)],
        y_true=y,
        y_prob=prob,
        important_features=features,
        expert_top_k=[["LDH", "Age"]] * y.size,
        rewards=rng.normal(0, 1, y.size),
    )


def _expert(name: str, strength: float, seed: int) -> ModelPredictions:
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], N_PATIENTS // 2)
    prob = np.clip(0.5 + strength * (y - 0.5) + rng.normal(0, 0.1, y.size), 0, 1)
    return ModelPredictions(name, "expert", [f"p{i:02d}" for i in range(y.size)], y, prob)


# --- bootstrap ---------------------------------------------------------------------------------


def test_perfect_separator_with_default_resamples_has_auroc_one_and_no_spread():
    y = np.array([0] * 10 + [1] * 10)
    pred = ModelPredictions("rl", "llm", range(20), y, np.linspace(0.05, 0.95, 20))
    result = evaluate_predictions(pred)  # defaults: 1,000 resamples, seed 42
    for metric in ("auroc", "auprc"):
        est = result[metric]
        assert est["full"] == pytest.approx(1.0) and est["mean"] == pytest.approx(1.0)
        assert est["std"] == pytest.approx(0.0) and est["ci_low"] == pytest.approx(1.0)
        assert 990 < est["n_resamples"] <= 1000  # one-class resamples of 20 are rare, not absent


def test_zero_resamples_is_scikit_learn_on_the_full_sample_with_unparsed_at_the_fallback():
    pred = _llm("base", 0.3, seed=1, unparsed=3)
    filled = np.where(np.isnan(pred.y_prob), 0.5, pred.y_prob)
    result = evaluate_predictions(pred, n_resamples=0)
    assert result["auroc"]["mean"] == result["auroc"]["full"]
    assert result["auroc"]["full"] == pytest.approx(roc_auc_score(pred.y_true, filled), abs=1e-12)
    assert result["auprc"]["full"] == pytest.approx(
        average_precision_score(pred.y_true, filled), abs=1e-12
    )
    assert result["auroc"]["std"] == 0.0
    assert result["brier"] == pytest.approx(brier_score_loss(pred.y_true, filled))
    assert result["n_unparsed"] == 3 and result["parse_failure_rate"] == pytest.approx(3 / 40)
    assert "3 unparsed answer(s) scored at probability 0.5" in result["unparsed_scoring"]
    # another fallback changes the scores: the unparsed answers really are scored, not dropped
    other = evaluate_predictions(pred, n_resamples=0, fallback_probability=0.9)
    assert other["brier"] != result["brier"]


def test_bootstrap_is_seeded():
    pred = _llm("sft", 0.3, seed=2)
    a, b, c = (evaluate_predictions(pred, n_resamples=50, seed=s) for s in (5, 5, 6))
    assert a["auroc"] == b["auroc"] and a["auroc"]["mean"] != c["auroc"]["mean"]


def test_mean_jaccard_uses_the_listed_and_expert_features():
    result = evaluate_predictions(_llm("rl", 0.5, seed=3), n_resamples=0)
    # patient 0 lists nothing (0); i % 3 == 0 list {LDH} (1/2); others {LDH, CRP} (1/3)
    expected = np.mean([0.0] + [0.5 if i % 3 == 0 else 1 / 3 for i in range(1, N_PATIENTS)])
    assert result["jaccard"]["mean"] == pytest.approx(expected)
    assert result["jaccard"]["n"] == N_PATIENTS


@pytest.mark.parametrize(
    ("y", "reason"),
    [([1] * 30, "one class"), ([0, 1, 0, 1], "too few patients"), ([], "no patients")],
)
def test_metrics_that_cannot_be_computed_are_null_with_a_reason(y, reason):
    pred = ModelPredictions("expert", "expert", range(len(y)), y, [0.7] * len(y))
    result = evaluate_predictions(pred, n_resamples=10)
    assert result["auroc"] is None and result["auprc"] is None
    assert reason in result["null_reasons"]["auroc"]
    if not y:
        assert result["brier"] is None and result["null_reasons"]["ece"] == "no patients"


def test_model_predictions_reject_bad_input():
    with pytest.raises(ValueError, match="expert model must predict every patient"):
        ModelPredictions("concare", "expert", [1, 2], [0, 1], [0.2, np.nan])
    with pytest.raises(ValueError, match="2 patient ids but 3 labels"):
        ModelPredictions("rl", "llm", [1, 2], [0, 1, 1], [0.2, 0.4, 0.5])
    with pytest.raises(ValueError, match="in \\[0, 1\\] or NaN"):
        ModelPredictions("rl", "llm", [1, 2], [0, 1], [0.2, 1.4])
    with pytest.raises(ValueError, match="lists of feature names"):
        ModelPredictions("rl", "llm", [1], [0], [0.2], important_features=["LDH, CRP"])


# --- calibration -------------------------------------------------------------------------------


def test_ece_matches_a_hand_computed_value():
    y = [0, 1, 0, 1, 1, 1]
    p = [0.1, 0.1, 0.3, 0.5, 0.9, 0.9]
    # bins of width 0.2: [0,.2) mean .1 obs .5 (n=2); [.2,.4) .3 vs 0 (1); [.4,.6) .5 vs 1 (1);
    # [.8,1] .9 vs 1 (2) -> (2*.4 + .3 + .5 + 2*.1) / 6 = 0.3
    assert expected_calibration_error(y, p, n_bins=5) == pytest.approx(0.3)
    points = calibration_points(y, p, n_bins=5)
    assert [b.count for b in points] == [2, 1, 1, 2]
    assert tuple(points[0]) == pytest.approx((0.1, 0.5, 2))


def test_ece_is_zero_when_each_bin_matches_its_outcome_rate_and_one_is_in_the_last_bin():
    assert expected_calibration_error([0, 0, 0, 1], [0.25] * 4) == pytest.approx(0.0)
    assert calibration_points([1], [1.0], n_bins=10) == [(1.0, 1.0, 1)]
    with pytest.raises(ValueError, match="finite probabilities"):
        expected_calibration_error([0, 1], [0.2, np.nan])


# --- permutations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "moved"),
    [(73, [15, 29, 44, 73]), (17, [3, 7, 10, 17]), (5, [0, 2, 3, 5])],
)
def test_each_level_moves_exactly_its_share_of_features(n, moved):
    for level, expected in zip(PERMUTATION_LEVELS, moved, strict=True):
        for seed in range(5):
            perm = permuted_positions(n, level, seed)
            assert sorted(perm.tolist()) == list(range(n))
            assert int((perm != np.arange(n)).sum()) == expected, (n, level, seed)


def test_permutations_are_reproducible_and_seed_dependent():
    same = [permuted_positions(73, 0.4, 42).tolist() for _ in range(2)]
    assert same[0] == same[1]
    distinct = {tuple(permuted_positions(73, 0.4, seed).tolist()) for seed in range(10)}
    assert len(distinct) == 10
    assert patient_seed(42, "p01") != patient_seed(42, "p02") != patient_seed(43, "p02")
    with pytest.raises(ValueError, match="fraction"):
        permuted_positions(10, 1.5, 0)


def test_feature_columns_follow_the_permutation_for_every_patient():
    x = np.broadcast_to(np.arange(10.0), (3, 2, 10)).copy()  # x[..., j] == j
    for level in PERMUTATION_LEVELS:
        perm = permuted_positions(10, level, seed=7)
        out = permute_feature_columns(x, level, seed=7)
        assert (out == perm).all()  # every patient and visit shows old feature perm[i] at i
    visits_axis = permute_feature_columns(np.moveaxis(x, -1, 1), 1.0, seed=7, feature_axis=1)
    assert (np.moveaxis(visits_axis, 1, -1) == permute_feature_columns(x, 1.0, seed=7)).all()


@pytest.fixture(scope="module")
def tjh_prompt() -> tuple[str, int]:
    """A real serializer prompt over every TJH feature of the seed dictionary."""
    specs = feature_specs(pd.read_csv(SEED_DICTIONARY), "tjh")
    rng = np.random.default_rng(0)
    patient = pd.DataFrame(
        {
            "visit_date": pd.to_datetime(["2020-02-01", "2020-02-03"]),
            "sex": [1, 1],
            "age": [63.0, 63.0],
            **{s.feature_id: rng.uniform(0, 200, 2) for s in specs},
        }
    )
    return serialize_patient(patient, specs, "tjh", "mortality").user, len(specs)


def test_prompt_permutation_moves_only_feature_lines(tjh_prompt):
    prompt, n_features = tjh_prompt
    lines = prompt.split("\n")
    is_feature = [bool(FEATURE_LINE.match(line)) for line in lines]
    assert sum(is_feature) == n_features  # "- Sex: male" and "- Age: 63 years" are not features
    for level in PERMUTATION_LEVELS:
        permuted = permute_prompt_features(prompt, level, seed=11).split("\n")
        assert len(permuted) == len(lines)
        kept = [a for a, f in zip(lines, is_feature, strict=True) if not f]
        assert kept == [b for b, f in zip(permuted, is_feature, strict=True) if not f]
        features = [a for a, f in zip(lines, is_feature, strict=True) if f]
        moved_features = [b for b, f in zip(permuted, is_feature, strict=True) if f]
        assert Counter(features) == Counter(moved_features)
        moved = sum(a != b for a, b in zip(features, moved_features, strict=True))
        assert moved == n_moved(n_features, level)
    assert permute_prompt_features(prompt, 0.6, 3) == permute_prompt_features(prompt, 0.6, 3)
    assert permute_prompt_features(prompt, 0.6, 3) != permute_prompt_features(prompt, 0.6, 4)


def test_prompt_permutation_keeps_line_endings_and_rejects_prompts_without_features():
    prompt = "Patient:\r\n- Sex: male\r\n- A (Unit: mg): [1, 2]\r\n- B: [NaN]\r\n- C: [3]\r\nend"
    out = permute_prompt_features(prompt, 1.0, seed=0)
    assert out.startswith("Patient:\r\n- Sex: male\r\n") and out.endswith("\r\nend")
    assert out.count("\r\n") == prompt.count("\r\n") and out != prompt
    with pytest.raises(ValueError, match="no feature lines"):
        permute_prompt_features("Patient:\n- Sex: male\n- Age: 63 years", 0.2, seed=0)


# --- relative improvement ----------------------------------------------------------------------


def test_relative_improvement_on_hand_made_numbers():
    base = {"name": "base", "auroc": {"mean": 0.80}, "auprc": {"mean": 0.50}}
    rl = {"name": "rl", "auroc": {"mean": 0.84}, "auprc": {"mean": 0.60}}
    out = relative_improvement(base, rl)
    assert out["metrics"]["auroc"]["relative_improvement_pct"] == pytest.approx(5.0)
    assert out["metrics"]["auprc"]["relative_improvement_pct"] == pytest.approx(20.0)
    assert out["average_pct"] == pytest.approx(12.5)
    worse = relative_improvement(base, {"auroc": 0.6, "auprc": 0.5})
    assert worse["average_pct"] == pytest.approx(-12.5)
    missing = relative_improvement(base, {"auroc": {"mean": 0.9}, "auprc": None})
    assert missing["average_pct"] is None and "auprc" in missing["reason"]


# --- the report --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixed_models() -> tuple[list[ModelPredictions], dict[str, dict[float, ModelPredictions]]]:
    models = [
        _llm("base", 0.25, seed=10, unparsed=1),
        _llm("sft", 0.4, seed=11),
        _llm("rl", 0.55, seed=12),
        _expert("concare", 0.6, seed=13),
    ]
    robustness = {
        m.name: {
            level: (
                _expert(m.name, 0.6 * (1 - level), seed=20 + i)
                if m.kind == "expert"
                else _llm(m.name, 0.5 * (1 - level), seed=20 + i, unparsed=i)
            )
            for i, level in enumerate(PERMUTATION_LEVELS)
        }
        for m in models
    }
    return models, robustness


def test_report_has_every_model_and_level_in_json_md_and_html(fixed_models, tmp_path):
    models, robustness = fixed_models
    report = build_report(
        "TJH mortality", models, robustness, ["synthetic test"], n_resamples=20, seed=42
    )
    paths = write_report(tmp_path / "eval", report, models, robustness)
    assert set(paths) == {"json", "md", "html"} and all(p.exists() for p in paths.values())
    data = json.loads(paths["json"].read_text())  # strict JSON: no NaN anywhere
    md = paths["md"].read_text()
    page = paths["html"].read_text()

    names = ["base", "sft", "rl", "concare"]
    assert list(data["models"]) == names
    assert data["models"]["base"]["n_unparsed"] == 1
    assert data["models"]["base"]["parse_failure_rate"] == pytest.approx(1 / N_PATIENTS)
    assert data["settings"]["n_resamples"] == 20 and data["settings"]["seed"] == 42
    assert data["robustness"]["levels"] == [0.0, *PERMUTATION_LEVELS]
    for name in names:
        levels = [row["level"] for row in data["robustness"]["models"][name]["levels"]]
        assert levels == [0.0, *PERMUTATION_LEVELS]
        assert (
            data["robustness"]["models"][name]["levels"][0]["auroc"]
            == (data["models"][name]["auroc"])
        )
        for text in (md, page):
            assert name in text
    for text in (md, page):
        for level in ("0 %", "20 %", "40 %", "60 %", "100 %"):
            assert level in text
    assert data["robustness"]["models"]["concare"]["kind"] == "expert"
    assert EXPERT_PERMUTATION_NOTE in data["notes"] and "synthetic test" in data["notes"]
    assert EXPERT_PERMUTATION_NOTE in md

    assert set(data["relative_improvement"]) == {"sft", "rl"}  # the expert is not an LLM variant
    rl_vs_base = relative_improvement(data["models"]["base"], data["models"]["rl"])
    assert data["headline"]["average_pct"] == pytest.approx(rl_vs_base["average_pct"])
    assert f"{data['headline']['average_pct']:+.2f} %" in md

    assert not re.search(r"https?://", page)
    assert not re.search(r"<script|<link|src=\"(?!data:)", page)
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 4  # ROC+PR, calibration, robustness, Jaccard/reward distributions
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)


def test_report_with_unusable_models_renders_and_states_why(tmp_path):
    one_class = ModelPredictions("base", "llm", range(12), [1] * 12, [0.6] * 11 + [np.nan])
    tiny = ModelPredictions("rl", "llm", range(3), [0, 1, 1], [0.2, 0.7, 0.9])
    report = build_report("edge", [one_class, tiny], None, [], n_resamples=10, seed=1)
    assert report["models"]["base"]["auroc"] is None
    assert "one class" in report["models"]["base"]["null_reasons"]["auroc"]
    assert report["headline"]["average_pct"] is None and report["headline"]["reason"]
    paths = write_report(tmp_path, report, [one_class, tiny], None)
    md = paths["md"].read_text()
    assert "too few patients (3 < 10)" in md and "n/a" in md
    assert json.loads(paths["json"].read_text())["robustness"] is None
    assert "data:image/png" in paths["html"].read_text()  # the 3-patient model still has curves


def test_robustness_must_use_the_same_test_patients(fixed_models):
    models, _ = fixed_models
    other = ModelPredictions("rl", "llm", range(N_PATIENTS), models[2].y_true, models[2].y_prob)
    with pytest.raises(ValueError, match="not the same test patients"):
        build_report("x", models, {"rl": {0.2: other}}, [], n_resamples=0, seed=0)


def test_markdown_renders_from_the_json_alone(fixed_models):
    models, robustness = fixed_models
    report = build_report("t", models, robustness, [], n_resamples=5, seed=0)
    assert render_markdown(json.loads(json.dumps(report))) == render_markdown(report)


def test_robustness_levels_take_their_own_resample_count(fixed_models):
    models, robustness = fixed_models
    report = build_report(
        "t", models, robustness, [], n_resamples=40, seed=0, robustness_resamples=7
    )
    robust = report["robustness"]
    assert robust["n_resamples"] == 7
    level0s = [entry["levels"][0]["auroc"] for entry in robust["models"].values()]
    permuted = [row["auroc"] for e in robust["models"].values() for row in e["levels"][1:]]
    level0s, permuted = [a for a in level0s if a], [a for a in permuted if a]
    assert level0s and permuted  # the fixture scores both, so the bounds below are checked
    assert all(7 < a["n_resamples"] <= 40 for a in level0s)
    assert all(a["n_resamples"] <= 7 for a in permuted)
    assert any("bootstrapped with 7 resamples" in note for note in report["notes"])
    same = build_report("t", models, robustness, [], n_resamples=9, seed=0)
    assert same["robustness"]["n_resamples"] == 9
    assert not any("bootstrapped with" in note for note in same["notes"])
