"""Probe: how far can the language model's answer alone go on these prompts?

The learning study's policies reach test AUROC ~0.7 on real TJH, against the issue's 0.90. This
probe separates the method from the model: it fine-tunes the model on the answer digit alone
("8" after ``<Final answer> 0.`` for a death, "2" for a survivor) over the pipeline's own prompts
of some training patients, and reads the digit distribution on held-out training and validation
patients after every epoch (never the test split). The curve says what the model can learn from
these prompts at this budget: if it stays short of 0.90, no reward shaping after it will get
there.

It reads an ``EAGRL_HOME`` where ``llm_prompts`` of the partition was materialized (the learning
study's ``--home``, for example) and the model folder the pipeline used:

    .venv/bin/python -m benchmarks.label_finetune --home /tmp/study --epochs 5 --full

Each epoch's held-out AUROC is printed and the curve is appended to
``benchmarks/results/label_finetune.json`` (not with ``--no-record``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from benchmarks.results import record

ANSWER = "<Final answer> 0."
TARGETS = {1: "8", 0: "2"}  # the digit after "0.": a death near 0.85, a survivor near 0.25


def held_out_split(
    prompts: pd.DataFrame, n_fit: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``n_fit`` seeded training patients to fit; the other training and all validation
    patients to read out. The test split is never touched."""
    train = prompts[prompts["split"] == "train"]
    fit_ids = np.random.default_rng(seed).permutation(train["patient_id"].to_numpy())[:n_fit]
    fit = train[train["patient_id"].isin(fit_ids)]
    held = prompts[prompts["split"].isin(["train", "val"]) & ~prompts["patient_id"].isin(fit_ids)]
    return fit, held


def _contexts(tokenizer: Any, frame: pd.DataFrame) -> list[str]:
    return [
        tokenizer.apply_chat_template(
            [{"role": "system", "content": s}, {"role": "user", "content": u}],
            tokenize=False,
            add_generation_prompt=True,
        )
        + ANSWER
        for s, u in zip(frame["system"], frame["user"], strict=True)
    ]


def _batch(tokenizer: Any, texts: list[str]) -> dict[str, torch.Tensor]:
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    enc["position_ids"] = (enc["attention_mask"].cumsum(1) - 1).clamp(min=0)
    return enc


def digit_scores(model: Any, tokenizer: Any, contexts: list[str], batch: int = 16) -> np.ndarray:
    """log p("8") − log p("2") at the answer's first digit: the ranking the readout gives."""
    ids = [tokenizer(TARGETS[k], add_special_tokens=False)["input_ids"][0] for k in (1, 0)]
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(contexts), batch):
            logits = model(**_batch(tokenizer, contexts[i : i + batch])).logits[:, -1].float()
            log_p = torch.log_softmax(logits, -1)
            out += (log_p[:, ids[0]] - log_p[:, ids[1]]).tolist()
    return np.asarray(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="EAGRL_HOME with llm_prompts")
    parser.add_argument("--partition", default="tjh-mortality")
    parser.add_argument("--model", type=Path, default=None, help="default: the home's SmolLM2")
    parser.add_argument("--fit", type=int, default=100, help="training patients to fit")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=None, help="default 5e-4 LoRA, 3e-5 full")
    parser.add_argument("--full", action="store_true", help="every weight, not a LoRA")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-record", action="store_true", help="do not append to the results")
    args = parser.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    prompts = pd.read_parquet(
        args.home / "artifacts" / "llm_prompts" / args.partition / "prompts.parquet"
    )
    fit, held = held_out_split(prompts, args.fit, args.seed)
    model_dir = args.model or args.home / "models" / "SmolLM2-135M-Instruct"
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lr = args.lr or (3e-5 if args.full else 5e-4)
    if not args.full:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    fit_ctx, held_ctx = _contexts(tokenizer, fit), _contexts(tokenizer, held)
    fit_labels, held_labels = fit["label"].to_numpy(), held["label"].to_numpy()
    curve = [float(roc_auc_score(held_labels, digit_scores(model, tokenizer, held_ctx)))]
    mode = "full" if args.full else "LoRA"
    print(
        f"[probe] {len(fit)} fit, {len(held)} held out ({held_labels.sum()} deaths); {mode} lr "
        f"{lr}; epoch 0 AUROC {curve[0]:.3f}",
        flush=True,
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    rng, started, seconds = np.random.default_rng(args.seed), time.monotonic(), []
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = rng.permutation(len(fit_ctx))
        for start in range(0, len(fit_ctx), args.batch):
            rows = order[start : start + args.batch]
            enc = _batch(tokenizer, [fit_ctx[i] + TARGETS[int(fit_labels[i])] for i in rows])
            labels = torch.full_like(enc["input_ids"], -100)
            labels[:, -1] = enc["input_ids"][:, -1]  # the answer digit is the only target
            model(**enc, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        seconds.append(time.monotonic() - started)
        curve.append(float(roc_auc_score(held_labels, digit_scores(model, tokenizer, held_ctx))))
        print(f"[probe] epoch {epoch} ({seconds[-1]:.0f} s) AUROC {curve[-1]:.3f}", flush=True)
    print("label_finetune: " + " ".join(f"epoch{i}={a:.3f}" for i, a in enumerate(curve)))
    if not args.no_record:
        record(
            "label_finetune",
            {
                "partition": args.partition,
                "model": str(model_dir),
                "mode": "full" if args.full else "lora r16",
                "learning_rate": lr,
                "fit_patients": len(fit),
                "held_out_patients": len(held),
                "held_out_deaths": int(held_labels.sum()),
                "held_out_auroc_per_epoch": curve,
                "seconds_per_epoch_cumulative": seconds,
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
