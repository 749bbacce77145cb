"""`make run`: materialize the whole lineage on the embedded default, then run it a second time
to show that nothing is redone when nothing changed, and say where everything is.

Each pass fingerprints the raw inputs (always: that is how a change is seen), then materializes
only what is missing or stale (``staleness.py``: Dagster's data versions, plus the config each
asset is about to run with and the model folder's fingerprint): the shared warehouse, each
dataset-task partition's shared stages and its default variant's grid cell (GRPO and the
evaluation), then the cross-dataset reports. `make grid` (``experiment_grid.py``) adds the
other variants' cells. Runs go to the persistent Dagster
instance, so `make dev` shows them and their staleness.

The settings come from a run profile (``profiles/<name>.yaml``, ``PROFILE=gpu`` or
``EAGRL_PROFILE``; ``cpu`` by default): Dagster run config whose ``ops`` entries are applied to
the assets a run selects and whose ``resources`` entries to every run.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from dagster import AssetCheckSeverity, AssetKey, DagsterInstance, Definitions

from assets.partitions import COHORTS, cell_key
from assets.training import RLCheckpointConfig
from definitions import EAGRL_HOME, defs
from eagrl_pipeline.variants import DEFAULT_VARIANT
from staleness import cohort_relevance, job_asset_keys, planned_fingerprints, stale_or_missing

RAW = [AssetKey("raw_tjh"), AssetKey("raw_mimic_iv")]
RAW_NAMES = [k.to_user_string() for k in RAW]
PROFILES_DIR = Path(__file__).resolve().parent / "profiles"


def event_log(home: str | Path) -> Path:
    """Every Dagster event of ``make run``, DEBUG included."""
    return Path(home) / "logs" / "dagster_events.log"


def step_output(home: str | Path) -> Path:
    """What steps print to stdout (dbt's build log)."""
    return Path(home) / "logs" / "step_output.log"


EVENT_LOG, STEP_OUTPUT = event_log(EAGRL_HOME), step_output(EAGRL_HOME)


def loggers(home: str | Path, label: str) -> dict[str, Any]:
    """The console gets warnings and errors and one line as each step ends (the steps logger);
    every event goes to ``event_log(home)``."""
    return {
        "console": {"config": {"log_level": "WARNING"}},
        "file": {"config": {"path": str(event_log(home)), "log_level": "DEBUG"}},
        "steps": {"config": {"label": label}},
    }


class ProfileError(Exception):
    """A run profile that cannot be used here: the message names the file and the fix."""


def profile_path(name: str) -> Path:
    """``profiles/<name>.yaml``, or ``name`` itself when it is a path to a YAML file (a user's
    own profile outside the repository)."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        return Path(name).expanduser()
    return PROFILES_DIR / f"{name}.yaml"


def load_profile(name: str) -> dict[str, Any]:
    """The profile ``name`` (see ``profile_path``) as Dagster run config (``ops`` and
    ``resources`` only)."""
    path = profile_path(name)
    known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
    if not path.is_file():
        raise ProfileError(f"{path}: no such run profile. Fix: use one of {known} (PROFILE=...).")
    try:
        profile = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML ({exc}). Fix: correct the file.") from exc
    extra = sorted(set(profile) - {"ops", "resources"})
    if not isinstance(profile, dict) or extra:
        raise ProfileError(
            f"{path}: a profile holds only 'ops' and 'resources' (found {extra}). "
            "Fix: move the settings under ops.<asset>.config or resources.<name>.config."
        )
    return profile


def run_config_for(profile: Mapping[str, Any], keys: list[AssetKey]) -> dict[str, Any]:
    """The profile's run config for a run that materializes ``keys`` (a job refuses config for
    ops it does not run)."""
    names = {key.to_user_string() for key in keys}
    ops = {op: cfg for op, cfg in (profile.get("ops") or {}).items() if op in names}
    config: dict[str, Any] = {"ops": ops} if ops else {}
    if profile.get("resources"):
        config["resources"] = profile["resources"]
    return config


def check_device(profile: Mapping[str, Any], name: str) -> None:
    """Refuse a profile that asks for a GPU on a machine where torch sees none."""
    compute = ((profile.get("resources") or {}).get("compute") or {}).get("config") or {}
    device = str(compute.get("device", "auto"))
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ProfileError(
                f"profile {name!r} ({profile_path(name)}) runs on device "
                f"{device!r}, but torch sees no CUDA GPU here (torch {torch.__version__}, "
                f"CUDA build: {torch.version.cuda or 'none'}). Fix: run it on a GPU machine with "
                "a CUDA build of torch, or use PROFILE=cpu."
            )


@dataclass
class Pass:
    """What one pass planned (per group: asset -> reason), ran, and how it ended."""

    profile: Mapping[str, Any]
    seconds: float = 0.0
    planned: dict[str, dict[str, str]] = field(default_factory=dict)
    materialized: dict[str, list[str]] = field(default_factory=dict)
    failed: dict[str, list[str]] = field(default_factory=dict)
    warned: dict[str, list[str]] = field(default_factory=dict)


def execute(
    instance: DagsterInstance,
    lineage: Definitions,
    home: str | Path,
    job: str,
    keys: list[AssetKey],
    partition: str | None,
    label: str,
    record: Pass,
) -> bool:
    run_config = {**run_config_for(record.profile, keys), "loggers": loggers(home, label)}
    sink_path = step_output(home)
    sink_path.parent.mkdir(parents=True, exist_ok=True)
    # What steps print to stdout (dbt re-emits every event of its build there) goes to a file;
    # Dagster's console logger and the progress bars write to stderr and stay on screen.
    with sink_path.open("a", encoding="utf-8") as sink, contextlib.redirect_stdout(sink):
        result = lineage.resolve_job_def(job).execute_in_process(
            instance=instance,
            partition_key=partition,
            asset_selection=keys,
            run_config=run_config,
            raise_on_error=False,
        )
    failing = [c for c in result.get_asset_check_evaluations() if not c.passed]
    bad = [c.check_name for c in failing if c.severity == AssetCheckSeverity.ERROR]
    warned = [
        f"{c.check_name} ({', '.join(f'{k}={_value(v)}' for k, v in c.metadata.items())})"
        for c in failing
        if c.severity != AssetCheckSeverity.ERROR
    ]
    record.materialized[label] = record.materialized.get(label, []) + [
        k.to_user_string() for k in keys
    ]
    if warned:
        record.warned[label] = record.warned.get(label, []) + warned
    if not result.success or bad:
        failure = f"run failed (the error is above; every event: {event_log(home)})"
        record.failed[label] = bad or [failure]
    return result.success


def _value(metadata: object) -> str:
    value = getattr(metadata, "value", metadata)
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def lineage_pass(
    instance: DagsterInstance,
    profile: Mapping[str, Any],
    dry: bool = False,
    lineage: Definitions = defs,
    home: str | Path = EAGRL_HOME,
) -> Pass:
    """One pass over ``lineage`` (the code location's definitions by default) in ``home``,
    materializing only what is missing or stale. ``dry`` (`make plan`) prints the plan and runs
    nothing: the raw inputs are not re-fingerprinted then, so a changed raw file shows only once
    `make run` reads it."""
    record, started = Pass(profile), time.monotonic()

    def run(job: str, keys: list[AssetKey], partition: str | None, label: str) -> bool:
        return dry or execute(instance, lineage, home, job, keys, partition, label, record)

    def plan(label: str, todo: dict[AssetKey, str]) -> dict[AssetKey, str]:
        record.planned[label] = {key.to_user_string(): why for key, why in todo.items()}
        _report(label, todo)
        return todo

    if not run("shared_inputs", RAW, None, "raw"):
        record.seconds = time.monotonic() - started
        return record
    planned = planned_fingerprints(lineage, profile, home)
    shared = [k for k in job_asset_keys(lineage, "shared_inputs") if k not in RAW]
    todo = plan("shared", stale_or_missing(instance, lineage, shared, planned=planned))
    if todo and not run("shared_inputs", list(todo), None, "shared"):
        record.seconds = time.monotonic() - started
        return record
    for partition in COHORTS:
        keys = job_asset_keys(lineage, "partition_lineage")
        todo = plan(
            partition,
            stale_or_missing(instance, lineage, keys, partition, cohort_relevance, planned),
        )
        shared_ok = not todo or run("partition_lineage", list(todo), partition, partition)
        cell = str(cell_key(partition, DEFAULT_VARIANT))  # the default variant's grid cell
        keys = job_asset_keys(lineage, "experiment_grid")
        todo = plan(
            cell, stale_or_missing(instance, lineage, keys, cell, cohort_relevance, planned)
        )
        if todo and shared_ok:
            run("experiment_grid", list(todo), cell, cell)
    cross = job_asset_keys(lineage, "cross_dataset_report")
    todo = plan(
        "cross-dataset",
        stale_or_missing(instance, lineage, cross, DEFAULT_VARIANT, planned=planned),
    )
    if todo:
        run("cross_dataset_report", list(todo), DEFAULT_VARIANT, "cross-dataset")
    record.seconds = time.monotonic() - started
    return record


def _report(label: str, todo: dict[AssetKey, str]) -> None:
    """What a pass will materialize, one line per reason (a first run: one "missing" line)."""
    if not todo:
        print(f"[plan] {label}: up to date", flush=True)
        return
    by_reason: dict[str, list[str]] = {}
    for key, why in todo.items():
        by_reason.setdefault(why, []).append(key.to_user_string())
    for why, names in by_reason.items():
        print(f"[plan] {label}: {why}: {', '.join(names)}", flush=True)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _metric(report: dict | None, model: str, name: str) -> str:
    entry = ((report or {}).get("models") or {}).get(model) or {}
    value = entry.get(name)
    if isinstance(value, dict):
        value = value.get("mean")
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


def summary(first: Pass, second: Pass, profile_name: str) -> None:
    artifacts = Path(EAGRL_HOME) / "artifacts"
    print("\n== eagrl-pipeline: lineage materialized ==")
    header = ("partition", "train/val/test", "expert AUROC", "kept traj", "SFT loss/base")
    header += ("RL-SFT reward [95% CI]", "spread groups", "test AUROC base/sft/rl/expert")
    header += ("RL vs base %",)
    print("{:<21}{:>15}{:>13}{:>10}{:>15}{:>26}{:>14}  {:<30}{:>13}".format(*header))
    for partition in COHORTS:
        cohort = _read_json(artifacts / "cohort_dataset" / partition / "manifest.json")
        expert = _read_json(artifacts / "expert_model" / partition / "manifest.json")
        sft = _read_json(artifacts / "sft_checkpoint" / partition / "manifest.json")
        cell = Path(partition) / DEFAULT_VARIANT
        rl = _read_json(artifacts / "rl_checkpoint" / cell / "manifest.json")
        report = _read_json(artifacts / "evaluation_report" / cell / "report.json")
        trajectories = artifacts / "mcts_trajectories" / partition / "trajectories.jsonl"
        s = (cohort or {}).get("summary", {})
        sizes = "/".join(str(s.get(k, {}).get("patients", "-")) for k in ("train", "val", "test"))
        expert_auroc = "-"
        if expert:
            expert_auroc = f"{expert['models'][expert['primary']]['test_auroc']['mean']:.3f}"
        kept = len(trajectories.read_text().splitlines()) if trajectories.exists() else "-"
        loss = f"{sft['eval_loss']:.2f}/{sft['base_eval_loss']:.2f}" if sft else "-"
        gain, spread = "-", "-"
        if rl:
            gain = f"{rl.get('val_reward_gain', rl['val_reward_rl'] - rl['val_reward_sft']):+.3f}"
            if "val_reward_gain_lo" in rl:
                gain += f" [{rl['val_reward_gain_lo']:+.3f}, {rl['val_reward_gain_hi']:+.3f}]"
            if "groups" in rl:
                spread = f"{rl['groups_with_reward_spread']:g}/{rl['groups']:g}"
        aurocs = "/".join(_metric(report, m, "auroc") for m in ("base", "sft", "rl", "expert"))
        headline = ((report or {}).get("headline") or {}).get("average_pct")
        head = f"{headline:+.1f}" if isinstance(headline, int | float) else "-"
        print(
            f"{partition:<21}{sizes:>15}{expert_auroc:>13}{kept!s:>10}{loss:>15}{gain:>26}"
            f"{spread:>14}  {aurocs:<30}{head:>13}"
        )
    rl = ((first.profile.get("ops") or {}).get("rl_checkpoint") or {}).get("config") or {}
    gate = rl.get("min_reward_gain", RLCheckpointConfig().min_reward_gain)
    print(
        f"  profile {profile_name!r}: RL gate asks RL - SFT validation reward lower bound > "
        f"{gate} (the asset default, for real runs: > {RLCheckpointConfig().min_reward_gain})"
    )
    for label, checks in first.failed.items():
        print(f"  FAILED in {label}: {', '.join(checks)}")
    for label, checks in first.warned.items():
        print(f"  warning (non-blocking check) in {label}: {'; '.join(checks)}")
    print("\nreports (HTML):")
    for partition in COHORTS:
        print(f"  {artifacts / 'evaluation_report' / partition / DEFAULT_VARIANT / 'report.html'}")
    print(f"  {artifacts / 'generalization_report' / DEFAULT_VARIANT / 'report.html'}")
    print(f"  {artifacts / 'comparison_report' / '_' / 'report.html'}  (methods x dataset-tasks)")
    print(f"checkpoints:         {artifacts}/sft_checkpoint/<partition>/adapter/, ")
    print(f"                     {artifacts}/rl_checkpoint/<partition>/<variant>/adapter/")
    print(f"trajectories:        {artifacts}/mcts_trajectories/<partition>/trajectories.jsonl")
    print(f"warehouse (DuckDB):  {Path(EAGRL_HOME) / 'warehouse.duckdb'}")
    print(f"MLflow store:        {Path(EAGRL_HOME) / 'mlflow'}  (make mlflow opens the UI)")
    print(f"Dagster instance:    {Path(EAGRL_HOME) / 'dagster'}  (make dev opens the UI)")
    print(f"full event log:      {EVENT_LOG}")
    print(f"steps' own output:   {STEP_OUTPUT}")
    redone = sorted({a for assets in second.materialized.values() for a in assets} - set(RAW_NAMES))
    print(f"\nwall time, first run:            {first.seconds:.1f} s")
    print(
        f"wall time, second run (no change): {second.seconds:.1f} s; re-materialized: "
        + (", ".join(redone) if redone else "nothing (raw inputs re-fingerprinted only)")
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    name = os.environ.get("PROFILE") or os.environ.get("EAGRL_PROFILE") or "cpu"
    try:
        profile = load_profile(name)
        if "--plan" not in argv:
            check_device(profile, name)
    except ProfileError as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return 2
    print(f"[profile] {name}: {profile_path(name)}", flush=True)
    if "--plan" in argv:
        lineage_pass(DagsterInstance.get(), profile, dry=True)
        return 0
    print(
        f"[log] every Dagster event goes to {EVENT_LOG}; what steps print (dbt's build log) "
        f"to {STEP_OUTPUT}",
        flush=True,
    )
    instance = DagsterInstance.get()
    first = lineage_pass(instance, profile)
    print("\n== second pass: nothing changed, so nothing should be redone ==", flush=True)
    second = lineage_pass(instance, profile)
    summary(first, second, name)
    return 1 if first.failed or second.failed else 0


if __name__ == "__main__":
    sys.exit(main())
