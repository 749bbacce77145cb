"""The real TJH file through raw -> dbt -> cohort: the published counts and ClinicRealm split."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from dagster import AssetSelection, DagsterInstance, materialize

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def test_real_tjh_cohort_matches_published_counts_and_split(tjh_dir, tmp_path):
    from definitions import all_assets, build_resources
    from resources import EhrSources

    resources = build_resources(str(tmp_path))
    resources["sources"] = EhrSources(
        tjh_path=str(tjh_dir / "time_series_375_prerpocess_en.xlsx"), synthetic_mimic_iv_stays=300
    )
    instance = DagsterInstance.ephemeral()
    warehouse = materialize(
        all_assets,
        selection=AssetSelection.groups("raw", "warehouse"),
        resources=resources,
        instance=instance,
    )
    assert warehouse.success
    raw = warehouse.asset_materializations_for_node("raw_tjh")[0].metadata
    assert raw["rows"].value == 6120 and raw["rows_without_re_date"].value == 14
    assert raw["patients_with_reports"].value == 361

    cohort = materialize(
        all_assets,
        selection=AssetSelection.assets("cohort_dataset"),
        partition_key="tjh-mortality",
        resources=resources,
        instance=instance,
    )
    (check,) = cohort.get_asset_check_evaluations()
    assert check.passed, check.metadata["summary"].value
    folder = tmp_path / "artifacts" / "cohort_dataset" / "tjh-mortality"
    summary = json.loads((folder / "manifest.json").read_text())["summary"]
    assert summary["visits"] == 1704
    assert [summary[s]["patients"] for s in ("train", "val", "test")] == [140, 21, 200]
    visits = pd.read_parquet(folder / "visits.parquet")
    patients = visits.drop_duplicates("patient_id").set_index("patient_id")
    assert patients["label"].value_counts().to_dict() == {0: 195, 1: 166}
    published = pd.read_csv(tjh_dir / "splits" / "tjh_splits.csv").set_index("PATIENT_ID")
    assert (patients["split"] == published.loc[patients.index, "clinicrealm_split"]).all()
    _real_tjh_prompts_show_features(resources, instance, tmp_path)


def _real_tjh_prompts_show_features(resources, instance, home) -> None:
    """On the real file (whose last records are often sparse discharge-day panels) every prompt
    shows measured values, chosen on the training split, and the robustness permutation never
    fails on one."""
    from assets.reasoning import PromptsConfig
    from definitions import all_assets
    from eagrl_pipeline.evaluation.predictions import PromptSet

    result = materialize(
        all_assets,
        selection=AssetSelection.assets(
            "base_language_model", "expert_model", "expert_feature_ranking", "llm_prompts"
        ),
        partition_key="tjh-mortality",
        resources=resources,
        instance=instance,
        run_config={"ops": {"expert_model": {"config": {"max_epochs": 3}}}},
    )
    assert result.success
    meta = result.asset_materializations_for_node("llm_prompts")[0].metadata
    assert meta["prompts_without_features"].value == 0
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["prompts_show_features"].passed
    prompts = pd.read_parquet(
        home / "artifacts" / "llm_prompts" / "tjh-mortality" / "prompts.parquet"
    )
    assert len(prompts) == 361 and (prompts["n_features_shown"] >= 1).all()
    shown_at_most = PromptsConfig().max_features  # the CPU default's cap
    assert prompts["n_features_shown"].median() >= 0.8 * shown_at_most
    assert (prompts["visits_shown"] >= 1).all() and prompts["fits_budget"].all()
    test = PromptSet.from_frame(prompts[prompts["split"] == "test"])
    permuted = test.permuted(1.0, seed=42)
    assert len(permuted) == 200
    changed = sum(a != b for a, b in zip(test.user, permuted.user, strict=True))
    assert changed == 200 - len(permuted.unpermutable)
