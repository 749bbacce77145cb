"""Benchmark: SFT and GRPO seconds per step and peak memory on the default model, and the
overhead of the EAG-RL reward functions and of the adaptive clip relative to plain GRPO.

Prompts are serialized synthetic TJH-like patients (``serialize_patient`` with the token budget
counted by the model's tokenizer), SFT targets and tagged completions follow the response
format. SFT is ``train_sft`` itself; GRPO runs three variants with identical settings and seeds,
built like ``train_grpo`` (policy = base + the SFT adapter, ``build_grpo_config``,
``AdaptiveClipGRPOTrainer``):

1. plain: adaptive clip off, one trivial reward (character-count parity: nearly free, and it
   varies within a group, so advantages are non-zero and the update runs as usual);
2. + rewards: ``reward_functions(settings, matcher)`` (r_cls, r_att, r_format), clip off;
3. + clip: the same rewards with the adaptive clip on.

``num_iterations`` is 2: with 1, trl's importance ratio is exactly 1 and no clip acts. A step is
timed from ``on_step_begin`` to ``on_step_end`` (model loading, checkpoints and logging are
outside). SFT reports the median step after the first; GRPO generates on every second step, so
it reports the mean over whole generation cycles after the first one (over every step when fewer
than two cycles ran, which the report says). Time inside generation, the reward functions and
``_compute_loss`` is summed per step, so each overhead is attributable instead of being read off
end-to-end step times, which carry the noise of a busy machine and of generation lengths that
drift apart once the variants' updates differ. A briefly trained policy rarely emits the tags,
so the reward functions and the clip's span work are also timed on a batch of tagged
completions: their cost once the policy follows the format.

Peak memory is the process's resident set, polled, per phase (``+MB``: growth over the footprint
at the phase's start; freed heap is returned to the OS between phases) and, on CUDA,
``max_memory_allocated``. On a loaded machine use ``--threads 1``: two OpenMP threads on two busy
cores spend most of their time waiting for each other. Everything is written under a temporary
folder; the default model is converted once under ``--models-dir``. The figures are appended to
``benchmarks/results/training.json`` (not with ``--no-record``).

    .venv/bin/python -m benchmarks.training [--model default|tiny] [--sft-steps 6] [--grpo-steps 4]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import io
import json
import os
import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import PrinterCallback, TrainerCallback
from trl import GRPOTrainer

from benchmarks.experts import PeakRss
from benchmarks.results import record
from eagrl_pipeline.prompts import (
    FeatureMatcher,
    FeatureSpec,
    PromptConfig,
    SerializedPrompt,
    completion_text,
    serialize_patient,
)
from eagrl_pipeline.training.adaptive_clip import (
    AdaptiveClipConfig,
    AdaptiveClipGRPOTrainer,
    entropy_to_epsilon,
    important_feature_token_mask,
    span_mean_entropy,
)
from eagrl_pipeline.training.grpo import (
    GRPOSettings,
    build_grpo_config,
    grpo_row,
    reward_functions,
)
from eagrl_pipeline.training.sft import (
    SFTSettings,
    load_policy_model,
    load_tokenizer,
    split_by_patient,
    train_sft,
)

TARGET = 0.10
NUM_ITERATIONS = 2
SPAN_OPEN = AdaptiveClipConfig().span_open
DEFAULT_MODELS_DIR = Path.home() / ".cache" / "eagrl-bench" / "models"
Record = dict[str, Any]
# (name, unit, reference range, plausible low, plausible high): TJH-like laboratory features.
FEATURES = (
    ("Lactate dehydrogenase", "U/L", "120-250", 100, 900),
    ("High sensitivity C-reactive protein", "mg/L", "0-1", 0.1, 200),
    ("Lymphocytes (%)", "%", "20-50", 2, 45),
    ("Lymphocyte count", "10^9/L", "1.1-3.2", 0.2, 3),
    ("Neutrophils (%)", "%", "40-75", 40, 95),
    ("Hemoglobin", "g/L", "130-175 (male), 115-150 (female)", 80, 170),
    ("Albumin", "g/L", "40-55", 22, 48),
    ("D-D dimer", "ug/mL FEU", "0-0.5", 0.1, 21),
    ("Platelet count", "10^9/L", "125-350", 40, 420),
    ("White blood cell count", "10^9/L", "3.5-9.5", 2, 25),
    ("Creatinine", "umol/L", "57-111", 40, 400),
    ("Urea", "mmol/L", "3.1-8.0", 2, 40),
    ("Sodium", "mmol/L", "137-147", 128, 155),
    ("Potassium", "mmol/L", "3.5-5.3", 3, 6),
    ("Serum chloride", "mmol/L", "99-110", 92, 115),
    ("Glucose", "mmol/L", "3.9-6.1", 4, 20),
    ("Total bilirubin", "umol/L", "0-21", 4, 60),
    ("Alanine aminotransferase", "U/L", "9-50", 8, 200),
    ("Aspartate aminotransferase", "U/L", "15-40", 12, 250),
    ("Prothrombin time", "s", "11.5-14.5", 11, 25),
    ("International normalized ratio", None, "0.8-1.2", 0.8, 3),
    ("Fibrinogen", "g/L", "2-4", 1, 8),
    ("Procalcitonin", "ng/mL", "0-0.05", 0.02, 5),
    ("Ferritin", "ug/L", "30-400", 50, 3000),
    ("Interleukin 6", "pg/mL", "0-7", 1, 300),
    ("Tumor necrosis factor α", "pg/mL", "0-8.1", 3, 40),
    ("Hypersensitive cardiac troponin I", "pg/mL", "0-26.2", 1, 2000),
    ("NT-proBNP", "pg/mL", "0-125", 20, 9000),
    ("Eosinophils (%)", "%", "0.4-8", 0, 5),
    ("Monocytes (%)", "%", "3-10", 1, 12),
    ("Red blood cell count", "10^12/L", "4.3-5.8", 2.5, 6),
    ("Hematocrit", "%", "40-50", 25, 52),
    ("Calcium", "mmol/L", "2.11-2.52", 1.8, 2.6),
    ("Total protein", "g/L", "65-85", 50, 80),
    ("Globulin", "g/L", "20-40", 20, 45),
    ("Erythrocyte sedimentation rate", "mm/h", "0-15", 2, 120),
    ("Gamma-glutamyl transpeptidase", "U/L", "10-60", 10, 300),
    ("Alkaline phosphatase", "U/L", "45-125", 30, 250),
    ("Heart rate", "bpm", "60-100", 55, 130),
    ("Oxygen saturation", "%", "95-100", 80, 100),
)
SPECS = tuple(
    FeatureSpec(f"f{j:02d}", name, unit, ref) for j, (name, unit, ref, *_) in enumerate(FEATURES)
)


def patient_visits(rng: np.random.Generator, patient_id: str, n_visits: int) -> pd.DataFrame:
    """One synthetic patient as rows of a cohort's ``visits.parquet`` (a quarter not measured)."""
    lows = np.array([f[3] for f in FEATURES], dtype=float)
    highs = np.array([f[4] for f in FEATURES], dtype=float)
    values = rng.uniform(lows, highs, size=(n_visits, len(FEATURES)))
    values[rng.random(values.shape) < 0.25] = np.nan
    frame = pd.DataFrame(values, columns=[s.feature_id for s in SPECS])
    frame.insert(0, "patient_id", patient_id)
    frame.insert(1, "visit_index", range(n_visits))
    frame.insert(2, "visit_date", pd.date_range("2020-02-01", periods=n_visits, freq="D"))
    frame.insert(3, "sex", float(rng.integers(0, 2)))
    frame.insert(4, "age", float(rng.integers(25, 90)))
    return frame


def tagged_completion(
    rng: np.random.Generator,
    shown: Sequence[str],
    label: int,
    max_tokens: int,
    count: Callable[[str], int],
) -> tuple[str, list[str]]:
    """A response in the EAG-RL format of about ``max_tokens`` tokens, and its important features.

    Sub-question steps (at least one) are added while the whole response fits, so the
    important-feature span lies inside the completion budget, as in a response that ends on its
    own.
    """
    names = rng.permutation(list(shown)).tolist()
    important = names[:3]
    probability = float(np.clip(rng.normal(0.75 if label else 0.25, 0.1), 0.01, 0.99))
    tail = (
        "<Final subquestion> Taking these findings together, how likely is in-hospital death? "
        "</Final subquestion>\n"
        f"<Important Features> {', '.join(important)} </Important Features>\n"
        f"<Final answer> {probability:.2f} </Final answer>"
    )
    steps: list[str] = []
    for name in names:
        state = rng.choice(["above", "below", "within"])
        trend = rng.choice(["rising", "falling", "stable"])
        step = (
            f"<Subquestion> How does {name} change across the visits? </Subquestion> "
            f"<Answer> It is {state} its reference range and {trend}. </Answer>\n"
        )
        if steps and count("".join([*steps, step]) + tail) > max_tokens:
            break
        steps.append(step)
    return "".join(steps) + tail, important


def fit_prompt(visits: pd.DataFrame, budget: int, count: Callable[[str], int]) -> SerializedPrompt:
    """The patient serialized under ``budget`` tokens (oldest visits, then features dropped).

    A budget below the fixed text (persona, instructions, format, worked example) would leave no
    feature at all; then the example goes, and failing that the last visit of five features is
    shown over budget, so rewards and the clip still see feature names.
    """
    for include_example in (True, False):
        config = PromptConfig(
            feature_filter="measured", max_tokens=budget, include_example=include_example
        )
        prompt = serialize_patient(visits, SPECS, "tjh", "mortality", config, count_tokens=count)
        if prompt.features_shown:
            return prompt
    config = PromptConfig(feature_filter="all", include_example=False)
    return serialize_patient(visits.tail(1), SPECS[:5], "tjh", "mortality", config, count)


def build_records(
    tokenizer: Any, n_patients: int, prompt_tokens: int, completion_tokens: int, seed: int
) -> list[Record]:
    """Serialized patients with a tagged trajectory, a label and an expert top-5 each."""
    rng = np.random.default_rng(seed)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    records = []
    for n in range(n_patients):
        key = f"p{n:03d}"
        visits = patient_visits(rng, key, n_visits=int(rng.integers(4, 9)))
        prompt = fit_prompt(visits, prompt_tokens, count)
        label = int(rng.integers(0, 2))
        text, important = tagged_completion(
            rng, prompt.features_shown, label, completion_tokens, count
        )
        others = [f for f in prompt.features_shown if f not in important]
        top_k = [*important[:2], *rng.permutation(others)[:3].tolist()]
        records.append(
            {
                "patient_key": key,
                "system": prompt.system,
                "user": prompt.user,
                "text": text,
                "label": label,
                "expert_top_k": top_k,
            }
        )
    return records


def chat_tokens(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> int:
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


class StepClock(TrainerCallback):
    """Wall time of each optimizer step, and named sections added to the step they ran in.

    ``sync`` waits for the GPU (a no-op on CPU) so asynchronous kernels land in their section.
    """

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.step = 0
        self.steps: list[float] = []
        self.sections: defaultdict[str, defaultdict[int, float]] = defaultdict(
            lambda: defaultdict(float)
        )
        self._start = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.sync()
        self.step = state.global_step
        self._start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.sync()
        self.steps.append(time.perf_counter() - self._start)

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.sections[name][self.step] += time.perf_counter() - start

    def add(self, name: str, value: float) -> None:
        self.sections[name][self.step] += value

    def mean(self, name: str, steps: range) -> float:
        return sum(self.sections[name].get(i, 0.0) for i in steps) / max(len(steps), 1)


class _TrlLossClock(GRPOTrainer):
    """Sits between ``AdaptiveClipGRPOTrainer`` and trl's trainer in the MRO, so trl's own loss
    is timed apart from the adaptive clip's work around it."""

    clock: StepClock

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        with self.clock.section("trl_loss"):
            return super()._compute_loss(model, inputs)


class TimedGRPOTrainer(AdaptiveClipGRPOTrainer, _TrlLossClock):
    """The pipeline's trainer with generation, the whole loss and the clip's ε computation timed.

    The clip's own work is ``loss - trl_loss`` plus ``eps_high`` (span mask and entropy to ε
    over the generation batch, once per generation round); with the clip off the difference is
    a function call.
    """

    def __init__(self, *args: Any, clock: StepClock, **kwargs: Any) -> None:
        self.clock = clock
        super().__init__(*args, **kwargs)

    def _generate(self, prompts: list) -> Any:
        with self.clock.section("generate"):
            return super()._generate(prompts)

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        tokens = inputs["prompt_ids"].numel() + inputs["completion_ids"].numel()
        self.clock.add("loss_tokens", float(tokens))
        with self.clock.section("loss"):
            return super()._compute_loss(model, inputs)

    def add_eps_high(
        self, batch: dict[str, Any], entropies: torch.Tensor | None = None
    ) -> dict[str, Any]:
        with self.clock.section("eps_high"):
            return super().add_eps_high(batch, entropies)


class TimedReward:
    """A reward function that adds its time to the clock; the first of a list also counts the
    completions that carry the important-feature span (outside the timed section)."""

    def __init__(self, fn: Callable[..., list[float]], clock: StepClock, observe: bool) -> None:
        self.fn = fn
        self.clock = clock
        self.observe = observe
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float]:
        if self.observe:
            self.clock.add("completions", float(len(completions)))
            spans = sum(SPAN_OPEN in completion_text(c) for c in completions)
            self.clock.add("with_span", float(spans))
        with self.clock.section("reward"):
            return self.fn(completions, **kwargs)


def length_parity(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """Plain GRPO's stand-in reward: 1 for an even number of characters, else 0."""
    return [float(len(completion_text(c)) % 2 == 0) for c in completions]


def cuda_peak_mb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None


def reset_memory(device: str) -> None:
    """Release what the previous phase freed, so the next phase's peak is its own: glibc keeps
    freed heap pages in the process (counted in its RSS) until asked to return them."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_sft(
    model_dir: Path,
    records: list[Record],
    tokenizer: Any,
    args: argparse.Namespace,
    workdir: Path,
    device: str,
    precision: str,
    sync: Callable[[], None],
) -> tuple[dict[str, Any], Path]:
    """``train_sft`` for ``--sft-steps`` steps; trl's per-step log lines are swallowed."""
    train, held_out = split_by_patient(records, 0.25, seed=0)
    settings = SFTSettings(
        max_steps=args.sft_steps,
        per_device_train_batch_size=args.batch,
        save_steps=10**6,
        logging_steps=10**6,
    )
    clock = StepClock(sync)
    reset_memory(device)
    start = time.perf_counter()
    with PeakRss() as memory, contextlib.redirect_stdout(io.StringIO()):
        outcome = train_sft(
            model_dir,
            train,
            held_out,
            settings,
            workdir / "sft",
            device=device,
            precision=precision,
            callbacks=[clock],
        )
    wall = time.perf_counter() - start
    per_example = statistics.mean(
        chat_tokens(
            tokenizer,
            [
                {"role": "system", "content": r["system"]},
                {"role": "user", "content": r["user"]},
                {"role": "assistant", "content": r["text"]},
            ],
            generation_prompt=False,
        )
        for r in train
    )
    timed = clock.steps[1:] or clock.steps
    step_s = statistics.median(timed)
    tokens = per_example * args.batch
    figures = {
        "steps": outcome.global_step,
        "steps_timed": len(timed),
        "s_per_step": step_s,
        "step_s_all": clock.steps,
        "tokens_per_step": tokens,
        "tokens_per_s": tokens / step_s,
        "peak_rss_mb": memory.peak / 2**20,
        "added_rss_mb": memory.added_mb,
        "cuda_peak_mb": cuda_peak_mb(device),
        "wall_s": wall,
        "train_loss": outcome.train_loss,
    }
    return figures, outcome.adapter_dir


def measured_window(n_steps: int, cycle: int) -> tuple[range, bool]:
    """Whole generation cycles after the first (whose step pays first-call costs); every step
    when fewer than two cycles ran. Returns the steps and whether warm-up was excluded."""
    full = n_steps - n_steps % cycle
    if full >= 2 * cycle:
        return range(cycle, full), True
    return range(max(full, n_steps)), False


def run_grpo_variant(
    name: str,
    model_dir: Path,
    adapter_dir: Path,
    rows: list[dict[str, Any]],
    matcher: FeatureMatcher,
    settings: GRPOSettings,
    workdir: Path,
    device: str,
    precision: str,
    sync: Callable[[], None],
) -> dict[str, Any]:
    """One GRPO variant from the SFT adapter, set up as ``train_grpo`` sets it up."""
    from datasets import Dataset
    from peft import PeftModel
    from transformers import set_seed

    clock = StepClock(sync)
    trivial = name == "plain"
    fns = [length_parity] if trivial else reward_functions(settings, matcher)
    rewards = [TimedReward(fn, clock, observe=i == 0) for i, fn in enumerate(fns)]
    config = build_grpo_config(
        settings, workdir / f"grpo-{name}", device=device, precision=precision
    )
    if trivial:
        config.reward_weights = [1.0]
    reset_memory(device)
    set_seed(settings.seed)
    start = time.perf_counter()
    with PeakRss() as memory:
        tokenizer = load_tokenizer(model_dir)
        model = PeftModel.from_pretrained(
            load_policy_model(model_dir, precision), str(adapter_dir), is_trainable=True
        )
        trainer = TimedGRPOTrainer(
            model=model,
            reward_funcs=rewards,
            args=config,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            callbacks=[clock],
            adaptive_clip=settings.clip_config(),
            clock=clock,
        )
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    wall = time.perf_counter() - start
    window, warm = measured_window(len(clock.steps), NUM_ITERATIONS)
    step_s = statistics.mean(clock.steps[i] for i in window)
    loss, trl_loss = clock.mean("loss", window), clock.mean("trl_loss", window)
    generate, reward = clock.mean("generate", window), clock.mean("reward", window)
    n_completions = sum(clock.sections["completions"].values())
    figures = {
        "s_per_step": step_s,
        "step_s_all": clock.steps,
        "steps_timed": len(window),
        "warmup_excluded": warm,
        "generate_s": generate,
        "reward_s": reward,
        "loss_s": loss,
        "clip_work_s": loss - trl_loss + clock.mean("eps_high", window),
        "other_s": step_s - generate - reward - loss,
        "loss_tokens_per_step": clock.mean("loss_tokens", window),
        "span_fraction": sum(clock.sections["with_span"].values()) / max(n_completions, 1),
        "peak_rss_mb": memory.peak / 2**20,
        "added_rss_mb": memory.added_mb,
        "cuda_peak_mb": cuda_peak_mb(device),
        "wall_s": wall,
    }
    del trainer, model
    reset_memory(device)
    return figures


def tagged_costs(
    tokenizer: Any,
    records: list[Record],
    settings: GRPOSettings,
    matcher: FeatureMatcher,
    batch: int,
    repeats: int = 20,
) -> dict[str, float]:
    """Seconds per batch of ``batch`` tagged completions: our three reward functions, the
    trivial reward, and the clip's span work (mask, span entropy, ε), as in one GRPO step.

    Two different batches alternate, so the parser's one-batch cache never hits across calls
    (within a call, r_att and r_format reuse r_cls's parse exactly as they do under trl).
    """
    batches = []
    for offset in (0, batch):
        chosen = [records[(offset + i) % len(records)] for i in range(batch)]
        completions = [[{"role": "assistant", "content": r["text"]}] for r in chosen]
        columns = {
            "label": [r["label"] for r in chosen],
            "expert_top_k": [r["expert_top_k"] for r in chosen],
        }
        batches.append((completions, columns))

    def seconds(call: Callable[[tuple[list, dict[str, list]]], object]) -> float:
        call(batches[1])
        start = time.perf_counter()
        for i in range(repeats):
            call(batches[i % 2])
        return (time.perf_counter() - start) / repeats

    fns = reward_functions(settings, matcher)
    ours = seconds(lambda b: [fn(b[0], **b[1]) for fn in fns])
    trivial = seconds(lambda b: length_parity(b[0], **b[1]))
    cfg = settings.clip_config()
    encoded = tokenizer(
        [r["text"] for r in records[:batch]],
        add_special_tokens=False,
        padding=True,
        return_tensors="pt",
    )
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    entropies = torch.rand(ids.shape, generator=torch.Generator().manual_seed(0))
    found: list[float] = []

    def clip_work(_: object) -> None:
        span = important_feature_token_mask(
            ids, tokenizer, cfg.span_open, cfg.span_close, completion_mask=mask
        )
        h = span_mean_entropy(entropies, span)
        entropy_to_epsilon(h, span.any(-1), cfg.eps_high_min, cfg.eps_high_max)
        found.append(float(span.any(-1).float().mean()))

    clip = seconds(clip_work)
    return {
        "reward_ours_s": ours,
        "reward_trivial_s": trivial,
        "clip_work_s": clip,
        "clip_span_fraction": found[-1],
        "completion_tokens": float(mask.sum(-1).float().mean()),
    }


def verdict(fraction: float) -> str:
    return "under" if fraction < TARGET else "ABOVE"


def overheads(grpo: dict[str, dict[str, Any]], tagged: dict[str, float]) -> dict[str, float]:
    """Fractions of the plain GRPO step.

    The clip's loss-time difference compares (3) with (2) (same rewards) per loss token, scaled
    to the plain step's tokens: the two variants' completions differ in length after the first
    update, and the loss forward is proportional to its tokens.
    """
    plain, rewards, clip = grpo["plain"], grpo["rewards"], grpo["clip"]
    base = plain["s_per_step"]
    per_token = {
        k: grpo[k]["loss_s"] / max(grpo[k]["loss_tokens_per_step"], 1.0)
        for k in ("rewards", "clip")
    }
    loss_diff = (per_token["clip"] - per_token["rewards"]) * plain["loss_tokens_per_step"]
    return {
        "reward_run": (rewards["reward_s"] - plain["reward_s"]) / base,
        "clip_loss_diff_run": loss_diff / base,
        "clip_loss_diff_raw_run": (clip["loss_s"] - rewards["loss_s"]) / base,
        "clip_work_run": clip["clip_work_s"] / base,
        "reward_tagged": (tagged["reward_ours_s"] - tagged["reward_trivial_s"])
        / NUM_ITERATIONS
        / base,
        "clip_tagged": tagged["clip_work_s"] / base,
        "step_ratio_rewards_vs_plain": rewards["s_per_step"] / base,
        "step_ratio_clip_vs_rewards": clip["s_per_step"] / rewards["s_per_step"],
        "generation_share_plain": plain["generate_s"] / base,
    }


def print_report(figures: dict[str, Any]) -> None:
    sft, grpo, over, tagged = (
        figures["sft"],
        figures["grpo"],
        figures["overheads"],
        figures["tagged"],
    )
    s = figures["settings"]
    cuda = figures["device"] == "cuda"
    print(
        f"\n== {figures['model']} on {figures['device']} ({figures['precision']}), "
        f"{figures['threads']} threads; prompts ~{s['prompt_tokens_mean']:.0f} tokens "
        f"(budget {s['prompt_tokens']}), batch {s['batch']} =="
    )
    print(
        f"\nSFT (LoRA, train_sft): median of {sft['steps_timed']} steps after the first; "
        f"completion ~{s['sft_completion_tokens_mean']:.0f} tokens"
    )
    header = ("s/step", "tokens/step", "tokens/s", "peak RSS MB", "+MB", "CUDA MB", "wall s")
    print("{:>10}{:>13}{:>10}{:>13}{:>8}{:>9}{:>9}".format(*header))
    print(
        f"{sft['s_per_step']:>10.2f}{sft['tokens_per_step']:>13.0f}{sft['tokens_per_s']:>10.0f}"
        f"{sft['peak_rss_mb']:>13.0f}{sft['added_rss_mb']:>8.0f}"
        f"{sft['cuda_peak_mb'] if cuda else float('nan'):>9.0f}{sft['wall_s']:>9.1f}"
    )
    warm = grpo["plain"]["warmup_excluded"]
    print(
        f"\nGRPO ({s['grpo_steps']} steps, {s['num_generations']} generations, max completion "
        f"{s['completion_tokens']}, num_iterations={NUM_ITERATIONS} so the clip acts; mean of "
        f"{grpo['plain']['steps_timed']} steps, "
        f"{'first generation cycle excluded' if warm else 'warm-up INCLUDED (too few steps)'})"
    )
    header = (
        "variant", "s/step", "generate", "reward", "loss", "clip", "other", "loss tok",
        "span%", "peak RSS MB", "+MB", "CUDA MB",
    )  # fmt: skip
    row = "{:<10}{:>8}{:>10}{:>9}{:>8}{:>8}{:>8}{:>10}{:>7}{:>13}{:>7}{:>9}"
    print(row.format(*header))
    for name, g in grpo.items():
        print(
            f"{name:<10}{g['s_per_step']:>8.2f}{g['generate_s']:>10.2f}{g['reward_s']:>9.4f}"
            f"{g['loss_s']:>8.2f}{g['clip_work_s']:>8.4f}{g['other_s']:>8.2f}"
            f"{g['loss_tokens_per_step']:>10.0f}{g['span_fraction']:>7.0%}"
            f"{g['peak_rss_mb']:>13.0f}{g['added_rss_mb']:>7.0f}"
            f"{g['cuda_peak_mb'] if cuda else float('nan'):>9.0f}"
        )
    base = grpo["plain"]["s_per_step"]
    clip_s = grpo["clip"]["clip_work_s"]
    print(
        f"\nOverheads as a fraction of the plain GRPO step ({base:.2f} s), target < {TARGET:.0%}:"
    )
    print(
        f"  reward functions, in run:   {over['reward_run']:7.2%}  "
        f"({grpo['rewards']['reward_s'] * 1e3:.1f} - {grpo['plain']['reward_s'] * 1e3:.1f} ms "
        f"per step) -> {verdict(over['reward_run'])}"
    )
    print(
        f"  adaptive clip, in run:      {over['clip_loss_diff_run']:7.2%}  (loss time (3) - (2) "
        f"per loss token, raw {over['clip_loss_diff_raw_run']:.2%}: carries the machine's noise) "
        f"-> {verdict(over['clip_loss_diff_run'])}"
    )
    print(
        f"    its own work, in run:     {over['clip_work_run']:7.3%}  (span mask + entropy to "
        f"epsilon, {clip_s * 1e3:.1f} ms per step) -> {verdict(over['clip_work_run'])}"
    )
    print(
        f"  with {s['batch']} tagged completions (~{tagged['completion_tokens']:.0f} tokens, "
        f"span in {tagged['clip_span_fraction']:.0%}):"
    )
    print(
        f"    reward functions:         {over['reward_tagged']:7.2%}  "
        f"({tagged['reward_ours_s'] * 1e3:.2f} vs {tagged['reward_trivial_s'] * 1e3:.3f} ms per "
        f"generation batch, one per {NUM_ITERATIONS} steps) -> {verdict(over['reward_tagged'])}"
    )
    print(
        f"    adaptive clip span work:  {over['clip_tagged']:7.2%}  "
        f"({tagged['clip_work_s'] * 1e3:.2f} ms per loss call) -> {verdict(over['clip_tagged'])}"
    )
    print(
        f"End-to-end step ratios: (2)/(1) = {over['step_ratio_rewards_vs_plain']:.3f}, "
        f"(3)/(2) = {over['step_ratio_clip_vs_rewards']:.3f}; generation is "
        f"{over['generation_share_plain']:.0%} of the plain step and its length drifts between "
        "variants, so these ratios carry that noise."
    )


def parameter_count(model_dir: Path) -> int:
    """Counted on the meta device: loading real weights here would inflate the SFT baseline."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    with torch.device("meta"):
        return sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())


def resolve_device(choice: str) -> tuple[str, str]:
    """(device, precision): bf16 on CUDA where supported, fp32 otherwise."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if choice == "auto" else choice
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device")
    precision = "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return device, precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("default", "tiny"), default="default")
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=DEFAULT_MODELS_DIR,
        help="where the default model is converted once (never the repository)",
    )
    parser.add_argument("--sft-steps", type=int, default=6)
    parser.add_argument("--grpo-steps", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--completion-tokens", type=int, default=96)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4, help="per-device batch, SFT and GRPO")
    parser.add_argument("--patients", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    parser.add_argument("--no-record", action="store_true", help="do not append to the results")
    args = parser.parse_args()
    if args.sft_steps < 1 or args.grpo_steps < 1 or args.patients < 2:
        parser.error("--sft-steps and --grpo-steps must be >= 1, --patients >= 2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model and tokenizer here is local
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5 renames, per step
    torch.set_num_threads(args.threads)
    device, precision = resolve_device(args.device)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory(prefix="eagrl_bench_training_") as tmp:
        workdir = Path(tmp)
        if args.model == "tiny":
            from eagrl_pipeline.llm.tiny_model import build_tiny_qwen2

            model_dir = build_tiny_qwen2(workdir / "tiny")
        else:
            from eagrl_pipeline.llm.base_model import ensure_default_model

            model_dir = ensure_default_model(args.models_dir)
        tokenizer = load_tokenizer(model_dir)
        n_params = parameter_count(model_dir)
        records = build_records(
            tokenizer, args.patients, args.prompt_tokens, args.completion_tokens, seed=0
        )
        prompt_tokens = [
            chat_tokens(
                tokenizer,
                [
                    {"role": "system", "content": r["system"]},
                    {"role": "user", "content": r["user"]},
                ],
                generation_prompt=True,
            )
            for r in records
        ]
        completion_tokens = [
            len(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) for r in records
        ]
        print(
            f"model {model_dir.name}: {n_params / 1e6:.1f} M params; {device} ({precision}), "
            f"{args.threads} threads; {len(records)} patients, prompts "
            f"{min(prompt_tokens)}-{max(prompt_tokens)} tokens",
            flush=True,
        )
        sft, adapter_dir = run_sft(
            model_dir, records, tokenizer, args, workdir, device, precision, sync
        )
        print(
            f"SFT: {sft['s_per_step']:.2f} s/step, peak RSS {sft['peak_rss_mb']:.0f} MB", flush=True
        )

        matcher = FeatureMatcher.build(f[0] for f in FEATURES)
        rows = [grpo_row(r["system"], r["user"], r["label"], r["expert_top_k"]) for r in records]
        grpo: dict[str, dict[str, Any]] = {}
        for name, clip in (("plain", False), ("rewards", False), ("clip", True)):
            settings = GRPOSettings(
                max_steps=args.grpo_steps,
                num_generations=args.num_generations,
                per_device_train_batch_size=args.batch,
                num_iterations=NUM_ITERATIONS,
                max_completion_length=args.completion_tokens,
                adaptive_clip=clip,
                logging_steps=1,
                save_steps=10**6,
            )
            settings.validate()
            grpo[name] = run_grpo_variant(
                name, model_dir, adapter_dir, rows, matcher, settings, workdir, device,
                precision, sync,
            )  # fmt: skip
            g = grpo[name]
            print(
                f"GRPO {name}: {g['s_per_step']:.2f} s/step (generate {g['generate_s']:.2f}, "
                f"reward {g['reward_s'] * 1e3:.1f} ms, loss {g['loss_s']:.2f}), peak RSS "
                f"{g['peak_rss_mb']:.0f} MB",
                flush=True,
            )
        tagged = tagged_costs(tokenizer, records, settings, matcher, args.batch)
    figures = {
        "model": model_dir.name,
        "n_parameters": n_params,
        "device": device,
        "precision": precision,
        "threads": args.threads,
        "settings": {
            **{
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in vars(args).items()
                if k != "no_record"
            },
            "num_iterations": NUM_ITERATIONS,
            "prompt_tokens_mean": statistics.mean(prompt_tokens),
            "sft_completion_tokens_mean": statistics.mean(completion_tokens),
        },
        "sft": sft,
        "grpo": grpo,
        "tagged": tagged,
    }
    figures["overheads"] = overheads(grpo, tagged)
    print_report(figures)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"\nfigures written to {args.out}")
    if not args.no_record:
        record("training", figures)


if __name__ == "__main__":
    main()
