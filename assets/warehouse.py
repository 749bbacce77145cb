"""The dbt-duckdb warehouse: staging, intermediate and cohort marts; dbt tests become checks.

One dbt build per run (not per partition): the dbt assets are unpartitioned, so a backfill of
the cohort partitions never splits the warehouse into many builds.
"""

import hashlib
from collections.abc import Mapping
from typing import Any

from dagster import AssetExecutionContext, AssetKey, AssetSpec
from dagster_dbt import (
    DagsterDbtTranslator,
    DagsterDbtTranslatorSettings,
    DbtCliResource,
    dbt_assets,
)

from resources import DBT_PROJECT, EagrlHome, EhrSources, dbt_vars

_SOURCE_ASSETS = {"tjh": AssetKey("raw_tjh"), "mimic_iv": AssetKey("raw_mimic_iv")}


def project_macros(manifest: Mapping[str, Any], node: Mapping[str, Any]) -> list[str]:
    """The project's own macros a node calls, directly or through other macros (sorted ids).

    dbt's and adapters' macros are left out: they change with the dbt version, not the project.
    """
    project = manifest.get("metadata", {}).get("project_name")
    macros = manifest.get("macros", {})
    seen: set[str] = set()
    todo = list(node.get("depends_on", {}).get("macros", []))
    while todo:
        uid = todo.pop()
        macro = macros.get(uid)
        if uid in seen or macro is None or macro.get("package_name") != project:
            continue
        seen.add(uid)
        todo.extend(macro.get("depends_on", {}).get("macros", []))
    return sorted(seen)


class WarehouseTranslator(DagsterDbtTranslator):
    """dbt sources map onto the raw assets; every dbt node sits in the 'warehouse' group; a
    model's code version covers the project macros it calls (dagster-dbt hashes only the
    model's own SQL, so an edit to a shared cohort macro left every cohort 'up to date')."""

    def get_asset_spec(
        self, manifest: Mapping[str, Any], unique_id: str, project: Any
    ) -> AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        node = manifest.get("nodes", {}).get(unique_id)
        macros = project_macros(manifest, node) if node else []
        if not macros or spec.code_version is None:
            return spec
        digest = hashlib.sha256(spec.code_version.encode())
        for uid in macros:
            digest.update(f"\0{uid}\0{manifest['macros'][uid].get('macro_sql', '')}".encode())
        return spec.replace_attributes(code_version=digest.hexdigest()[:16])

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
