"""The learning study's table and its machine-readable last line (benchmarks/learning.py), on a
hand-made study record; the study itself runs on the real TJH file (make study)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from benchmarks.learning import MODELS, _paired_auroc, render, summary_line

LINE = re.compile(
    r"^study: base_auroc=\d\.\d{3} sft_auroc=\d\.\d{3} rl_auroc=\d\.\d{3} "
    r"expert_auroc=\d\.\d{3} rl_minus_base_auroc_lo=-?\d\.\d{3} "
    r"rl_minus_sft_reward_lo=-?\d\.\d{3} minutes=\d+\.\d$"
)


def _study() -> dict:
    def estimate(mean: float) -> dict:
        return {"full": mean, "mean": mean, "std": 0.01, "ci_low": mean - 0.02,
                "ci_high": mean + 0.02, "n_resamples": 1000}  # fmt: skip

    models = {
        name: {
            "n_patients": 200,
            "auroc": estimate(a),
            "auprc": estimate(a - 0.05),
            "parse_rate": 1.0,
            "jaccard": 0.2,
        }
        for name, a in zip(MODELS, (0.5, 0.7, 0.8, 0.99), strict=True)
    }
    parts = {"reward": -1.0, "r_cls": -1.5, "r_att": 0.1, "r_format": 1.0}
    diff = {"observed": 0.3, "ci_low": 0.2, "ci_high": 0.4}
    return {
        "partition": "tjh-mortality",
        "models": models,
        "rl_minus_base_auroc": diff,
        "sft_minus_base_auroc": diff,
        "rl_minus_sft_val_reward": {**diff, "observed": 0.05, "ci_low": -0.01, "patients": 21},
        "val_reward_parts": {"base": parts, "sft": parts, "rl": parts},
        "trajectories_kept": 96,
        "sft_eval_loss": 1.1,
        "sft_base_eval_loss": 1.9,
        "grpo_groups_with_reward_spread": 35,
        "grpo_groups": 40,
        "curves": {"sft_train_loss": [2.0, 1.5], "grpo_train_reward": [-1.2, -1.0]},
        "failed_checks": {"sft_checkpoint": [], "rl_checkpoint": ["rl_reward_improved"]},
        "stage_seconds": {"mcts_trajectories": 300.0, "sft_checkpoint": 420.0},
        "minutes": 12.0,
    }


def test_summary_line_is_machine_readable() -> None:
    line = summary_line(_study())
    assert LINE.match(line), line
    assert "rl_auroc=0.800" in line and "rl_minus_sft_reward_lo=-0.010" in line


def test_table_has_every_model_and_interval() -> None:
    text = render(_study())
    for name in MODELS:
        assert f"| {name} | 200 | " in text
    assert (
        "RL − SFT validation reward (paired bootstrap): +0.050, 95 % interval [-0.010, +0.400]"
        in (text)
    )
    assert "| total | 720.0 (12.0 min) |" in text
    assert (
        "study goes on past a failed gate and reports it): rl_checkpoint: rl_reward_improved"
        in (text)
    )


def test_paired_auroc_from_the_reports_predictions() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 30)
    rows = []
    for model, signal in (("base", 0.0), ("rl", 2.0)):
        probs = 1 / (1 + np.exp(-(signal * (labels - 0.5) + rng.normal(size=60))))
        rows += [
            {"model": model, "level": 0.0, "patient_id": i, "label": int(y), "probability": p}
            for i, (y, p) in enumerate(zip(labels, probs, strict=True))
        ]
    diff = _paired_auroc(pd.DataFrame(rows), "rl", "base")
    assert diff["ci_low"] > 0 and diff["ci_low"] < diff["observed"] < diff["ci_high"]


def test_study_configuration_is_valid_asset_config() -> None:
    """Every section of the study's configuration is accepted, whole, by its asset's config (a
    misspelt or dropped field would otherwise surface an hour into a study, or never)."""
    import pytest
    from pydantic import ValidationError

    from assets.evaluation import LLMEvaluationConfig
    from assets.reasoning import BasePredictionsConfig, PromptsConfig, TrajectoriesConfig
    from assets.training import RLCheckpointConfig, SFTCheckpointConfig
    from benchmarks.learning import STUDY_CONFIG

    classes = {
        "llm_prompts": PromptsConfig,
        "base_llm_predictions": BasePredictionsConfig,
        "mcts_trajectories": TrajectoriesConfig,
        "sft_checkpoint": SFTCheckpointConfig,
        "rl_checkpoint": RLCheckpointConfig,
        "evaluation_report": LLMEvaluationConfig,
    }
    assert set(STUDY_CONFIG) == set(classes)
    for asset, values in STUDY_CONFIG.items():
        # Dagster rejects an unknown field only when it validates the run config, an hour in.
        assert set(values) <= set(classes[asset].model_fields), (asset, sorted(values))
        config = classes[asset](**values)
        dumped = config.model_dump()
        for field, value in values.items():
            got = dumped[field]
            if isinstance(value, dict):  # a nested config (the scaffold): its given fields
                got = {key: got[key] for key in value}
            assert got == value, (asset, field)
        if hasattr(config, "settings"):
            config.settings()
    with pytest.raises(ValidationError):  # a wrong type fails at construction, here
        SFTCheckpointConfig(**{**STUDY_CONFIG["sft_checkpoint"], "num_train_epochs": "two"})
