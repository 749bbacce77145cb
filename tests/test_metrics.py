"""Bootstrap metrics: scikit-learn on the full sample, a closed-form case, reproducibility; the
paired bootstrap of a difference between two models on the same patients."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from eagrl_pipeline.evaluation.metrics import (
    bootstrap_metrics,
    brier_score,
    paired_bootstrap_auroc_difference,
    paired_bootstrap_difference,
)


@pytest.fixture
def predictions() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=300)
    p = np.clip(0.3 * y + rng.normal(0.35, 0.2, size=300), 0, 1)
    return y, p


def test_full_sample_value_is_scikit_learns(predictions):
    y, p = predictions
    est = bootstrap_metrics(y, p, n_resamples=200, seed=1)
    assert est["auroc"].full == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert est["auprc"].full == pytest.approx(average_precision_score(y, p), abs=1e-12)


def test_bootstrap_centres_on_the_full_value_with_a_sensible_spread(predictions):
    y, p = predictions
    est = bootstrap_metrics(y, p, n_resamples=500, seed=42)["auroc"]
    assert est.n_resamples == 500
    assert abs(est.mean - est.full) < 0.01
    # Hanley-McNeil standard error of an AUROC of this size is about 0.025.
    assert 0.01 < est.std < 0.05
    assert est.ci_low < est.full < est.ci_high


def test_perfect_separation_has_zero_spread():
    y = np.array([0] * 20 + [1] * 20)
    p = np.linspace(0, 1, 40)
    est = bootstrap_metrics(y, p, n_resamples=100, seed=3)
    for name in ("auroc", "auprc"):
        assert est[name].full == 1.0
        assert est[name].mean == pytest.approx(1.0) and est[name].std == pytest.approx(0.0)


def test_seeded_and_reproducible(predictions):
    y, p = predictions
    a = bootstrap_metrics(y, p, n_resamples=100, seed=7)["auprc"]
    b = bootstrap_metrics(y, p, n_resamples=100, seed=7)["auprc"]
    c = bootstrap_metrics(y, p, n_resamples=100, seed=8)["auprc"]
    assert a == b and a.mean != c.mean


def test_single_class_resamples_are_skipped_not_fatal():
    y = np.array([0] * 9 + [1])
    p = np.linspace(0, 1, 10)
    est = bootstrap_metrics(y, p, n_resamples=200, seed=0)["auroc"]
    assert 0 < est.n_resamples < 200  # about (9/10)^10 = 35 % of resamples hold no positive


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="both classes"):
        bootstrap_metrics([1, 1, 1], [0.2, 0.4, 0.9])
    with pytest.raises(ValueError, match="unknown metrics"):
        bootstrap_metrics([0, 1], [0.1, 0.9], metrics=["accuracy"])
    with pytest.raises(ValueError, match="equal 1-d"):
        bootstrap_metrics([0, 1, 1], [0.1, 0.9])


def test_brier_score_closed_form():
    assert brier_score([0, 1, 1, 0], [0.0, 1.0, 0.5, 0.5]) == pytest.approx(0.125)


@pytest.mark.parametrize("n", [5, 23, 200])
def test_resampled_metrics_equal_sklearn_on_every_row_ties_included(n: int) -> None:
    from eagrl_pipeline.evaluation.metrics import resampled_auroc, resampled_average_precision

    rng = np.random.default_rng(n)
    y = rng.integers(0, 2, size=(300, n))
    y[:, 0], y[:, 1] = 0, 1  # both classes in every row
    p = rng.integers(0, 6, size=(300, n)) / 5  # coarse scores: many ties
    aurocs, precisions = resampled_auroc(y, p), resampled_average_precision(y, p)
    for row in range(300):
        assert aurocs[row] == pytest.approx(roc_auc_score(y[row], p[row]), abs=1e-12)
        assert precisions[row] == pytest.approx(average_precision_score(y[row], p[row]), abs=1e-12)


def test_bootstrap_matches_a_resample_by_resample_sklearn_loop() -> None:
    rng = np.random.default_rng(7)
    y, p = rng.integers(0, 2, 40), np.round(rng.random(40), 1)
    est = bootstrap_metrics(y, p, n_resamples=300, seed=11)
    draws = np.random.default_rng(11)
    loop: dict[str, list[float]] = {"auroc": [], "auprc": []}
    for _ in range(300):  # the same draws, one resample at a time
        index = draws.integers(0, 40, size=40)
        if y[index].min() == y[index].max():
            continue
        loop["auroc"].append(roc_auc_score(y[index], p[index]))
        loop["auprc"].append(average_precision_score(y[index], p[index]))
    for name, values in loop.items():
        assert est[name].n_resamples == len(values)
        assert est[name].mean == pytest.approx(np.mean(values), abs=1e-12)
        assert est[name].std == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        assert est[name].full == pytest.approx(
            (roc_auc_score if name == "auroc" else average_precision_score)(y, p)
        )


def test_paired_auroc_difference_matches_a_resample_by_resample_sklearn_loop() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 30)
    a, b = np.round(rng.random(30), 1), np.round(0.5 * y + rng.random(30), 1)  # ties included
    est = paired_bootstrap_auroc_difference(y, a, b, n_resamples=300, seed=5)
    draws = np.random.default_rng(5)
    loop = []
    for _ in range(300):  # the same draws, one resample at a time, both models on one index
        index = draws.integers(0, 30, size=30)
        if y[index].min() == y[index].max():
            continue
        loop.append(roc_auc_score(y[index], a[index]) - roc_auc_score(y[index], b[index]))
    assert est.observed == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b), abs=1e-12)
    assert est.n_resamples == len(loop) and est.n == 30
    assert est.mean == pytest.approx(np.mean(loop), abs=1e-12)
    assert est.std == pytest.approx(np.std(loop, ddof=1), abs=1e-12)
    assert est.ci_low == pytest.approx(np.quantile(loop, 0.025), abs=1e-12)
    assert est.ci_high == pytest.approx(np.quantile(loop, 0.975), abs=1e-12)


def test_paired_mean_difference_matches_a_resample_by_resample_loop() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(0.2, 1.0, 25), rng.normal(0.0, 1.0, 25)
    est = paired_bootstrap_difference(a, b, n_resamples=200, seed=9, confidence=0.9)
    draws = np.random.default_rng(9)
    loop = []
    for _ in range(200):
        index = draws.integers(0, 25, size=25)
        loop.append(a[index].mean() - b[index].mean())
    assert est.observed == pytest.approx(a.mean() - b.mean(), abs=1e-12)
    assert est.mean == pytest.approx(np.mean(loop), abs=1e-12)
    assert est.ci_low == pytest.approx(np.quantile(loop, 0.05), abs=1e-12)
    assert est.ci_high == pytest.approx(np.quantile(loop, 0.95), abs=1e-12)
    median = paired_bootstrap_difference(a, b, n_resamples=50, seed=9, statistic="median")
    assert median.observed == pytest.approx(np.median(a) - np.median(b))


def test_difference_of_identical_arrays_is_exactly_zero() -> None:
    rng = np.random.default_rng(1)
    rewards = rng.normal(-0.5, 0.3, 40)
    y, p = rng.integers(0, 2, 40), rng.random(40)
    for est in (
        paired_bootstrap_difference(rewards, rewards.copy(), n_resamples=300),
        paired_bootstrap_auroc_difference(y, p, p.copy(), n_resamples=300),
    ):
        assert est.observed == 0.0 and est.mean == 0.0 and est.std == 0.0
        assert est.ci_low == 0.0 and est.ci_high == 0.0


def test_pairing_detects_a_small_consistent_improvement() -> None:
    """A gain of 0.05 per patient against a patient spread of 1.0, which pairing cancels: the
    interval excludes zero (an unpaired one would be about 0.18 wide on each side)."""
    rng = np.random.default_rng(2)
    sft = rng.normal(0.0, 1.0, 60)
    rl = sft + 0.05 + rng.normal(0.0, 0.01, 60)
    est = paired_bootstrap_difference(rl, sft, n_resamples=500)
    assert est.ci_low > 0.0 and est.ci_low < est.observed < est.ci_high
    assert est.observed == pytest.approx(0.05, abs=0.01)
    worse = paired_bootstrap_difference(sft, rl, n_resamples=500)
    assert worse.ci_high < 0.0
    y = (rng.random(60) < 0.5).astype(int)
    better = paired_bootstrap_auroc_difference(y, y + rng.normal(0, 0.3, 60), rng.random(60))
    assert better.ci_low > 0.0


def test_paired_bootstrap_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="equal non-empty 1-d"):
        paired_bootstrap_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="unknown statistic"):
        paired_bootstrap_difference([1.0], [1.0], statistic="mode")
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap_difference([1.0], [1.0], confidence=1.0)
    with pytest.raises(ValueError, match="both classes"):
        paired_bootstrap_auroc_difference([1, 1], [0.1, 0.2], [0.3, 0.4])
