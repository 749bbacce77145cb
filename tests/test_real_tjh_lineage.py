"""The real TJH file through raw -> dbt -> cohort: the published counts and ClinicRealm split."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from dagster import AssetSelection, DagsterInstance, materialize

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def test_real_tjh_cohort_matches_published_counts_and_split(tjh_dir, tmp_path):
    from definitions import all_assets, build_resources
    from resources import EhrSources

    resources = build_resources(str(tmp_path))
    resources["sources"] = EhrSources(
        tjh_path=str(tjh_dir / "time_series_375_prerpocess_en.xlsx"), synthetic_mimic_iv_stays=300
    )
    instance = DagsterInstance.ephemeral()
    warehouse = materialize(
        all_assets,
        selection=AssetSelection.groups("raw", "warehouse"),
        resources=resources,
        instance=instance,
    )
    assert warehouse.success
    raw = warehouse.asset_materializations_for_node("raw_tjh")[0].metadata
    assert raw["rows"].value == 6120 and raw["rows_without_re_date"].value == 14
    assert raw["patients_with_reports"].value == 361

    cohort = materialize(
        all_assets,
        selection=AssetSelection.assets("cohort_dataset"),
        partition_key="tjh-mortality",
        resources=resources,
        instance=instance,
    )
    (check,) = cohort.get_asset_check_evaluations()
    assert check.passed, check.metadata["summary"].value
    folder = tmp_path / "artifacts" / "cohort_dataset" / "tjh-mortality"
    summary = json.loads((folder / "manifest.json").read_text())["summary"]
    assert summary["visits"] == 1704
    assert [summary[s]["patients"] for s in ("train", "val", "test")] == [140, 21, 200]
    visits = pd.read_parquet(folder / "visits.parquet")
    patients = visits.drop_duplicates("patient_id").set_index("patient_id")
    assert patients["label"].value_counts().to_dict() == {0: 195, 1: 166}
    published = pd.read_csv(tjh_dir / "splits" / "tjh_splits.csv").set_index("PATIENT_ID")
    assert (patients["split"] == published.loc[patients.index, "clinicrealm_split"]).all()
