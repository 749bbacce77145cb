"""The dbt-duckdb warehouse: staging, intermediate and cohort marts; dbt tests become checks.

One dbt build per run (not per partition): the dbt assets are unpartitioned, so a backfill of
the cohort partitions never splits the warehouse into many builds.
"""

from collections.abc import Mapping
from typing import Any

from dagster import AssetExecutionContext, AssetKey
from dagster_dbt import (
    DagsterDbtTranslator,
    DagsterDbtTranslatorSettings,
    DbtCliResource,
    dbt_assets,
)

from resources import DBT_PROJECT, EagrlHome, EhrSources, dbt_vars

_SOURCE_ASSETS = {"tjh": AssetKey("raw_tjh"), "mimic_iv": AssetKey("raw_mimic_iv")}


class WarehouseTranslator(DagsterDbtTranslator):
    """dbt sources map onto the raw assets; every dbt node sits in the 'warehouse' group."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return _SOURCE_ASSETS[dbt_resource_props["source_name"]]
        return super().get_asset_key(dbt_resource_props)

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return "warehouse"


@dbt_assets(
    manifest=DBT_PROJECT.manifest_path,
    project=DBT_PROJECT,
    dagster_dbt_translator=WarehouseTranslator(
        settings=DagsterDbtTranslatorSettings(
            enable_asset_checks=True, enable_duplicate_source_asset_keys=True
        )
    ),
    pool="duckdb",
)
def warehouse_dbt_assets(
    context: AssetExecutionContext, dbt: DbtCliResource, home: EagrlHome, sources: EhrSources
):
    """``dbt build`` of the selected models, seeds and tests against EAGRL_HOME's warehouse."""
    args = [
        "build",
        *dbt_vars(
            raw_root=home.artifacts,
            warehouse_path=home.warehouse_path,
            mimic_iv_feature_set=sources.mimic_iv_feature_set,
            mimic_iv_lab_feature_ids=sources.mimic_iv_lab_feature_ids,
        ),
    ]
    target = home.dbt_target / context.run_id
    yield from dbt.cli(args, context=context, target_path=target).stream()
