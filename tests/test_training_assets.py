"""sft_checkpoint and rl_checkpoint through dagster.materialize with a tiny random Qwen2 model:
adapters written, MLflow runs logged, gates evaluated, a bad config refused before training; the
RL gate's paired comparison on its own."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest
from dagster import AssetSelection, materialize

from assets.gates import REPORT_TAG

pytestmark = pytest.mark.slow

PARTITION = "mimic_iv-mortality"  # the partition the experts_run fixture ranks
CELL = f"{PARTITION}|eagrl"  # its default variant's grid cell
# These tests train on hand-written trajectories that replace mcts_trajectories' output; that
# asset's latest materialization in the session's instance (a tiny random model, in
# test_reasoning_assets) failed its gates, which would now stop SFT (assets/gates.py). The runs
# here go on past it, as the learning study does.
PAST_FAILED_GATES = {REPORT_TAG: "report"}
RL_SMOKE = {
    "max_steps": 2,
    "max_train_prompts": 2,
    "max_completion_length": 24,
    "val_prompts": 2,
    "val_max_new_tokens": 16,
    # Two CPU steps rarely move greedy answers: accept any policy here, the gate's decision is
    # checked against its own interval below.
    "min_reward_gain": -10.0,
    "gate_resamples": 200,
}


def _trajectory(features: list[str], probability: str) -> str:
    return (
        "<Subquestion> Is the heart rate abnormal? </Subquestion> "
        "<Answer> It is above its reference range. </Answer>\n"
        "<Final subquestion> How likely is the outcome? </Final subquestion>\n"
        f"<Important Features> {', '.join(features)} </Important Features>\n"
        f"<Final answer> {probability} </Final answer>"
    )


@pytest.fixture(scope="module")
def training_run(experts_run, tmp_path_factory):
    from definitions import all_assets
    from eagrl_pipeline.llm.tiny_model import build_tiny_qwen2
    from resources import LanguageModel

    _, lineage = experts_run
    home = lineage["home"]
    model_dir = build_tiny_qwen2(tmp_path_factory.mktemp("tiny_training") / "qwen2", seed=1)
    resources = {**lineage["resources"], "llm": LanguageModel(path=str(model_dir))}
    materialize(
        all_assets,
        selection=AssetSelection.assets("base_language_model"),
        resources=resources,
        instance=lineage["instance"],
    )
    materialize(
        all_assets,
        selection=AssetSelection.assets("llm_prompts"),
        partition_key=PARTITION,
        resources=resources,
        instance=lineage["instance"],
        run_config={"ops": {"llm_prompts": {"config": {"max_tokens": 1200}}}},
    )
    prompts = pd.read_parquet(home / "artifacts" / "llm_prompts" / PARTITION / "prompts.parquet")
    train = prompts[prompts["split"] == "train"].head(6)
    rng = random.Random(0)
    records = [
        {
            "patient_key": str(row.patient_id),
            "label": int(row.label),
            "system": row.system,
            "user": row.user,
            "text": _trajectory(["Heart rate", "Respiratory rate"], rng.choice(["0.8", "0.1"])),
            "reward": 0.0,
        }
        for row in train.itertuples()
    ]
    out = home / "artifacts" / "mcts_trajectories" / PARTITION
    out.mkdir(parents=True, exist_ok=True)
    (out / "trajectories.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    sft_config = {
        "max_steps": 40,
        "learning_rate": 2e-2,
        "max_length": 4096,
        "parse_sample": 2,
        "parse_max_new_tokens": 16,
    }
    results = {
        asset_name: materialize(
            all_assets,
            selection=AssetSelection.assets(asset_name),
            partition_key=partition,
            resources=resources,
            instance=lineage["instance"],
            tags=PAST_FAILED_GATES,
            run_config={"ops": {asset_name: {"config": config}}},
            raise_on_error=False,
        )
        for asset_name, partition, config in (
            ("sft_checkpoint", PARTITION, sft_config),
            ("rl_checkpoint", CELL, RL_SMOKE),
        )
    }
    return results, home, resources, lineage


def test_sft_checkpoint_writes_adapter_and_logs_mlflow(training_run):
    results, home, resources, _ = training_run
    result = results["sft_checkpoint"]
    assert result.success
    meta = result.asset_materializations_for_node("sft_checkpoint")[0].metadata
    adapter = home / "artifacts" / "sft_checkpoint" / PARTITION / "adapter"
    assert (adapter / "adapter_config.json").exists()
    assert meta["steps"].value == 40
    run = resources["mlflow_tracking"].client().get_run(meta["mlflow_run_id"].value)
    assert run.data.tags["dagster.partition"] == PARTITION
    assert "base_eval_loss" in run.data.metrics and "loss" in run.data.metrics
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    sft_gate = checks["sft_eval_loss_improved"]
    assert sft_gate.passed, sft_gate.metadata
    assert 0.0 <= meta["val_parse_fraction"].value <= 1.0


def test_rl_checkpoint_trains_from_the_sft_adapter(training_run):
    from eagrl_pipeline.variants import VARIANTS

    results, home, resources, _ = training_run
    result = results["rl_checkpoint"]
    assert result.success
    meta = result.asset_materializations_for_node("rl_checkpoint")[0].metadata
    out = home / "artifacts" / "rl_checkpoint" / PARTITION / "eagrl"  # the cell's own folder
    assert (out / "adapter" / "adapter_config.json").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["variant"] == "eagrl" and manifest["policy"] == "grpo"
    assert (
        manifest["variant_hash"] == VARIANTS["eagrl"].settings_hash() == meta["variant_hash"].value
    )
    assert manifest["global_step"] == 2 and manifest["mlflow_run_id"] == meta["mlflow_run_id"].value
    # Defaults: groups of 4, 8 completions per step, so 2 prompts (groups) per generation; with
    # num_iterations=2 the 2 steps share one generation batch.
    assert manifest["groups_per_generation"] == 2 and manifest["generation_batches"] == 1
    assert 0 <= manifest["groups_with_reward_spread"] <= manifest["groups"] == 2
    assert 0.2 <= manifest["eps_high_min"] <= manifest["eps_high_max"] <= 0.4
    for key in ("clip_ratio_high_mean", "eps_high_p50", "span_fraction"):
        assert key in manifest and key in meta
    lo, gain, hi = (manifest[f"val_reward_gain{s}"] for s in ("_lo", "", "_hi"))
    assert lo <= gain <= hi and manifest["val_patients"] == 2
    assert gain == pytest.approx(manifest["val_reward_rl"] - manifest["val_reward_sft"])
    for policy in ("sft", "rl"):
        for part in ("r_cls", "r_att", "r_format"):
            assert f"val_{part}_{policy}" in manifest
    client = resources["mlflow_tracking"].client()
    run = client.get_run(meta["mlflow_run_id"].value)
    # One experiment per stage and dataset-task; the variant is a tag of the run.
    assert client.get_experiment(run.info.experiment_id).name == f"grpo/{PARTITION}"
    assert run.data.tags["eagrl.variant"] == "eagrl"
    assert run.data.tags["eagrl.variant_hash"] == manifest["variant_hash"]
    assert run.data.tags["dagster.partition"] == CELL
    assert "val_reward_rl" in run.data.metrics and "val_reward_sft" in run.data.metrics
    assert "val_reward_gain_lo" in run.data.metrics
    assert any(key.startswith("rewards/r_cls") for key in run.data.metrics)
    assert "frac_reward_zero_std" in run.data.metrics
    for stat in ("mean", "min", "max", "p10", "p50", "p90"):
        assert f"adaptive_clip/eps_high_{stat}" in run.data.metrics
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    gate = checks["rl_reward_improved"]
    assert gate.passed == (lo > -10.0)
    assert gate.metadata["val_patients"].value == 2
    assert gate.metadata["val_reward_gain_lo"].value == pytest.approx(lo)


def test_validation_crash_after_training_keeps_the_previous_adapter_and_manifest(
    training_run, monkeypatch
):
    """The adapter used to be replaced by training, before the validation and the manifest: a
    crash in between left a new adapter beside the old run's manifest."""
    import assets.training
    from definitions import all_assets

    _, home, resources, lineage = training_run
    out = home / "artifacts" / "sft_checkpoint" / PARTITION
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["adapter_dir"] == str(out / "adapter") and len(manifest["adapter_sha256"]) == 64

    def crash(*args, **kwargs):
        raise RuntimeError("validation crashed")

    monkeypatch.setattr(assets.training, "policy_answers", crash)
    result = materialize(
        all_assets,
        selection=AssetSelection.assets("sft_checkpoint"),
        partition_key=PARTITION,
        resources=resources,
        instance=lineage["instance"],
        run_config={"ops": {"sft_checkpoint": {"config": {"max_steps": 2, "max_length": 4096}}}},
        tags=PAST_FAILED_GATES,
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "validation crashed" in str(failure.step_failure_data.error)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    kept = {k: v for k, v in after.items() if k.parts[0] in ("adapter", "manifest.json")}
    assert kept == {k: v for k, v in before.items() if k.parts[0] in ("adapter", "manifest.json")}


def test_indivisible_grpo_batch_is_refused_before_training(training_run):
    from definitions import all_assets

    _, _, resources, lineage = training_run
    with pytest.raises(Exception) as info:  # the message is checked below
        materialize(
            all_assets,
            selection=AssetSelection.assets("rl_checkpoint"),
            partition_key=CELL,
            resources=resources,
            instance=lineage["instance"],
            run_config={
                "ops": {
                    "rl_checkpoint": {
                        "config": {"per_device_train_batch_size": 3, "num_generations": 4}
                    }
                }
            },
        )
    messages, error = [], info.value
    while error is not None:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    assert any("divisible by num_generations=4" in m for m in messages), messages


def _materialize_cell(lineage, resources, cell: str, config: dict):
    from definitions import all_assets

    return materialize(
        all_assets,
        selection=AssetSelection.assets("rl_checkpoint"),
        partition_key=cell,
        resources=resources,
        instance=lineage["instance"],
        run_config={"ops": {"rl_checkpoint": {"config": config}}},
        raise_on_error=False,
    )


def test_grpo_only_cell_starts_from_the_base_model(training_run, tmp_path):
    """The grpo_only variant (GRPO without Stage 1, the paper's ablation): no SFT adapter is
    read, a fresh adapter of the configured rank trains on the base model, the gate compares RL
    with the base model, and the eagrl cell's adapter is untouched."""
    import shutil

    _, home, resources, lineage = training_run
    eagrl = home / "artifacts" / "rl_checkpoint" / PARTITION / "eagrl"
    before = (eagrl / "manifest.json").read_bytes()
    sft_dir = home / "artifacts" / "sft_checkpoint" / PARTITION
    hidden = tmp_path / "sft_checkpoint"
    shutil.move(sft_dir, hidden)  # nothing of Stage 1 on disk
    try:
        result = _materialize_cell(
            lineage, resources, f"{PARTITION}|grpo_only", {**RL_SMOKE, "lora_r": 4}
        )
    finally:
        shutil.move(hidden, sft_dir)
    assert result.success
    out = home / "artifacts" / "rl_checkpoint" / PARTITION / "grpo_only"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["start_from"] == "base" and manifest["gate_reference"] == "base"
    assert manifest["variant"] == "grpo_only" and manifest["global_step"] == 2
    gain = manifest["val_reward_rl"] - manifest["val_reward_base"]
    assert manifest["val_reward_gain"] == pytest.approx(gain)
    assert not any(key.endswith("_sft") for key in manifest)
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4
    meta = result.asset_materializations_for_node("rl_checkpoint")[0].metadata
    assert meta["start_from"].value == "base"
    assert (eagrl / "manifest.json").read_bytes() == before  # nothing of another variant's


def test_a_variant_refuses_run_config_that_would_make_it_another_method(training_run):
    _, _, resources, lineage = training_run
    result = _materialize_cell(
        lineage, resources, f"{PARTITION}|grpo_only", {**RL_SMOKE, "start_from": "sft"}
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = str(failure.step_failure_data.error)
    assert "variant grpo_only fixes ['start_from']" in message and "start_from='sft'" in message


def test_a_cell_without_grpo_names_its_policy_and_trains_nothing(training_run):
    _, home, resources, lineage = training_run
    result = _materialize_cell(lineage, resources, f"{PARTITION}|sft_only", RL_SMOKE)
    assert result.success
    out = home / "artifacts" / "rl_checkpoint" / PARTITION / "sft_only"
    manifest = json.loads((out / "manifest.json").read_text())
    sft_adapter = home / "artifacts" / "sft_checkpoint" / PARTITION / "adapter"
    assert manifest["policy"] == "sft" and manifest["adapter_dir"] == str(sft_adapter)
    assert not (out / "adapter").exists()
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and "trains no GRPO" in check.metadata["applies"].value
    base = _materialize_cell(lineage, resources, f"{PARTITION}|vanilla", {})
    manifest = json.loads(
        (home / "artifacts" / "rl_checkpoint" / PARTITION / "vanilla" / "manifest.json").read_text()
    )
    assert base.success and manifest["policy"] == "base" and manifest["prompting"] == "vanilla"
    assert manifest["adapter_dir"] is None


def _answers(rewards: list[float], patients: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "patient_id": patients,
            "reward": rewards,
            "r_cls": rewards,
            "r_att": [0.5] * len(rewards),
            "r_format": [1.0] * len(rewards),
        }
    )


def test_reward_gate_needs_a_credible_improvement() -> None:
    from assets.training import reward_gate

    patients = list(range(20))
    sft = [-1.0 + 0.1 * i for i in range(20)]
    same = reward_gate(_answers(sft, patients), _answers(sft, patients), 0.01)
    assert not same["passed"] and same["val_reward_gain_lo"] == 0.0 == same["val_reward_gain_hi"]
    better = [r + 0.05 for r in sft]
    gate = reward_gate(_answers(sft, patients), _answers(better[::-1], patients[::-1]), 0.01)
    assert gate["passed"] and gate["val_reward_gain"] == pytest.approx(0.05)  # paired by patient
    assert gate["val_reward_gain_lo"] == pytest.approx(0.05) and gate["val_patients"] == 20
    assert gate["val_reward_rl"] - gate["val_reward_sft"] == pytest.approx(0.05)
    assert gate["val_r_att_rl"] == 0.5
    assert not reward_gate(_answers(sft, patients), _answers(better, patients), 0.06)["passed"]
    with pytest.raises(ValueError, match="same validation patients"):
        reward_gate(_answers(sft, patients), _answers(sft[:19], patients[:19]), 0.01)
    from_base = reward_gate(
        _answers(sft, patients), _answers(better, patients), 0.01, start_name="base"
    )
    assert from_base["gate_reference"] == "base" and from_base["passed"]
    assert from_base["val_reward_rl"] - from_base["val_reward_base"] == pytest.approx(0.05)
    assert not any(key.endswith("_sft") for key in from_base)


def test_publish_moves_a_staged_merged_model_and_drops_a_stale_one(tmp_path):
    """The merged folder trained into staged/ beside the adapter and was deleted with it."""
    from assets.training import _publish

    out = tmp_path / "sft_checkpoint" / PARTITION

    def stage(merged: bool) -> Path:
        (out / "staged" / "adapter").mkdir(parents=True)
        (out / "staged" / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
        if merged:
            (out / "staged" / "merged").mkdir()
            (out / "staged" / "merged" / "model.safetensors").write_bytes(b"merged")
        return out / "staged" / "adapter"

    _publish(stage(merged=True), out, {"global_step": 2})
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["merged_dir"] == str(out / "merged")
    assert (out / "merged" / "model.safetensors").read_bytes() == b"merged"
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == b"weights"
    assert not (out / "staged").exists()

    _publish(stage(merged=False), out, {"global_step": 2})
    assert json.loads((out / "manifest.json").read_text())["merged_dir"] is None
    assert not (out / "merged").exists()


def test_a_fully_fine_tuned_policy_is_read_where_an_adapter_would_be(tmp_path):
    """finetune: full reaches the SFT settings, and the evaluation accepts a policy folder that
    holds a whole model (config.json) as it accepts a LoRA adapter; a folder with neither is
    refused with the asset to materialize."""
    from assets.evaluation import cell_policies
    from assets.training import SFTCheckpointConfig
    from eagrl_pipeline.variants import get_variant
    from resources import EagrlHome

    assert SFTCheckpointConfig(finetune="full").settings().finetune == "full"
    assert SFTCheckpointConfig().settings().finetune == "lora"
    home = EagrlHome(path=str(tmp_path))
    sft = home.artifact_path("sft_checkpoint", PARTITION) / "adapter"
    sft.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"materialize sft_checkpoint\["):
        cell_policies(home, PARTITION, get_variant("sft_only"), with_start=False)
    (sft / "config.json").write_text("{}")
    policies = cell_policies(home, PARTITION, get_variant("sft_only"), with_start=False)
    assert policies == {"sft": sft}
