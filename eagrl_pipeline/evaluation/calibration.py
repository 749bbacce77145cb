"""Calibration: expected calibration error and reliability-diagram points.

Both functions share one binning (equal-width bins on [0, 1], each bin ``[a, b)`` except the last,
which is closed), so the ECE in a report is exactly the weighted gap the calibration plot shows.
The binning is done here rather than with ``sklearn.calibration.calibration_curve``, which does
not return the bin counts that the ECE weights by.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class CalibrationBin(NamedTuple):
    """One non-empty bin: mean predicted probability, observed positive fraction, size."""

    mean_predicted: float
    observed_fraction: float
    count: int


def _validated(
    y_true: Sequence[int] | np.ndarray, y_prob: Sequence[float] | np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=float)
    p = np.asarray(y_prob, dtype=float)
    if y.ndim != 1 or y.shape != p.shape:
        raise ValueError(f"y_true {y.shape} and y_prob {p.shape} must be equal 1-d arrays")
    if y.size == 0:
        raise ValueError("calibration needs at least one prediction")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y_true must hold only 0 and 1")
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise ValueError("y_prob must be finite probabilities in [0, 1] (fill unparsed answers)")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    return y, p


def calibration_points(
    y_true: Sequence[int] | np.ndarray, y_prob: Sequence[float] | np.ndarray, n_bins: int = 10
) -> list[CalibrationBin]:
    """(mean predicted, observed fraction, count) for each non-empty equal-width bin, low to high.

    >>> [tuple(b) for b in calibration_points([0, 1, 1], [0.2, 0.3, 0.9], n_bins=2)]
    [(0.25, 0.5, 2), (0.9, 1.0, 1)]
    """
    y, p = _validated(y_true, y_prob, n_bins)
    index = np.minimum((p * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    predicted = np.bincount(index, weights=p, minlength=n_bins)
    observed = np.bincount(index, weights=y, minlength=n_bins)
    return [
        CalibrationBin(float(predicted[b] / counts[b]), float(observed[b] / counts[b]), int(c))
        for b, c in enumerate(counts)
        if c
    ]


def expected_calibration_error(
    y_true: Sequence[int] | np.ndarray, y_prob: Sequence[float] | np.ndarray, n_bins: int = 10
) -> float:
    """Mean |observed fraction − mean predicted| over equal-width bins, weighted by bin size.

    Lower is better; 0 means every bin's predictions match its outcome rate.

    >>> # bin [0, 0.5): mean 0.2, none positive; bin [0.5, 1]: mean 0.75, all positive
    >>> round(expected_calibration_error([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.9], n_bins=2), 10)
    0.225
    """
    bins = calibration_points(y_true, y_prob, n_bins)
    total = sum(b.count for b in bins)
    return float(sum(b.count * abs(b.observed_fraction - b.mean_predicted) for b in bins) / total)
