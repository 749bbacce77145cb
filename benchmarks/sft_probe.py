"""Probe: the SFT stage alone, judged per epoch on held-out patients, in minutes, not an hour.

The learning study takes about an hour for one SFT setting. This probe trains the pipeline's own
SFT (``train_sft``: trl's SFTTrainer, the answer-weighted loss, LoRA or ``finetune="full"``) on
the MCTS trajectories a study already wrote, and after every epoch answers held-out patients
the way the evaluation does (guided, greedy, the expected digit at the final answer) with the
policy folder loaded as the evaluation loads it. Held out: every validation patient and the
train patients whose search kept no trajectory (the ones the base model answers on the wrong
side; their AUROC is printed apart, as "unkept"). The test split is never read.

    .venv/bin/python -m benchmarks.sft_probe --home /tmp/study --epochs 2 --finetune full \\
        --lr 5e-5 --answer-weight 1000

Each epoch prints a JSON line; the curve is appended to ``benchmarks/results/sft_probe.json``
(not with ``--no-record``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from benchmarks.learning import PARTITION, SCAFFOLD
from benchmarks.results import record


def held_out(prompts: pd.DataFrame, kept_keys: set[str]) -> pd.DataFrame:
    """Validation patients and the train patients without a kept trajectory (never test)."""
    unkept = (prompts["split"] == "train") & ~prompts["patient_id"].astype(str).isin(kept_keys)
    return prompts[(prompts["split"] == "val") | unkept]


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    ok = ~np.isnan(scores)
    if len(set(labels[ok].tolist())) < 2:
        return None
    return round(float(roc_auc_score(labels[ok], scores[ok])), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="a study's EAGRL_HOME")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--finetune", choices=["lora", "full"], default="lora")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--answer-weight", type=float, default=20.0)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--no-record", action="store_true", help="do not append to the results")
    args = parser.parse_args(argv)

    import torch
    from transformers import TrainerCallback

    from eagrl_pipeline.evaluation.predictions import (
        GenerationSettings,
        PromptSet,
        llm_predictions,
    )
    from eagrl_pipeline.llm.generation import dtype_choice, load_model, resolve_device
    from eagrl_pipeline.llm.guided import ScaffoldConfig
    from eagrl_pipeline.prompts import FeatureMatcher
    from eagrl_pipeline.training.sft import (
        LoraSettings,
        SFTSettings,
        read_trajectories,
        split_by_patient,
        train_sft,
    )

    artifacts = args.home / "artifacts"
    (model_dir,) = sorted((args.home / "models").iterdir())
    records = read_trajectories(artifacts / "mcts_trajectories" / PARTITION / "trajectories.jsonl")
    prompts = pd.read_parquet(artifacts / "llm_prompts" / PARTITION / "prompts.parquet")
    held = held_out(prompts, {str(r["patient_key"]) for r in records})
    is_val = (held["split"] == "val").to_numpy()
    labels = held["label"].to_numpy(dtype=int)
    prompt_set = PromptSet(
        tuple(held["patient_id"]),
        tuple(int(y) for y in held["label"]),
        tuple(held["system"]),
        tuple(held["user"]),
    )
    matcher = FeatureMatcher.build(sorted({f for fs in prompts["features_shown"] for f in fs}))
    generation = GenerationSettings(batch_size=32, scaffold=ScaffoldConfig(**SCAFFOLD))
    settings = SFTSettings(
        learning_rate=args.lr,
        num_train_epochs=float(args.epochs),
        per_device_train_batch_size=args.batch,
        eval_fraction=0.1,
        save_steps=10**6,
        answer_loss_weight=args.answer_weight,
        finetune=args.finetune,
        lora=LoraSettings(r=args.lora_r, alpha=2 * args.lora_r, dropout=0.05),
    )
    train, eval_records = split_by_patient(records, settings.eval_fraction, settings.seed)
    choice = dtype_choice("auto", resolve_device("cpu"))
    precision = "bf16" if choice.get("generation_dtype") == "bfloat16" else "fp32"
    curve: list[dict[str, Any]] = []

    def score(policy: Path | None) -> dict[str, Any]:
        started = time.monotonic()
        model, tokenizer = load_model(model_dir, "cpu", "auto", adapter_dir=policy)
        with torch.no_grad():
            answers = llm_predictions(
                "probe", model, tokenizer, {"held": prompt_set}, matcher, {}, generation
            )["held"].records
        scores = answers["answer_expectation"].to_numpy(dtype=float)
        return {
            "auroc": auroc(labels, scores),
            "val_auroc": auroc(labels[is_val], scores[is_val]),
            "unkept_auroc": auroc(labels[~is_val], scores[~is_val]),
            "parse": float(answers["valid"].mean()),
            "score_s": round(time.monotonic() - started, 1),
        }

    class EpochReadout(TrainerCallback):
        def __init__(self) -> None:
            self.started = time.monotonic()

        def on_epoch_end(self, args_: Any, state: Any, control: Any, **kw: Any) -> None:
            train_s = round(time.monotonic() - self.started, 1)
            with tempfile.TemporaryDirectory() as tmp:
                kw["model"].save_pretrained(tmp)
                entry = {"epoch": round(state.epoch), "train_s": train_s, **score(Path(tmp))}
            curve.append(entry)
            print(json.dumps(entry), flush=True)
            self.started = time.monotonic()

    start = {"epoch": 0, "train_s": 0.0, **score(None)}
    curve.append(start)
    print(json.dumps(start), flush=True)
    with tempfile.TemporaryDirectory() as out:
        train_sft(
            model_dir, train, eval_records, settings, out,
            precision=precision, callbacks=[EpochReadout()],
        )  # fmt: skip
    if not args.no_record:
        record(
            "sft_probe",
            {
                "partition": PARTITION,
                "home": str(args.home),
                "finetune": args.finetune,
                "learning_rate": args.lr,
                "answer_loss_weight": args.answer_weight,
                "lora_r": args.lora_r if args.finetune == "lora" else None,
                "fit_trajectories": len(train),
                "held_out_patients": len(held),
                "held_out_val": int(is_val.sum()),
                "held_out_deaths": int(labels.sum()),
                "precision": precision,
                "curve": curve,
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
