"""Cohort tensors on hand-made visits: imputation, train-only z-scores, padding, saving."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eagrl_pipeline.data.cohort import CohortArrays, build_cohort_arrays, write_cohort

NAN = np.nan
FEATURES = ["f1", "f2"]


def _visits(patients: list[dict]) -> pd.DataFrame:
    """One row per visit from per-patient dicts: id, split, label, sex, age, f1 list, f2 list."""
    rows = []
    for p in patients:
        f1 = p["f1"]
        f2 = p.get("f2", [0.0] * len(f1))
        for v, (a, b) in enumerate(zip(f1, f2, strict=True)):
            rows.append(
                {
                    "patient_id": p["id"],
                    "group_id": p.get("group", 1000 + p["id"]),
                    "visit_index": v,
                    "visit_date": pd.Timestamp("2020-02-01") + pd.Timedelta(days=v),
                    "label": p.get("label", 0),
                    "split": p.get("split", "train"),
                    "sex": p.get("sex", 1),
                    "age": p.get("age", 60.0),
                    "f1": a,
                    "f2": b,
                }
            )
    return pd.DataFrame(rows)


def _raw_x(arrays: CohortArrays, stats: pd.DataFrame, p: int, n: int, f: str) -> np.ndarray:
    """Undo the z-score of patient row ``p``'s first ``n`` visits of feature ``f``."""
    k = arrays.feature_ids.index(f)
    return arrays.x[p, :n, k].astype("float64") * stats.loc[f, "std"] + stats.loc[f, "mean"]


# --------------------------------------------------------------------------- imputation


def test_locf_then_train_median() -> None:
    visits = _visits(
        [
            {"id": 1, "f1": [1.0, NAN, NAN], "f2": [10.0, 20.0, 30.0]},
            {"id": 2, "f1": [NAN], "f2": [NAN]},
            {"id": 3, "f1": [3.0, 5.0], "f2": [40.0, NAN]},
        ]
    )
    arrays, stats = build_cohort_arrays(visits, FEATURES)
    assert stats.loc["f1", "median"] == 3.0  # median of train values 1, 3, 5
    assert stats.loc["f1", "n_train"] == 3
    assert stats.loc["f2", "median"] == 25.0  # median of 10, 20, 30, 40
    np.testing.assert_allclose(_raw_x(arrays, stats, 0, 3, "f1"), [1, 1, 1], atol=1e-5)  # LOCF
    np.testing.assert_allclose(_raw_x(arrays, stats, 1, 1, "f1"), [3], atol=1e-5)  # median
    np.testing.assert_allclose(_raw_x(arrays, stats, 2, 2, "f1"), [3, 5], atol=1e-5)
    np.testing.assert_allclose(_raw_x(arrays, stats, 1, 1, "f2"), [25], atol=1e-5)
    np.testing.assert_allclose(_raw_x(arrays, stats, 2, 2, "f2"), [40, 40], atol=1e-5)
    # x really is (raw - mean) / std with the returned stats.
    mean, std = stats.loc["f2", "mean"], stats.loc["f2", "std"]
    assert std != 1.0
    np.testing.assert_allclose(
        arrays.x[0, :, 1], (np.array([10.0, 20.0, 30.0]) - mean) / std, rtol=1e-6
    )


def test_median_imputation_has_no_locf() -> None:
    visits = _visits(
        [{"id": 1, "f1": [1.0, NAN, NAN]}, {"id": 2, "f1": [3.0, 5.0, 7.0]}]
    )  # train f1 values 1, 3, 5, 7: median 4
    arrays, stats = build_cohort_arrays(visits, FEATURES, imputation="median")
    np.testing.assert_allclose(_raw_x(arrays, stats, 0, 3, "f1"), [1, 4, 4], atol=1e-5)


def test_zero_imputation_leaves_missing_as_zero_in_zscore_space_ie_train_mean() -> None:
    """'zero' fills after scaling: a missing value becomes x = 0, the train mean, not raw 0."""
    visits = _visits(
        [
            {"id": 1, "f1": [1.0, NAN, NAN], "f2": [2.0, 4.0, 6.0]},
            {"id": 2, "f1": [NAN, 9.0, 5.0], "f2": [8.0, 10.0, 12.0]},
        ]
    )
    arrays, stats = build_cohort_arrays(visits, FEATURES, imputation="zero")
    assert arrays.x[0, 1, 0] == 0.0 and arrays.x[0, 2, 0] == 0.0 and arrays.x[1, 0, 0] == 0.0
    assert stats.loc["f1", "mean"] != 0.0  # so 0 in z-space is not raw 0
    mean, std = stats.loc["f1", "mean"], stats.loc["f1", "std"]
    np.testing.assert_allclose(arrays.x[0, 0, 0], (1.0 - mean) / std, rtol=1e-6)
    np.testing.assert_allclose(arrays.x[1, 1:, 0], (np.array([9.0, 5.0]) - mean) / std, rtol=1e-6)
    assert not arrays.observed[0, 1, 0] and arrays.observed[0, 0, 0]


# --------------------------------------------------------------------------- statistics


def _three_splits(val_scale: float = 1.0) -> pd.DataFrame:
    return _visits(
        [
            {"id": 1, "f1": [1.0, 2.0, NAN], "f2": [5.0, 6.0, 7.0], "age": 50.0},
            {"id": 2, "f1": [4.0, 8.0, 16.0], "f2": [NAN, 1.0, 2.0], "age": 70.0, "sex": 0},
            {
                "id": 3,
                "f1": [10.0 * val_scale, NAN, NAN],
                "f2": [3.0 * val_scale] * 3,
                "split": "val",
                "age": 30.0 * val_scale,
            },
            {
                "id": 4,
                "f1": [NAN, 20.0 * val_scale, 1.0],
                "f2": [NAN, NAN, 9.0 * val_scale],
                "split": "test",
                "age": 90.0 * val_scale,
            },
        ]
    )


def test_statistics_come_from_train_only() -> None:
    arrays, stats = build_cohort_arrays(_three_splits(), FEATURES)
    changed, changed_stats = build_cohort_arrays(_three_splits(val_scale=100.0), FEATURES)
    pd.testing.assert_frame_equal(stats, changed_stats)
    train = arrays.split == "train"
    assert train.tolist() == [True, True, False, False]
    np.testing.assert_array_equal(arrays.x[train], changed.x[train])
    np.testing.assert_array_equal(arrays.static[train], changed.static[train])
    assert not np.array_equal(arrays.x[~train], changed.x[~train])
    assert stats.loc["f1", "n_train"] == 5
    assert stats.loc["f1", "median"] == 4.0  # 1, 2, 4, 8, 16
    assert stats.loc["age", "median"] == 60.0  # train visits' ages: 50, 50, 50, 70, 70, 70


def test_trimmed_zscore_uses_p5_to_p95() -> None:
    values = np.arange(1.0, 101.0)
    visits = _visits(
        [{"id": i, "f1": [v], "f2": [v * v]} for i, v in enumerate(values, start=1)]
        + [{"id": 999, "f1": [1000.0], "f2": [0.0], "split": "test"}]
    )
    arrays, stats = build_cohort_arrays(visits, FEATURES)
    p5, p95 = np.percentile(values, [5, 95])
    trimmed = values[(values >= p5) & (values <= p95)]
    assert len(trimmed) == 90  # 6..95
    assert stats.loc["f1", "p5"] == pytest.approx(p5)
    assert stats.loc["f1", "p95"] == pytest.approx(p95)
    assert stats.loc["f1", "mean"] == pytest.approx(trimmed.mean())
    assert stats.loc["f1", "std"] == pytest.approx(trimmed.std())
    assert stats.loc["f1", "std"] != pytest.approx(values.std())  # trimming changes the scale
    assert stats.loc["f1", "n_train"] == 100
    # Extreme values are scaled with the trimmed stats, not clipped.
    np.testing.assert_allclose(
        arrays.x[:100, 0, 0], (values - trimmed.mean()) / trimmed.std(), rtol=1e-5
    )
    assert arrays.x[100, 0, 0] == pytest.approx((1000.0 - trimmed.mean()) / trimmed.std(), rel=1e-5)


def test_constant_feature_gets_std_one() -> None:
    visits = _visits(
        [
            {"id": 1, "f1": [1.0, 2.0], "f2": [5.0, 5.0]},
            {"id": 2, "f1": [3.0, 4.0], "f2": [5.0, NAN]},
            {"id": 3, "f1": [5.0, 6.0], "f2": [7.0, 5.0], "split": "val"},
        ]
    )
    arrays, stats = build_cohort_arrays(visits, FEATURES)
    assert stats.loc["f2", "std"] == 1.0
    assert stats.loc["f2", "mean"] == 5.0
    assert np.isfinite(arrays.x).all()
    np.testing.assert_array_equal(arrays.x[:2, :, 1], 0.0)
    assert arrays.x[2, 0, 1] == pytest.approx(2.0)  # (7 - 5) / 1


def test_feature_never_measured_in_train_gets_finite_x() -> None:
    visits = _visits(
        [
            {"id": 1, "f1": [1.0, 2.0], "f2": [NAN, NAN]},
            {"id": 2, "f1": [3.0, 4.0], "f2": [NAN, NAN]},
            {"id": 3, "f1": [5.0, 6.0], "f2": [7.0, NAN], "split": "val"},
        ]
    )
    arrays, stats = build_cohort_arrays(visits, FEATURES)
    assert stats.loc["f2", "n_train"] == 0
    assert stats.loc["f2", "std"] == 1.0
    assert np.isnan(stats.loc["f2", "median"])
    assert np.isfinite(arrays.x).all()
    np.testing.assert_array_equal(arrays.x[:2, :, 1], 0.0)
    assert arrays.observed[2, 0, 1] and not arrays.observed[2, 1, 1]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_two_distinct_train_values_still_get_a_finite_mean() -> None:
    visits = _visits([{"id": 1, "f1": [1.0], "f2": [1.0]}, {"id": 2, "f1": [3.0], "f2": [2.0]}])
    arrays, stats = build_cohort_arrays(visits, FEATURES)
    assert np.isfinite(stats.loc["f1", "mean"])
    assert stats.loc["f1", "mean"] == pytest.approx(2.0)
    assert arrays.x[0, 0, 0] == pytest.approx(-arrays.x[1, 0, 0])


# --------------------------------------------------------------------------- layout


def test_padding_masks_and_static() -> None:
    visits = _visits(
        [
            {"id": 7, "f1": [5.0], "f2": [2.0], "label": 0, "sex": 0, "age": 40.0, "group": 70},
            {
                "id": 3,
                "f1": [1.0, NAN, 3.0],
                "f2": [NAN, 5.0, 6.0],
                "label": 1,
                "sex": 1,
                "age": 80.0,
                "group": 30,
            },
        ]
    ).sample(frac=1.0, random_state=0)  # row order must not matter
    arrays, stats = build_cohort_arrays(visits, FEATURES)
    assert arrays.x.shape == (2, 3, 2)
    assert arrays.x.dtype == np.float32
    assert arrays.patient_ids.tolist() == [3, 7]  # sorted by patient id
    assert arrays.group_ids.tolist() == [30, 70]
    assert arrays.y.tolist() == [1, 0]
    assert arrays.split.tolist() == ["train", "train"]
    assert arrays.visit_mask.tolist() == [[True, True, True], [True, False, False]]
    assert arrays.observed.tolist() == [
        [[True, False], [False, True], [True, True]],
        [[True, True], [False, False], [False, False]],
    ]
    np.testing.assert_array_equal(arrays.x[1, 1:], 0.0)  # padding
    np.testing.assert_allclose(_raw_x(arrays, stats, 0, 3, "f1"), [1, 1, 3], atol=1e-5)
    np.testing.assert_allclose(_raw_x(arrays, stats, 0, 3, "f2"), [5, 5, 6], atol=1e-5)
    np.testing.assert_allclose(_raw_x(arrays, stats, 1, 1, "f1"), [5], atol=1e-5)
    # static: sex as 0/1, age z-scored with the train (visit-level) stats
    np.testing.assert_array_equal(arrays.static[:, 0], [1.0, 0.0])
    age_z = (np.array([80.0, 40.0]) - stats.loc["age", "mean"]) / stats.loc["age", "std"]
    np.testing.assert_allclose(arrays.static[:, 1], age_z, rtol=1e-6)
    assert arrays.static.dtype == np.float32


def test_max_visits_keeps_last_visits() -> None:
    visits = _visits(
        [
            {"id": 1, "f1": [1.0, 2.0, 3.0], "f2": [10.0, 20.0, 30.0]},
            {"id": 2, "f1": [4.0], "f2": [40.0]},
        ]
    )
    arrays, stats = build_cohort_arrays(visits, FEATURES, max_visits=2)
    assert arrays.x.shape == (2, 2, 2)
    assert arrays.visit_mask.tolist() == [[True, True], [True, False]]
    np.testing.assert_allclose(_raw_x(arrays, stats, 0, 2, "f1"), [2, 3], atol=1e-5)
    np.testing.assert_allclose(_raw_x(arrays, stats, 0, 2, "f2"), [20, 30], atol=1e-4)
    np.testing.assert_allclose(_raw_x(arrays, stats, 1, 1, "f1"), [4], atol=1e-5)
    assert stats.loc["f1", "n_train"] == 3  # the dropped visit does not count in the stats


# --------------------------------------------------------------------------- saving


def _arrays() -> tuple[pd.DataFrame, CohortArrays, pd.DataFrame]:
    visits = _three_splits()
    arrays, stats = build_cohort_arrays(visits, FEATURES)
    return visits, arrays, stats


def test_save_load_round_trip(tmp_path: Path) -> None:
    _, arrays, _ = _arrays()
    path = tmp_path / "arrays.npz"
    arrays.save(path)
    loaded = CohortArrays.load(path)
    assert loaded.feature_ids == arrays.feature_ids == FEATURES
    for name in ("x", "observed", "visit_mask", "static", "y", "patient_ids", "group_ids", "split"):
        original, back = getattr(arrays, name), getattr(loaded, name)
        np.testing.assert_array_equal(back, original, err_msg=name)
        assert back.dtype == original.dtype, name
    assert loaded.split.tolist() == ["train", "train", "val", "test"]


def test_write_cohort_writes_folder(tmp_path: Path) -> None:
    visits, arrays, stats = _arrays()
    target = tmp_path / "cohort"
    assert (
        write_cohort(target, visits=visits, arrays=arrays, stats=stats, manifest={"run": 1})
        == target
    )
    assert sorted(p.name for p in target.iterdir()) == [
        "arrays.npz",
        "feature_stats.parquet",
        "manifest.json",
        "visits.parquet",
    ]
    assert json.loads((target / "manifest.json").read_text()) == {"run": 1}
    pd.testing.assert_frame_equal(
        pd.read_parquet(target / "visits.parquet"), visits, check_dtype=False
    )
    saved_stats = pd.read_parquet(target / "feature_stats.parquet").set_index("feature_id")
    pd.testing.assert_frame_equal(saved_stats, stats, check_dtype=False)
    np.testing.assert_array_equal(CohortArrays.load(target / "arrays.npz").x, arrays.x)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort"]


def test_write_cohort_failure_keeps_previous_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    visits, arrays, stats = _arrays()
    target = tmp_path / "cohort"
    original_save = CohortArrays.save
    calls = {"n": 0}

    def save_then_fail(self: CohortArrays, path: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            Path(path).write_bytes(b"half")
            raise OSError("disk full")
        original_save(self, path)

    monkeypatch.setattr(CohortArrays, "save", save_then_fail)
    write_cohort(target, visits=visits, arrays=arrays, stats=stats, manifest={"run": 1})
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    with pytest.raises(OSError, match="disk full"):
        write_cohort(
            target, visits=visits.iloc[:3], arrays=arrays, stats=stats, manifest={"run": 2}
        )
    assert calls["n"] == 2
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert json.loads((target / "manifest.json").read_text()) == {"run": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort"]  # no temp or .old folder
