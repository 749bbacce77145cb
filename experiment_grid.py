"""`make grid`: materialize a sub-grid of the experiment grid (dataset-tasks x method variants)
on the run profile, then the comparison report, print its table, and end with one line::

    grid: cells=N variants=vanilla,think_answer,...,eagrl missing=M

(the requested cells that have an evaluation report now, the variants among them, and how many
requested cells failed or were skipped). Like `make run`, each step materializes only what is
missing or stale: the shared stages of a dataset-task once for every variant, then each cell
(GRPO for the GRPO variants, the evaluation report), then, for a variant whose cells of both
mortality dataset-tasks are in the grid, its generalization report, and last the comparison.
The cells' reports score only their own policy (``score_start_policies: false`` for
evaluation_report and generalization_report): the base model and the SFT adapter are cells of
their own (decomposition, sft_only), scored once.

    python experiment_grid.py [--dataset-tasks tjh-mortality] [--variants vanilla,eagrl]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from dagster import AssetKey, DagsterInstance

import run_lineage
from assets.partitions import COHORTS, GENERALIZATION_PARTITIONS, cell_key
from definitions import EAGRL_HOME, defs
from eagrl_pipeline.variants import VARIANTS
from staleness import cohort_relevance, job_asset_keys, planned_fingerprints, stale_or_missing

# The CPU default's small grid: every prompting baseline, each stage alone, and EAG-RL.
DEFAULT_VARIANTS = ("vanilla", "think_answer", "decomposition", "sft_only", "grpo_only", "eagrl")
DEFAULT_DATASET_TASKS = ("tjh-mortality",)
GRID_EVALUATION = {"score_start_policies": False}


def grid_profile(profile: dict[str, Any]) -> dict[str, Any]:
    """The run profile with the grid's evaluation setting (each cell, and each variant's
    generalization report, scores its own policy)."""
    ops = dict(profile.get("ops") or {})
    for name in ("evaluation_report", "generalization_report"):
        settings = dict((ops.get(name) or {}).get("config") or {})
        ops[name] = {"config": {**settings, **GRID_EVALUATION}}
    return {**profile, "ops": ops}


def grid_pass(
    instance: DagsterInstance,
    profile: dict[str, Any],
    dataset_tasks: list[str],
    variants: list[str],
    home: str | Path = EAGRL_HOME,
    lineage: Any = defs,
) -> tuple[run_lineage.Pass, dict[str, str]]:
    """One pass over the sub-grid; returns the pass record and each requested cell's state
    (``ok``: its evaluation report is current; else why not)."""
    record, started = run_lineage.Pass(profile), time.monotonic()
    state: dict[str, str] = {}

    def run(job: str, keys: list[AssetKey], partition: str | None, label: str) -> bool:
        return run_lineage.execute(instance, lineage, home, job, keys, partition, label, record)

    def todo_for(label: str, todo: dict[AssetKey, str]) -> list[AssetKey]:
        record.planned[label] = {k.to_user_string(): why for k, why in todo.items()}
        run_lineage._report(label, todo)
        return list(todo)

    if not run("shared_inputs", run_lineage.RAW, None, "raw"):
        return record, dict.fromkeys(_cells(dataset_tasks, variants), "raw inputs failed")
    planned = planned_fingerprints(lineage, profile, home)
    shared = [k for k in job_asset_keys(lineage, "shared_inputs") if k not in run_lineage.RAW]
    keys = todo_for("shared", stale_or_missing(instance, lineage, shared, planned=planned))
    if keys and not run("shared_inputs", keys, None, "shared"):
        return record, dict.fromkeys(_cells(dataset_tasks, variants), "shared inputs failed")
    grid_keys = job_asset_keys(lineage, "experiment_grid")
    for dataset_task in dataset_tasks:
        stages = job_asset_keys(lineage, "partition_lineage")
        keys = todo_for(
            dataset_task,
            stale_or_missing(instance, lineage, stages, dataset_task, cohort_relevance, planned),
        )
        if keys and not run("partition_lineage", keys, dataset_task, dataset_task):
            for cell in _cells([dataset_task], variants):
                state[cell] = f"the shared stages of {dataset_task} failed"
            continue
        for variant in variants:
            cell = str(cell_key(dataset_task, variant))
            todo = stale_or_missing(instance, lineage, grid_keys, cell, cohort_relevance, planned)
            keys = todo_for(cell, todo)
            ok = not keys or run("experiment_grid", keys, cell, cell)
            state[cell] = "ok" if ok and cell not in record.failed else "failed"
    generalization = [AssetKey("generalization_report")]
    for variant in variants:
        pair = [str(cell_key(d, variant)) for d in GENERALIZATION_PARTITIONS]
        if all(state.get(cell) == "ok" for cell in pair):
            todo = stale_or_missing(
                instance, lineage, generalization, variant, cohort_relevance, planned
            )
            keys = todo_for(f"generalization[{variant}]", todo)
            if keys:
                run("cross_dataset_report", keys, variant, f"generalization[{variant}]")
    comparison = [AssetKey("comparison_report")]
    run("cross_dataset_report", comparison, None, "comparison")
    record.seconds = time.monotonic() - started
    return record, state


def _cells(dataset_tasks: list[str], variants: list[str]) -> list[str]:
    return [str(cell_key(d, v)) for d in dataset_tasks for v in variants]


def summary_line(state: dict[str, str], variants: list[str]) -> str:
    done = [cell for cell, why in state.items() if why == "ok"]
    present = [v for v in variants if any(cell.endswith(f"|{v}") for cell in done)]
    return f"grid: cells={len(done)} variants={','.join(present)} missing={len(state) - len(done)}"


def _split(value: str, known: list[str], what: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise SystemExit(f"make grid: unknown {what} {unknown or '(none)'}; choose from {known}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset-tasks",
        default=os.environ.get("GRID_DATASET_TASKS") or ",".join(DEFAULT_DATASET_TASKS),
        help=f"comma-separated, from {list(COHORTS)}",
    )
    parser.add_argument(
        "--variants",
        default=os.environ.get("GRID_VARIANTS") or ",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, from {list(VARIANTS)}",
    )
    args = parser.parse_args(argv)
    dataset_tasks = _split(args.dataset_tasks, list(COHORTS), "dataset-tasks")
    variants = _split(args.variants, list(VARIANTS), "variants")
    name = os.environ.get("PROFILE") or os.environ.get("EAGRL_PROFILE") or "cpu"
    try:
        profile = run_lineage.load_profile(name)
        run_lineage.check_device(profile, name)
    except run_lineage.ProfileError as exc:
        print(f"make grid: {exc}", file=sys.stderr)
        return 2
    print(f"[profile] {name}: {run_lineage.profile_path(name)}", flush=True)
    print(f"[grid] {', '.join(dataset_tasks)} x {', '.join(variants)}", flush=True)
    print(f"[log] every Dagster event goes to {run_lineage.EVENT_LOG}", flush=True)
    record, state = grid_pass(DagsterInstance.get(), grid_profile(profile), dataset_tasks, variants)
    report = Path(EAGRL_HOME) / "artifacts" / "comparison_report" / "_"
    if (report / "report.md").exists():
        print("\n" + (report / "report.md").read_text(encoding="utf-8"))
        comparison = json.loads((report / "report.json").read_text())
        for column, rows in comparison.get("provenance", {}).items():
            for row, source in rows.items():
                print(
                    f"  {column} {row}: {source['asset']}[{source['partition']}], MLflow run "
                    f"{source['mlflow_run_id']}, Dagster run {source['dagster_run_id']}"
                )
    for label, checks in record.failed.items():
        print(f"  FAILED in {label}: {', '.join(checks)}")
    print(f"\nreport (HTML): {report / 'report.html'}")
    print(f"wall time: {record.seconds:.1f} s")
    print(summary_line(state, variants))
    return 1 if record.failed else 0


if __name__ == "__main__":
    sys.exit(main())
