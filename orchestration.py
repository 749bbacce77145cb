"""Orchestration: the `full_lineage` and `retrain` jobs, the weekly retrain schedule, the sensor
that starts `full_lineage` when a raw input changes, and the fan-out that runs every partition
once `full_lineage` (the unpartitioned raw inputs and warehouse) has succeeded.

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

from assets.partitions import COHORTS, cohort_partitions
from eagrl_pipeline.data import mimic_iv
from eagrl_pipeline.data.fingerprints import stat_fingerprint
from eagrl_pipeline.errors import InputDataError

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
    selection=(
        AssetSelection.groups("experts", "reasoning", "training")
        | AssetSelection.assets("evaluation_report")
    )
    - AssetSelection.assets("base_language_model"),
    partitions_def=cohort_partitions,
    description="Experts onward for one dataset-task partition: expert models and feature "
    "rankings, prompts, base-model predictions, trajectories, SFT and GRPO checkpoints and the "
    "evaluation report (the cohorts and warehouse are reused).",
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


# -- the cross-dataset report after the mortality partitions -------------------------------------

CROSS_DATASET_PARTITIONS = ("mimic_iv-mortality", "tjh-mortality")


def cross_dataset_requests(
    partition: str | None, reported: set[str], run_id: str
) -> list[RunRequest] | SkipReason:
    """After a partition's run: the whole cross-dataset job (generalization and comparison)
    once both mortality partitions have their evaluation report, else the comparison alone,
    so its table follows every partition's new evaluation; the run key ties the request to
    the partition run."""
    tags = {"eagrl/upstream_run_id": run_id}
    if partition not in COHORTS:
        return SkipReason(f"partition {partition!r} is not a dataset-task partition")
    if partition in CROSS_DATASET_PARTITIONS and all(
        p in reported for p in CROSS_DATASET_PARTITIONS
    ):
        return [RunRequest(run_key=f"{run_id}:cross_dataset", tags=tags)]
    missing = [p for p in CROSS_DATASET_PARTITIONS if p not in reported]
    why = (
        f"the generalization report waits for {', '.join(missing)}"
        if missing
        else f"{partition} does not feed the generalization report"
    )
    return [
        RunRequest(
            run_key=f"{run_id}:comparison",
            asset_selection=[AssetKey("comparison_report")],
            tags={**tags, "eagrl/why_comparison_only": why},
        )
    ]


def build_cross_dataset_sensor(
    partition_job: UnresolvedAssetJobDefinition, report_job: UnresolvedAssetJobDefinition
) -> SensorDefinition:
    """On by default, like the fan-out: it completes `full_lineage` (raw to every report)."""

    @run_status_sensor(
        name="cross_dataset_after_partitions",
        run_status=DagsterRunStatus.SUCCESS,
        monitored_jobs=[partition_job],
        request_job=report_job,
        default_status=DefaultSensorStatus.RUNNING,
        description="When a partition's run succeeds: cross_dataset_report (the generalization "
        "and the comparison reports) once both mortality partitions have an evaluation report, "
        "else the comparison report alone; once per partition run.",
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
