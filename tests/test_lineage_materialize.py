"""raw -> dbt warehouse -> cohorts through dagster.materialize in a temporary EAGRL_HOME."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, AssetSelection, DagsterInstance, asset, materialize

from assets.partitions import COHORTS, cohort_partitions
from eagrl_pipeline.data.cohort import CohortArrays

pytestmark = pytest.mark.slow


def test_warehouse_build_succeeds_with_every_dbt_test(lineage_home):
    result = lineage_home["warehouse"]
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert len(checks) > 30, "dbt tests should surface as Dagster asset checks"
    failed = [c.check_name for c in checks if not c.passed]
    assert failed == []
    materialized = {e.asset_key for e in result.get_asset_materialization_events()}
    for name in ("raw_tjh", "raw_mimic_iv", *(f"cohort_{k.replace('-', '_')}" for k in COHORTS)):
        assert AssetKey(name) in {AssetKey(k.path[-1]) for k in materialized}, name


def test_cohort_marts_have_one_row_per_patient_visit(lineage_home):
    warehouse = lineage_home["home"] / "warehouse.duckdb"
    with duckdb.connect(str(warehouse), read_only=True) as con:
        tjh = con.execute("SELECT * FROM cohort_tjh_mortality").df()
        mort = con.execute("SELECT * FROM cohort_mimic_iv_mortality").df()
        readm = con.execute("SELECT * FROM cohort_mimic_iv_readmission").df()
        n_tjh_features = con.execute(
            "SELECT count(*) FROM feature_dictionary "
            "WHERE dataset = 'tjh' AND kind <> 'demographic'"
        ).fetchone()[0]
    assert n_tjh_features == 73
    assert {f for f in tjh.columns} >= {"patient_id", "visit_index", "label", "sex", "age"}
    assert not tjh.duplicated(["patient_id", "visit_index"]).any()
    assert tjh.groupby("patient_id")["label"].nunique().max() == 1
    # MIMIC-IV: at most 7 daily visits per stay, both tasks over the same stays and visits.
    assert mort.groupby("patient_id").size().max() <= 7
    assert mort[["patient_id", "visit_index"]].equals(readm[["patient_id", "visit_index"]])
    assert 0 < mort.groupby("patient_id")["label"].first().mean() < 0.5
    # Units converted: temperature in Celsius, FiO2 a fraction.
    assert mort["temperature"].dropna().between(30, 45).all()
    assert mort["fraction_inspired_oxygen"].dropna().between(0.2, 1.0).all()
    assert mort["gcs_total"].dropna().between(2, 15).all()  # eye "None" scores 0


@pytest.mark.parametrize("partition", COHORTS)
def test_cohort_dataset_passes_its_quality_gate(lineage_home, partition):
    result = lineage_home["cohorts"][partition]
    assert result.success
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "cohort_quality" and check.passed
    folder = lineage_home["home"] / "artifacts" / "cohort_dataset" / partition
    manifest = json.loads((folder / "manifest.json").read_text())
    arrays = CohortArrays.load(folder / "arrays.npz")
    visits = pd.read_parquet(folder / "visits.parquet")
    n = len(arrays.patient_ids)
    assert arrays.x.shape[0] == n and arrays.x.shape[2] == len(manifest["feature_ids"])
    assert np.isfinite(arrays.x).all()
    assert set(arrays.split) == {"train", "val", "test"}
    assert visits.groupby("group_id")["split"].nunique().max() == 1
    train_total = sum(manifest["summary"][s]["patients"] for s in ("train", "val", "test"))
    assert train_total == n
    if partition == "tjh-mortality":
        assert manifest["split_strategy"] == "clinicrealm"
        assert manifest["summary"]["test"]["patients"] == 200


def test_failed_quality_gate_blocks_downstream(lineage_home):
    """An impossible prevalence bound fails the suite; a stage after the cohort never runs."""
    from definitions import all_assets

    ran: list[str] = []

    @asset(deps=["cohort_dataset"], partitions_def=cohort_partitions)
    def downstream_stage() -> None:
        ran.append("downstream")

    cohort_assets = [a for a in all_assets if AssetKey("cohort_dataset") in a.keys]
    result = materialize(
        [*all_assets, downstream_stage],
        selection=AssetSelection.assets("cohort_dataset", "downstream_stage"),
        partition_key="mimic_iv-mortality",
        resources=lineage_home["resources"],
        # Its own instance: the failed check must not gate the session's later runs (a failed
        # blocking check holds across runs, assets/gates.py).
        instance=DagsterInstance.ephemeral(),
        run_config={
            "ops": {cohort_assets[0].op.name: {"config": {"prevalence_bounds": [0.9, 1.0]}}}
        },
        raise_on_error=False,
    )
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed
    assert "expect_column_mean_to_be_between" in check.metadata["summary"].value
    assert ran == []
    assert not result.success
