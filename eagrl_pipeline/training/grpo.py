"""Stage 2 policy: GRPO from the SFT adapter (or, for the ablation without Stage 1, a fresh adapter
on the base model) with the EAG-RL reward and the adaptive upper clip.

The reward is trl's weighted sum of our three reward functions (``r_cls``, ``r_att``,
``r_format``; ``reward_weights = [λ, 1−λ, w_fmt]``), so trl logs each part. The groups are sampled
with the response tags forced by default (one rule: training samples with the same scaffold as
evaluation). The settings are validated before any model is loaded: a GRPO run that dies after
minutes of generation because its batch does not divide into groups is the failure this module
exists to prevent.
"""

from __future__ import annotations

import hashlib
import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import LogitsProcessorList

from eagrl_pipeline.llm.generation import policy_format
from eagrl_pipeline.llm.guided import ResponseScaffold, ScaffoldConfig
from eagrl_pipeline.progress import training_progress
from eagrl_pipeline.prompts.features import FeatureMatcher
from eagrl_pipeline.rewards import RewardWeights, make_trl_reward_functions
from eagrl_pipeline.training.adaptive_clip import AdaptiveClipConfig, AdaptiveClipGRPOTrainer
from eagrl_pipeline.training.sft import (
    last_checkpoint,
    load_policy_model,
    load_tokenizer,
    run_args,
    run_fingerprint,
)
from eagrl_pipeline.training.shared_prompt import group_prompt_cache

REWARD_NAMES = ("r_cls", "r_att", "r_format")
START_FROM = ("sft", "base")
Row = dict[str, Any]


@dataclass(frozen=True)
class GRPOSettings:
    """Run knobs with CPU-friendly defaults; ``build_grpo_config`` maps them onto ``GRPOConfig``.

    ``num_iterations`` > 1 reuses each generation batch for several updates, which is what
    makes the (adaptive) clip act at all: with one iteration trl's importance ratio is exactly 1.
    ``guided_generation`` samples the groups under ``scaffold`` with ``guided_steps`` steps
    before the final block, as evaluation answers; ``scaffold`` is part of the run fingerprint.
    """

    learning_rate: float = 5e-5
    max_steps: int = 2
    num_generations: int = 4
    per_device_train_batch_size: int = 8  # 2 prompts x 4 completions
    gradient_accumulation_steps: int = 1
    num_iterations: int = 2
    max_completion_length: int = 160
    temperature: float = 1.0
    top_p: float = 1.0
    beta: float = 0.0
    loss_type: str = "dapo"
    rewards: tuple[str, ...] = REWARD_NAMES
    lam: float = 0.6
    reward_beta: float = 0.5
    format_weight: float = 0.1
    adaptive_clip: bool = True
    eps_low: float = 0.2
    eps_high_min: float = 0.2
    eps_high_max: float = 0.4
    # With the adaptive clip off: a fixed upper ε (DAPO's clip-higher); None keeps trl's
    # symmetric clip (ε_high = eps_low).
    eps_high_fixed: float | None = None
    logging_steps: int = 1
    save_steps: int = 1
    gradient_checkpointing: bool = False
    disable_dropout: bool = True
    seed: int = 0
    guided_generation: bool = True
    guided_steps: int = 1
    # Score each group's prompt once for its completions (one process; see shared_prompt.py).
    share_prompts: bool = True
    scaffold: ScaffoldConfig = field(default_factory=ScaffoldConfig)
    # Where the policy starts: the SFT adapter (EAG-RL's two stages), or a fresh LoRA adapter of
    # rank ``lora_r`` on the base model (GRPO without Stage 1, the paper's "w/o SFT" ablation).
    start_from: str = "sft"
    lora_r: int = 8
    lora_alpha: int = 16
    # The calling stage's code version: part of the run fingerprint, so a resumable checkpoint
    # written by other code is never resumed (it would skip training a finished run).
    code_version: str = ""

    def __post_init__(self) -> None:
        # A spec written with asdict() (launch.py, for accelerate launch) brings the scaffold back
        # as a plain dict; rebuild the frozen config so the run and its fingerprint are the same.
        if isinstance(self.scaffold, dict):
            object.__setattr__(self, "scaffold", ScaffoldConfig(**self.scaffold))

    def groups_per_generation(self, num_processes: int = 1) -> int:
        """Prompts (groups) in one generation batch, which trl samples once per optimizer step
        and reuses for ``num_iterations`` steps."""
        effective = self.per_device_train_batch_size * self.gradient_accumulation_steps
        return effective * num_processes // self.num_generations

    def validate(self, num_processes: int = 1) -> None:
        """Fail before training, with the fix, on settings trl would reject late or misuse."""
        unknown = [name for name in self.rewards if name not in REWARD_NAMES]
        if unknown or not self.rewards:
            raise ValueError(
                f"unknown reward name(s) {unknown or '(none given)'}: choose from {REWARD_NAMES}"
            )
        if self.num_generations < 2:
            raise ValueError(
                f"num_generations={self.num_generations}: GRPO compares completions within a "
                "group, so it needs at least 2"
            )
        batch, accum = self.per_device_train_batch_size, self.gradient_accumulation_steps
        effective = batch * accum * num_processes
        if effective % self.num_generations:
            raise ValueError(
                f"the effective batch (per_device_train_batch_size={batch} x "
                f"gradient_accumulation_steps={accum} x processes={num_processes} = {effective}) "
                f"must be divisible by num_generations={self.num_generations}; e.g. set "
                f"per_device_train_batch_size to a multiple of {self.num_generations}"
            )
        if self.start_from not in START_FROM:
            raise ValueError(
                f"start_from={self.start_from!r}: choose from {START_FROM} (the SFT adapter, "
                "or a fresh LoRA adapter on the base model)"
            )
        if self.lora_r < 1 or self.lora_alpha < 1:
            raise ValueError(
                f"lora_r and lora_alpha must be >= 1, got {self.lora_r}, {self.lora_alpha}"
            )
        if self.guided_steps < 0:
            raise ValueError(f"guided_steps must be >= 0, got {self.guided_steps}")
        if self.max_steps < 1 or self.num_iterations < 1 or self.max_completion_length < 1:
            raise ValueError("max_steps, num_iterations and max_completion_length must be >= 1")
        if self.eps_high_fixed is not None:
            if self.adaptive_clip:
                raise ValueError(
                    f"eps_high_fixed={self.eps_high_fixed} fixes the upper clip, but the "
                    "adaptive clip is on and sets it per token: set adaptive_clip to false, or "
                    "drop eps_high_fixed"
                )
            if self.eps_high_fixed < self.eps_low:
                raise ValueError(
                    f"eps_high_fixed={self.eps_high_fixed} is below eps_low={self.eps_low}: "
                    "clip-higher needs ε_high >= ε_low"
                )
        self.clip_config()
        self.reward_weights()

    def reward_weights(self) -> RewardWeights:
        return RewardWeights(lam=self.lam, beta=self.reward_beta, format_weight=self.format_weight)

    def clip_config(self) -> AdaptiveClipConfig:
        return AdaptiveClipConfig(
            enabled=self.adaptive_clip,
            eps_low=self.eps_low,
            eps_high_min=self.eps_high_min,
            eps_high_max=self.eps_high_max,
        )

    def trl_reward_weights(self) -> list[float]:
        by_name = dict(zip(REWARD_NAMES, self.reward_weights().trl_reward_weights(), strict=True))
        return [by_name[name] for name in self.rewards]


def build_grpo_config(
    settings: GRPOSettings,
    output_dir: str | Path,
    *,
    device: str,
    precision: str,
    report_to: Sequence[str] = ("none",),
) -> Any:
    """The one place our settings become trl's ``GRPOConfig``."""
    from trl import GRPOConfig

    return GRPOConfig(
        learning_rate=settings.learning_rate,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        num_generations=settings.num_generations,
        num_iterations=settings.num_iterations,
        max_completion_length=settings.max_completion_length,
        temperature=settings.temperature,
        top_p=settings.top_p,
        beta=settings.beta,
        epsilon=settings.eps_low,
        epsilon_high=None if settings.adaptive_clip else settings.eps_high_fixed,
        loss_type=settings.loss_type,
        reward_weights=settings.trl_reward_weights(),
        # trl's GRPOConfig turns checkpointing on by default (gradient_checkpointing, now
        # transformers' activation_checkpointing); it re-runs every layer's forward
        # in the backward (SmolLM2 on 2 CPU cores: 43 s against 13 s per 8 x 860-token backward).
        activation_checkpointing=settings.gradient_checkpointing,
        # The importance ratio compares the policy with itself a moment earlier: dropout would
        # draw a different mask for each side (and samples the groups from a perturbed policy).
        # On CPU it also cost 42 of a 2-step run's 154 s (the SFT adapter's LoRA dropout).
        disable_dropout=settings.disable_dropout,
        **run_args(
            output_dir, seed=settings.seed, logging_steps=settings.logging_steps,
            save_steps=settings.save_steps, device=device, precision=precision,
            report_to=report_to,
        ),
    )  # fmt: skip


def grpo_row(system: str, user: str, label: int, expert_top_k: Sequence[str]) -> Row:
    """One training prompt with the columns the reward functions read."""
    return {
        "prompt": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        "label": int(label),
        "expert_top_k": list(expert_top_k),
    }


def reward_functions(settings: GRPOSettings, matcher: FeatureMatcher) -> list[Any]:
    by_name = {
        fn.__name__: fn for fn in make_trl_reward_functions(matcher, settings.reward_weights())
    }
    return [by_name[name] for name in settings.rewards]


class GuidedGRPOTrainer(AdaptiveClipGRPOTrainer):
    """Samples the groups with the response tags forced (guided decoding) when given a scaffold.

    Why: one rule, training samples with the same scaffold as evaluation answers, so the policy is
    optimised for the decoding it is judged by. It also keeps groups learnable: a small policy that
    never writes the format gets the minimum reward on every completion, zero advantages and no
    update; with the tags forced while the words stay sampled the groups have reward variance.
    The forced tokens are scored under the policy like the rest, so the update is trl's.
    ``scaffold=None`` samples freely (the paper's setting).
    """

    def __init__(
        self,
        *args: Any,
        scaffold: ScaffoldConfig | None = None,
        guided_steps: int = 1,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.guided_steps = guided_steps
        self.scaffold = (
            ResponseScaffold(self.processing_class, scaffold) if scaffold is not None else None
        )

    def _generate_single_turn(self, *args: Any, **kwargs: Any) -> Any:
        if self.scaffold is None or self.use_vllm:
            return super()._generate_single_turn(*args, **kwargs)
        scaffold, steps, share = self.scaffold, self.guided_steps, self.share_prompts
        model = self.accelerator.unwrap_model(self.model_wrapped)
        generate = model.generate

        def guided(*g_args: Any, **g_kwargs: Any) -> Any:
            ids, mask = g_kwargs["input_ids"], g_kwargs.get("attention_mask")
            # Each row's prompt text, for the feature names its features slot may list.
            texts = [
                scaffold.tokenizer.decode(row[m.bool()] if mask is not None else row,
                                          skip_special_tokens=True)
                for row, m in zip(ids, mask if mask is not None else ids, strict=True)
            ]  # fmt: skip
            plans = [scaffold.plan("answer", steps, False, text) for text in texts]
            g_kwargs["logits_processor"] = LogitsProcessorList([scaffold.processor(plans)])
            if share and mask is not None and "cache" not in g_kwargs:
                cache = group_prompt_cache(model, ids, mask)
                if cache is not None:  # each group's prompt prefilled once, not per completion
                    g_kwargs["cache"] = cache
            return generate(*g_args, **g_kwargs)

        model.generate = guided  # trl calls model.generate(**inputs, generation_config=...)
        try:
            return super()._generate_single_turn(*args, **kwargs)
        finally:
            del model.generate


@dataclass
class GRPOOutcome:
    adapter_dir: Path
    global_step: int
    resumed_from: str | None
    n_prompts: int
    log_history: list[dict[str, float]]
    # Whether each group's prompt was scored once (shared_prompt.py) or per completion (trl's).
    shared_prompts: bool = False

    def metric_series(self, key: str) -> list[float]:
        return [entry[key] for entry in self.log_history if key in entry]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["adapter_dir"] = str(self.adapter_dir)
        return out


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan


def summarize_log_history(
    history: Sequence[dict[str, float]], groups_per_generation: int
) -> dict[str, float]:
    """Learnability and clip figures of a GRPO run from trl's per-step log history.

    A group whose completions all got the same reward has zero advantages and teaches nothing,
    so the count of groups *with* reward spread says how much of the run could move the policy:
    each entry holding ``frac_reward_zero_std`` is one generation batch (trl records it once per
    generation, and ``logging_steps=1`` logs each alone; a larger ``logging_steps`` averages
    several per entry and undercounts), contributing ``(1 - frac) x groups_per_generation``.
    The ε figures summarise the ``adaptive_clip/`` entries (min of the minima, max of the maxima,
    means otherwise); the clip fractions are the means of trl's ``clip_ratio/*``.

    >>> log = [{"frac_reward_zero_std": 0.5, "adaptive_clip/eps_high_mean": 0.3}, {"loss": 0.1}]
    >>> summary = summarize_log_history(log, groups_per_generation=2)
    >>> summary["groups_with_reward_spread"], summary["groups"], summary["eps_high_mean"]
    (1, 2, 0.3)
    """
    if groups_per_generation < 1:
        raise ValueError(f"groups_per_generation must be >= 1, got {groups_per_generation}")

    def series(key: str) -> list[float]:
        return [e[key] for e in history if key in e and not math.isnan(e[key])]

    zero_std = series("frac_reward_zero_std")
    groups = len(zero_std) * groups_per_generation
    with_spread = sum(round((1.0 - frac) * groups_per_generation) for frac in zero_std)
    eps_min, eps_max = series("adaptive_clip/eps_high_min"), series("adaptive_clip/eps_high_max")
    summary: dict[str, float] = {
        "generation_batches": len(zero_std),
        "groups_per_generation": groups_per_generation,
        "groups": groups,
        "groups_with_reward_spread": with_spread,
        "groups_with_reward_spread_fraction": with_spread / groups if groups else math.nan,
        "eps_high_mean": _mean(series("adaptive_clip/eps_high_mean")),
        "eps_high_min": min(eps_min) if eps_min else math.nan,
        "eps_high_max": max(eps_max) if eps_max else math.nan,
    }
    for name in ("eps_high_p10", "eps_high_p50", "eps_high_p90", "span_fraction"):
        summary[name] = _mean(series(f"adaptive_clip/{name}"))
    for name in ("low_mean", "high_mean", "region_mean"):
        summary[f"clip_ratio_{name}"] = _mean(series(f"clip_ratio/{name}"))
    return summary


@dataclass(frozen=True)
class _StartPolicy:
    """The policy GRPO starts from: the SFT adapter, or a fresh adapter on the base model, or a
    fresh adapter on a fully fine-tuned SFT model (merged into it when saved, so the GRPO
    policy folder is a whole model too and every reader loads it the same way)."""

    settings: GRPOSettings
    adapter_dir: Path | None
    digest: str
    on_full_model: bool = False

    def load(self, model_dir: str | Path, precision: str) -> Any:
        from peft import PeftModel, get_peft_model

        from eagrl_pipeline.training.sft import LoraSettings

        # On a bf16 run the merged delta is rounded to bf16 weights, as evaluation's merge of a
        # LoRA adapter into the bf16 base model is.
        base = load_policy_model(self.adapter_dir if self.on_full_model else model_dir, precision)
        if self.adapter_dir is not None and not self.on_full_model:
            return PeftModel.from_pretrained(base, str(self.adapter_dir), is_trainable=True)
        import torch

        torch.manual_seed(self.settings.seed)  # the fresh adapter's initialisation
        lora = LoraSettings(r=self.settings.lora_r, alpha=self.settings.lora_alpha, dropout=0.0)
        return get_peft_model(base, lora.peft_config())


def _start_policy(sft_adapter_dir: str | Path | None, settings: GRPOSettings) -> _StartPolicy:
    if settings.start_from == "base":
        if sft_adapter_dir is not None:
            raise ValueError(
                "start_from='base' trains a fresh adapter on the base model: pass no SFT adapter "
                "(or set start_from='sft' to continue it)"
            )
        return _StartPolicy(settings, None, "base")
    kind = policy_format(sft_adapter_dir)
    if sft_adapter_dir is None or kind is None:
        raise FileNotFoundError(
            f"{sft_adapter_dir} holds no SFT policy (a LoRA adapter's adapter_config.json or a "
            "model's config.json); materialize sft_checkpoint for this partition first, or "
            "start GRPO from the base model (start_from='base')"
        )
    adapter = hashlib.sha256()
    for path in sorted(p for p in Path(sft_adapter_dir).iterdir() if p.is_file()):
        adapter.update(path.read_bytes())
    return _StartPolicy(settings, Path(sft_adapter_dir), adapter.hexdigest(), kind == "full")


def train_grpo(
    model_dir: str | Path,
    sft_adapter_dir: str | Path | None,
    rows: Sequence[Row],
    matcher: FeatureMatcher,
    settings: GRPOSettings,
    output_dir: str | Path,
    *,
    device: str = "cpu",
    precision: str = "fp32",
    num_processes: int = 1,
    report_to: Sequence[str] = ("none",),
    callbacks: Sequence[Any] = (),
) -> GRPOOutcome:
    """Continue the SFT adapter with GRPO (``settings.start_from="base"``: train a fresh LoRA
    adapter on the base model, and ``sft_adapter_dir`` must be None); write ``adapter/`` under
    ``output_dir`` atomically.

    Checkpoints go to ``output_dir/runs/<fingerprint>`` (settings, model, SFT adapter, prompts):
    an interrupted run resumes from the last one; the folder is removed once the adapter is out.
    """
    from datasets import Dataset

    from eagrl_pipeline.paths import atomic_path

    settings.validate(num_processes)
    if not rows:
        raise ValueError("GRPO needs at least one training prompt")
    output_dir = Path(output_dir)
    start = _start_policy(sft_adapter_dir, settings)
    fingerprint = run_fingerprint(asdict(settings), str(model_dir), start.digest, list(rows))
    run_dir = output_dir / "runs" / fingerprint
    resume = last_checkpoint(run_dir)
    tokenizer = load_tokenizer(model_dir)
    model = start.load(model_dir, precision)
    trainer = GuidedGRPOTrainer(
        model=model,
        reward_funcs=reward_functions(settings, matcher),
        args=build_grpo_config(
            settings, run_dir, device=device, precision=precision, report_to=report_to
        ),
        train_dataset=Dataset.from_list(list(rows)),
        processing_class=tokenizer,
        callbacks=[*callbacks, training_progress("GRPO")],
        adaptive_clip=settings.clip_config(),
        scaffold=settings.scaffold if settings.guided_generation else None,
        guided_steps=settings.guided_steps,
        share_prompts=settings.share_prompts,
    )
    trainer.train(resume_from_checkpoint=resume)
    adapter_dir = output_dir / "adapter"
    with atomic_path(adapter_dir) as tmp:
        policy = trainer.model.merge_and_unload() if start.on_full_model else trainer.model
        policy.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    history = [
        {k: float(v) for k, v in entry.items() if isinstance(v, int | float)}
        for entry in trainer.state.log_history
    ]
    shutil.rmtree(run_dir, ignore_errors=True)
    return GRPOOutcome(
        adapter_dir=adapter_dir,
        global_step=int(trainer.state.global_step),
        resumed_from=resume,
        n_prompts=len(rows),
        log_history=history,
        shared_prompts=trainer.share_prompts,
    )
