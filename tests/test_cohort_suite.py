"""The GX cohort suite: a clean cohort passes, and each kind of bad data fails exactly one check."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from eagrl_pipeline.validation.cohort_suite import CohortValidation, validate_cohort

N_GROUPS, PATIENTS_PER_GROUP, VISITS = 40, 2, 3


def _visits() -> pd.DataFrame:
    """80 patients in 40 groups, 3 visits each; groups 0-27 train, 28-33 val, 34-39 test."""
    rows = []
    for g in range(N_GROUPS):
        split = "train" if g < 28 else "val" if g < 34 else "test"
        for k in range(PATIENTS_PER_GROUP):
            p = g * PATIENTS_PER_GROUP + k
            for v in range(VISITS):
                rows.append(
                    {
                        "patient_id": p,
                        "group_id": 1000 + g,
                        "visit_index": v,
                        "visit_date": pd.Timestamp("2020-02-01") + pd.Timedelta(days=v),
                        "label": int(p % 3 == 0),
                        "split": split,
                        "sex": p % 2,
                        "age": 30.0 + p % 50,
                        "hr": 60.0 + (p + v) % 40,
                        "temp": np.nan if v == 1 else 36.5,
                        "crp": float(p % 7),
                    }
                )
    return pd.DataFrame(rows)


DICTIONARY = pd.DataFrame(
    {
        "feature_id": ["hr", "temp", "crp", "age", "sex", "not_in_visits"],
        "feature_name": ["Heart rate", "Temperature", "CRP", "Age", "Sex", "Nothing"],
        "valid_min": [0.0, 30.0, 0.0, 0.0, 0.0, 0.0],
        "valid_max": [300.0, 45.0, np.nan, 120.0, 1.0, 1.0],
    }
)


def _validate(visits: pd.DataFrame) -> CohortValidation:
    return validate_cohort(visits, DICTIONARY, suite_name="test_suite", source="synthetic")


def _failed(result: CohortValidation) -> list[tuple[str, str | None, int]]:
    return [(o.expectation, o.column, o.unexpected_count) for o in result.failures()]


@pytest.fixture(scope="module")
def good() -> CohortValidation:
    return _validate(_visits())


def test_good_cohort_passes_every_expectation(good: CohortValidation) -> None:
    assert good.success
    assert good.failures() == []
    # 1 columns + 1 row count + 6 not-null + 2 in-set + 5 ranges + 1 compound + 2 unique + 3 means
    assert len(good.outcomes) == 21
    ranged = {
        o.column for o in good.outcomes if o.expectation == "expect_column_values_to_be_between"
    }
    assert ranged == {"hr", "temp", "crp", "age", "sex"}
    crp = next(o for o in good.outcomes if o.column == "crp")
    assert "crp in [0, unbounded]" in crp.detail
    means = [o for o in good.outcomes if o.expectation == "expect_column_mean_to_be_between"]
    assert [o.element_count for o in means] == [56, 12, 12]
    # Patients 0, 3, ..., 54 are positive: 19 of 56 in train.
    assert "train split prevalence is 0.339 over 56 patients" in means[0].detail
    assert good.summary().splitlines()[0] == "synthetic [test_suite]: 21 of 21 expectations passed"


def test_records_are_json_friendly(good: CohortValidation) -> None:
    records = good.to_records()
    assert len(records) == 21
    assert json.loads(json.dumps(records))[0]["expectation"] == "expect_table_columns_to_match_set"
    assert set(records[0]) == {
        "expectation",
        "column",
        "success",
        "unexpected_count",
        "element_count",
        "detail",
    }


def test_value_above_valid_max() -> None:
    visits = _visits()
    visits.loc[5, "hr"] = 400.0
    result = _validate(visits)
    assert not result.success
    assert _failed(result) == [("expect_column_values_to_be_between", "hr", 1)]
    failure = result.failures()[0]
    assert failure.element_count == len(visits)
    assert "hr in [0, 300]" in failure.detail and "400.0" in failure.detail
    summary = result.summary()
    assert "20 of 21 expectations passed" in summary
    assert "on hr:" in summary


def test_null_label() -> None:
    visits = _visits()
    visits["label"] = visits["label"].astype("float64")
    visits.loc[0, "label"] = np.nan
    result = _validate(visits)
    assert _failed(result) == [("expect_column_values_to_not_be_null", "label", 1)]
    assert "on label:" in result.summary()


def test_bad_split_value() -> None:
    visits = _visits()
    visits.loc[visits["group_id"] == 1000, "split"] = "dev"  # both patients of one group
    result = _validate(visits)
    assert _failed(result) == [("expect_column_values_to_be_in_set", "split", 6)]
    assert "'dev'" in result.failures()[0].detail


def test_duplicate_visit() -> None:
    visits = _visits()
    visits = pd.concat([visits, visits.iloc[[4]]], ignore_index=True)
    result = _validate(visits)
    assert _failed(result) == [("expect_compound_columns_to_be_unique", None, 2)]
    assert "(1, 1)" in result.failures()[0].detail  # patient 1, visit 1


def test_patient_with_two_labels() -> None:
    visits = _visits()
    visits.loc[(visits["patient_id"] == 4) & (visits["visit_index"] == 2), "label"] = 1
    result = _validate(visits)
    assert _failed(result) == [("expect_column_values_to_be_unique", "patient_id", 2)]
    assert "patient 4 has 2 labels" in result.failures()[0].detail


def test_group_in_two_splits() -> None:
    visits = _visits()
    visits.loc[visits["patient_id"] == 1, "split"] = "test"  # patient 0 of group 1000 stays train
    result = _validate(visits)
    assert _failed(result) == [("expect_column_values_to_be_unique", "group_id", 2)]
    assert "group 1000 appears in splits train, test" in result.failures()[0].detail


def test_all_negative_val_split() -> None:
    visits = _visits()
    visits.loc[visits["split"] == "val", "label"] = 0
    result = _validate(visits)
    assert _failed(result) == [("expect_column_mean_to_be_between", "label", 12)]
    detail = result.failures()[0].detail
    assert "val split label prevalence in [0.02, 0.98]" in detail
    assert "val split prevalence is 0.000 over 12 patients" in detail
    assert "val split prevalence is 0.000" in result.summary()


def test_missing_required_column_is_reported_not_raised() -> None:
    result = _validate(_visits().drop(columns=["age", "visit_date"]))
    assert _failed(result) == [("expect_table_columns_to_match_set", None, 2)]
    assert "missing age, visit_date" in result.failures()[0].detail
    assert all(o.column not in {"age", "visit_date"} for o in result.outcomes)


def test_non_numeric_feature_fails_without_raising() -> None:
    visits = _visits()
    visits["hr"] = "fast"
    result = _validate(visits)
    assert [(o.expectation, o.column) for o in result.failures()] == [
        ("expect_column_values_to_be_between", "hr")
    ]
    assert "could not be evaluated" in result.failures()[0].detail


def test_input_frame_is_not_modified() -> None:
    visits = _visits()
    before = visits.copy()
    _validate(visits)
    pd.testing.assert_frame_equal(visits, before)


def test_dictionary_without_bounds_columns_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="valid_max"):
        validate_cohort(_visits(), DICTIONARY.drop(columns=["valid_max"]), suite_name="x")


def test_bad_prevalence_bounds_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="prevalence_bounds"):
        validate_cohort(_visits(), DICTIONARY, suite_name="x", prevalence_bounds=(0.9, 0.1))
