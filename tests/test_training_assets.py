"""sft_checkpoint and rl_checkpoint through dagster.materialize with a tiny random Qwen2 model:
adapters written, MLflow runs logged, gates evaluated, a bad config refused before training."""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest
from dagster import AssetSelection, materialize

pytestmark = pytest.mark.slow

PARTITION = "mimic_iv-mortality"  # the partition the experts_run fixture ranks


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
        run_config={"ops": {"llm_prompts": {"config": {"max_tokens": 600}}}},
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
    result = materialize(
        all_assets,
        selection=AssetSelection.assets("sft_checkpoint", "rl_checkpoint"),
        partition_key=PARTITION,
        resources=resources,
        instance=lineage["instance"],
        run_config={
            "ops": {
                "sft_checkpoint": {
                    "config": {
                        "max_steps": 40,
                        "learning_rate": 2e-2,
                        "max_length": 4096,
                        "parse_sample": 2,
                        "parse_max_new_tokens": 16,
                    }
                },
                "rl_checkpoint": {
                    "config": {
                        "max_steps": 2,
                        "max_train_prompts": 2,
                        "max_completion_length": 24,
                        "val_prompts": 2,
                        "val_max_new_tokens": 16,
                    }
                },
            }
        },
        raise_on_error=False,
    )
    return result, home, resources, lineage


def test_sft_checkpoint_writes_adapter_and_logs_mlflow(training_run):
    result, home, resources, _ = training_run
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
    result, home, resources, _ = training_run
    meta = result.asset_materializations_for_node("rl_checkpoint")[0].metadata
    out = home / "artifacts" / "rl_checkpoint" / PARTITION
    assert (out / "adapter" / "adapter_config.json").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["global_step"] == 2 and manifest["mlflow_run_id"] == meta["mlflow_run_id"].value
    run = resources["mlflow_tracking"].client().get_run(meta["mlflow_run_id"].value)
    assert "val_reward_rl" in run.data.metrics and "val_reward_sft" in run.data.metrics
    assert any(key.startswith("rewards/r_cls") for key in run.data.metrics)
    assert any(key.startswith("adaptive_clip") for key in run.data.metrics)
    checks = {c.check_name for c in result.get_asset_check_evaluations()}
    assert "rl_reward_improved" in checks


def test_indivisible_grpo_batch_is_refused_before_training(training_run):
    from definitions import all_assets

    _, _, resources, lineage = training_run
    with pytest.raises(Exception) as info:  # the message is checked below
        materialize(
            all_assets,
            selection=AssetSelection.assets("rl_checkpoint"),
            partition_key=PARTITION,
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
