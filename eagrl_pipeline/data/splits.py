"""Patient-level, seeded splits; the unit of splitting is a group (a MIMIC-IV subject may own
several ICU stays, which must all land in one split)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from eagrl_pipeline.errors import InputDataError

SPLITS: tuple[str, ...] = ("train", "val", "test")
SplitStrategy = Literal["clinicrealm", "stratified"]


def clinicrealm_split(
    group_ids: Sequence[int],
    labels: Sequence[int],
    *,
    seed: int = 42,
    test_size: int = 200,
    val_fraction: float = 1 / 8,
) -> dict[int, str]:
    """ClinicRealm's split: ids in ascending order, an unstratified fixed-size test set, then the
    rest split train/val 7:1 stratified by label (reproduces its published TJH split)."""
    frame = pd.DataFrame({"id": group_ids, "label": labels}).sort_values("id")
    if test_size > len(frame) - 2:
        raise InputDataError(
            "cohort_dataset config",
            f"test_size={test_size} leaves fewer than 2 of {len(frame)} patients for train/val.",
            column="test_size",
            fix="lower test_size or use split_strategy='stratified'.",
        )
    ids = frame["id"].to_numpy()
    label_of = dict(zip(frame["id"], frame["label"], strict=True))
    rest, test = train_test_split(ids, test_size=test_size, random_state=seed)
    rest_labels = [label_of[i] for i in rest]
    train, val = train_test_split(
        rest, test_size=val_fraction, random_state=seed, stratify=_stratify(rest_labels)
    )
    return _as_mapping(train, val, test)


def stratified_split(
    group_ids: Sequence[int],
    labels: Sequence[int],
    *,
    seed: int = 42,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
) -> dict[int, str]:
    """Fractional split stratified by label at every step (test first, then val from the rest)."""
    if len(fractions) != 3 or not np.isclose(sum(fractions), 1.0) or min(fractions) <= 0:
        raise InputDataError(
            "cohort_dataset config",
            f"split fractions {fractions} must be three positive numbers summing to 1.",
            column="split_fractions",
            fix="use e.g. [0.7, 0.1, 0.2] for train/val/test.",
        )
    frame = pd.DataFrame({"id": group_ids, "label": labels}).sort_values("id")
    if len(frame) < 3:
        raise InputDataError(
            "cohort_dataset config",
            f"a train/val/test split needs at least 3 patients (groups); got {len(frame)}.",
            column="split_fractions",
            fix="build the cohort from more data.",
        )
    ids = frame["id"].to_numpy()
    labels_arr = frame["label"].to_numpy()
    train_frac, val_frac, test_frac = fractions
    rest, test, rest_labels, _ = _split_once(ids, labels_arr, test_frac, seed)
    train, val, _, _ = _split_once(rest, rest_labels, val_frac / (train_frac + val_frac), seed)
    return _as_mapping(train, val, test)


def _split_once(ids: np.ndarray, labels: np.ndarray, size: float, seed: int) -> list:
    """Stratified where sklearn can; a cohort too small to stratify is split at random."""
    try:
        return train_test_split(
            ids, labels, test_size=size, random_state=seed, stratify=_stratify(labels)
        )
    except ValueError:
        return train_test_split(ids, labels, test_size=size, random_state=seed)


def assign_splits(
    patients: pd.DataFrame,
    *,
    strategy: SplitStrategy,
    seed: int,
    test_size: int = 200,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
) -> pd.Series:
    """Split a patient table (``patient_id``, ``group_id``, ``label``) by group; a group's label
    is its maximum (a subject with any positive stay stratifies as positive)."""
    groups = patients.groupby("group_id")["label"].max()
    if strategy == "clinicrealm":
        mapping = clinicrealm_split(groups.index, groups.to_numpy(), seed=seed, test_size=test_size)
    elif strategy == "stratified":
        mapping = stratified_split(groups.index, groups.to_numpy(), seed=seed, fractions=fractions)
    else:
        raise InputDataError(
            "cohort_dataset config",
            f"unknown split strategy {strategy!r}.",
            column="split_strategy",
            fix="use 'clinicrealm' or 'stratified'.",
        )
    return patients["group_id"].map(mapping).rename("split")


def _stratify(labels: Sequence[int]) -> np.ndarray | None:
    """Stratify only where every class can be split (tiny cohorts would make sklearn raise)."""
    counts = pd.Series(labels).value_counts()
    return np.asarray(labels) if len(counts) > 1 and counts.min() >= 2 else None


def _as_mapping(train: np.ndarray, val: np.ndarray, test: np.ndarray) -> dict[int, str]:
    mapping: dict[int, str] = {}
    for name, ids in zip(SPLITS, (train, val, test), strict=True):
        mapping.update({int(i): name for i in ids})
    return mapping
