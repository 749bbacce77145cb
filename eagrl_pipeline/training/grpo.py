"""Stage 2 policy: GRPO from the SFT adapter with the EAG-RL reward and the adaptive upper clip.

The reward is trl's weighted sum of our three reward functions (``r_cls``, ``r_att``,
``r_format``; ``reward_weights = [λ, 1−λ, w_fmt]``), so trl logs each part. The settings are
validated before any model is loaded: a GRPO run that dies after minutes of generation because
its batch does not divide into groups is the failure this module exists to prevent.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transformers import LogitsProcessorList

from eagrl_pipeline.llm.guided import ResponseScaffold, RowPlan
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

REWARD_NAMES = ("r_cls", "r_att", "r_format")
Row = dict[str, Any]


@dataclass(frozen=True)
class GRPOSettings:
    """Run knobs with CPU-friendly defaults; ``build_grpo_config`` maps them onto ``GRPOConfig``.

    ``num_iterations`` > 1 reuses each generation batch for several updates, which is what
    makes the (adaptive) clip act at all: with one iteration trl's importance ratio is exactly 1.
    """

    learning_rate: float = 5e-5
    max_steps: int = 2
    num_generations: int = 4
    per_device_train_batch_size: int = 4
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
    logging_steps: int = 1
    save_steps: int = 1
    seed: int = 0
    guided_generation: bool = False
    guided_steps: int = 1

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
        if self.guided_steps < 0:
            raise ValueError(f"guided_steps must be >= 0, got {self.guided_steps}")
        if self.max_steps < 1 or self.num_iterations < 1 or self.max_completion_length < 1:
            raise ValueError("max_steps, num_iterations and max_completion_length must be >= 1")
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
        loss_type=settings.loss_type,
        reward_weights=settings.trl_reward_weights(),
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
    """Optionally samples the groups with the response tags forced (guided decoding).

    Why: a small policy that never writes the format gets the minimum reward on every
    completion, zero advantages and no update. Forcing the tags while the words stay sampled
    gives the groups reward variance. The forced tokens are scored under the policy like the
    rest, so the update is trl's; off by default (the paper samples freely).
    """

    def __init__(self, *args: Any, guided_steps: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.guided_steps = guided_steps
        guided = guided_steps is not None
        self.scaffold = ResponseScaffold(self.processing_class) if guided else None

    def _generate_single_turn(self, *args: Any, **kwargs: Any) -> Any:
        if self.scaffold is None or self.use_vllm:
            return super()._generate_single_turn(*args, **kwargs)
        scaffold, plan = self.scaffold, RowPlan("answer", self.guided_steps or 0)
        model = self.accelerator.unwrap_model(self.model_wrapped)
        generate = model.generate

        def guided(*g_args: Any, **g_kwargs: Any) -> Any:
            rows = g_kwargs["input_ids"].shape[0]
            g_kwargs["logits_processor"] = LogitsProcessorList([scaffold.processor([plan] * rows)])
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

    def metric_series(self, key: str) -> list[float]:
        return [entry[key] for entry in self.log_history if key in entry]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["adapter_dir"] = str(self.adapter_dir)
        return out


def train_grpo(
    model_dir: str | Path,
    sft_adapter_dir: str | Path,
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
    """Continue the SFT adapter with GRPO; write ``adapter/`` under ``output_dir`` atomically.

    Checkpoints go to ``output_dir/runs/<fingerprint>`` (settings, model, SFT adapter, prompts):
    an interrupted run resumes from the last one; the folder is removed once the adapter is out.
    """
    from datasets import Dataset
    from peft import PeftModel

    from eagrl_pipeline.paths import atomic_path

    settings.validate(num_processes)
    if not rows:
        raise ValueError("GRPO needs at least one training prompt")
    sft_adapter_dir = Path(sft_adapter_dir)
    if not (sft_adapter_dir / "adapter_config.json").exists():
        raise FileNotFoundError(
            f"{sft_adapter_dir} holds no LoRA adapter (adapter_config.json); materialize "
            "sft_checkpoint for this partition first"
        )
    output_dir = Path(output_dir)
    adapter = hashlib.sha256()
    for path in sorted(p for p in sft_adapter_dir.iterdir() if p.is_file()):
        adapter.update(path.read_bytes())
    fingerprint = run_fingerprint(asdict(settings), str(model_dir), adapter.hexdigest(), list(rows))
    run_dir = output_dir / "runs" / fingerprint
    resume = last_checkpoint(run_dir)
    tokenizer = load_tokenizer(model_dir)
    model = PeftModel.from_pretrained(
        load_policy_model(model_dir, precision), str(sft_adapter_dir), is_trainable=True
    )
    trainer = GuidedGRPOTrainer(
        model=model,
        reward_funcs=reward_functions(settings, matcher),
        args=build_grpo_config(
            settings, run_dir, device=device, precision=precision, report_to=report_to
        ),
        train_dataset=Dataset.from_list(list(rows)),
        processing_class=tokenizer,
        callbacks=list(callbacks),
        adaptive_clip=settings.clip_config(),
        guided_steps=settings.guided_steps if settings.guided_generation else None,
    )
    trainer.train(resume_from_checkpoint=resume)
    adapter_dir = output_dir / "adapter"
    with atomic_path(adapter_dir) as tmp:
        trainer.model.save_pretrained(tmp)
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
    )
