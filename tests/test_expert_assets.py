"""expert_model + expert_feature_ranking through dagster.materialize: an MLflow run with the
metrics, a registered model version, and a valid ranking for every patient."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

PARTITION = "mimic_iv-mortality"  # the partition the experts_run fixture trains


def test_expert_model_logs_an_mlflow_run_and_registers_a_version(experts_run):
    result, lineage = experts_run
    assert result.success
    meta = result.asset_materializations_for_node("expert_model")[0].metadata
    assert 0.0 <= meta["test_auroc_mean"].value <= 1.0
    assert meta["test_auroc_std"].value > 0.0
    assert meta["primary"].value == "gru"

    tracking = lineage["resources"]["mlflow_tracking"]
    client = tracking.client()
    run = client.get_run(meta["mlflow_run_id"].value)
    assert run.data.tags["dagster.partition"] == PARTITION
    assert run.data.tags["dagster.run_id"] == result.run_id
    assert run.data.metrics["test_auroc_mean"] == pytest.approx(meta["test_auroc_mean"].value)
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"
    )
    assert {c.info.run_name for c in children} == {"gru", "concare"}
    history = client.get_metric_history(children[0].info.run_id, "train_loss")
    assert len(history) == 2 and [m.step for m in history] == [1, 2]
    versions = client.search_model_versions(f"name = 'eagrl-expert-{PARTITION}'")
    assert versions and versions[0].run_id == run.info.run_id


def test_feature_ranking_covers_every_patient_with_normalised_scores(experts_run):
    result, lineage = experts_run
    (ranking_check,) = [
        c for c in result.get_asset_check_evaluations() if c.check_name == "ranking_valid"
    ]
    assert ranking_check.passed
    home = lineage["home"]
    ranking = pd.read_parquet(
        home / "artifacts" / "expert_feature_ranking" / PARTITION / "ranking.parquet"
    )
    cohort = np.load(home / "artifacts" / "cohort_dataset" / PARTITION / "arrays.npz")
    assert set(ranking["patient_id"]) == set(cohort["patient_ids"].tolist())
    n_features = len(cohort["feature_ids"])
    per_patient = ranking.groupby("patient_id")
    assert np.allclose(per_patient["score"].sum(), 1.0)
    expected_ranks = list(range(1, n_features + 1))
    assert all(sorted(ranks) == expected_ranks for ranks in per_patient["rank"].apply(list))
    assert (per_patient["in_top_k"].sum() == 3).all()
    assert ranking["feature_name"].notna().all()
    manifest = json.loads(
        (home / "artifacts" / "expert_model" / PARTITION / "manifest.json").read_text()
    )
    assert set(manifest["models"]) == {"gru", "concare"}
