"""Stage 1 policy: LoRA SFT on the MCTS trajectories with trl's ``SFTTrainer``.

The data are prompt/completion conversations, so trl puts the loss on the completion only. The
held-out slice is split by patient (a patient's trajectories never straddle train and eval),
and the base model's loss on it is measured with the adapter switched off, so the comparison
is on exactly the same tokens. Training checkpoints live in a folder keyed by the settings and
the data, so an interrupted run resumes and a changed one starts clean.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from eagrl_pipeline.errors import InputDataError
from eagrl_pipeline.paths import atomic_path
from eagrl_pipeline.progress import training_progress

Record = dict[str, Any]


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA adapter; ``all-linear`` targets every projection (attention and MLP)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"

    def peft_config(self) -> Any:
        from peft import LoraConfig

        targets = self.target_modules
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=targets if isinstance(targets, str) else list(targets),
            task_type="CAUSAL_LM",
        )


@dataclass(frozen=True)
class SFTSettings:
    """Run knobs with CPU-friendly defaults; ``build_sft_config`` maps them onto ``SFTConfig``."""

    learning_rate: float = 2e-4
    num_train_epochs: float = 2.0
    max_steps: int = -1
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int = 1
    max_length: int | None = 2048
    eval_fraction: float = 0.25
    logging_steps: int = 1
    save_steps: int = 20
    warmup_steps: float = 0.0
    gradient_checkpointing: bool = False
    seed: int = 0
    merge_adapter: bool = False
    # "lora": a LoRA adapter on the frozen base model; "full": every weight trains (fp32 master
    # weights, bf16 autocast where the run is bf16) and the policy folder holds the whole model.
    finetune: Literal["lora", "full"] = "lora"
    lora: LoraSettings = field(default_factory=LoraSettings)
    answer_loss_weight: float = 1.0
    # Run the tokens every row of a batch starts with (the system message) once per forward,
    # their KV shared by the rows (the weighted loss's path; one process, no checkpointing).
    share_prefix: bool = True
    # The calling stage's code version: part of the run fingerprint, so a resumable checkpoint
    # written by other code is never resumed (it would skip training a finished run).
    code_version: str = ""

    def __post_init__(self) -> None:
        if self.answer_loss_weight <= 0:
            raise ValueError(f"answer_loss_weight must be > 0, got {self.answer_loss_weight}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if self.max_steps == 0 or self.num_train_epochs <= 0:
            raise ValueError("max_steps must be -1 (use epochs) or >= 1, and epochs > 0")
        if self.finetune not in ("lora", "full"):
            raise ValueError(f"finetune must be 'lora' or 'full', got {self.finetune!r}")
        if self.finetune == "full" and self.merge_adapter:
            raise ValueError(
                "merge_adapter applies to finetune='lora' only: a full fine-tune already "
                "writes the whole model; drop merge_adapter"
            )


def precision_flags(precision: str) -> dict[str, bool]:
    """trl defaults to bf16; every run sets both flags explicitly from the compute resource."""
    if precision not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"precision must be 'bf16', 'fp16' or 'fp32', got {precision!r}")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def run_args(
    output_dir: str | Path,
    *,
    seed: int,
    logging_steps: int,
    save_steps: int,
    device: str,
    precision: str,
    report_to: Sequence[str],
) -> dict[str, Any]:
    """What every training run here sets the same way: checkpoints for resuming (the last one
    kept), seeds, the device, explicit precision, and where metrics go."""
    return {
        "output_dir": str(output_dir),
        "logging_steps": logging_steps,
        "save_strategy": "steps",
        "save_steps": save_steps,
        "save_total_limit": 1,
        "seed": seed,
        "data_seed": seed,
        "use_cpu": device == "cpu",
        "report_to": list(report_to),
        "dataloader_num_workers": 0,
        "disable_tqdm": True,  # eagrl_pipeline.progress draws the bar (on the real stderr)
        **precision_flags(precision),
    }


def build_sft_config(
    settings: SFTSettings,
    output_dir: str | Path,
    *,
    device: str,
    precision: str,
    report_to: Sequence[str] = ("none",),
) -> Any:
    """The one place our settings become trl's ``SFTConfig``."""
    from trl import SFTConfig

    return SFTConfig(
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.num_train_epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        per_device_eval_batch_size=settings.per_device_train_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        max_length=settings.max_length,
        completion_only_loss=True,
        eval_strategy="no",
        prediction_loss_only=True,  # only the held-out loss is read; no logits gathered
        warmup_steps=settings.warmup_steps,
        activation_checkpointing=settings.gradient_checkpointing,
        **run_args(
            output_dir, seed=settings.seed, logging_steps=settings.logging_steps,
            save_steps=settings.save_steps, device=device, precision=precision,
            report_to=report_to,
        ),
    )  # fmt: skip


def read_trajectories(path: str | Path) -> list[Record]:
    """The kept trajectories (JSONL from the MCTS stage), checked for the fields SFT needs."""
    path = Path(path)
    if not path.exists():
        raise InputDataError(path, "no trajectory file; materialize mcts_trajectories first.")
    records = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputDataError(path, f"line {n} is not JSON ({exc}); re-run the search.") from exc
        missing = {"patient_key", "system", "user", "text"} - set(record)
        if missing:
            raise InputDataError(
                path, f"line {n} lacks {sorted(missing)}; re-materialize mcts_trajectories."
            )
        records.append(record)
    return records


def conversation(record: Record) -> dict[str, Any]:
    """A trajectory as trl's conversational prompt/completion example."""
    return {
        "prompt": [
            {"role": "system", "content": record["system"]},
            {"role": "user", "content": record["user"]},
        ],
        "completion": [{"role": "assistant", "content": record["text"]}],
    }


def split_by_patient(
    records: Sequence[Record], eval_fraction: float, seed: int
) -> tuple[list[Record], list[Record]]:
    """Train/eval records with whole patients on each side (at least one patient each)."""
    patients = sorted({str(r["patient_key"]) for r in records})
    if len(patients) < 2:
        raise InputDataError(
            "mcts_trajectories",
            f"trajectories of {len(patients)} patient(s); SFT needs at least 2 (one held out "
            "for the eval loss). Fix: search more patients (mcts_trajectories max_patients).",
        )
    random.Random(seed).shuffle(patients)
    n_eval = min(len(patients) - 1, max(1, math.ceil(eval_fraction * len(patients))))
    held_out = set(patients[:n_eval])
    train = [r for r in records if str(r["patient_key"]) not in held_out]
    evaluation = [r for r in records if str(r["patient_key"]) in held_out]
    return train, evaluation


class AnswerWeightedLoss:
    """Completion loss with the final answer's tokens weighted ``weight`` times the others.

    Why: a distilled trajectory is ~100 tokens of reasoning and one or two answer digits, and
    the digits are what carries the label (a kept trajectory is right by construction). In a
    plain token-mean loss they are ~1 % of the gradient, and a small model learns the reasoning's
    wording long before the answer's dependence on the patient. The loss is the weighted mean
    over completion tokens (``labels`` != -100), so ``weight=1`` is trl's token-mean loss; the
    answer tokens are those between the last ``<Final answer>`` and its closing tag. Used by
    :class:`AnswerWeightedSFTTrainer` (a class, so it pickles for ``accelerate launch``).
    """

    def __init__(self, tokenizer: Any, weight: float):
        encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        self.open_ids = encode("<Final answer>")
        self.close_ids = encode("</Final answer>")
        self.weight = float(weight)

    @staticmethod
    def _starts(row: list[int], pattern: list[int]) -> list[int]:
        n = len(pattern)
        return [i for i in range(len(row) - n + 1) if row[i : i + n] == pattern]

    def weights(self, labels: Any) -> Any:
        """``[B, T]`` token weights for ``labels`` (1 on the completion, ``weight`` on the
        answer, 0 where ignored)."""
        import torch

        w = (labels != -100).to(torch.float32)
        for b, row in enumerate(labels.tolist()):
            opens = self._starts(row, self.open_ids)
            if not opens:
                continue
            start = opens[-1] + len(self.open_ids)
            end = next((i for i in self._starts(row, self.close_ids) if i >= start), len(row))
            w[b, start:end] *= self.weight
        return w

    def __call__(self, outputs: Any, labels: Any) -> Any:
        import torch

        logits = outputs.logits[:, :-1].float()
        target = labels[:, 1:].to(logits.device)
        weights = self.weights(target).to(logits.device)
        per_token = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            target.reshape(-1).clamp(min=0),
            reduction="none",
        ).view_as(weights)
        return (per_token * weights).sum() / weights.sum().clamp(min=1e-8)


def completion_window(labels: Any) -> int:
    """How many last positions' logits the loss needs: from the position before the batch's
    first completion token to the end. Why: the vocabulary projection of a small model is a
    fifth of its weights, and over a 500-token prompt and a 100-token completion most of its
    logits (and their float copy) would be computed only to be ignored."""
    import torch

    targets = (labels != -100).any(dim=0)
    if not bool(targets.any()):
        return int(labels.shape[1])
    first = int(torch.nonzero(targets)[0])
    return int(labels.shape[1]) - max(first - 1, 0)


def _answer_weighted_trainer() -> type:
    """trl's ``SFTTrainer`` whose loss is :class:`AnswerWeightedLoss` when it is set: one
    forward per step (trl's ``compute_loss_func`` route runs a second, for its metrics), with
    logits only over the :func:`completion_window`, and with ``share_prefix`` the batch's common
    leading tokens run once (``forward_sharing_prefix``; same loss and gradients, tested)."""
    from trl import SFTTrainer

    from eagrl_pipeline.training.shared_prompt import forward_sharing_prefix, trainer_can_share

    class AnswerWeightedSFTTrainer(SFTTrainer):
        def __init__(
            self,
            *args: Any,
            answer_loss: AnswerWeightedLoss | None = None,
            share_prefix: bool = False,
            **kw: Any,
        ):
            super().__init__(*args, **kw)
            self.answer_loss = answer_loss
            self.share_prefix = share_prefix and answer_loss is not None and trainer_can_share(self)

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            if self.answer_loss is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            labels = inputs["labels"]
            forward = {k: v for k, v in inputs.items() if k != "labels"}
            keep = completion_window(labels)
            outputs = None
            if self.share_prefix and set(forward) == {"input_ids", "attention_mask"}:
                outputs = forward_sharing_prefix(
                    model, forward["input_ids"], forward["attention_mask"], keep
                )
            if outputs is None:
                outputs = model(**forward, use_cache=False, logits_to_keep=keep)
            loss = self.answer_loss(outputs, labels[:, -keep:])
            return (loss, outputs) if return_outputs else loss

    return AnswerWeightedSFTTrainer


def run_fingerprint(*parts: Any) -> str:
    """A short key of everything a run depends on (its resumable checkpoints are under it)."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def load_policy_model(model_dir: str | Path, precision: str, trains_weights: bool = False) -> Any:
    """The model to train: bf16 weights on bf16 runs, fp32 otherwise. ``trains_weights`` (a
    full fine-tune) keeps fp32 master weights under bf16 autocast: an update of lr x gradient
    is mostly below a bf16 weight's rounding step."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if precision == "bf16" and not trains_weights else torch.float32
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True)


def load_tokenizer(model_dir: str | Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def last_checkpoint(run_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(run_dir)) if run_dir.is_dir() else None


@dataclass
class SFTOutcome:
    adapter_dir: Path
    merged_dir: Path | None
    base_eval_loss: float
    eval_loss: float
    train_loss: float | None
    global_step: int
    resumed_from: str | None
    n_train: int
    n_eval: int
    log_history: list[dict[str, float]]
    shared_prefix: bool = False

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["adapter_dir"] = str(self.adapter_dir)
        out["merged_dir"] = str(self.merged_dir) if self.merged_dir else None
        return out


def train_sft(
    model_dir: str | Path,
    train_records: Sequence[Record],
    eval_records: Sequence[Record],
    settings: SFTSettings,
    output_dir: str | Path,
    *,
    device: str = "cpu",
    precision: str = "fp32",
    report_to: Sequence[str] = ("none",),
    callbacks: Sequence[Any] = (),
) -> SFTOutcome:
    """Train the policy; write ``adapter/`` (and ``merged/``) under ``output_dir`` atomically:
    a LoRA adapter, or with ``finetune="full"`` the whole model (see ``policy_format``).

    Checkpoints go to ``output_dir/runs/<fingerprint>``; a run with the same settings and data
    resumes from the last one, and the folder is removed once the policy is written. The base
    model's held-out loss is measured before training, on the same tokens (a fresh LoRA adapter
    is the identity, so it equals the loss with the adapter switched off).
    """
    from datasets import Dataset

    output_dir = Path(output_dir)
    fingerprint = run_fingerprint(asdict(settings), str(model_dir), train_records, eval_records)
    run_dir = output_dir / "runs" / fingerprint
    resume = last_checkpoint(run_dir)
    tokenizer = load_tokenizer(model_dir)
    weighted = settings.answer_loss_weight != 1.0
    full = settings.finetune == "full"
    trainer = _answer_weighted_trainer()(
        model=load_policy_model(model_dir, precision, trains_weights=full),
        answer_loss=AnswerWeightedLoss(tokenizer, settings.answer_loss_weight)
        if weighted
        else None,
        share_prefix=settings.share_prefix,
        args=build_sft_config(
            settings, run_dir, device=device, precision=precision, report_to=report_to
        ),
        train_dataset=Dataset.from_list([conversation(r) for r in train_records]),
        eval_dataset=Dataset.from_list([conversation(r) for r in eval_records]),
        processing_class=tokenizer,
        peft_config=None if full else settings.lora.peft_config(),
        callbacks=[*callbacks, training_progress("SFT")],
    )
    for name, data in (("train", trainer.train_dataset), ("eval", trainer.eval_dataset)):
        if len(data) == 0:  # trl drops examples whose prompt alone fills max_length
            raise InputDataError(
                "sft_checkpoint",
                f"no {name} trajectory keeps any completion token within max_length="
                f"{settings.max_length}; raise max_length or lower llm_prompts max_tokens.",
            )
    base_eval_loss = float(trainer.evaluate(metric_key_prefix="base_eval")["base_eval_loss"])
    result = trainer.train(resume_from_checkpoint=resume)
    eval_loss = float(trainer.evaluate(metric_key_prefix="eval")["eval_loss"])
    adapter_dir = output_dir / "adapter"
    with atomic_path(adapter_dir) as tmp:
        trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    merged_dir = None
    if settings.merge_adapter:
        merged_dir = output_dir / "merged"
        with atomic_path(merged_dir) as tmp:
            trainer.model.merge_and_unload().save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    history = [
        {k: float(v) for k, v in entry.items() if isinstance(v, int | float)}
        for entry in trainer.state.log_history
    ]
    shutil.rmtree(run_dir, ignore_errors=True)
    return SFTOutcome(
        adapter_dir=adapter_dir,
        merged_dir=merged_dir,
        base_eval_loss=base_eval_loss,
        eval_loss=eval_loss,
        train_loss=float(result.training_loss) if result.training_loss is not None else None,
        global_step=int(trainer.state.global_step),
        resumed_from=resume,
        n_train=len(train_records),
        n_eval=len(eval_records),
        log_history=history,
        shared_prefix=trainer.share_prefix,
    )
