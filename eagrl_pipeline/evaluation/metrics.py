"""Discrimination metrics with bootstrap uncertainty.

scikit-learn computes each metric on the full sample. The resamples are scored in one
vectorised pass (AUROC as the Mann-Whitney statistic on average ranks, AUPRC as scikit-learn's
step-wise average precision over distinct thresholds), because a scikit-learn call per resample
cost about 2 s per 1,000 resamples and a report bootstraps dozens of prediction sets; tests check
both against scikit-learn on every resample, ties included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "auroc": roc_auc_score,
    "auprc": average_precision_score,
}


def resampled_auroc(y_true: np.ndarray, y_prob: np.ndarray) -> np.ndarray:
    """AUROC of each row of ``[resamples, n]`` arrays (each row must hold both classes).

    >>> resampled_auroc(np.array([[0, 0, 1, 1]]), np.array([[0.1, 0.4, 0.35, 0.8]]))
    array([0.75])
    """
    ranks = rankdata(y_prob, axis=1)  # average ranks: a tie counts one half, as in sklearn
    positives = y_true.sum(axis=1)
    negatives = y_true.shape[1] - positives
    return ((ranks * y_true).sum(axis=1) - positives * (positives + 1) / 2) / (
        positives * negatives
    )


def resampled_average_precision(y_true: np.ndarray, y_prob: np.ndarray) -> np.ndarray:
    """scikit-learn's average precision of each row of ``[resamples, n]`` arrays: the sum over
    distinct thresholds, highest first, of the recall gained times the precision there.

    >>> resampled_average_precision(np.array([[0, 0, 1, 1]]), np.array([[0.1, 0.4, 0.35, 0.8]]))
    array([0.83333333])
    """
    order = np.argsort(-y_prob, axis=1, kind="stable")
    scores = np.take_along_axis(y_prob, order, axis=1)
    hits = np.take_along_axis(y_true, order, axis=1)
    true_pos = np.cumsum(hits, axis=1)
    last_of_tie = np.ones(scores.shape, dtype=bool)
    last_of_tie[:, :-1] = scores[:, :-1] != scores[:, 1:]
    at_threshold = np.where(last_of_tie, true_pos, 0)
    before = np.zeros_like(true_pos)
    before[:, 1:] = np.maximum.accumulate(at_threshold, axis=1)[:, :-1]
    precision = true_pos / np.arange(1, scores.shape[1] + 1)
    gained = np.where(last_of_tie, (true_pos - before) * precision, 0.0)
    return gained.sum(axis=1) / hits.sum(axis=1)


RESAMPLED: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "auroc": resampled_auroc,
    "auprc": resampled_average_precision,
}


@dataclass(frozen=True)
class BootstrapEstimate:
    """A metric on the full sample and its bootstrap distribution summary."""

    full: float
    mean: float
    std: float
    ci_low: float
    ci_high: float
    n_resamples: int  # resamples that had both classes (the others are undefined and skipped)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def bootstrap_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_prob: Sequence[float] | np.ndarray,
    *,
    metrics: Sequence[str] = ("auroc", "auprc"),
    n_resamples: int = 1000,
    seed: int = 42,
    confidence: float = 0.95,
) -> dict[str, BootstrapEstimate]:
    """Patient-level bootstrap (resampling with replacement) of each metric.

    Resamples holding a single class are skipped, since AUROC is undefined there; the count
    actually used is reported. ``n_resamples=0`` gives the full-sample value with zero spread.

    >>> est = bootstrap_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], n_resamples=0)
    >>> est["auroc"].full
    0.75
    """
    y_true = np.asarray(y_true, dtype=int)
    y_prob = np.asarray(y_prob, dtype=float)
    if y_true.shape != y_prob.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_prob {y_prob.shape} must be equal 1-d")
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; known: {sorted(METRICS)}")
    if len(np.unique(y_true)) < 2:
        raise ValueError("bootstrap metrics need both classes in y_true")
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {name: [] for name in metrics}
    n = len(y_true)
    chunk = max(1, 2_000_000 // n)  # resamples scored per pass, so memory stays bounded
    for start in range(0, n_resamples, chunk):
        index = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
        labels = y_true[index]
        both = labels.min(axis=1) != labels.max(axis=1)
        labels, probs = labels[both], y_prob[index[both]]
        for name in metrics:
            samples[name] += RESAMPLED[name](labels, probs).tolist()
    alpha = (1.0 - confidence) / 2.0
    estimates: dict[str, BootstrapEstimate] = {}
    for name in metrics:
        full = float(METRICS[name](y_true, y_prob))
        values = np.asarray(samples[name]) if samples[name] else np.asarray([full])
        estimates[name] = BootstrapEstimate(
            full=full,
            mean=float(values.mean()),
            std=float(values.std(ddof=1)) if values.size > 1 else 0.0,
            ci_low=float(np.quantile(values, alpha)),
            ci_high=float(np.quantile(values, 1.0 - alpha)),
            n_resamples=len(samples[name]),
        )
    return estimates


def brier_score(y_true: Sequence[int] | np.ndarray, y_prob: Sequence[float] | np.ndarray) -> float:
    """Mean squared error of the probabilities (lower is better).

    >>> brier_score([0, 1], [0.0, 0.5])
    0.125
    """
    return float(brier_score_loss(np.asarray(y_true), np.asarray(y_prob)))
