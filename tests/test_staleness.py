"""Re-runs skip what is up to date: after a materialization nothing is stale; a raw input with a
new fingerprint makes the warehouse and the cohorts below it stale, and only those."""

from __future__ import annotations

import pytest
from dagster import AssetKey, AssetMaterialization, DataVersion
from dagster._core.definitions.data_version import DATA_VERSION_TAG

pytestmark = pytest.mark.slow


def test_nothing_is_stale_after_a_run_and_a_new_fingerprint_propagates(lineage_home):
    from definitions import defs
    from staleness import cohort_relevance, job_asset_keys, stale_or_missing

    instance = lineage_home["instance"]
    cohort = AssetKey("cohort_dataset")
    marts = [AssetKey("cohort_tjh_mortality"), AssetKey("cohort_mimic_iv_mortality")]
    assert stale_or_missing(instance, defs, [cohort, *marts], "tjh-mortality") == {}
    # Never materialized for this partition in the fixture: missing, with the reason.
    training = stale_or_missing(instance, defs, [AssetKey("sft_checkpoint")], "tjh-mortality")
    assert training == {AssetKey("sft_checkpoint"): "missing"}

    raw = AssetKey("raw_tjh")
    before = instance.get_latest_materialization_event(raw).asset_materialization
    original = before.tags[DATA_VERSION_TAG]
    try:
        instance.report_runless_asset_event(
            AssetMaterialization(raw, tags={DATA_VERSION_TAG: DataVersion("a-new-file").value})
        )
        tjh = "tjh-mortality"
        stale = stale_or_missing(instance, defs, [cohort, *marts], tjh, cohort_relevance)
        assert AssetKey("cohort_tjh_mortality") in stale and cohort in stale
        assert AssetKey("cohort_mimic_iv_mortality") not in stale  # MIMIC-IV did not change
        assert "cohort_tjh_mortality" in stale[cohort]
        downstream = [AssetKey("expert_model"), AssetKey("rl_checkpoint")]
        # a grid cell's plan covers its dataset-task's shared stages and the cell's own assets
        assert set(downstream) <= set(
            stale_or_missing(instance, defs, downstream, "tjh-mortality|eagrl", cohort_relevance)
        )
        # a dataset-task's plan leaves the cells to their own plans
        assert AssetKey("rl_checkpoint") not in stale_or_missing(
            instance, defs, downstream, "tjh-mortality", cohort_relevance
        )
        # A MIMIC-IV partition reads only its own mart: the TJH change leaves it alone.
        mimic = stale_or_missing(instance, defs, [cohort], "mimic_iv-mortality", cohort_relevance)
        assert mimic == {}
        assert cohort in stale_or_missing(instance, defs, [cohort], "mimic_iv-mortality")
    finally:
        instance.report_runless_asset_event(
            AssetMaterialization(raw, tags={DATA_VERSION_TAG: original})
        )
    assert stale_or_missing(instance, defs, [cohort, *marts], "tjh-mortality") == {}
    keys = job_asset_keys(defs, "partition_lineage")
    assert cohort in keys and AssetKey("sft_checkpoint") in keys and raw not in keys
    assert job_asset_keys(defs, "experiment_grid") == [
        AssetKey("evaluation_report"),
        AssetKey("rl_checkpoint"),
    ]
