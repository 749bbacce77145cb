"""Jobs, the weekly retrain schedule, the raw-input sensor and the full_lineage fan-out."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    build_run_status_sensor_context,
    build_schedule_context,
    build_sensor_context,
    job,
    op,
)

import orchestration
from assets.partitions import COHORTS
from eagrl_pipeline.data.mimic_iv import TABLES, required_tables
from eagrl_pipeline.variants import VARIANTS

PRODUCTION = {"EAGRL_DEPLOYMENT": "production"}


@pytest.fixture(scope="module")
def defs():
    from definitions import defs

    return defs


def test_definitions_load_with_every_job_schedule_and_sensor(defs):
    repo = defs.get_repository_def()
    jobs = {j.name for j in repo.get_all_jobs()}
    assert {"shared_inputs", "partition_lineage", "full_lineage", "retrain"} <= jobs

    full = repo.get_job("full_lineage")
    assert full.partitions_def is None
    full_keys = {k.to_user_string() for k in full.asset_layer.executable_asset_keys}
    assert {"raw_tjh", "raw_mimic_iv", "base_language_model"} <= full_keys
    assert "cohort_dataset" not in full_keys

    retrain = repo.get_job("retrain")
    assert retrain.partitions_def.get_partition_keys() == list(COHORTS)
    assert retrain.asset_layer.executable_asset_keys == {
        AssetKey(name)
        for name in (
            "expert_model",
            "expert_feature_ranking",
            "llm_prompts",
            "base_llm_predictions",
            "mcts_trajectories",
            "sft_checkpoint",
        )
    }
    assert {"cross_dataset_report", "experiment_grid"} <= jobs
    # one run per method variant: its generalization report, then the comparison
    assert set(repo.get_job("cross_dataset_report").partitions_def.get_partition_keys()) == set(
        VARIANTS
    )
    grid = repo.get_job("experiment_grid")
    assert grid.asset_layer.executable_asset_keys == {
        AssetKey("rl_checkpoint"),
        AssetKey("evaluation_report"),
    }
    cells = grid.partitions_def.get_partition_keys()
    assert len(cells) == len(COHORTS) * len(VARIANTS)
    assert "tjh-mortality|eagrl" in cells and "mimic_iv-readmission|vanilla" in cells

    (schedule,) = repo.schedule_defs
    assert schedule.name == "weekly_retrain" and schedule.job_name == "retrain"
    assert schedule.cron_schedule == "0 3 * * 0"
    assert schedule.execution_timezone == "UTC"
    sensors = {s.name: s for s in repo.sensor_defs}
    assert set(sensors) == {
        "raw_input_changed",
        "full_lineage_fan_out",
        "default_cell_after_partition",
        "cross_dataset_after_partitions",
    }
    assert sensors["cross_dataset_after_partitions"].job_name == "cross_dataset_report"
    assert sensors["default_cell_after_partition"].job_name == "experiment_grid"
    assert sensors["raw_input_changed"].minimum_interval_seconds == 60
    assert sensors["raw_input_changed"].job_name == "full_lineage"
    assert sensors["full_lineage_fan_out"].job_name == "partition_lineage"
    if not orchestration.is_production():
        assert schedule.default_status == DefaultScheduleStatus.STOPPED
        assert sensors["raw_input_changed"].default_status == DefaultSensorStatus.STOPPED
    assert sensors["full_lineage_fan_out"].default_status == DefaultSensorStatus.RUNNING


def test_production_profile_turns_schedule_and_sensor_on_and_env_sets_the_cron():
    dev = {"EAGRL_DEPLOYMENT": "development"}
    assert orchestration.build_retrain_schedule(dev).default_status == DefaultScheduleStatus.STOPPED
    assert orchestration.build_raw_input_sensor(dev).default_status == DefaultSensorStatus.STOPPED
    env = {
        **PRODUCTION,
        "EAGRL_RETRAIN_CRON": "30 1 * * 1",
        "EAGRL_RETRAIN_TIMEZONE": "Europe/Paris",
    }
    schedule = orchestration.build_retrain_schedule(env)
    assert schedule.default_status == DefaultScheduleStatus.RUNNING
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("30 1 * * 1", "Europe/Paris")
    sensor = orchestration.build_raw_input_sensor(PRODUCTION)
    assert sensor.default_status == DefaultSensorStatus.RUNNING


def test_schedule_emits_one_run_request_per_partition(defs):
    repo = defs.get_repository_def()
    schedule = repo.get_schedule_def("weekly_retrain")
    tick = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
    context = build_schedule_context(scheduled_execution_time=tick, repository_def=repo)
    data = schedule.evaluate_tick(context)
    requests = data.run_requests
    assert [r.partition_key for r in requests] == list(COHORTS)
    assert len({r.run_key for r in requests}) == 3
    assert all(r.run_key.startswith(f"retrain:{tick.isoformat()}:") for r in requests)


def _evaluate(sensor, cursor: str | None):
    return sensor.evaluate_tick(build_sensor_context(cursor=cursor))


def test_raw_input_sensor_fires_once_per_fingerprint_change(defs, tmp_path: Path, monkeypatch):
    sensor = defs.get_repository_def().get_sensor_def("raw_input_changed")
    tjh = tmp_path / "time_series_375_prerpocess_en.csv"
    tjh.write_text("PATIENT_ID,RE_DATE\n1,2020-01-01\n")
    monkeypatch.setenv("EAGRL_TJH_PATH", str(tjh))
    monkeypatch.delenv("EAGRL_MIMIC_IV_ROOT", raising=False)

    first = _evaluate(sensor, None)
    (request,) = first.run_requests
    assert first.cursor and request.run_key == first.cursor
    assert request.tags["eagrl/raw_fingerprint"] == first.cursor

    # Same file, same cursor: nothing to do, cursor unchanged.
    again = _evaluate(sensor, first.cursor)
    assert not again.run_requests
    assert "unchanged" in again.skip_message
    assert again.cursor in (None, first.cursor)

    # A new file version (content and mtime): exactly one new run, and the cursor moves on.
    tjh.write_text("PATIENT_ID,RE_DATE\n1,2020-01-01\n2,2020-01-02\n")
    stat = tjh.stat()
    os.utime(tjh, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    changed = _evaluate(sensor, first.cursor)
    (request,) = changed.run_requests
    assert changed.cursor != first.cursor and request.run_key == changed.cursor
    assert not _evaluate(sensor, changed.cursor).run_requests

    # Touching (mtime only) counts as a change too: the fingerprint reads no contents.
    os.utime(tjh, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    touched = _evaluate(sensor, changed.cursor)
    assert len(touched.run_requests) == 1 and touched.cursor != changed.cursor


def test_raw_input_sensor_follows_mimic_iv_release_folders(defs, tmp_path: Path, monkeypatch):
    sensor = defs.get_repository_def().get_sensor_def("raw_input_changed")
    monkeypatch.delenv("EAGRL_TJH_PATH", raising=False)
    monkeypatch.setenv("EAGRL_MIMIC_IV_FEATURE_SET", "vitals")
    releases = {}
    for version in ("2.2", "3.1"):
        root = tmp_path / "mimiciv" / version
        for table in required_tables("vitals"):
            path = root / TABLES[table].relative_path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\x1f\x8b" + version.encode())
        releases[version] = root
    # The sensor fingerprints the tables the raw asset reads: one missing, it says so and waits.
    missing = tmp_path / "mimiciv" / "partial"
    (missing / "hosp").mkdir(parents=True)
    monkeypatch.setenv("EAGRL_MIMIC_IV_ROOT", str(missing))
    partial = _evaluate(sensor, None)
    assert not partial.run_requests and "patients.csv.gz" in partial.skip_message
    monkeypatch.setenv("EAGRL_MIMIC_IV_ROOT", str(releases["2.2"]))
    old = _evaluate(sensor, None)
    assert len(old.run_requests) == 1
    assert not _evaluate(sensor, old.cursor).run_requests
    monkeypatch.setenv("EAGRL_MIMIC_IV_ROOT", str(releases["3.1"]))
    new = _evaluate(sensor, old.cursor)
    assert len(new.run_requests) == 1 and new.cursor != old.cursor
    # A file the raw asset does not read is not part of the fingerprint.
    (releases["3.1"] / "README.txt").write_text("notes")
    (releases["3.1"] / "hosp" / "notes.txt").write_text("notes")
    (releases["3.1"] / "hosp" / "labevents.csv.gz").write_bytes(b"\x1f\x8b")  # not in "vitals"
    assert not _evaluate(sensor, new.cursor).run_requests


def test_raw_input_sensor_skips_without_configured_inputs(defs, tmp_path: Path, monkeypatch):
    sensor = defs.get_repository_def().get_sensor_def("raw_input_changed")
    monkeypatch.delenv("EAGRL_TJH_PATH", raising=False)
    monkeypatch.delenv("EAGRL_MIMIC_IV_ROOT", raising=False)
    data = _evaluate(sensor, None)
    assert not data.run_requests
    assert "No raw input configured" in data.skip_message
    monkeypatch.setenv("EAGRL_TJH_PATH", str(tmp_path / "missing.xlsx"))
    data = _evaluate(sensor, None)
    assert not data.run_requests and "is not a file" in data.skip_message


@op
def _noop() -> None:
    pass


@job(name="full_lineage_stand_in")
def _stand_in():
    _noop()


def test_fan_out_requests_each_partition_once_for_a_successful_upstream_run(defs):
    sensor = defs.get_repository_def().get_sensor_def("full_lineage_fan_out")
    with DagsterInstance.ephemeral() as instance:
        result = _stand_in.execute_in_process(instance=instance)
        run = result.dagster_run
        context = build_run_status_sensor_context(
            sensor_name=sensor.name,
            dagster_event=result.get_run_success_event(),
            dagster_instance=instance,
            dagster_run=run,
        )
        requests = list(sensor(context))
        assert [r.partition_key for r in requests] == list(COHORTS)
        assert [r.run_key for r in requests] == [f"{run.run_id}:{key}" for key in COHORTS]
        assert {r.tags["eagrl/upstream_run_id"] for r in requests} == {run.run_id}
        # A second evaluation for the same run asks for the same run keys, which the daemon
        # deduplicates: the fan-out never fires twice for one upstream run.
        assert [r.run_key for r in sensor(context)] == [r.run_key for r in requests]


def _after_run(sensor, instance, partition: str):
    """The run-status sensor's answer to a successful stand-in run of ``partition``."""
    result = _stand_in.execute_in_process(instance=instance, tags={"dagster/partition": partition})
    context = build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_event=result.get_run_success_event(),
        dagster_instance=instance,
        dagster_run=result.dagster_run,
    )
    return sensor(context), result.dagster_run.run_id


def test_default_cell_follows_each_partition_run(defs):
    """A partition's shared stages done, its default variant's grid cell runs, once per run."""
    from dagster import SkipReason

    from orchestration import default_cell_requests

    (request,) = default_cell_requests("tjh-mortality", "r1")
    assert (
        request.partition_key == "tjh-mortality|eagrl"
        and request.run_key == "r1:tjh-mortality|eagrl"
    )
    assert isinstance(default_cell_requests(None, "r2"), SkipReason)
    sensor = defs.get_repository_def().get_sensor_def("default_cell_after_partition")
    with DagsterInstance.ephemeral() as instance:
        request, run_id = _after_run(sensor, instance, "mimic_iv-readmission")
        assert request.partition_key == "mimic_iv-readmission|eagrl"
        assert request.run_key == f"{run_id}:mimic_iv-readmission|eagrl"


def test_cross_dataset_report_waits_for_both_mortality_reports():
    """A variant's generalization report needs that variant's cells of both mortality
    partitions; the comparison follows every cell's evaluation (alone until the pair is
    complete)."""
    from dagster import AssetKey, SkipReason

    from orchestration import cross_dataset_requests

    every = {f"{c}|eagrl" for c in COHORTS}
    (readmission,) = cross_dataset_requests("mimic_iv-readmission|eagrl", every, "r1")
    assert readmission.run_key == "r1:comparison"
    assert readmission.asset_selection == [AssetKey("comparison_report")]
    assert "does not feed" in readmission.tags["eagrl/why_comparison_only"]
    (waiting,) = cross_dataset_requests("tjh-mortality|eagrl", {"tjh-mortality|eagrl"}, "r2")
    assert waiting.asset_selection == [AssetKey("comparison_report")]
    assert "mimic_iv-mortality|eagrl" in waiting.tags["eagrl/why_comparison_only"]
    both = {"tjh-mortality|eagrl", "mimic_iv-mortality|eagrl"}
    (request,) = cross_dataset_requests("tjh-mortality|eagrl", both, "r3")
    assert request.run_key == "r3:cross_dataset" and request.asset_selection is None
    assert request.partition_key == "eagrl"  # the variant's generalization report
    assert request.tags["eagrl/upstream_run_id"] == "r3"
    # another variant's cell waits for that variant's pair, not eagrl's
    (other,) = cross_dataset_requests("tjh-mortality|sft_only", both, "r5")
    assert other.asset_selection == [AssetKey("comparison_report")]
    assert "mimic_iv-mortality|sft_only" in other.tags["eagrl/why_comparison_only"]
    pair = {"tjh-mortality|sft_only", "mimic_iv-mortality|sft_only"}
    (sft_only,) = cross_dataset_requests("mimic_iv-mortality|sft_only", pair, "r6")
    assert sft_only.partition_key == "sft_only" and sft_only.asset_selection is None
    assert isinstance(cross_dataset_requests(None, both, "r4"), SkipReason)
    assert isinstance(cross_dataset_requests("tjh-mortality", both, "r4"), SkipReason)


def test_cross_dataset_sensor_reads_the_instance(defs):
    from dagster import AssetMaterialization

    sensor = defs.get_repository_def().get_sensor_def("cross_dataset_after_partitions")
    with DagsterInstance.ephemeral() as instance:

        def evaluate():
            return _after_run(sensor, instance, "tjh-mortality|eagrl")

        instance.report_runless_asset_event(
            AssetMaterialization("evaluation_report", partition="tjh-mortality|eagrl")
        )
        alone, run_id = evaluate()
        assert alone.run_key == f"{run_id}:comparison"  # the pair is not complete yet
        instance.report_runless_asset_event(
            AssetMaterialization("evaluation_report", partition="mimic_iv-mortality|eagrl")
        )
        request, run_id = evaluate()
        assert request.run_key == f"{run_id}:cross_dataset"
        assert request.partition_key == "eagrl"
