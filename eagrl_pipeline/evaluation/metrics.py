"""Discrimination metrics with bootstrap uncertainty (scikit-learn does the metric itself)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "auroc": roc_auc_score,
    "auprc": average_precision_score,
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
    for _ in range(n_resamples):
        index = rng.integers(0, n, size=n)
        labels = y_true[index]
        if labels.min() == labels.max():
            continue
        for name in metrics:
            samples[name].append(float(METRICS[name](labels, y_prob[index])))
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
