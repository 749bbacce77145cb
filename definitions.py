"""The code location: every asset, check, resource and job of the lineage."""

from __future__ import annotations

import os
from pathlib import Path

from resources.privacy import disable_telemetry

disable_telemetry()

from dagster import (  # noqa: E402
    AssetSelection,
    Definitions,
    colored_console_logger,
    define_asset_job,
    load_assets_from_modules,
)

from assets import (  # noqa: E402
    cohorts,
    evaluation,
    experts,
    raw,
    reasoning,
    training,
    warehouse,
)
from assets.partitions import cohort_partitions  # noqa: E402
from assets.versioning import with_source_versions  # noqa: E402
from orchestration import (  # noqa: E402
    build_cross_dataset_sensor,
    build_default_cell_sensor,
    build_fan_out_sensor,
    experiment_grid_job,
    full_lineage_job,
    raw_input_changed,
    retrain_job,
    retrain_schedule,
)
from resources import (  # noqa: E402
    DBT_PROJECT,
    Compute,
    EagrlHome,
    EhrSources,
    LanguageModel,
    MlflowTracking,
    Warehouse,
    dbt_resource,
)
from resources.run_log import file_logger, step_lines_logger  # noqa: E402

# The manifest is a build product: prepare it when it is missing (CI has no `dagster dev`).
if not DBT_PROJECT.manifest_path.exists():
    DBT_PROJECT.preparer.prepare(DBT_PROJECT)

EAGRL_HOME = os.environ.get("EAGRL_HOME", str(Path(__file__).resolve().parent / ".eagrl"))

# Code versions are derived from the source each asset runs (assets/versioning.py).
all_assets = with_source_versions(
    load_assets_from_modules([raw, warehouse, cohorts, experts, reasoning, training, evaluation])
)

shared_job = define_asset_job(
    "shared_inputs",
    selection=AssetSelection.groups("raw", "warehouse")
    | AssetSelection.assets("base_language_model"),
    description="What every partition shares (unpartitioned): raw inputs, the dbt warehouse "
    "and the base language model. Run once before the partitions.",
)
partition_job = define_asset_job(
    "partition_lineage",
    selection=AssetSelection.groups("cohorts", "experts", "reasoning", "training")
    - AssetSelection.assets("base_language_model", "rl_checkpoint"),
    partitions_def=cohort_partitions,
    description="One dataset-task partition's shared stages: cohort (gated by its Great "
    "Expectations suite), expert model and feature ranking, prompts, base-model predictions, "
    "MCTS trajectories and the SFT checkpoint, each gated by the checks of the one before; "
    "every method variant reuses them. The `default_cell_after_partition` sensor then runs "
    "the default variant's cell of experiment_grid.",
)
generalization_job = define_asset_job(
    "cross_dataset_report",
    selection=AssetSelection.assets("generalization_report", "comparison_report"),
    description="Per method variant (partition): that variant's MIMIC-IV-trained policy on "
    "TJH and back (generalization_report), then the comparison of every method across the "
    "dataset-tasks (comparison_report, unpartitioned: one table over whatever cells exist). "
    "Run after the variant's grid cells of both mortality partitions in experiment_grid.",
)


def build_resources(home: str) -> dict[str, object]:
    """Resources for one EAGRL_HOME; tests call this with a temporary directory."""
    return {
        "home": EagrlHome(path=home),
        "warehouse": Warehouse(path=str(Path(home) / "warehouse.duckdb")),
        "dbt": dbt_resource(),
        "compute": Compute(
            device=os.environ.get("EAGRL_DEVICE", "auto"),
            precision=os.environ.get("EAGRL_PRECISION", "auto"),
            cpu_threads=int(os.environ.get("EAGRL_CPU_THREADS", "1")),
            num_processes=int(os.environ.get("EAGRL_NUM_PROCESSES", "1")),
        ),
        "llm": LanguageModel(path=os.environ.get("EAGRL_MODEL_PATH") or None),
        "mlflow_tracking": MlflowTracking(
            home=home, tracking_uri=os.environ.get("EAGRL_MLFLOW_TRACKING_URI") or None
        ),
        "sources": EhrSources(
            tjh_path=os.environ.get("EAGRL_TJH_PATH") or None,
            mimic_iv_root=os.environ.get("EAGRL_MIMIC_IV_ROOT") or None,
            mimic_iv_feature_set=os.environ.get("EAGRL_MIMIC_IV_FEATURE_SET", "vitals_labs"),
        ),
    }


defs = Definitions(
    assets=all_assets,
    jobs=[
        shared_job,
        partition_job,
        experiment_grid_job,
        generalization_job,
        full_lineage_job,
        retrain_job,
    ],
    schedules=[retrain_schedule],
    sensors=[
        raw_input_changed,
        build_fan_out_sensor(partition_job),
        build_default_cell_sensor([partition_job, retrain_job], experiment_grid_job),
        build_cross_dataset_sensor(experiment_grid_job, generalization_job),
    ],
    resources=build_resources(EAGRL_HOME),
    # Every run logs to the console and, in full, to $EAGRL_HOME/logs/dagster_events.log.
    loggers={
        "console": colored_console_logger,
        "file": file_logger,
        "steps": step_lines_logger,
    },
)
