"""Benchmark: the training forward+backward of GRPO and SFT, the pipeline's scoring against the
library's, side by side on the default model at the learning study's shapes.

- GRPO (``eagrl_pipeline.training.shared_prompt``): one micro-batch of ``--groups`` prompts x
  ``--generations`` completions through a LoRA policy, scored as trl 1.16 scores it (its fused
  LM head over every prompt + completion row, completion positions only) and with each group's
  prompt run once. Timed: the no-grad forward (trl's old-log-prob pass) and forward + backward
  (each of ``num_iterations`` updates). The log-probs of the two are compared.
- SFT (``eagrl_pipeline.training.sft.completion_window``,
  ``eagrl_pipeline.training.shared_prompt.forward_sharing_prefix``): a batch of ``--sft-batch``
  prompt + completion rows that start with the same ``--system-tokens`` (the system message)
  through the fully fine-tuned model, the answer-weighted loss over every position's logits
  (trl's forward), over the completion window's only, and over the window with the shared
  prefix run once.

Shapes, not text, decide the cost, so the token ids are seeded random draws. Each timing is the
median of ``--repeats`` after one warm-up call; the two variants alternate, so a machine that
slows down mid-run slows both. Figures are appended to ``benchmarks/results/scoring.json``
(not with ``--no-record``).

    .venv/bin/python -m benchmarks.scoring [--prompt-tokens 530 --completion-tokens 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.results import record

DEFAULT_MODELS_DIR = Path.home() / ".cache" / "eagrl-bench" / "models"


def _median_seconds(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median wall seconds per call, the calls interleaved, after one warm-up each."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def grpo_batch(
    vocab: int, groups: int, generations: int, prompt_tokens: int, completion_tokens: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Concatenated prompt + completion ids and mask as trl's loss builds them: prompts
    left-padded by up to a tenth, completions right-padded by up to a third, the rows of a
    group spread over the batch as trl's shuffle leaves them."""
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, vocab, (groups, prompt_tokens), generator=g)
    prompt_mask = torch.ones_like(prompts)
    for i in range(groups):
        prompt_mask[i, : int(torch.randint(0, prompt_tokens // 10 + 1, (1,), generator=g))] = 0
    order = torch.randperm(groups * generations, generator=g)
    prompt_ids = prompts.repeat_interleave(generations, dim=0)[order]
    prompt_mask = prompt_mask.repeat_interleave(generations, dim=0)[order]
    completions = torch.randint(3, vocab, (groups * generations, completion_tokens), generator=g)
    completion_mask = torch.ones_like(completions)
    for i in range(groups * generations):
        stop = int(
            torch.randint(completion_tokens * 2 // 3, completion_tokens + 1, (1,), generator=g)
        )
        completion_mask[i, stop:] = 0
    ids = torch.cat([prompt_ids, completions], dim=1)
    mask = torch.cat([prompt_mask, completion_mask], dim=1)
    return ids, mask, completion_tokens


def measure_grpo(model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from eagrl_pipeline.training.adaptive_clip import completion_positions_only
    from eagrl_pipeline.training.shared_prompt import score_sharing_prompts

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    ids, mask, n = grpo_batch(
        model.config.vocab_size,
        args.groups,
        args.generations,
        args.prompt_tokens,
        args.completion_tokens,
    )
    completion_mask = mask[:, -n:]
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :-n] = -100

    def trl_logps() -> torch.Tensor:
        with completion_positions_only():
            out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
        return out.log_probs[:, -n:]

    def shared_logps() -> torch.Tensor:
        return score_sharing_prompts(model, ids, mask, n, compute_entropy=True)[0]

    def backward(score: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def call() -> None:
            (score() * completion_mask).sum().backward()
            model.zero_grad(set_to_none=True)

        return call

    def no_grad(score: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def call() -> None:
            with torch.no_grad():
                score()

        return call

    with torch.no_grad():
        difference = float((trl_logps() - shared_logps()).abs().max())
    forward = _median_seconds(
        {"trl": no_grad(trl_logps), "shared": no_grad(shared_logps)}, args.repeats
    )
    update = _median_seconds(
        {"trl": backward(trl_logps), "shared": backward(shared_logps)}, args.repeats
    )
    rows, width = ids.shape
    return {
        "rows": rows,
        "tokens_per_row": width,
        "scored_tokens_trl": rows * width,
        "scored_tokens_shared": args.groups * (width - n) + rows * n,
        "max_abs_logp_difference": difference,
        "forward_s": forward,
        "forward_backward_s": update,
        "forward_speedup": forward["trl"] / forward["shared"],
        "forward_backward_speedup": update["trl"] / update["shared"],
    }


def measure_sft(model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    from eagrl_pipeline.training.sft import AnswerWeightedLoss, completion_window, load_tokenizer
    from eagrl_pipeline.training.shared_prompt import forward_sharing_prefix

    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    answer = tokenizer(" <Final answer> 0.85 </Final answer>", add_special_tokens=False)
    tail = torch.tensor(answer["input_ids"])
    g = torch.Generator().manual_seed(1)
    b, p, c = args.sft_batch, args.prompt_tokens, args.completion_tokens
    ids = torch.randint(3, model.config.vocab_size, (b, p + c), generator=g)
    ids[:, : args.system_tokens] = ids[:1, : args.system_tokens]
    ids[:, -len(tail) :] = tail
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, :p] = -100
    loss = AnswerWeightedLoss(tokenizer, 1000.0)

    def full() -> None:
        loss(model(input_ids=ids, use_cache=False), labels).backward()
        model.zero_grad(set_to_none=True)

    def window() -> None:
        keep = completion_window(labels)
        out = model(input_ids=ids, use_cache=False, logits_to_keep=keep)
        loss(out, labels[:, -keep:]).backward()
        model.zero_grad(set_to_none=True)

    def shared() -> None:
        keep = completion_window(labels)
        out = forward_sharing_prefix(model, ids, mask, keep)
        loss(out, labels[:, -keep:]).backward()
        model.zero_grad(set_to_none=True)

    calls = {"full_logits": full, "completion_window": window, "shared_prefix": shared}
    seconds = _median_seconds(calls, args.repeats)
    return {
        "rows": b,
        "tokens_per_row": p + c,
        "system_tokens": args.system_tokens,
        "forward_backward_s": seconds,
        "speedup": seconds["full_logits"] / seconds["completion_window"],
        "shared_prefix_speedup": seconds["completion_window"] / seconds["shared_prefix"],
        "total_speedup": seconds["full_logits"] / seconds["shared_prefix"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--prompt-tokens", type=int, default=530)
    parser.add_argument("--completion-tokens", type=int, default=100)
    parser.add_argument("--groups", type=int, default=2, help="prompts per GRPO micro-batch")
    parser.add_argument("--generations", type=int, default=4, help="completions per prompt")
    parser.add_argument("--sft-batch", type=int, default=4)
    parser.add_argument(
        "--system-tokens",
        type=int,
        default=215,
        help="leading tokens every SFT row shares (the study's system message on real TJH)",
    )
    parser.add_argument("--skip-grpo", action="store_true", help="measure SFT only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-record", action="store_true", help="do not append to the results")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from eagrl_pipeline.llm.base_model import ensure_default_model

    model_dir = ensure_default_model(args.models_dir)
    grpo = None if args.skip_grpo else measure_grpo(model_dir, args)
    if grpo is not None:
        print(
            f"GRPO micro-batch {grpo['rows']} x {grpo['tokens_per_row']} tokens "
            f"({args.groups} prompts x {args.generations}), scored tokens "
            f"{grpo['scored_tokens_trl']} -> {grpo['scored_tokens_shared']}; "
            f"max |log p difference| {grpo['max_abs_logp_difference']:.2e}"
        )
        for key, label in (("forward_s", "no-grad forward"), ("forward_backward_s", "fwd + bwd")):
            s = grpo[key]
            print(
                f"  {label:<16} trl {s['trl']:7.2f} s   shared prompts {s['shared']:7.2f} s   "
                f"{s['trl'] / s['shared']:.2f}x"
            )
    sft = measure_sft(model_dir, args)
    s = sft["forward_backward_s"]
    print(
        f"SFT batch {sft['rows']} x {sft['tokens_per_row']} tokens ({sft['system_tokens']} "
        f"shared), full fine-tune fwd + bwd: every position's logits {s['full_logits']:.2f} s   "
        f"completion window {s['completion_window']:.2f} s ({sft['speedup']:.2f}x)   "
        f"+ shared prefix {s['shared_prefix']:.2f} s ({sft['shared_prefix_speedup']:.2f}x; "
        f"{sft['total_speedup']:.2f}x in all)"
    )
    if not args.no_record:
        record(
            "scoring",
            {
                "threads": args.threads,
                "prompt_tokens": args.prompt_tokens,
                "completion_tokens": args.completion_tokens,
                "repeats": args.repeats,
                **({"grpo": grpo} if grpo is not None else {}),
                "sft": sft,
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
