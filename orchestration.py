"""Orchestration: the `full_lineage`, `retrain` and `experiment_grid` jobs, the weekly retrain
schedule, the sensor that starts `full_lineage` when a raw input changes, the fan-out that runs
every partition once `full_lineage` (the unpartitioned raw inputs and warehouse) has succeeded,
the default variant's grid cell after each partition, and the cross-dataset reports after the
cells.

Schedules and sensors are off by default in development and on when ``EAGRL_DEPLOYMENT`` is
``production``; the ``build_*`` functions take an explicit environment so tests can build either.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from dagster import (
    AssetKey,
    AssetSelection,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    RunStatusSensorContext,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    define_asset_job,
    run_status_sensor,
    schedule,
    sensor,
)

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )

from assets.partitions import (
    COHORTS,
    GENERALIZATION_PARTITIONS,
    cell_key,
    cell_partitions,
    cohort_partitions,
    split_cell,
)
from eagrl_pipeline.data import mimic_iv
from eagrl_pipeline.data.fingerprints import stat_fingerprint
from eagrl_pipeline.errors import InputDataError
from eagrl_pipeline.variants import DEFAULT_VARIANT

DEFAULT_RETRAIN_CRON = "0 3 * * 0"  # Sundays 03:00
DEFAULT_RETRAIN_TIMEZONE = "UTC"
RAW_SENSOR_INTERVAL_S = 60

full_lineage_job = define_asset_job(
    "full_lineage",
    selection=AssetSelection.groups("raw", "warehouse")
    | AssetSelection.assets("base_language_model"),
    description="Raw inputs to reports: this run builds what every partition shares (raw "
    "inputs, the dbt warehouse, the base model); when it succeeds the `full_lineage_fan_out` "
    "sensor starts one `partition_lineage` run per dataset-task partition.",
)

retrain_job = define_asset_job(
    "retrain",
    selection=AssetSelection.groups("experts", "reasoning", "training")
    - AssetSelection.assets("base_language_model", "rl_checkpoint"),
    partitions_def=cohort_partitions,
    description="Experts onward for one dataset-task partition: expert models and feature "
    "rankings, prompts, base-model predictions, trajectories and the SFT checkpoint (the "
    "cohorts and warehouse are reused); the `default_cell_after_partition` sensor then trains "
    "and evaluates the default variant's grid cell.",
)

experiment_grid_job = define_asset_job(
    "experiment_grid",
    selection=AssetSelection.assets("rl_checkpoint", "evaluation_report"),
    partitions_def=cell_partitions,
    description="One cell of the experiment grid (dataset-task x method variant): the variant's "
    "policy (GRPO for the GRPO variants; a manifest naming the base model or the SFT adapter "
    "otherwise) and its evaluation report. Backfill any sub-grid from the UI (for example every "
    "variant of tjh-mortality): one run per cell. The cells read the dataset-task's shared "
    "stages (partition_lineage), computed once for every variant.",
)


def is_production(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get("EAGRL_DEPLOYMENT", "").strip().lower() == "production"


def _schedule_status(environ: Mapping[str, str] | None) -> DefaultScheduleStatus:
    running = is_production(environ)
    return DefaultScheduleStatus.RUNNING if running else DefaultScheduleStatus.STOPPED


def _sensor_status(environ: Mapping[str, str] | None) -> DefaultSensorStatus:
    return DefaultSensorStatus.RUNNING if is_production(environ) else DefaultSensorStatus.STOPPED


# -- the weekly retrain schedule ----------------------------------------------------------------


def retrain_requests(scheduled: str) -> list[RunRequest]:
    """One run per partition, keyed by the tick so a tick never launches a partition twice."""
    return [
        RunRequest(partition_key=key, run_key=f"retrain:{scheduled}:{key}")
        for key in cohort_partitions.get_partition_keys()
    ]


def build_retrain_schedule(environ: Mapping[str, str] | None = None) -> ScheduleDefinition:
    env = os.environ if environ is None else environ

    @schedule(
        name="weekly_retrain",
        job=retrain_job,
        cron_schedule=env.get("EAGRL_RETRAIN_CRON") or DEFAULT_RETRAIN_CRON,
        execution_timezone=env.get("EAGRL_RETRAIN_TIMEZONE") or DEFAULT_RETRAIN_TIMEZONE,
        default_status=_schedule_status(environ),
        description="Retrain experts onward on every dataset-task partition (cron and timezone "
        "from EAGRL_RETRAIN_CRON / EAGRL_RETRAIN_TIMEZONE; on when EAGRL_DEPLOYMENT=production).",
    )
    def weekly_retrain(context: ScheduleEvaluationContext):
        return retrain_requests(context.scheduled_execution_time.isoformat())

    return weekly_retrain


# -- the raw-input sensor ------------------------------------------------------------------------


def raw_input_fingerprint(
    tjh_path: str | None, mimic_iv_root: str | None, mimic_iv_feature_set: str = "vitals_labs"
) -> tuple[str | None, str | None]:
    """(fingerprint, None), or (None, why not): the stat fingerprint (path, size, mtime; no
    contents read) of the files the raw assets read, by the function they use for their own
    cheap check (``eagrl_pipeline.data.fingerprints``): the TJH file, and the MIMIC-IV tables the
    feature set needs."""
    if not tjh_path and not mimic_iv_root:
        return None, (
            "No raw input configured (EAGRL_TJH_PATH and EAGRL_MIMIC_IV_ROOT are empty): the "
            "synthetic default does not change."
        )
    inputs: dict[str, str] = {}
    if tjh_path:
        path = Path(tjh_path).expanduser()
        if not path.is_file():
            return None, f"EAGRL_TJH_PATH={tjh_path} is not a file."
        inputs["tjh"] = stat_fingerprint([path])
    if mimic_iv_root:
        try:
            tables = mimic_iv.check_layout(Path(mimic_iv_root).expanduser(), mimic_iv_feature_set)
        except InputDataError as exc:
            return None, f"EAGRL_MIMIC_IV_ROOT={mimic_iv_root}: {exc}"
        inputs["mimic_iv"] = stat_fingerprint(tables.values())
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return digest[:32], None


def build_raw_input_sensor(environ: Mapping[str, str] | None = None) -> SensorDefinition:
    @sensor(
        name="raw_input_changed",
        job=full_lineage_job,
        minimum_interval_seconds=RAW_SENSOR_INTERVAL_S,
        default_status=_sensor_status(environ),
        description="Starts full_lineage when the configured raw inputs (EAGRL_TJH_PATH, "
        "EAGRL_MIMIC_IV_ROOT) change: a new TJH file, a new MIMIC-IV release folder. The cursor "
        "keeps the last fingerprint, so one change triggers one run.",
    )
    def raw_input_changed(context: SensorEvaluationContext):
        # Read at tick time, not import time: the daemon sees the current configuration.
        fingerprint, reason = raw_input_fingerprint(
            os.environ.get("EAGRL_TJH_PATH") or None,
            os.environ.get("EAGRL_MIMIC_IV_ROOT") or None,
            os.environ.get("EAGRL_MIMIC_IV_FEATURE_SET") or "vitals_labs",
        )
        if fingerprint is None:
            return SkipReason(reason)
        if fingerprint == context.cursor:
            return SkipReason(f"Raw inputs unchanged (fingerprint {fingerprint}).")
        context.update_cursor(fingerprint)
        return RunRequest(run_key=fingerprint, tags={"eagrl/raw_fingerprint": fingerprint})

    return raw_input_changed


# -- the fan-out after full_lineage ---------------------------------------------------------------


def fan_out_requests(upstream_run_id: str) -> list[RunRequest]:
    """One partition_lineage run per partition; the run keys carry the upstream run id, so a
    successful full_lineage run fans out exactly once."""
    return [
        RunRequest(
            partition_key=key,
            run_key=f"{upstream_run_id}:{key}",
            tags={"eagrl/upstream_run_id": upstream_run_id},
        )
        for key in cohort_partitions.get_partition_keys()
    ]


def build_fan_out_sensor(partition_job: UnresolvedAssetJobDefinition) -> SensorDefinition:
    """On by default: it is the second half of `full_lineage` (it only reacts to those runs)."""

    @run_status_sensor(
        name="full_lineage_fan_out",
        run_status=DagsterRunStatus.SUCCESS,
        monitored_jobs=[full_lineage_job],
        request_job=partition_job,
        default_status=DefaultSensorStatus.RUNNING,
        description="When full_lineage succeeds, start one partition_lineage run per "
        "dataset-task partition (run keys tied to the upstream run id).",
    )
    def full_lineage_fan_out(context: RunStatusSensorContext) -> Iterator[RunRequest]:
        yield from fan_out_requests(context.dagster_run.run_id)

    return full_lineage_fan_out


# -- the default variant's grid cell after a partition -----------------------------------------


def default_cell_requests(partition: str | None, run_id: str) -> list[RunRequest] | SkipReason:
    """After a partition's shared stages: the default variant's cell of that dataset-task (its
    GRPO checkpoint and evaluation report), once per partition run."""
    if partition not in COHORTS:
        return SkipReason(f"partition {partition!r} is not a dataset-task partition")
    cell = str(cell_key(partition, DEFAULT_VARIANT))
    return [
        RunRequest(
            partition_key=cell,
            run_key=f"{run_id}:{cell}",
            tags={"eagrl/upstream_run_id": run_id},
        )
    ]


def build_default_cell_sensor(
    partition_jobs: list[UnresolvedAssetJobDefinition],
    grid_job: UnresolvedAssetJobDefinition,
) -> SensorDefinition:
    """On by default, like the fan-out: it completes a partition's lineage."""

    @run_status_sensor(
        name="default_cell_after_partition",
        run_status=DagsterRunStatus.SUCCESS,
        monitored_jobs=partition_jobs,
        request_job=grid_job,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"When a partition's shared stages succeed (partition_lineage, retrain): "
        f"the {DEFAULT_VARIANT} cell of that dataset-task in experiment_grid (GRPO and the "
        "evaluation report); the other variants run by backfill or `make grid`.",
    )
    def default_cell_after_partition(context: RunStatusSensorContext):
        run = context.dagster_run
        result = default_cell_requests(run.tags.get("dagster/partition"), run.run_id)
        return result if isinstance(result, SkipReason) else result[0]

    return default_cell_after_partition


# -- the cross-dataset reports after the grid cells ---------------------------------------------


def cross_dataset_requests(
    cell: str | None, reported: set[str], run_id: str
) -> list[RunRequest] | SkipReason:
    """After a grid cell's run: the cross-dataset job for the cell's variant (its
    generalization report, then the comparison) once that variant's cells of both mortality
    partitions have their evaluation report, else the comparison alone, so its table follows
    every cell's new evaluation; the run key ties the request to the cell's run."""
    tags = {"eagrl/upstream_run_id": run_id}
    try:
        partition, variant = split_cell(cell or "")
    except ValueError:
        return SkipReason(f"partition {cell!r} is not a grid cell (dataset_task|variant)")
    if partition not in COHORTS:
        return SkipReason(f"partition {cell!r} is not a grid cell of a dataset-task")
    pair = [str(cell_key(p, variant)) for p in GENERALIZATION_PARTITIONS]
    if str(cell) in pair and all(c in reported for c in pair):
        return [RunRequest(partition_key=variant, run_key=f"{run_id}:cross_dataset", tags=tags)]
    missing = [c for c in pair if c not in reported]
    why = (
        f"generalization_report[{variant}] waits for {', '.join(missing)}"
        if missing
        else f"{cell} does not feed a generalization report"
    )
    return [
        RunRequest(
            run_key=f"{run_id}:comparison",
            asset_selection=[AssetKey("comparison_report")],
            tags={**tags, "eagrl/why_comparison_only": why},
        )
    ]


def build_cross_dataset_sensor(
    grid_job: UnresolvedAssetJobDefinition, report_job: UnresolvedAssetJobDefinition
) -> SensorDefinition:
    """On by default, like the fan-out: it completes `full_lineage` (raw to every report)."""

    @run_status_sensor(
        name="cross_dataset_after_partitions",
        run_status=DagsterRunStatus.SUCCESS,
        monitored_jobs=[grid_job],
        request_job=report_job,
        default_status=DefaultSensorStatus.RUNNING,
        description="When a grid cell's run succeeds: cross_dataset_report for the cell's "
        "variant (its generalization report and the comparison report) once that variant's "
        "cells of both mortality partitions have an evaluation report, else the comparison "
        "report alone; once per cell run.",
    )
    def cross_dataset_after_partitions(context: RunStatusSensorContext):
        run = context.dagster_run
        reported = context.instance.get_materialized_partitions(AssetKey("evaluation_report"))
        result = cross_dataset_requests(run.tags.get("dagster/partition"), reported, run.run_id)
        if isinstance(result, SkipReason):
            return result
        return result[0]

    return cross_dataset_after_partitions


retrain_schedule = build_retrain_schedule()
raw_input_changed = build_raw_input_sensor()
