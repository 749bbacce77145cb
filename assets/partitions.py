"""The two partition kinds of the lineage.

- ``cohort_partitions`` (dataset-task): every stage a method variant does not change (cohorts,
  experts, prompts, base answers, trajectories, the SFT adapter) is computed once per cohort.
- ``cell_partitions`` (dataset-task x variant, keys such as ``tjh-mortality|eagrl``): the
  experiment grid's cells, ``rl_checkpoint`` and ``evaluation_report``. They read the
  cohort-partitioned stages through ``SHARED_STAGE``, so every variant of a dataset-task reuses
  the same cohort, expert, prompts and SFT adapter.
"""

from __future__ import annotations

import warnings

from dagster import (
    AssetExecutionContext,
    AssetKey,
    MultiPartitionKey,
    MultiPartitionsDefinition,
    MultiToSingleDimensionPartitionMapping,
    StaticPartitionsDefinition,
)
from dagster._utils.warnings import BetaWarning

from eagrl_pipeline.variants import DEFAULT_VARIANT, VARIANTS

COHORTS: tuple[str, ...] = ("tjh-mortality", "mimic_iv-mortality", "mimic_iv-readmission")
cohort_partitions = StaticPartitionsDefinition(list(COHORTS))
# The generalization report's pair: policies trained on one answer the other's test prompts.
GENERALIZATION_PARTITIONS: tuple[str, str] = ("mimic_iv-mortality", "tjh-mortality")

DATASET_TASK, VARIANT = "dataset_task", "variant"
variant_partitions = StaticPartitionsDefinition(list(VARIANTS))
cell_partitions = MultiPartitionsDefinition(
    {DATASET_TASK: cohort_partitions, VARIANT: variant_partitions}
)
# A cell reads the dataset-task partition of a shared stage (the mapping Dagster would infer,
# spelled out; its class is marked beta, hence the filter).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", BetaWarning)
    SHARED_STAGE = MultiToSingleDimensionPartitionMapping(partition_dimension_name=DATASET_TASK)
    # A variant's report reads that variant's cells (of every dataset-task: Dagster has no
    # mapping to a subset of one dimension; the report itself reads the mortality pair).
    VARIANT_CELLS = MultiToSingleDimensionPartitionMapping(partition_dimension_name=VARIANT)


def cell_key(dataset_task: str, variant: str = DEFAULT_VARIANT) -> MultiPartitionKey:
    """The grid cell ``dataset_task|variant``."""
    return MultiPartitionKey({DATASET_TASK: dataset_task, VARIANT: variant})


def split_cell(key: str) -> tuple[str, str]:
    """``"tjh-mortality|eagrl"`` (or its MultiPartitionKey) -> ``("tjh-mortality", "eagrl")``."""
    if isinstance(key, MultiPartitionKey):
        dims = key.keys_by_dimension
        return dims[DATASET_TASK], dims[VARIANT]
    dataset_task, _, variant = str(key).partition("|")
    if not variant:
        raise ValueError(f"{key!r} is not a grid cell (dataset_task|variant)")
    return dataset_task, variant


def split_partition(key: str) -> tuple[str, str]:
    """``"mimic_iv-readmission"`` -> ``("mimic_iv", "readmission")`` (a cell's key: its
    dataset-task)."""
    dataset_task = split_cell(key)[0] if "|" in str(key) else str(key)
    dataset, task = dataset_task.split("-", 1)
    return dataset, task


def cohort_mart(key: str) -> str:
    dataset, task = split_partition(key)
    return f"cohort_{dataset}_{task}"


def parent_partitions(context: AssetExecutionContext, parent: AssetKey) -> list[str | None]:
    """The partitions of ``parent`` this step reads, through the dependency's partition mapping:
    its own key, a grid cell's dataset-task, a variant's cells, a fixed pair; ``[None]`` for an
    unpartitioned parent or an unpartitioned step."""
    graph = context.job_def.asset_layer.asset_graph
    partitioned = graph.get(context.asset_key).is_partitioned and context.has_partition_key
    if not graph.get(parent).is_partitioned or not partitioned:
        return [None]  # an unpartitioned step, also in a partitioned run (comparison_report)
    mapped = graph.get_parent_partition_keys_for_child(
        context.partition_key, parent, context.asset_key
    )
    return sorted(str(key) for key in mapped.partitions_subset.get_partition_keys())
