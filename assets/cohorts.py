"""Cohorts per dataset-task partition: split, imputed and normalised arrays, with Great
Expectations suites as blocking checks so no later stage trains on a bad cohort."""

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field, field_validator

from assets.gates import require_passing_upstream_checks
from assets.partitions import COHORTS, cohort_mart, cohort_partitions, split_partition
from assets.versioning import versioned
from eagrl_pipeline.data.cohort import build_cohort_arrays, cohort_summary, write_cohort
from eagrl_pipeline.data.splits import assign_splits
from eagrl_pipeline.validation.cohort_suite import validate_cohort
from resources import EagrlHome, Warehouse

# TJH follows ClinicRealm's published split; MIMIC-IV cohorts are split 7:1:2 by subject.
DEFAULT_SPLIT = {"tjh": "clinicrealm", "mimic_iv": "stratified"}


class CohortConfig(Config):
    split_strategy: str | None = Field(
        default=None,
        description="'clinicrealm' (200-patient test set, then 7:1 train/val) or 'stratified' "
        "(fractions below). Empty: clinicrealm for TJH, stratified for MIMIC-IV.",
    )
    split_seed: int = Field(default=42, description="Seed of the split.")
    test_size: int = Field(default=200, description="ClinicRealm test-set size in patients.")
    split_fractions: list[float] = Field(
        default=[0.7, 0.1, 0.2], description="Train/val/test fractions of the stratified split."
    )
    imputation: str = Field(
        default="locf_median",
        description="Last observation carried forward, then the train median (PyEHR's default).",
    )
    max_visits: int | None = Field(
        default=None, description="Keep each patient's last N visits (empty: all)."
    )
    prevalence_bounds: list[float] = Field(
        default=[0.02, 0.98], description="Allowed label prevalence per split (quality gate)."
    )

    @field_validator("split_strategy")
    @classmethod
    def _known_strategy(cls, value: str | None) -> str | None:
        if value not in (None, "clinicrealm", "stratified"):
            raise ValueError(f"split_strategy {value!r}: use 'clinicrealm' or 'stratified'")
        return value

    @field_validator("imputation")
    @classmethod
    def _known_imputation(cls, value: str) -> str:
        if value not in ("locf_median", "median", "zero"):
            raise ValueError(f"imputation {value!r}: use 'locf_median', 'median' or 'zero'")
        return value


@asset(
    partitions_def=cohort_partitions,
    group_name="cohorts",
    kinds={"python", "numpy"},
    deps=[AssetKey(cohort_mart(key)) for key in COHORTS],
    check_specs=[
        AssetCheckSpec(
            "cohort_quality",
            asset="cohort_dataset",
            blocking=True,
            description="Great Expectations suite: value ranges from the feature dictionary, "
            "required columns, one label per patient, no patient in two splits, prevalence.",
        )
    ],
)
def cohort_dataset(
    context: AssetExecutionContext, config: CohortConfig, home: EagrlHome, warehouse: Warehouse
):
    """Patient-level split, train-only statistics, LOCF + median imputation, padded arrays, and
    the raw values and missing masks the prompts will print."""
    require_passing_upstream_checks(context)
    partition = context.partition_key
    dataset, task = split_partition(partition)
    mart = cohort_mart(partition)
    visits = warehouse.table(mart)
    dictionary = warehouse.query(
        "SELECT * FROM feature_dictionary WHERE dataset = ? ORDER BY rowid", [dataset]
    )
    feature_ids = [f for f in dictionary["feature_id"] if f in visits.columns]
    feature_ids = [f for f in feature_ids if f not in ("sex", "age")]

    patients = visits.groupby("patient_id", as_index=False).agg(
        group_id=("group_id", "first"), label=("label", "first")
    )
    strategy = config.split_strategy or DEFAULT_SPLIT[dataset]
    patients["split"] = assign_splits(
        patients,
        strategy=strategy,
        seed=config.split_seed,
        test_size=config.test_size,
        fractions=tuple(config.split_fractions),
    ).to_numpy()
    visits = visits.merge(patients[["patient_id", "split"]], on="patient_id", how="left")

    validation = validate_cohort(
        visits,
        dictionary,
        suite_name=f"{mart}_suite",
        prevalence_bounds=tuple(config.prevalence_bounds),
        source=mart,
    )
    arrays, stats = build_cohort_arrays(
        visits, feature_ids, imputation=config.imputation, max_visits=config.max_visits
    )
    summary = cohort_summary(patients, visits)
    target = write_cohort(
        home.artifact_dir("cohort_dataset", partition),
        visits=visits,
        arrays=arrays,
        stats=stats,
        manifest={
            "partition": partition,
            "dataset": dataset,
            "task": task,
            "source_table": mart,
            "feature_ids": feature_ids,
            "split_strategy": strategy,
            "config": config.model_dump(),
            "summary": summary,
            "validation_success": validation.success,
        },
    )
    context.log.info(f"cohort {partition}: {summary} -> {target}")
    yield versioned(
        context,
        MaterializeResult(
            metadata={
                "path": MetadataValue.path(str(target)),
                "patients": len(patients),
                "visits": len(visits),
                "features": len(feature_ids),
                "split_strategy": strategy,
                **{
                    f"{split}_{key}": value
                    for split, info in summary.items()
                    if isinstance(info, dict)
                    for key, value in info.items()
                },
                "max_visits": summary["max_visits"],
            }
        ),
        config,
    )
    yield AssetCheckResult(
        check_name="cohort_quality",
        passed=validation.success,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "summary": MetadataValue.md(validation.summary()),
            "failed_expectations": len(validation.failures()),
            "failures": MetadataValue.json([o.__dict__ for o in validation.failures()]),
        },
    )
