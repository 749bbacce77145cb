"""Raw assets on bad input: one clear error, and the previous good snapshot stays in place."""

from __future__ import annotations

import pandas as pd
import pytest
from dagster import AssetSelection, DagsterInstance, materialize

from eagrl_pipeline.data.synthetic_tjh import write_synthetic_tjh
from eagrl_pipeline.errors import InputDataError


def _materialize_raw_tjh(home, tjh_path):
    from definitions import all_assets, build_resources
    from resources import EhrSources

    resources = build_resources(str(home))
    resources["sources"] = EhrSources(tjh_path=str(tjh_path))
    return materialize(
        all_assets,
        selection=AssetSelection.assets("raw_tjh"),
        resources=resources,
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def test_bad_tjh_file_fails_clearly_and_keeps_previous_snapshot(tmp_path):
    good = write_synthetic_tjh(tmp_path / "tjh.csv", n_patients=30, seed=1)
    first = _materialize_raw_tjh(tmp_path / "home", good)
    assert first.success
    snapshot = tmp_path / "home" / "artifacts" / "raw_tjh" / "lab_reports.parquet"
    before = snapshot.read_bytes()
    fingerprint = first.asset_materializations_for_node("raw_tjh")[0].metadata["fingerprint"]

    frame = pd.read_csv(good, dtype=str, keep_default_na=False)
    frame.loc[3, "hemoglobin"] = "n/a?"
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    second = _materialize_raw_tjh(tmp_path / "home", bad)

    assert not second.success
    (failure,) = [e for e in second.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.cause.message
    assert str(bad) in message and "'hemoglobin'" in message and "Fix:" in message
    assert snapshot.read_bytes() == before
    assert list(snapshot.parent.iterdir()) == [snapshot]
    assert fingerprint.value


def test_missing_labevents_names_the_feature_set_that_works(tmp_path):
    from eagrl_pipeline.data.mimic_iv import check_layout
    from eagrl_pipeline.data.synthetic_mimic_iv import write_synthetic_mimic_iv

    root = write_synthetic_mimic_iv(tmp_path / "mimic", n_stays=40, include_labevents=False)
    assert set(check_layout(root, "vitals")) >= {"chartevents", "icustays"}
    with pytest.raises(InputDataError, match=r"labevents\.csv\.gz.*'vitals' works without it"):
        check_layout(root, "vitals_labs")
