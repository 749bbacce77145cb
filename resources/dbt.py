"""The dbt project and CLI resource; run-time paths reach dbt as --vars, never by editing files."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import shutil
import sys
from functools import cached_property
from pathlib import Path

from dagster_dbt import DbtCliResource, DbtProject
from packaging import version

from eagrl_pipeline.errors import InputDataError

DBT_PROJECT_DIR = Path(__file__).resolve().parent.parent / "dbt_project"

DBT_PROJECT = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)


def dbt_executable() -> str:
    """dbt from this interpreter's environment (the venv need not be on PATH)."""
    beside = Path(sys.executable).parent / "dbt"
    return str(beside) if beside.exists() else (shutil.which("dbt") or "dbt")


class OfflineDbtCliResource(DbtCliResource):
    """dagster-dbt learns dbt's version by running `dbt --version`, which also asks PyPI for the
    latest release; patient-data machines must make no outside connection, so read the
    installed dbt-core's version instead."""

    @cached_property
    def _cli_version(self) -> version.Version:
        return version.parse(importlib.metadata.version("dbt-core"))


def dbt_resource() -> DbtCliResource:
    return OfflineDbtCliResource(
        project_dir=DBT_PROJECT, profiles_dir=str(DBT_PROJECT_DIR), dbt_executable=dbt_executable()
    )


def mimic_iv_lab_ids() -> list[str]:
    """The MIMIC-IV lab feature ids the dictionary seed defines (what a lab panel may name)."""
    with open(DBT_PROJECT_DIR / "seeds" / "feature_dictionary.csv", newline="") as handle:
        return [
            row["feature_id"]
            for row in csv.DictReader(handle)
            if row["dataset"] == "mimic_iv" and row["source_column"] == "labevents"
        ]


def check_lab_feature_ids(ids: list[str]) -> list[str]:
    """Refuse a lab panel id the dictionary does not define.

    The ids are pasted into dbt's SQL as literals, and an unknown one would otherwise vanish
    from the cohort without a word, so only the seed's own ids pass.
    """
    known = mimic_iv_lab_ids()
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise InputDataError(
            "EhrSources.mimic_iv_lab_feature_ids",
            f"unknown MIMIC-IV lab feature id(s) {unknown}.",
            fix=f"use ids from dbt_project/seeds/feature_dictionary.csv: {', '.join(known)}.",
        )
    return list(ids)


def dbt_vars(
    *,
    raw_root: Path,
    warehouse_path: Path,
    mimic_iv_feature_set: str,
    mimic_iv_lab_feature_ids: list[str] | None = None,
) -> list[str]:
    """The ``--vars`` arguments of a dbt invocation (a pure builder, unit-tested)."""
    values: dict[str, object] = {
        "raw_root": str(raw_root),
        "warehouse_path": str(warehouse_path),
        "mimic_iv_feature_set": mimic_iv_feature_set,
    }
    if mimic_iv_lab_feature_ids:
        values["mimic_iv_lab_feature_ids"] = check_lab_feature_ids(list(mimic_iv_lab_feature_ids))
    return ["--vars", json.dumps(values)]
