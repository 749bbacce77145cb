"""Training: the stage-1 SFT adapter on the MCTS trajectories, then the stage-2 GRPO adapter with
the EAG-RL reward and the entropy-aware adaptive clip. Both log to MLflow and are gated."""

import dataclasses
import hashlib
import json
import math
import os
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Literal

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field, model_validator

from assets.gates import require_passing_upstream_checks
from assets.llm_inputs import ScaffoldCaps, expert_top_features, feature_dictionary, sample_patients
from assets.partitions import (
    SHARED_STAGE,
    cell_partitions,
    cohort_partitions,
    split_cell,
    split_partition,
)
from assets.tags import GPU_OP_TAGS
from assets.versioning import versioned
from eagrl_pipeline.evaluation.metrics import paired_bootstrap_difference
from eagrl_pipeline.llm.generation import policy_format
from eagrl_pipeline.llm.guided import ScaffoldConfig
from eagrl_pipeline.paths import atomic_path
from eagrl_pipeline.prompts import FeatureMatcher
from eagrl_pipeline.prompts.features import dictionary_aliases
from eagrl_pipeline.rewards import RewardWeights
from eagrl_pipeline.training.grpo import REWARD_NAMES, GRPOSettings, summarize_log_history
from eagrl_pipeline.training.sft import LoraSettings, SFTSettings
from eagrl_pipeline.variants import Variant, apply_variant, get_variant
from resources import Compute, EagrlHome, LanguageModel, MlflowTracking, Warehouse


class SFTCheckpointConfig(Config):
    learning_rate: float = Field(default=2e-4, description="AdamW learning rate of the adapter.")
    num_train_epochs: float = Field(default=1.0, description="Epochs over the trajectories.")
    max_steps: int = Field(default=-1, description="Stop after N steps (-1: use epochs).")
    per_device_train_batch_size: int = Field(default=2, description="Trajectories per step.")
    gradient_accumulation_steps: int = Field(default=1, description="Steps per update.")
    max_length: int | None = Field(
        default=2048, description="Prompt+completion tokens kept (longer ones are truncated)."
    )
    eval_fraction: float = Field(default=0.25, description="Patients held out for eval loss.")
    save_steps: int = Field(default=20, description="Checkpoint every N steps (resume point).")
    lora_r: int = Field(default=8, description="LoRA rank.")
    lora_alpha: int = Field(default=16, description="LoRA alpha.")
    lora_dropout: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="LoRA dropout (peft's default 0; trl's sft.py uses 0.05). Off by default: on "
        "CPU torch's dropout cost about a quarter of a step (a GRPO run's 42 of 154 s), for "
        "little regularisation over one or two epochs of a few hundred trajectories.",
    )
    merge_adapter: bool = Field(default=False, description="Also save a merged model folder.")
    finetune: Literal["lora", "full"] = Field(
        default="lora",
        description="'lora': a LoRA adapter (lora_r, lora_alpha) on the frozen base model. "
        "'full': every weight trains (fp32 master weights; bf16 autocast on bf16 runs) and the "
        "policy folder holds the whole model; GRPO then trains a fresh adapter on it and merges "
        "it in. A small model learns to rank patients from all its weights far sooner than "
        "from a rank-8 adapter (README, 'How far the answer alone can go').",
    )
    gradient_checkpointing: bool = Field(default=False, description="Trade compute for memory.")
    parse_sample: int = Field(
        default=2, description="Validation prompts generated to report the parseable fraction."
    )
    parse_max_new_tokens: int = Field(default=128, description="Token cap of those answers.")
    answer_loss_weight: float = Field(
        default=20.0,
        gt=0.0,
        description="Weight of the final answer's tokens in the SFT loss (1: trl's plain token "
        "mean, the paper's SFT). A trajectory is ~100 reasoning tokens and one or two answer "
        "digits, and the digits carry the label; chosen on held-out patients (real TJH, "
        "SmolLM2-135M: AUROC 0.40 -> 0.71 on validation, 0.21 -> 0.51 on unkept train "
        "patients, weight 1 -> 20).",
    )
    share_prefix: bool = Field(
        default=True,
        description="Run the tokens every trajectory of a batch starts with (the system "
        "message) once per forward and backward, their KV shared by the batch's rows, instead "
        "of once per row as trl does: the same loss and gradients with fewer tokens. The "
        "weighted loss's path (answer_loss_weight != 1), one process, no checkpointing.",
    )
    seed: int = Field(default=0, description="Seed of the split, the adapter and the sample.")

    def settings(self) -> SFTSettings:
        return SFTSettings(
            learning_rate=self.learning_rate,
            num_train_epochs=self.num_train_epochs,
            max_steps=self.max_steps,
            per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            max_length=self.max_length,
            eval_fraction=self.eval_fraction,
            save_steps=self.save_steps,
            gradient_checkpointing=self.gradient_checkpointing,
            seed=self.seed,
            merge_adapter=self.merge_adapter,
            finetune=self.finetune,
            lora=LoraSettings(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout),
            answer_loss_weight=self.answer_loss_weight,
            share_prefix=self.share_prefix,
        )


class RLCheckpointConfig(Config):
    learning_rate: float = Field(default=5e-5, description="AdamW learning rate of the adapter.")
    max_steps: int = Field(default=2, description="GRPO optimisation steps (CPU default).")
    num_generations: int = Field(default=4, description="Group size: completions per prompt.")
    per_device_train_batch_size: int = Field(
        default=8, description="Completions per device step (CPU default: 2 prompts x 4); the "
        "effective batch must divide into groups of num_generations.",
    )  # fmt: skip
    gradient_accumulation_steps: int = Field(default=1, description="Steps per update.")
    num_iterations: int = Field(
        default=2, description="Updates per generation batch (>1 lets the clip act)."
    )
    max_completion_length: int = Field(default=160, description="Token cap per completion.")
    temperature: float = Field(default=1.0, description="Sampling temperature of the groups.")
    beta: float = Field(default=0.0, description="KL coefficient (0: no reference model).")
    loss_type: str = Field(default="dapo", description="trl loss normalisation.")
    rewards: list[str] = Field(
        default=list(REWARD_NAMES), description=f"Reward parts used, from {list(REWARD_NAMES)}."
    )
    lam: float = Field(default=0.6, description="λ: weight of R_cls against R_att.")
    reward_beta: float = Field(default=0.5, description="β: margin bonus of R_cls.")
    format_weight: float = Field(default=0.1, description="Weight of the format term.")
    adaptive_clip: bool = Field(default=True, description="Entropy-aware adaptive upper clip.")
    eps_low: float = Field(default=0.2, description="Lower clip ε (fixed).")
    eps_high_min: float = Field(default=0.2, description="Adaptive ε_high lower bound.")
    eps_high_max: float = Field(default=0.4, description="Adaptive ε_high upper bound.")
    eps_high_fixed: float | None = Field(
        default=None,
        description="adaptive_clip false: a fixed upper clip ε_high (DAPO's clip-higher: 0.28); "
        "empty: trl's symmetric clip (ε_high = eps_low).",
    )
    max_train_prompts: int | None = Field(
        default=4, description="Train prompts (a label-stratified sample; empty: all)."
    )
    val_prompts: int | None = Field(
        default=24,
        ge=1,
        description="Validation patients the gate compares the SFT and RL policies on: a seeded, "
        "label-stratified sample of this size (empty: every validation patient). 24 on CPU "
        "(16 left the 2-step smoke gate's interval too wide: [-0.075, +0.016] on "
        "mimic_iv-readmission); "
        "all 209 synthetic MIMIC-IV validation patients made the gate 10 of a 12-minute step.",
    )
    val_max_new_tokens: int = Field(default=160, description="Token cap of the gate's answers.")
    val_batch_size: int = Field(
        default=24,
        ge=1,
        description="Prompts per generate call of the gate's answers (CPU default: the whole "
        "sample in one call, which costs little more than a call of 8).",
    )
    min_reward_gain: float = Field(
        default=0.01,
        description="Gate: the lower bound of the 95 % paired bootstrap interval of the RL minus "
        "SFT per-patient validation reward must exceed this, i.e. RL must be credibly better "
        "than SFT, not just equal within noise. Set it below 0 to accept a policy that is not "
        "credibly worse (e.g. a two-step CPU smoke run).",
    )
    gate_resamples: int = Field(
        default=1000, ge=0, description="Paired bootstrap resamples of the reward gate."
    )
    guided_generation: bool = Field(
        default=True,
        description="Sample the groups with the response tags forced (words stay sampled), under "
        "the same scaffold the gate and evaluation answer with: one rule for training and "
        "judging. Off samples freely (the paper's setting).",
    )
    guided_steps: int = Field(
        default=1, ge=0, description="Guided: sub-question steps before the final block."
    )
    scaffold: ScaffoldCaps = Field(
        default_factory=ScaffoldCaps,
        description="Guided: per-tag token caps, for the groups and the gate's answers alike.",
    )
    share_prompts: bool = Field(
        default=True,
        description="Score each group's prompt once for all its completions (its KV shared, "
        "gradients summed through it) instead of once per completion as trl does: the same "
        "log-probs with a fraction of the prompt tokens. One process and no gradient "
        "checkpointing only (trl's path under accelerate launch or with checkpointing).",
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description="Trade compute for memory (trl's GRPO default is on; off here: it re-runs "
        "each layer's forward in the backward, 3x the backward's time on CPU).",
    )
    disable_dropout: bool = Field(
        default=True,
        description="Turn the adapter's LoRA dropout off for GRPO (trl's disable_dropout): the "
        "importance ratio compares the policy with itself, and dropout draws a new mask for "
        "each side.",
    )
    start_from: Literal["sft", "base"] = Field(
        default="sft",
        description="The policy GRPO starts from: 'sft' continues the SFT adapter (EAG-RL's two "
        "stages); 'base' trains a fresh LoRA adapter (lora_r, lora_alpha) on the base model, "
        "GRPO without Stage 1, and the gate then compares RL with the base model.",
    )
    lora_r: int = Field(default=8, ge=1, description="start_from=base: rank of the new adapter.")
    lora_alpha: int = Field(default=16, ge=1, description="start_from=base: its LoRA alpha.")
    seed: int = Field(default=0, description="Seed of the sample, sampling and the adapter.")

    def settings(self) -> GRPOSettings:
        return GRPOSettings(
            learning_rate=self.learning_rate,
            max_steps=self.max_steps,
            num_generations=self.num_generations,
            per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            num_iterations=self.num_iterations,
            max_completion_length=self.max_completion_length,
            temperature=self.temperature,
            beta=self.beta,
            loss_type=self.loss_type,
            rewards=tuple(self.rewards),
            lam=self.lam,
            reward_beta=self.reward_beta,
            format_weight=self.format_weight,
            adaptive_clip=self.adaptive_clip,
            eps_low=self.eps_low,
            eps_high_min=self.eps_high_min,
            eps_high_max=self.eps_high_max,
            eps_high_fixed=self.eps_high_fixed,
            seed=self.seed,
            guided_generation=self.guided_generation,
            share_prompts=self.share_prompts,
            disable_dropout=self.disable_dropout,
            gradient_checkpointing=self.gradient_checkpointing,
            guided_steps=self.guided_steps,
            scaffold=self.scaffold.scaffold(),
            start_from=self.start_from,
            lora_r=self.lora_r,
            lora_alpha=self.lora_alpha,
        )

    @model_validator(mode="after")
    def _valid_for_one_process(self) -> "RLCheckpointConfig":
        """Bad settings fail when the run is configured, not after minutes of generation."""
        self.settings().validate()
        return self


def _code_version(context: AssetExecutionContext) -> str:
    return context.assets_def.code_versions_by_key.get(context.asset_key) or ""


def _matcher(warehouse: Warehouse, dataset: str) -> tuple[list[str], dict[str, str]]:
    dictionary = feature_dictionary(warehouse, dataset)
    return dictionary["feature_name"].tolist(), dictionary_aliases(dictionary, dataset)


def policy_answers(
    home: EagrlHome,
    llm: LanguageModel,
    device: str,
    adapter_dir: Path | None,
    prompts: pd.DataFrame,
    matcher: FeatureMatcher,
    expert_top: dict[int, list[str]],
    weights: RewardWeights,
    max_new_tokens: int,
    seed: int,
    *,
    scaffold: ScaffoldConfig | None = None,
    guided_steps: int = 1,
    batch_size: int = 8,
) -> pd.DataFrame:
    """Greedy answers of a policy (base + optional adapter), parsed and scored by the
    evaluation's inference helper. With ``scaffold`` the tags are forced as evaluation forces
    them (the rule the RL gate judges by); without, unguided: what the policy writes on its own
    (the SFT parse check)."""
    import gc

    from eagrl_pipeline.evaluation.predictions import (
        GenerationSettings,
        PromptSet,
        llm_predictions,
    )

    generation = GenerationSettings(
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        guided=scaffold is not None,
        guided_steps=guided_steps,
        scaffold=scaffold if scaffold is not None else ScaffoldConfig(),
    )
    model, tokenizer = llm.load(home.root, device, adapter_dir)
    answers = llm_predictions(
        "policy", model, tokenizer, {"val": PromptSet.from_frame(prompts)}, matcher, expert_top,
        generation, weights,
    )  # fmt: skip
    del model
    gc.collect()
    return answers["val"].records


REWARD_COLUMNS = ("reward", *REWARD_NAMES)


def reward_gate(
    start: pd.DataFrame,
    rl: pd.DataFrame,
    min_gain: float,
    *,
    start_name: str = "sft",
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, float | int | bool | str]:
    """The RL gate: passes when the lower bound of the 95 % paired bootstrap interval of the
    per-patient validation reward RL − start (the SFT policy, or ``start_name`` "base" for GRPO
    from the base model) exceeds ``min_gain``; with the mean reward parts of both policies
    (``val_<part>_<start_name>``, ``val_<part>_rl``). Patients are paired by ``patient_id``."""
    columns = ["patient_id", *REWARD_COLUMNS]
    paired = start[columns].merge(
        rl[columns], on="patient_id", suffixes=(f"_{start_name}", "_rl"), validate="one_to_one"
    )
    if paired.empty or len(paired) != len(start) or len(paired) != len(rl):
        raise ValueError(
            f"the reward gate needs the same validation patients for both policies, got "
            f"{len(start)} {start_name}, {len(rl)} RL and {len(paired)} shared"
        )
    gain = paired_bootstrap_difference(
        paired["reward_rl"], paired[f"reward_{start_name}"], n_resamples=n_resamples, seed=seed
    )
    out: dict[str, float | int | bool | str] = {
        "passed": bool(gain.ci_low > min_gain),
        "gate_reference": start_name,
        "min_reward_gain": min_gain,
        "val_patients": len(paired),
        "val_reward_gain": gain.observed,
        "val_reward_gain_lo": gain.ci_low,
        "val_reward_gain_hi": gain.ci_high,
        "val_reward_gain_confidence": gain.confidence,
        "val_reward_gain_resamples": gain.n_resamples,
    }
    for policy in (start_name, "rl"):
        for column in REWARD_COLUMNS:
            out[f"val_{column}_{policy}"] = float(paired[f"{column}_{policy}"].mean())
    return out


def _publish(staged_adapter: Path, out_dir: Path, manifest: dict) -> Path:
    """Replace the partition's adapter (and merged model, when one was saved) and manifest only
    now, after training *and* validation succeeded: they trained into a staging folder, so a
    crash in between leaves the previous adapter with its own manifest (swapped back to back,
    adapter first; the manifest names the adapter's digest). A merged folder left by an earlier
    run that did not merge is removed: it would not match the new adapter."""
    staged = staged_adapter.parent
    final = out_dir / "adapter"
    digest = hashlib.sha256()
    for path in sorted(p for p in staged_adapter.rglob("*") if p.is_file()):
        digest.update(path.relative_to(staged_adapter).as_posix().encode())
        digest.update(path.read_bytes())
    merged = out_dir / "merged" if (staged / "merged").is_dir() else None
    manifest = {
        **manifest,
        "adapter_dir": str(final),
        "adapter_sha256": digest.hexdigest(),
        "merged_dir": str(merged) if merged else None,
    }
    with atomic_path(final) as tmp:
        os.replace(staged_adapter, tmp)
    if merged:
        with atomic_path(merged) as tmp:
            os.replace(staged / "merged", tmp)
    with atomic_path(out_dir / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))
    if not merged:
        shutil.rmtree(out_dir / "merged", ignore_errors=True)
    shutil.rmtree(staged, ignore_errors=True)
    return final


def _train(
    context: AssetExecutionContext,
    kind: str,
    spec: dict,
    compute: Compute,
    work_dir: Path,
) -> dict:
    """In process on one device; under ``accelerate launch`` with compute.num_processes > 1."""
    from eagrl_pipeline.training.launch import launch, run_spec

    if compute.num_processes > 1:
        import os

        import mlflow

        env = dict(os.environ)
        active = mlflow.active_run()
        if active is not None:  # the children's MLflow callback logs into this run
            env["MLFLOW_RUN_ID"] = active.info.run_id
            env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
        return launch(kind, spec, work_dir, compute.num_processes, log=context.log.info, env=env)
    return run_spec(kind, spec)


@asset(
    partitions_def=cohort_partitions,
    group_name="training",
    kinds={"pytorch", "huggingface"},
    deps=["mcts_trajectories", "llm_prompts", "base_language_model"],
    pool="gpu",
    op_tags=GPU_OP_TAGS,
    check_specs=[
        AssetCheckSpec(
            "sft_eval_loss_improved",
            asset="sft_checkpoint",
            blocking=True,
            description="Held-out eval loss of the adapter below the base model's on the same "
            "trajectories.",
        )
    ],
)
def sft_checkpoint(
    context: AssetExecutionContext,
    config: SFTCheckpointConfig,
    home: EagrlHome,
    llm: LanguageModel,
    compute: Compute,
    warehouse: Warehouse,
    mlflow_tracking: MlflowTracking,
):
    """Stage 1: a LoRA adapter (or, with ``finetune: full``, the whole model) distilled from the
    MCTS trajectories (trl SFTTrainer, loss on the completion only), with the base model's eval
    loss on the same held-out patients."""
    require_passing_upstream_checks(context)
    import mlflow

    from eagrl_pipeline.training.launch import sft_spec
    from eagrl_pipeline.training.sft import read_trajectories, split_by_patient

    partition = context.partition_key
    dataset, _ = split_partition(partition)
    records = read_trajectories(
        home.artifact_dir("mcts_trajectories", partition) / "trajectories.jsonl"
    )
    settings = dataclasses.replace(config.settings(), code_version=_code_version(context))
    train, held_out = split_by_patient(records, settings.eval_fraction, settings.seed)
    device = compute.configure_torch(llm=True)
    precision = compute.resolved_precision()
    out_dir = home.artifact_dir("sft_checkpoint", partition)
    model_dir = llm.model_dir(home.root)
    with mlflow_tracking.run(context, experiment=f"sft/{partition}", run_name=partition) as run:
        mlflow.log_params(
            {
                "device": device,
                "precision": precision,
                "n_train": len(train),
                "finetune": settings.finetune,
            }
        )
        spec = sft_spec(
            model_dir, train, held_out, settings, out_dir / "staged",
            device=device, precision=precision, report_to=["mlflow"],
        )  # fmt: skip
        outcome = _train(context, "sft", spec, compute, out_dir / "launch")
        names, aliases = _matcher(warehouse, dataset)
        prompts = pd.read_parquet(home.artifact_dir("llm_prompts", partition) / "prompts.parquet")
        val = prompts[prompts["split"] == "val"]
        sample = sample_patients(val, config.parse_sample, config.seed)
        answers = policy_answers(
            home, llm, device, Path(outcome["adapter_dir"]), sample,
            FeatureMatcher.build(names, aliases), expert_top_features(home, partition),
            RewardWeights(), config.parse_max_new_tokens, config.seed,
        )  # fmt: skip
        parse_fraction = float(answers["valid"].mean()) if len(answers) else float("nan")
        mlflow.log_metrics(
            {
                "final_eval_loss": outcome["eval_loss"],
                "base_eval_loss": outcome["base_eval_loss"],
                "val_parse_fraction": parse_fraction,
            }
        )
        mlflow.log_artifacts(outcome["adapter_dir"], artifact_path="adapter")
        run_id = run.info.run_id
    manifest = {
        **outcome,
        "mlflow_run_id": run_id,
        "val_parse_fraction": parse_fraction,
        "finetune": settings.finetune,
    }
    history = manifest.pop("log_history")
    manifest["train_loss_per_step"] = [e["loss"] for e in history if "loss" in e]
    adapter = _publish(Path(outcome["adapter_dir"]), out_dir, manifest)
    yield versioned(
        context,
        MaterializeResult(
            metadata={
                "adapter": MetadataValue.path(str(adapter)),
                "mlflow_run_id": run_id,
                "trajectories_train": outcome["n_train"],
                "trajectories_eval": outcome["n_eval"],
                "eval_loss": outcome["eval_loss"],
                "base_eval_loss": outcome["base_eval_loss"],
                "train_loss": outcome["train_loss"],
                "steps": outcome["global_step"],
                "resumed_from": outcome["resumed_from"] or "",
                "val_parse_fraction": parse_fraction,
                "finetune": settings.finetune,
                "shared_prefix": bool(outcome["shared_prefix"]),
                "device": device,
                "precision": precision,
            }
        ),
        config,
    )
    yield AssetCheckResult(
        check_name="sft_eval_loss_improved",
        passed=bool(outcome["eval_loss"] < outcome["base_eval_loss"]),
        severity=AssetCheckSeverity.ERROR,
        metadata={"eval_loss": outcome["eval_loss"], "base_eval_loss": outcome["base_eval_loss"]},
    )


@asset(
    partitions_def=cell_partitions,
    group_name="training",
    kinds={"pytorch", "huggingface"},
    deps=[
        AssetDep(name, partition_mapping=SHARED_STAGE)
        for name in ("sft_checkpoint", "llm_prompts", "expert_feature_ranking")
    ],
    pool="gpu",
    op_tags=GPU_OP_TAGS,
    check_specs=[
        AssetCheckSpec(
            "rl_reward_improved",
            asset="rl_checkpoint",
            blocking=True,
            description="RL policy credibly better than the policy it started from (SFT; the "
            "base model for a variant without Stage 1) on held-out validation patients: the "
            "lower bound of the 95 % paired bootstrap interval of the per-patient reward RL − "
            "start exceeds min_reward_gain; both answer greedily under evaluation's scaffold. "
            "A variant that trains no GRPO (a prompting baseline, sft_only) has nothing to gate: "
            "its result passes and says so.",
        )
    ],
)
def rl_checkpoint(
    context: AssetExecutionContext,
    config: RLCheckpointConfig,
    home: EagrlHome,
    llm: LanguageModel,
    compute: Compute,
    warehouse: Warehouse,
    mlflow_tracking: MlflowTracking,
):
    """A grid cell's policy (dataset-task x method variant, eagrl_pipeline/variants.py). For a
    GRPO variant, Stage 2: GRPO from the SFT adapter (or a fresh adapter on the base model) on
    train prompts, reward λ·R_cls + (1−λ)·R_att plus the format term, with the entropy-aware
    adaptive upper clip (or the variant's fixed clip); groups sampled under the evaluation's
    scaffold; the variant's fixed settings override the run config. trl logs every step to
    MLflow (reward parts, frac_reward_zero_std, clip_ratio/*, adaptive_clip/*); the manifest adds
    how many groups had reward spread, the ε and clip summary and the gate's paired comparison
    with the starting policy. For a variant without GRPO, a manifest naming its policy (the base
    model and prompting style, or the SFT adapter), so every cell's evaluation reads one place."""
    dataset_task, variant_name = split_cell(context.partition_key)
    variant = get_variant(variant_name)
    out_dir = home.artifact_dir("rl_checkpoint", context.partition_key)
    cell_config = rl_config_for_variant(config, variant, given_config(context))
    if cell_config is None:
        yield from _policy_pointer(context, home, variant, dataset_task, out_dir)
        return
    config = cell_config
    from_base = config.start_from == "base"
    require_passing_upstream_checks(context, ignore={"sft_checkpoint"} if from_base else ())
    import mlflow

    from eagrl_pipeline.training.grpo import grpo_row
    from eagrl_pipeline.training.launch import grpo_spec

    settings = dataclasses.replace(config.settings(), code_version=_code_version(context))
    settings.validate(compute.num_processes)
    dataset, _ = split_partition(dataset_task)
    sft_adapter = (
        None if from_base else home.artifact_path("sft_checkpoint", dataset_task) / "adapter"
    )
    prompts = pd.read_parquet(home.artifact_path("llm_prompts", dataset_task) / "prompts.parquet")
    train = sample_patients(
        prompts[prompts["split"] == "train"], config.max_train_prompts, config.seed
    )
    expert_top = expert_top_features(home, dataset_task)
    rows = [
        grpo_row(r.system, r.user, r.label, expert_top.get(r.patient_id, []))
        for r in train.itertuples()
    ]
    names, aliases = _matcher(warehouse, dataset)
    device = compute.configure_torch(llm=True)
    precision = compute.resolved_precision()
    model_dir = llm.model_dir(home.root)
    with mlflow_tracking.run(
        context,
        experiment=f"grpo/{dataset_task}",
        run_name=str(context.partition_key),
        tags=variant.mlflow_tags(),
    ) as run:
        mlflow.log_params({"device": device, "precision": precision, "n_prompts": len(rows)})
        spec = grpo_spec(
            model_dir, sft_adapter, rows, names, aliases, settings, out_dir / "staged",
            device=device, precision=precision, num_processes=compute.num_processes,
            report_to=["mlflow"],
        )  # fmt: skip
        outcome = _train(context, "grpo", spec, compute, out_dir / "launch")
        matcher = FeatureMatcher.build(names, aliases)
        val = sample_patients(prompts[prompts["split"] == "val"], config.val_prompts, config.seed)
        weights = settings.reward_weights()
        scored = {}
        start_name = config.start_from  # the gate compares RL with the policy it started from
        for name, adapter in ((start_name, sft_adapter), ("rl", Path(outcome["adapter_dir"]))):
            scored[name] = policy_answers(
                home, llm, device, adapter, val, matcher, expert_top, weights,
                config.val_max_new_tokens, config.seed,
                scaffold=settings.scaffold, guided_steps=settings.guided_steps,
                batch_size=config.val_batch_size,
            )  # fmt: skip
        gate = reward_gate(
            scored[start_name], scored["rl"], config.min_reward_gain, start_name=start_name,
            n_resamples=config.gate_resamples, seed=config.seed,
        )  # fmt: skip
        history = outcome.pop("log_history")
        summary = summarize_log_history(
            history, settings.groups_per_generation(compute.num_processes)
        )
        logged = {
            k: float(v)
            for k, v in {**gate, **summary}.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        mlflow.log_metrics({k: v for k, v in logged.items() if math.isfinite(v)})
        mlflow.log_artifacts(outcome["adapter_dir"], artifact_path="adapter")
        run_id = run.info.run_id
    rewards = [e["reward"] for e in history if "reward" in e]
    gate_figures = {k: v for k, v in gate.items() if k != "passed"}
    manifest = {
        **outcome,
        **variant_manifest(variant),
        "mlflow_run_id": run_id,
        **gate_figures,
        "val_reward_gate_passed": gate["passed"],
        **summary,
        "start_from": config.start_from,
        "train_reward_per_step": rewards,
    }
    adapter = _publish(Path(outcome["adapter_dir"]), out_dir, manifest)
    yield versioned(
        context,
        MaterializeResult(
            metadata={
                "adapter": MetadataValue.path(str(adapter)),
                "policy": "grpo",
                "variant": variant.name,
                "variant_hash": variant.settings_hash(),
                "mlflow_run_id": run_id,
                "prompts": len(rows),
                "steps": outcome["global_step"],
                "resumed_from": outcome["resumed_from"] or "",
                "train_reward_first": rewards[0] if rewards else math.nan,
                "train_reward_last": rewards[-1] if rewards else math.nan,
                **summary,
                **gate_figures,
                "val_parse_fraction_rl": float(scored["rl"]["valid"].mean()),
                "start_from": config.start_from,
                "device": device,
                "precision": precision,
            }
        ),
        config,
        variant=variant.settings(),
    )
    yield AssetCheckResult(
        check_name="rl_reward_improved",
        passed=bool(gate["passed"]),
        severity=AssetCheckSeverity.ERROR,
        metadata=gate_figures,
    )


def rl_config_for_variant(
    config: RLCheckpointConfig, variant: Variant, explicit: Collection[str]
) -> RLCheckpointConfig | None:
    """The settings a cell trains with: the run config with the variant's fixed settings applied
    (None for a variant that trains no GRPO); ``explicit``: the settings the run config gave
    (a clash with the variant is refused). The planner fingerprints cells with it too."""
    if not variant.trains_grpo:
        return None
    return RLCheckpointConfig(**apply_variant(variant, config.model_dump(), set(explicit)))


def given_config(context: AssetExecutionContext) -> set[str]:
    """The config keys the run's own config sets for this asset (Dagster's resolved config
    fills the defaults, and even marks some of them as set)."""
    ops = (context.run.run_config or {}).get("ops") or {}
    return set((ops.get(context.op_execution_context.op.name) or {}).get("config") or {})


def variant_manifest(variant: Variant) -> dict[str, object]:
    return {
        "variant": variant.name,
        "variant_hash": variant.settings_hash(),
        "variant_settings": variant.settings(),
        "policy": variant.policy,
        "prompting": variant.prompting,
    }


def _policy_pointer(
    context: AssetExecutionContext,
    home: EagrlHome,
    variant: Variant,
    dataset_task: str,
    out_dir: Path,
):
    """A cell without GRPO: its manifest names the policy the cell evaluates (the base model in
    the variant's prompting style, or the dataset-task's SFT adapter); nothing is trained."""
    adapter = None
    if variant.policy == "sft":
        require_passing_upstream_checks(context)
        adapter = home.artifact_path("sft_checkpoint", dataset_task) / "adapter"
        if policy_format(adapter) is None:
            raise FileNotFoundError(
                f"no SFT policy at {adapter}: materialize sft_checkpoint[{dataset_task}] before "
                f"the {variant.name} cell"
            )
    manifest = {**variant_manifest(variant), "adapter_dir": str(adapter) if adapter else None}
    shutil.rmtree(out_dir / "adapter", ignore_errors=True)
    with atomic_path(out_dir / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))
    yield versioned(
        context,
        MaterializeResult(
            metadata={
                "policy": variant.policy,
                "prompting": variant.prompting,
                "variant": variant.name,
                "variant_hash": variant.settings_hash(),
                "adapter": MetadataValue.path(str(adapter)) if adapter else "none (base model)",
                "trained": False,
            }
        ),
        variant=variant.settings(),
    )
    yield AssetCheckResult(
        check_name="rl_reward_improved",
        passed=True,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "applies": f"no: variant {variant.name} trains no GRPO ({variant.policy} policy)"
        },
    )
