"""The code location loads, with its jobs, partitions, dbt checks and run-time dbt arguments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dagster import AssetKey

from eagrl_pipeline.errors import InputDataError
from resources import dbt_vars


def test_definitions_load_with_jobs_partitions_and_dbt_checks():
    from definitions import defs

    repo = defs.get_repository_def()
    assert {"shared_inputs", "partition_lineage"} <= {j.name for j in repo.get_all_jobs()}
    graph = repo.asset_graph
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert {"raw_tjh", "raw_mimic_iv", "cohort_dataset", "feature_dictionary"} <= keys
    assert {"cohort_tjh_mortality", "cohort_mimic_iv_mortality"} <= keys
    cohort = graph.get(AssetKey("cohort_dataset"))
    assert cohort.partitions_def.get_partition_keys() == [
        "tjh-mortality",
        "mimic_iv-mortality",
        "mimic_iv-readmission",
    ]
    # dbt sources map onto the raw assets, so the lineage is connected end to end.
    assert AssetKey("raw_tjh") in graph.get(AssetKey("stg_tjh__lab_reports")).parent_keys
    checks = {c.name for c in graph.asset_check_keys}
    assert "cohort_quality" in checks
    assert any(name.startswith("unique_combination") for name in checks)
    from assets.cohorts import cohort_dataset

    (spec,) = cohort_dataset.check_specs
    assert spec.name == "cohort_quality" and spec.blocking


def test_dbt_vars_carry_run_time_paths_and_lab_panel(tmp_path: Path):
    args = dbt_vars(
        raw_root=tmp_path / "artifacts",
        warehouse_path=tmp_path / "w.duckdb",
        mimic_iv_feature_set="vitals",
        mimic_iv_lab_feature_ids=["lab_sodium"],
    )
    assert args[0] == "--vars"
    values = json.loads(args[1])
    assert values == {
        "raw_root": str(tmp_path / "artifacts"),
        "warehouse_path": str(tmp_path / "w.duckdb"),
        "mimic_iv_feature_set": "vitals",
        "mimic_iv_lab_feature_ids": ["lab_sodium"],
    }
    assert "mimic_iv_lab_feature_ids" not in json.loads(
        dbt_vars(raw_root=tmp_path, warehouse_path=tmp_path, mimic_iv_feature_set="vitals")[1]
    )


def test_unknown_lab_feature_id_is_refused_at_config_time_with_the_known_ids():
    """Lab ids are pasted into dbt's SQL: an unknown (or crafted) one must never get there."""
    import pydantic

    from resources import EhrSources
    from resources.dbt import mimic_iv_lab_ids

    known = mimic_iv_lab_ids()
    assert "lab_sodium" in known and all(i.startswith("lab_") for i in known)
    assert EhrSources(mimic_iv_lab_feature_ids=["lab_sodium"]).mimic_iv_lab_feature_ids == [
        "lab_sodium"
    ]
    for bad in (["lab_sodum"], ["lab_sodium') or true --"]):
        with pytest.raises(pydantic.ValidationError, match="unknown MIMIC-IV lab feature id"):
            EhrSources(mimic_iv_lab_feature_ids=bad)
        with pytest.raises(InputDataError, match="lab_sodium") as exc:
            dbt_vars(
                raw_root=Path("r"),
                warehouse_path=Path("w"),
                mimic_iv_feature_set="vitals_labs",
                mimic_iv_lab_feature_ids=bad,
            )
        assert "EhrSources.mimic_iv_lab_feature_ids" in str(exc.value)


def test_raw_writers_share_the_warehouse_pool_with_dbt():
    """dbt reads the raw snapshots: a raw writer must never replace them during a dbt build, so
    both sides hold the one-slot ``duckdb`` pool (issue 16, defect 2)."""
    from definitions import defs

    pools = {
        key.to_user_string(): defs.resolve_assets_def(key).op.pool
        for key in defs.resolve_asset_graph().get_all_asset_keys()
    }
    assert pools["raw_tjh"] == pools["raw_mimic_iv"] == "duckdb"
    dbt_models = [
        name for name in pools if name.startswith(("stg_", "int_", "cohort_t", "cohort_m"))
    ]
    assert dbt_models and {pools[name] for name in dbt_models} == {"duckdb"}


def test_resources_set_at_launch_override_the_environment_defaults(tmp_path: Path):
    """Data paths, the model, the device: what a user sets per launch is run config (the
    launchpad's `resources:` section, or a profile); the environment variables are only the
    defaults. Here the TJH path, left empty by the environment, is given at launch."""
    from dagster import DagsterInstance, Definitions

    from definitions import all_assets, build_resources, shared_job
    from eagrl_pipeline.data.synthetic_tjh import write_synthetic_tjh

    source = write_synthetic_tjh(tmp_path / "tjh.csv", n_patients=30, seed=1)
    resources = build_resources(str(tmp_path / "home"))
    assert resources["sources"].tjh_path is None
    defs = Definitions(assets=all_assets, jobs=[shared_job], resources=resources)
    result = defs.resolve_job_def("shared_inputs").execute_in_process(
        instance=DagsterInstance.ephemeral(),
        asset_selection=[AssetKey("raw_tjh")],
        run_config={"resources": {"sources": {"config": {"tjh_path": str(source)}}}},
    )
    (event,) = result.asset_materializations_for_node("raw_tjh")
    assert event.metadata["source"].value == "configured"
    assert event.metadata["input_path"].value == str(source)
    assert event.metadata["patients"].value == 30
