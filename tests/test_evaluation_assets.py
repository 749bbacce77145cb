"""evaluation_report and generalization_report through dagster.materialize, with the tiny random
Qwen2 as the base model and two LoRA adapters with perturbed weights standing in for the SFT and
RL policies (built here, so the test does not wait on the training stage); plus the pure helpers
the assets lean on: shared features, prompt and column permutations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import AssetSelection, materialize

from eagrl_pipeline.data.cohort import CohortArrays
from eagrl_pipeline.evaluation.predictions import (
    PromptSet,
    expert_transfer,
    permuted_cohort,
    shared_features,
)
from eagrl_pipeline.evaluation.report import EXPERT_PERMUTATION_NOTE
from eagrl_pipeline.evaluation.robustness import PERMUTATION_LEVELS

PARTITION = "mimic_iv-mortality"  # the partition the experts_run fixture trains experts on
CELL = f"{PARTITION}|eagrl"  # its default variant's grid cell
OTHER = "tjh-mortality"
SEED_DICTIONARY = Path(__file__).resolve().parents[1] / "dbt_project/seeds/feature_dictionary.csv"
LLM_CONFIG = {
    "max_test_patients": 12,
    "max_new_tokens": 96,  # enough for a guided final block without steps
    "guided_steps": 0,
    "batch_size": 16,
    "bootstrap_resamples": 50,
    "permutation_levels": list(PERMUTATION_LEVELS),  # the paper's four (the CPU default has two)
}


def _evaluation_assets() -> list:
    from definitions import all_assets

    return list(all_assets)


def _write_adapter(model_dir: Path, target: Path, seed: int) -> Path:
    """A LoRA adapter whose B matrices are random (peft starts them at zero, i.e. the base)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
    peft_model.save_pretrained(target)
    AutoTokenizer.from_pretrained(model_dir, local_files_only=True).save_pretrained(target)
    return target


def _prepare_partition(setup: dict, partition: str, seed: int) -> None:
    """Prompts with the tiny tokenizer, and SFT/RL adapters, for one partition."""
    from definitions import all_assets

    result = materialize(
        all_assets,
        selection=AssetSelection.assets("llm_prompts"),
        partition_key=partition,
        resources=setup["resources"],
        instance=setup["instance"],
        run_config={"ops": {"llm_prompts": {"config": {"max_tokens": 1200}}}},
    )
    assert result.success
    artifacts = setup["home"] / "artifacts"
    for offset, folder in enumerate(("sft_checkpoint", "rl_checkpoint/eagrl")):
        asset_name, _, variant = folder.partition("/")
        target = artifacts / asset_name / partition / variant / "adapter"
        _write_adapter(setup["model_dir"], target, seed + offset)


@pytest.fixture(scope="module")
def evaluation_setup(experts_run, tmp_path_factory):
    from eagrl_pipeline.llm.tiny_model import build_tiny_qwen2
    from resources import LanguageModel

    _, lineage = experts_run
    model_dir = build_tiny_qwen2(tmp_path_factory.mktemp("tiny") / "qwen2", seed=0)
    setup = {
        "home": lineage["home"],
        "instance": lineage["instance"],
        "model_dir": model_dir,
        "resources": {**lineage["resources"], "llm": LanguageModel(path=str(model_dir))},
    }
    _prepare_partition(setup, PARTITION, seed=1)
    return setup


def _evaluate_cell(setup: dict, cell: str, config: dict):
    return materialize(
        _evaluation_assets(),
        selection=AssetSelection.assets("evaluation_report"),
        partition_key=cell,
        resources=setup["resources"],
        instance=setup["instance"],
        run_config={"ops": {"evaluation_report": {"config": config}}},
    )


@pytest.fixture(scope="module")
def evaluation_run(evaluation_setup):
    result = _evaluate_cell(evaluation_setup, CELL, LLM_CONFIG)
    return result, evaluation_setup[
        "home"
    ] / "artifacts" / "evaluation_report" / PARTITION / "eagrl"


@pytest.fixture(scope="module")
def baseline_runs(evaluation_setup):
    """The prompting baselines' cells: the base model asked another way about the same
    patients (no start policies: a prompting variant starts from nothing)."""
    config = {**LLM_CONFIG, "permutation_levels": [1.0], "scaffold": {"reasoning_tokens": 24}}
    return {
        variant: _evaluate_cell(evaluation_setup, f"{PARTITION}|{variant}", config)
        for variant in ("vanilla", "think_answer")
    }


@pytest.mark.slow
def test_evaluation_report_covers_every_model_and_level(evaluation_run, evaluation_setup):
    result, out = evaluation_run
    assert result.success
    report = json.loads((out / "report.json").read_text())
    # the eagrl cell: its policy (rl) and the policies it starts from (base, sft)
    assert set(report["models"]) == {"base", "sft", "rl", "expert", "expert_all_test"}
    assert report["variant"]["name"] == "eagrl" and report["variant"]["row"] == "rl"
    models = report["models"]
    arrays = CohortArrays.load(
        evaluation_setup["home"] / "artifacts" / "cohort_dataset" / PARTITION / "arrays.npz"
    )
    n_test = int((arrays.split == "test").sum())
    for name in ("base", "sft", "rl", "expert"):
        assert models[name]["n_patients"] == 12
        assert models[name]["auroc"] is not None and models[name]["brier"] is not None
        assert models[name]["auroc"]["n_resamples"] <= 50
    assert models["expert_all_test"]["n_patients"] == n_test
    for name in ("base", "sft", "rl"):
        assert models[name]["kind"] == "llm"
        assert 0.0 <= models[name]["parse_failure_rate"] <= 1.0
        assert models[name]["jaccard"] is not None  # against the expert's top-k
    assert models["expert"]["kind"] == "expert" and models["expert"]["parse_failure_rate"] == 0

    robust = report["robustness"]
    assert robust["levels"] == [0.0, *PERMUTATION_LEVELS]
    assert set(robust["models"]) == set(models)
    for name, entry in robust["models"].items():
        assert [row["level"] for row in entry["levels"]] == robust["levels"]
        assert all(row["auroc"] is not None for row in entry["levels"])
        assert entry["kind"] == ("expert" if name.startswith("expert") else "llm")
    assert set(report["relative_improvement"]) == {"sft", "rl"}
    assert report["headline"]["model"] == "rl" and report["headline"]["base_model"] == "base"
    assert EXPERT_PERMUTATION_NOTE in report["notes"]
    assert any("guided decoding on" in note for note in report["notes"])
    assert any(f"all {n_test}" in note for note in report["notes"])

    assert any("Variant `eagrl`" in note for note in report["notes"])

    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3  # ROC/PR, calibration, robustness
    assert "<script" not in html and "http" not in html.split("<body>")[1]

    meta = result.asset_materializations_for_node("evaluation_report")[0].metadata
    markdown = (out / "report.md").read_text()
    assert meta["report"].value == markdown
    assert "| rl | llm |" in markdown and "Robustness" in markdown
    assert meta["test_patients_llm"].value == 12 and meta["test_patients_all"].value == n_test
    assert meta["test_auroc_rl"].value == pytest.approx(models["rl"]["auroc"]["mean"])
    assert "headline_rl_vs_base_pct" in meta

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{evaluation_setup['home'] / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(meta["mlflow_run_id"].value)
    assert run.data.tags["dagster.partition"] == CELL and run.data.tags["eagrl.variant"] == "eagrl"
    assert client.get_experiment(run.info.experiment_id).name == f"evaluation/{PARTITION}"
    assert "rl.auroc_mean" in run.data.metrics and "expert.auroc_perm100" in run.data.metrics
    logged = {
        Path(a.path).name for a in MlflowClient(uri).list_artifacts(run.info.run_id, "report")
    }
    assert {"report.json", "report.md", "report.html"} <= logged


@pytest.mark.slow
def test_adapters_change_the_answers(evaluation_run):
    _, out = evaluation_run
    answers = pd.read_parquet(out / "llm_predictions.parquet")
    # base, sft and rl, at every level
    assert len(answers) == 3 * (1 + len(PERMUTATION_LEVELS)) * 12
    unperturbed = answers[answers["level"] == 0.0].set_index(["model", "patient_id"])
    base = unperturbed.loc["base", "completion"]
    assert (unperturbed.loc["sft", "completion"] != base).any()
    assert (unperturbed.loc["rl", "completion"] != unperturbed.loc["sft", "completion"]).any()
    experts = pd.read_parquet(out / "expert_predictions.parquet")
    assert set(experts["model"]) == {"expert", "expert_all_test"}
    assert set(experts["level"]) == {0.0, *PERMUTATION_LEVELS}


@pytest.mark.slow
def test_prompting_baseline_cells_ask_the_same_patients_another_way(
    baseline_runs, evaluation_run, evaluation_setup
):
    _, eagrl_out = evaluation_run
    plain = pd.read_parquet(eagrl_out / "llm_predictions.parquet")
    plain = plain[(plain["level"] == 0) & (plain["model"] == "base")]
    for variant, opening in (("vanilla", "<Final answer>"), ("think_answer", "<Reasoning>")):
        assert baseline_runs[variant].success
        out = evaluation_setup["home"] / "artifacts" / "evaluation_report" / PARTITION / variant
        report = json.loads((out / "report.json").read_text())
        row = f"base_{variant}"
        assert set(report["models"]) == {row, "expert", "expert_all_test"}
        assert report["variant"] == {
            "name": variant,
            "row": row,
            "settings_hash": report["variant"]["settings_hash"],
        }
        answers = pd.read_parquet(out / "llm_predictions.parquet")
        rows = answers[(answers["level"] == 0) & (answers["model"] == row)]
        assert sorted(rows["patient_id"]) == sorted(plain["patient_id"])
        assert rows["completion"].str.startswith(opening).all(), rows["completion"].iloc[0]
        assert rows["probability"].notna().all()
        assert any("Prompting baseline" in note for note in report["notes"])


@pytest.mark.slow
def test_missing_adapter_fails_naming_path_and_asset(evaluation_setup, tmp_path):
    from definitions import build_resources

    resources = {**build_resources(str(tmp_path)), "llm": evaluation_setup["resources"]["llm"]}
    sft = evaluation_setup["home"] / "artifacts" / "sft_checkpoint" / PARTITION / "adapter"
    shutil.copytree(sft, tmp_path / "artifacts" / "sft_checkpoint" / PARTITION / "adapter")
    result = materialize(
        _evaluation_assets(),
        selection=AssetSelection.assets("evaluation_report"),
        partition_key=CELL,
        resources=resources,
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.cause.message
    missing = tmp_path / "artifacts" / "rl_checkpoint" / PARTITION / "eagrl" / "adapter"
    assert str(missing) in message and f"materialize rl_checkpoint[{CELL}]" in message
    assert "sft_checkpoint" not in message


@pytest.fixture(scope="module")
def generalization_run(evaluation_setup):
    from definitions import all_assets

    experts = materialize(
        all_assets,
        selection=AssetSelection.assets("expert_model", "expert_feature_ranking"),
        partition_key=OTHER,
        resources=evaluation_setup["resources"],
        instance=evaluation_setup["instance"],
        run_config={
            "ops": {
                "expert_model": {
                    "config": {
                        "models": ["gru"],
                        "max_epochs": 1,
                        "bootstrap_resamples": 10,
                        "val_auroc_floor": 0.0,
                        "register_model": False,
                    }
                },
                "expert_feature_ranking": {"config": {"top_k": 3}},
            }
        },
    )
    assert experts.success
    _prepare_partition(evaluation_setup, OTHER, seed=3)
    # The generalization default: no permuted levels (the per-partition reports hold them).
    config = {k: v for k, v in LLM_CONFIG.items() if k != "permutation_levels"}
    config["max_test_patients"] = 10
    return _transfer(evaluation_setup, "eagrl", config), _transfer_dir(evaluation_setup, "eagrl")


def _transfer(setup: dict, variant: str, config: dict):
    return materialize(
        _evaluation_assets(),
        selection=AssetSelection.assets("generalization_report"),
        partition_key=variant,
        resources=setup["resources"],
        instance=setup["instance"],
        run_config={"ops": {"generalization_report": {"config": config}}},
    )


def _transfer_dir(setup: dict, variant: str) -> Path:
    return setup["home"] / "artifacts" / "generalization_report" / variant


@pytest.fixture(scope="module")
def vanilla_transfer(generalization_run, evaluation_setup):
    """The vanilla prompting baseline's generalization report, its own row only (the grid's
    setting), written beside eagrl's, which it must leave alone; then the comparison in the
    same variant-partitioned run, as the cross_dataset_report job runs them."""
    config = {k: v for k, v in LLM_CONFIG.items() if k != "permutation_levels"}
    config.update(max_test_patients=10, score_start_policies=False)
    result = materialize(
        _evaluation_assets(),
        selection=AssetSelection.assets("generalization_report", "comparison_report"),
        partition_key="vanilla",
        resources=evaluation_setup["resources"],
        instance=evaluation_setup["instance"],
        run_config={
            "ops": {
                "generalization_report": {"config": config},
                "comparison_report": {"config": {"bootstrap_resamples": 20}},
            }
        },
    )
    return result, _transfer_dir(evaluation_setup, "vanilla")


@pytest.mark.slow
def test_generalization_report_both_directions(generalization_run):
    result, out = generalization_run
    assert result.success
    report = json.loads((out / "report.json").read_text())
    forward, backward = f"{PARTITION}_to_{OTHER}", f"{OTHER}_to_{PARTITION}"
    assert set(report["sections"]) == {forward, backward}
    for key in (forward, backward):
        section = report["sections"][key]
        assert set(section["models"]) == {"base", "sft", "rl"}
        assert all(m["n_patients"] == 10 for m in section["models"].values())
        assert section["robustness"] is None  # off by default here
        assert section["headline"]["model"] == "rl"
    expert = report["expert"][forward]
    assert expert["applicable"] is False and "retraining" in expert["reason"]
    pairs = {(f["source_id"], f["target_id"]) for f in expert["shared_features"]}
    assert ("lab_hemoglobin", "hemoglobin") in pairs
    back = report["expert"][backward]["shared_features"]
    assert {(f["target_id"], f["source_id"]) for f in back} == pairs
    markdown = (out / "report.md").read_text()
    assert "not applicable" in markdown and "Hemoglobin (g/dL vs g/L)" in markdown
    assert f"Trained on {PARTITION}, tested zero-shot on {OTHER}" in markdown
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4  # curves and calibration, per direction
    meta = result.asset_materializations_for_node("generalization_report")[0].metadata
    assert meta["report"].value == markdown
    assert meta["shared_features"].value == len(pairs)
    assert f"{forward}_test_auroc_rl" in meta and meta["mlflow_run_id"].value
    assert meta["variant"].value == "eagrl" and report["variant"]["row"] == "rl"
    assert f"rl_checkpoint[{CELL}]" in markdown  # the transferred RL policy is the eagrl cell's


@pytest.mark.slow
def test_generalization_report_per_variant(vanilla_transfer, generalization_run):
    """A prompting baseline's report: the base model asked its way on both datasets (no
    adapter), in its own folder; eagrl's report is untouched."""
    result, out = vanilla_transfer
    assert result.success
    report = json.loads((out / "report.json").read_text())
    assert report["variant"]["name"] == "vanilla"
    for section in report["sections"].values():
        assert set(section["models"]) == {"base_vanilla"}
        assert section["models"]["base_vanilla"]["n_patients"] == 10
    eagrl = json.loads((generalization_run[1] / "report.json").read_text())
    assert eagrl["variant"]["name"] == "eagrl"
    meta = result.asset_materializations_for_node("generalization_report")[0].metadata
    assert meta["variant"].value == "vanilla"
    # the unpartitioned comparison ran in the same partitioned run (the job's shape)
    (comparison,) = result.asset_materializations_for_node("comparison_report")
    assert comparison.partition is None


@pytest.mark.slow
def test_generalization_report_names_the_missing_policy(evaluation_setup, generalization_run):
    """A GRPO variant whose cells were never trained: the run fails naming the adapter and the
    asset to materialize, before a model is loaded."""
    config = {k: v for k, v in LLM_CONFIG.items() if k != "permutation_levels"}
    result = materialize(
        _evaluation_assets(),
        selection=AssetSelection.assets("generalization_report"),
        partition_key="grpo_only",
        resources=evaluation_setup["resources"],
        instance=evaluation_setup["instance"],
        run_config={"ops": {"generalization_report": {"config": config}}},
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.cause.message
    assert "materialize rl_checkpoint[" in message and "|grpo_only]" in message


@pytest.mark.slow
def test_comparison_report_lines_up_what_was_evaluated(
    evaluation_run, baseline_runs, generalization_run, vanilla_transfer, evaluation_setup
):
    """After one partition's cells (eagrl and the two prompting baselines) and the
    cross-dataset report: its column is filled, each row with the cell and runs it was read
    from (decomposition and sft_only from the eagrl cell, which scored them as its start
    policies); what was never evaluated says "not materialized"."""
    from assets.partitions import COHORTS

    evaluation, _ = evaluation_run
    result = materialize(
        _evaluation_assets(),
        selection=AssetSelection.assets("comparison_report"),
        resources=evaluation_setup["resources"],
        instance=evaluation_setup["instance"],
        run_config={"ops": {"comparison_report": {"config": {"bootstrap_resamples": 50}}}},
    )
    assert result.success
    out = evaluation_setup["home"] / "artifacts" / "comparison_report" / "_"
    comparison = json.loads((out / "report.json").read_text())
    assert comparison["columns"] == list(COHORTS) and comparison["reference"] == "eagrl"
    rows = ["vanilla", "think_answer", "decomposition", "sft_only", "eagrl", "expert"]
    assert comparison["methods"] == rows  # the registry's order; the expert last
    for method in rows:
        assert comparison["cells"][method][PARTITION]["status"] == "ok"
    versus = comparison["cells"]["decomposition"][PARTITION]["vs_reference"]
    assert versus["n_patients"] == 12 and versus["auroc"]["n_resamples"] <= 50
    never = [c for c in COHORTS if not (out.parent.parent / "evaluation_report" / c).exists()]
    assert never  # the fixture evaluates one partition only
    for column in never:
        assert comparison["cells"]["eagrl"][column]["status"] == "not materialized"
    evaluated = evaluation.asset_materializations_for_node("evaluation_report")[0].metadata
    provenance = comparison["provenance"][PARTITION]
    for row in ("eagrl", "decomposition", "sft_only"):
        assert provenance[row]["partition"] == CELL
        assert provenance[row]["mlflow_run_id"] == evaluated["mlflow_run_id"].value
        assert provenance[row]["dagster_run_id"] == evaluation.run_id
    assert provenance["vanilla"]["partition"] == f"{PARTITION}|vanilla"
    assert provenance["vanilla"]["dagster_run_id"] == baseline_runs["vanilla"].run_id
    # Generalization rows are variants: eagrl's report transferred its start policies too.
    transfer = comparison["generalization"]
    assert set(transfer) == {"vanilla", "decomposition", "sft_only", "eagrl"}
    assert set(transfer["eagrl"]) == {f"{PARTITION}_to_{OTHER}", f"{OTHER}_to_{PARTITION}"}
    sources = comparison["provenance"]["generalization"]
    assert sources["sft_only"]["partition"] == "eagrl"
    assert sources["vanilla"]["dagster_run_id"] == vanilla_transfer[0].run_id
    markdown = (out / "report.md").read_text()
    assert "not materialized" in markdown and "Generalization" in markdown
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 2
    meta = result.asset_materializations_for_node("comparison_report")[0].metadata
    assert meta["cells_materialized"].value == len(rows) * (len(COHORTS) - len(never))
    assert meta["mlflow_run_id"].value
    # Case studies: both labels and the largest disagreements, every LLM method per patient.
    cases = json.loads((out / "case_studies.json").read_text())
    assert meta["case_study_patients"].value == len(cases) == 4  # 1 per label + 2 disagreements
    assert {c["dataset_task"] for c in cases} == {PARTITION}
    assert {c["label"] for c in cases} == {0, 1}
    for case in cases:
        assert [a["method"] for a in case["answers"]] == rows[:-1]  # in the table's order
        assert case["shown"] and case["expert_probability"] is not None
    page = (out / "case_studies.html").read_text()
    assert page.count("<h2>") == 4 and "<script" not in page


def test_shared_features_match_by_name_both_ways():
    dictionary = pd.read_csv(SEED_DICTIONARY)
    mimic, tjh = (dictionary[dictionary["dataset"] == d] for d in ("mimic_iv", "tjh"))
    ids_mimic = [f for f in mimic["feature_id"] if f not in ("sex", "age")]
    ids_tjh = [f for f in tjh["feature_id"] if f not in ("sex", "age")]
    shared = {(f.id_a, f.id_b): f for f in shared_features(mimic, ids_mimic, tjh, ids_tjh)}
    assert not shared[("lab_hemoglobin", "hemoglobin")].same_unit  # g/dL vs g/L
    assert shared[("lab_hematocrit", "hematocrit")].same_unit
    assert ("lab_sodium", "serum_sodium") in shared  # only the curated alias finds this one
    assert not any(a == "heart_rate" for a, _ in shared)  # TJH has no vitals
    transfer = expert_transfer("mimic_iv-mortality", "tjh-mortality", list(shared.values()), 47, 73)
    assert not transfer["applicable"] and len(transfer["shared_features"]) == len(shared)
    assert "unit labels" in transfer["reason"]
    # a cohort without a feature (e.g. vitals-only MIMIC-IV) shares fewer
    fewer = shared_features(mimic, ["heart_rate", "lab_sodium"], tjh, ids_tjh)
    assert [(f.id_a, f.id_b) for f in fewer] == [("lab_sodium", "serum_sodium")]


def test_permuted_cohort_moves_values_and_masks_together():
    rng = np.random.default_rng(0)
    n, t, f = 3, 2, 5
    x = rng.normal(size=(n, t, f)).astype("float32")
    arrays = CohortArrays(
        x=x,
        observed=x > 0,
        visit_mask=np.ones((n, t), bool),
        static=rng.normal(size=(n, 2)).astype("float32"),
        y=np.array([0, 1, 0]),
        patient_ids=np.arange(n),
        group_ids=np.arange(n),
        split=np.array(["test"] * n),
        feature_ids=[f"f{i}" for i in range(f)],
    )
    moved = permuted_cohort(arrays, 1.0, seed=7)
    assert not np.array_equal(moved.x, arrays.x)
    np.testing.assert_array_equal(moved.observed, moved.x > 0)  # masks follow their values
    np.testing.assert_array_equal(moved.static, arrays.static)
    assert moved.feature_ids == arrays.feature_ids


def test_prompt_set_permutation_is_per_patient_and_keeps_other_lines():
    lines = [f"- F{i} (Unit: u. Reference range: 0-1): [{i}.0, NaN]" for i in range(6)]
    user = "\n".join(["Patient: male, 60", "- Sex: male", *lines, "Answer in the format."])
    frame = pd.DataFrame(
        {"patient_id": [1, 2], "label": [0, 1], "system": ["s", "s"], "user": [user, user]}
    )
    prompts = PromptSet.from_frame(frame)
    moved = prompts.permuted(1.0, seed=42)
    assert moved.patient_ids == prompts.patient_ids and moved.labels == prompts.labels
    for text in moved.user:
        out = text.split("\n")
        assert out[:2] == ["Patient: male, 60", "- Sex: male"] and out[-1] == user.split("\n")[-1]
        assert sorted(out[2:-1]) == sorted(lines) and out[2:-1] != lines
    assert moved.user[0] != moved.user[1]  # each patient its own permutation
    assert prompts.permuted(1.0, seed=42) == moved  # seeded


def test_a_think_baseline_needs_room_for_its_reasoning_and_answer():
    from assets.evaluation import EvaluationConfig, _row_generation

    assert _row_generation(EvaluationConfig(), "base") is None  # the report's own settings
    assert _row_generation(EvaluationConfig(), "base_think_answer").plan == "think"
    assert _row_generation(EvaluationConfig(max_new_tokens=40), "base_vanilla").plan == "direct"
    with pytest.raises(ValueError, match="max_new_tokens to at least 66"):
        _row_generation(EvaluationConfig(max_new_tokens=40), "base_think_answer")
