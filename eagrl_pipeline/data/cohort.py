"""Cohort tensors: train-only statistics, LOCF + median imputation, z-scores, padding.

Statistics come from the train split alone (no leakage); the z-score uses the mean and standard
deviation of train values trimmed to their 5th-95th percentile, as PyEHR does, so a few extreme
lab values do not flatten everyone else's scale.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from eagrl_pipeline.paths import atomic_path

Imputation = Literal["locf_median", "median", "zero"]
STATIC_COLUMNS: tuple[str, ...] = ("sex", "age")


@dataclass
class CohortArrays:
    """Padded per-patient arrays; patients in ``patient_ids`` order, visits left-aligned."""

    x: np.ndarray  # (patients, visits, features) float32, imputed and z-scored
    observed: np.ndarray  # (patients, visits, features) bool, True where measured that day
    visit_mask: np.ndarray  # (patients, visits) bool, True for real (non-padding) visits
    static: np.ndarray  # (patients, 2) float32: sex (0/1), z-scored age
    y: np.ndarray  # (patients,) int64 label
    patient_ids: np.ndarray  # (patients,) int64
    group_ids: np.ndarray  # (patients,) int64
    split: np.ndarray  # (patients,) str
    feature_ids: list[str]

    def save(self, path: Path) -> None:
        np.savez_compressed(
            path,
            x=self.x,
            observed=self.observed,
            visit_mask=self.visit_mask,
            static=self.static,
            y=self.y,
            patient_ids=self.patient_ids,
            group_ids=self.group_ids,
            split=self.split.astype("U5"),
            feature_ids=np.array(self.feature_ids),
        )

    @classmethod
    def load(cls, path: Path) -> CohortArrays:
        with np.load(path) as data:
            fields = {k: data[k] for k in data.files}
        fields["feature_ids"] = [str(f) for f in fields["feature_ids"]]
        return cls(**fields)


def feature_statistics(train_values: pd.DataFrame) -> pd.DataFrame:
    """Per feature: median, p5, p95 and the trimmed mean/std used for z-scores."""
    rows = []
    for column in train_values.columns:
        values = train_values[column].dropna().to_numpy(dtype="float64")
        if values.size == 0:
            rows.append((column, 0, np.nan, np.nan, np.nan, 0.0, 1.0))
            continue
        p5, p95 = np.percentile(values, [5, 95])
        trimmed = values[(values >= p5) & (values <= p95)]
        if trimmed.size == 0:  # two distinct values fall outside their own 5-95 % band
            trimmed = values
        std = float(trimmed.std()) if trimmed.size > 1 else 0.0
        rows.append(
            (column, values.size, float(np.median(values)), p5, p95, float(trimmed.mean()),
             std if std > 1e-12 else 1.0)
        )  # fmt: skip
    return pd.DataFrame(
        rows, columns=["feature_id", "n_train", "median", "p5", "p95", "mean", "std"]
    ).set_index("feature_id")


def build_cohort_arrays(
    visits: pd.DataFrame,
    feature_ids: Sequence[str],
    *,
    imputation: Imputation = "locf_median",
    max_visits: int | None = None,
) -> tuple[CohortArrays, pd.DataFrame]:
    """Turn cohort visits (with ``split``) into padded arrays and the train statistics.

    ``max_visits`` keeps each patient's last visits when set; otherwise the longest stay sets
    the padding length.
    """
    feature_ids = list(feature_ids)
    visits = visits.sort_values(["patient_id", "visit_index"]).reset_index(drop=True)
    values = visits[feature_ids].astype("float64")
    observed_all = values.notna()
    if imputation == "locf_median":
        # Carry forward over the whole stay first, so a truncated stay keeps earlier values.
        values = values.groupby(visits["patient_id"].to_numpy()).ffill()
    keep = np.ones(len(visits), dtype=bool)
    if max_visits is not None:
        keep = visits.groupby("patient_id").cumcount(ascending=False).to_numpy() < max_visits
    visits = visits[keep].reset_index(drop=True)
    values = values[keep].reset_index(drop=True)
    observed = observed_all[keep].to_numpy()
    train = visits["split"].to_numpy() == "train"
    stats = feature_statistics(visits.loc[train, feature_ids].astype("float64"))
    first_visits = visits.drop_duplicates("patient_id")
    train_patients = first_visits[first_visits["split"] == "train"]
    demographics = feature_statistics(train_patients[list(STATIC_COLUMNS)].astype("float64"))
    stats = pd.concat([stats, demographics])

    if imputation in ("locf_median", "median"):
        values = values.fillna(stats.loc[feature_ids, "median"].fillna(0.0))
    scaled = (values - stats.loc[feature_ids, "mean"].fillna(0.0)) / stats.loc[feature_ids, "std"]
    scaled = scaled.fillna(0.0).to_numpy(dtype="float32")

    patients = visits.groupby("patient_id", sort=True).agg(
        group_id=("group_id", "first"), label=("label", "first"), split=("split", "first"),
        sex=("sex", "first"), age=("age", "first"), n_visits=("visit_index", "size"),
    )  # fmt: skip
    n_patients, n_features = len(patients), len(feature_ids)
    length = int(patients["n_visits"].max()) if n_patients else 0
    row = np.repeat(np.arange(n_patients), patients["n_visits"].to_numpy())
    col = visits.groupby("patient_id").cumcount().to_numpy()
    x = np.zeros((n_patients, length, n_features), dtype="float32")
    obs = np.zeros((n_patients, length, n_features), dtype=bool)
    mask = np.zeros((n_patients, length), dtype=bool)
    x[row, col] = scaled
    obs[row, col] = observed
    mask[row, col] = True

    sex = patients["sex"].astype("float64")
    sex = sex.fillna(round(float(stats.loc["sex", "median"]))) if sex.isna().any() else sex
    age = patients["age"].astype("float64").fillna(stats.loc["age", "median"])
    age_z = (age - stats.loc["age", "mean"]) / stats.loc["age", "std"]
    arrays = CohortArrays(
        x=x,
        observed=obs,
        visit_mask=mask,
        static=np.stack([sex.to_numpy(), age_z.to_numpy()], axis=1).astype("float32"),
        y=patients["label"].to_numpy(dtype="int64"),
        patient_ids=patients.index.to_numpy(dtype="int64"),
        group_ids=patients["group_id"].to_numpy(dtype="int64"),
        split=patients["split"].to_numpy(dtype=str),
        feature_ids=feature_ids,
    )
    return arrays, stats


def cohort_summary(patients: pd.DataFrame, visits: pd.DataFrame) -> dict[str, object]:
    """Patients, prevalence and visits per split: the handle's metadata."""
    summary: dict[str, object] = {}
    for split, group in patients.groupby("split"):
        summary[str(split)] = {
            "patients": len(group),
            "positives": int(group["label"].sum()),
            "prevalence": round(float(group["label"].mean()), 4),
        }
    summary["visits"] = len(visits)
    summary["max_visits"] = int(visits.groupby("patient_id").size().max()) if len(visits) else 0
    return summary


def write_cohort(
    target_dir: Path,
    *,
    visits: pd.DataFrame,
    arrays: CohortArrays,
    stats: pd.DataFrame,
    manifest: dict[str, object],
) -> Path:
    """Write the cohort folder atomically: a failed run leaves the previous cohort in place."""
    with atomic_path(target_dir) as tmp:
        tmp.mkdir(parents=True)
        visits.to_parquet(tmp / "visits.parquet", index=False)
        arrays.save(tmp / "arrays.npz")
        stats.reset_index().to_parquet(tmp / "feature_stats.parquet", index=False)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    return target_dir
