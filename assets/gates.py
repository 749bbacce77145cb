"""Blocking checks that hold across runs.

Dagster skips the children of an asset whose blocking check fails *in the same run*. A later run
that starts below it (the weekly ``retrain`` job starts at the experts; a launchpad run of one
stage; a backfill) would read the output that failed its gate. Every Python asset therefore calls
:func:`require_passing_upstream_checks` first: it reads the blocking check results recorded with
the latest materialization of each parent partition the dependency's mapping draws (the same
partition, the dataset-task of a grid cell's shared stage, a variant's cells; the project's
checks are evaluated in the asset's own step) and refuses, naming the check and the fix, where
one failed. (Declarative automation's ``AutomationCondition.all_deps_blocking_checks_passed``
says the same for automated runs; this holds for every run, however launched.)

A run tagged ``eagrl/failed_checks: report`` goes on with a warning instead: the learning study
measures every stage and reports a failed gate in its table rather than stopping at it.
"""

from __future__ import annotations

from collections.abc import Collection

from dagster import AssetExecutionContext, AssetKey, DagsterEventType, Failure

from assets.partitions import parent_partitions

REPORT_TAG = "eagrl/failed_checks"


def failed_upstream_checks(
    context: AssetExecutionContext,
    ignore: Collection[str] = (),
    partitions: Collection[str] | None = None,
) -> list[str]:
    """``parent[partition]: check`` for each blocking check that failed on the latest
    materialization of a parent (each partition the dependency maps this step to): the
    evaluations its own run recorded for it. Parents named in ``ignore`` are ones this run does
    not read; ``partitions``, where given, are the only parent partitions it reads."""
    layer = context.job_def.asset_layer
    failed: list[str] = []
    for parent in sorted(layer.get(context.asset_key).parent_keys):
        if parent.to_user_string() in ignore:
            continue
        for partition in parent_partitions(context, parent):
            if partition is None or partitions is None or partition in partitions:
                failed += _failed_checks(context, parent, partition)
    return sorted(set(failed))


def _failed_checks(
    context: AssetExecutionContext, parent: AssetKey, partition: str | None
) -> list[str]:
    """The blocking checks that failed on ``parent[partition]``'s latest materialization."""
    record = context.instance.get_latest_data_version_record(parent, partition_key=partition)
    if record is None or not record.run_id:
        return []
    name = f"{parent.to_user_string()}[{partition}]" if partition else parent.to_user_string()
    failed = []
    for entry in context.instance.all_logs(
        record.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
    ):
        evaluation = entry.dagster_event.event_specific_data if entry.dagster_event else None
        if (
            evaluation is not None
            and evaluation.asset_key == parent
            and evaluation.blocking
            and not evaluation.passed
            and getattr(evaluation, "partition", None) in (None, partition)
        ):
            failed.append(f"{name}: {evaluation.check_name}")
    return failed


def require_passing_upstream_checks(
    context: AssetExecutionContext,
    ignore: Collection[str] = (),
    partitions: Collection[str] | None = None,
) -> None:
    """Refuse to run on a parent whose latest blocking check failed (``ignore``: parents that
    this run's config does not read, such as the SFT adapter for GRPO from the base model)."""
    failed = failed_upstream_checks(context, ignore, partitions)
    if failed and context.run.tags.get(REPORT_TAG) == "report":
        context.log.warning(
            f"going on past failed blocking checks ({'; '.join(failed)}): "
            f"this run is tagged {REPORT_TAG}=report"
        )
    elif failed:
        raise Failure(
            description=(
                f"{context.asset_key.to_user_string()} will not run: the latest evaluation of a "
                f"blocking check on its input failed ({'; '.join(failed)}). Fix: look at that "
                "check's result in the Dagster UI, correct the data or config, and materialize "
                "the failing asset again (its check must pass) before this one."
            )
        )
