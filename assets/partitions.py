"""The dataset-task partitions shared by every per-cohort stage."""

from __future__ import annotations

from dagster import StaticPartitionsDefinition

COHORTS: tuple[str, ...] = ("tjh-mortality", "mimic_iv-mortality", "mimic_iv-readmission")
cohort_partitions = StaticPartitionsDefinition(list(COHORTS))


def split_partition(key: str) -> tuple[str, str]:
    """``"mimic_iv-readmission"`` -> ``("mimic_iv", "readmission")``."""
    dataset, task = key.split("-", 1)
    return dataset, task


def cohort_mart(key: str) -> str:
    dataset, task = split_partition(key)
    return f"cohort_{dataset}_{task}"
