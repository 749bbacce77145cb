"""Bootstrap metrics: scikit-learn on the full sample, a closed-form case, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from eagrl_pipeline.evaluation.metrics import bootstrap_metrics, brier_score


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
