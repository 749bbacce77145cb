"""A failed blocking check holds across runs: a later run that starts below the checked asset
refuses (assets/gates.py), unless it is tagged to report and go on."""

import pytest
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    DagsterInstance,
    MaterializeResult,
    StaticPartitionsDefinition,
    asset,
    materialize,
)

from assets.gates import REPORT_TAG, require_passing_upstream_checks

PARTITIONS = StaticPartitionsDefinition(["a", "b"])
GATE = {"passed": True}
RAN: list[str] = []


@asset(
    partitions_def=PARTITIONS,
    check_specs=[AssetCheckSpec("gate", asset="upstream", blocking=True)],
)
def upstream():
    yield MaterializeResult()
    yield AssetCheckResult(check_name="gate", passed=GATE["passed"])


@asset(partitions_def=PARTITIONS, deps=[upstream])
def downstream(context: AssetExecutionContext) -> None:
    require_passing_upstream_checks(context)
    RAN.append(context.partition_key)


def _run(instance, selection, partition, tags=None):
    return materialize(
        [upstream, downstream],
        selection=selection,
        partition_key=partition,
        instance=instance,
        tags=tags,
        raise_on_error=False,
    )


def _failure(result) -> str:
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return event.step_failure_data.user_failure_data.description


def test_a_later_run_below_a_failed_gate_refuses_and_names_the_check():
    instance = DagsterInstance.ephemeral()
    RAN.clear()
    GATE["passed"] = False
    assert not _run(instance, [upstream, downstream], "a").success  # Dagster: same run
    assert RAN == []
    alone = _run(instance, [downstream], "a")  # a later run (retrain, launchpad, backfill)
    assert not alone.success and RAN == []
    message = _failure(alone)
    assert "upstream[a]: gate" in message and "Fix:" in message
    # Partition b's gate never failed: its runs are not held back by a's.
    GATE["passed"] = True
    assert _run(instance, [upstream], "b").success
    assert _run(instance, [downstream], "b").success and RAN == ["b"]
    # Fixed and re-materialized with a passing check: the later run goes ahead.
    assert _run(instance, [upstream], "a").success
    assert _run(instance, [downstream], "a").success and RAN == ["b", "a"]


def test_a_run_tagged_to_report_goes_on_past_a_failed_gate():
    instance = DagsterInstance.ephemeral()
    RAN.clear()
    GATE["passed"] = False
    _run(instance, [upstream], "a")
    assert not _run(instance, [downstream], "a").success
    assert _run(instance, [downstream], "a", tags={REPORT_TAG: "report"}).success
    assert RAN == ["a"]


@pytest.mark.slow
def test_retrain_from_the_experts_refuses_a_cohort_whose_gate_failed(lineage_home):
    """The real wiring: the weekly retrain job starts at expert_model. The cohort's latest
    materialization failed its Great Expectations gate (an impossible prevalence bound; its own
    instance, so the session's other runs are not gated), so a later run of expert_model alone
    refuses before any training."""
    from definitions import all_assets

    instance = DagsterInstance.ephemeral()
    partition = "mimic_iv-mortality"
    cohort = materialize(
        all_assets,
        selection=["cohort_dataset"],
        partition_key=partition,
        resources=lineage_home["resources"],
        instance=instance,
        run_config={"ops": {"cohort_dataset": {"config": {"prevalence_bounds": [0.9, 1.0]}}}},
        raise_on_error=False,
    )
    assert not cohort.success
    result = materialize(
        all_assets,
        selection=["expert_model"],
        partition_key=partition,
        resources=lineage_home["resources"],
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success
    assert f"cohort_dataset[{partition}]: cohort_quality" in _failure(result)
    assert not result.asset_materializations_for_node("expert_model")
