"""Discrimination metrics with bootstrap uncertainty.

scikit-learn computes each metric on the full sample. The resamples are scored in one
vectorised pass (AUROC as the Mann-Whitney statistic on average ranks, AUPRC as scikit-learn's
step-wise average precision over distinct thresholds), because a scikit-learn call per resample
cost about 2 s per 1,000 resamples and a report bootstraps dozens of prediction sets; tests check
both against scikit-learn on every resample, ties included.

Comparing two models on the same patients uses a *paired* bootstrap: each resample draws one set
of patients and scores both models on it, so the patient-to-patient variation they share cancels
in the difference and the interval reflects only how differently they answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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


def _spread(values: np.ndarray, observed: float, confidence: float) -> tuple[float, ...]:
    """Mean, std and percentile interval of bootstrap values; the observed value, zero spread,
    when there are none."""
    if values.size == 0:
        return observed, 0.0, observed, observed
    alpha = (1.0 - confidence) / 2.0
    return (
        float(values.mean()),
        float(values.std(ddof=1)) if values.size > 1 else 0.0,
        float(np.quantile(values, alpha)),
        float(np.quantile(values, 1.0 - alpha)),
    )


def _check_resampling(n_resamples: int, confidence: float) -> None:
    if n_resamples < 0:
        raise ValueError(f"n_resamples must be >= 0, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _resample_indices(rng: np.random.Generator, n: int, n_resamples: int) -> Iterator[np.ndarray]:
    """``[chunk, n]`` patient indices per pass, so memory stays bounded for any ``n``."""
    chunk = max(1, 2_000_000 // n)
    for start in range(0, n_resamples, chunk):
        yield rng.integers(0, n, size=(min(chunk, n_resamples - start), n))


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
    for index in _resample_indices(rng, len(y_true), n_resamples):
        labels = y_true[index]
        both = labels.min(axis=1) != labels.max(axis=1)
        labels, probs = labels[both], y_prob[index[both]]
        for name in metrics:
            samples[name] += RESAMPLED[name](labels, probs).tolist()
    estimates: dict[str, BootstrapEstimate] = {}
    for name in metrics:
        full = float(METRICS[name](y_true, y_prob))
        mean, std, low, high = _spread(np.asarray(samples[name]), full, confidence)
        estimates[name] = BootstrapEstimate(full, mean, std, low, high, len(samples[name]))
    return estimates


@dataclass(frozen=True)
class PairedDifference:
    """A difference ``statistic(a) - statistic(b)`` on the same patients, with its paired
    bootstrap distribution summary (percentile interval)."""

    observed: float
    mean: float
    std: float
    ci_low: float
    ci_high: float
    confidence: float
    n: int  # patients
    n_resamples: int  # resamples used (AUROC: those holding both classes)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


RowStatistic = Callable[[np.ndarray], np.ndarray]
ROW_STATISTICS: dict[str, RowStatistic] = {
    "mean": lambda rows: rows.mean(axis=-1),
    "median": lambda rows: np.median(rows, axis=-1),
}


def paired_bootstrap_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 1000,
    seed: int = 42,
    confidence: float = 0.95,
    statistic: str | RowStatistic = "mean",
) -> PairedDifference:
    """Paired bootstrap of ``statistic(a) - statistic(b)`` over per-patient values.

    ``a[i]`` and ``b[i]`` belong to patient ``i``; every resample draws patients with replacement
    and takes the same indices from both arrays. ``statistic`` is ``"mean"``, ``"median"`` or a
    function mapping ``[resamples, n]`` rows to ``[resamples]``. A constant per-patient gain has
    a zero-width interval, which an unpaired bootstrap would widen by the patients' spread:

    >>> est = paired_bootstrap_difference([1.0, 2.0, 3.0], [0.0, 1.0, 2.0], n_resamples=200)
    >>> est.observed, est.ci_low, est.ci_high, est.n
    (1.0, 1.0, 1.0, 3)
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"a {a.shape} and b {b.shape} must be equal non-empty 1-d arrays")
    _check_resampling(n_resamples, confidence)
    if isinstance(statistic, str) and statistic not in ROW_STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; known: {sorted(ROW_STATISTICS)}")
    if statistic == "mean":
        # The mean is linear: the mean of the per-patient differences, which is exact (no
        # rounding of two nearly equal means) for identical arrays or a constant gain.
        diff = a - b

        def resampled(index: np.ndarray) -> np.ndarray:
            return diff[index].mean(axis=-1)
    else:
        row_statistic = ROW_STATISTICS[statistic] if isinstance(statistic, str) else statistic

        def resampled(index: np.ndarray) -> np.ndarray:
            return row_statistic(a[index]) - row_statistic(b[index])

    observed = float(resampled(np.arange(a.size)[None, :])[0])
    rng = np.random.default_rng(seed)
    parts = [resampled(index) for index in _resample_indices(rng, a.size, n_resamples)]
    values = np.concatenate(parts) if parts else np.empty(0)
    mean, std, low, high = _spread(values, observed, confidence)
    return PairedDifference(observed, mean, std, low, high, confidence, a.size, values.size)


def paired_bootstrap_metric_difference(
    y_true: Sequence[int] | np.ndarray,
    score_a: Sequence[float] | np.ndarray,
    score_b: Sequence[float] | np.ndarray,
    *,
    metric: str = "auroc",
    n_resamples: int = 1000,
    seed: int = 42,
    confidence: float = 0.95,
) -> PairedDifference:
    """Paired bootstrap of ``metric(score_a) - metric(score_b)`` (``"auroc"`` or ``"auprc"``)
    on the same patients and labels.

    Resamples holding one class are dropped (the metrics are undefined or degenerate there), as
    in :func:`bootstrap_metrics`; ``n_resamples`` of the result counts those used.

    >>> est = paired_bootstrap_metric_difference([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9],
    ...                                          [0.1, 0.4, 0.35, 0.8], n_resamples=0)
    >>> est.observed
    0.25
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {sorted(METRICS)}")
    y = np.asarray(y_true, dtype=int)
    a, b = np.asarray(score_a, dtype=float), np.asarray(score_b, dtype=float)
    if not (y.shape == a.shape == b.shape) or y.ndim != 1:
        raise ValueError(
            f"y_true {y.shape}, score_a {a.shape} and score_b {b.shape} must be equal 1-d"
        )
    if len(np.unique(y)) < 2:
        raise ValueError(f"a {metric.upper()} difference needs both classes in y_true")
    _check_resampling(n_resamples, confidence)
    observed = float(METRICS[metric](y, a) - METRICS[metric](y, b))
    resampled = RESAMPLED[metric]
    rng = np.random.default_rng(seed)
    parts = []
    for index in _resample_indices(rng, y.size, n_resamples):
        labels = y[index]
        both = labels.min(axis=1) != labels.max(axis=1)
        index, labels = index[both], labels[both]
        parts.append(resampled(labels, a[index]) - resampled(labels, b[index]))
    values = np.concatenate(parts) if parts else np.empty(0)
    mean, std, low, high = _spread(values, observed, confidence)
    return PairedDifference(observed, mean, std, low, high, confidence, y.size, values.size)


def paired_bootstrap_auroc_difference(
    y_true: Sequence[int] | np.ndarray,
    score_a: Sequence[float] | np.ndarray,
    score_b: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 1000,
    seed: int = 42,
    confidence: float = 0.95,
) -> PairedDifference:
    """Paired bootstrap of ``AUROC(score_a) - AUROC(score_b)`` on the same patients and labels
    (:func:`paired_bootstrap_metric_difference` with ``metric="auroc"``).

    >>> est = paired_bootstrap_auroc_difference([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9],
    ...                                         [0.1, 0.4, 0.35, 0.8], n_resamples=0)
    >>> est.observed
    0.25
    """
    return paired_bootstrap_metric_difference(
        y_true, score_a, score_b,
        metric="auroc", n_resamples=n_resamples, seed=seed, confidence=confidence,
    )  # fmt: skip


def brier_score(y_true: Sequence[int] | np.ndarray, y_prob: Sequence[float] | np.ndarray) -> float:
    """Mean squared error of the probabilities (lower is better).

    >>> brier_score([0, 1], [0.0, 0.5])
    0.125
    """
    return float(brier_score_loss(np.asarray(y_true), np.asarray(y_prob)))
