"""One batched generation helper shared by every LLM stage (zero-shot, MCTS, evaluation).

Left padding with attention masks keeps each prompt's last token at the end of the row, so a
prompt generates the same greedy text alone or in a batch; the KV cache is on; sampling is
seeded per batch inside a forked RNG, so a seed reproduces results without disturbing the
caller's random state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessorList,
)

from eagrl_pipeline.llm.guided import ResponseScaffold, RowPlan

Conversation = list[dict[str, str]]
DTypeName = Literal["auto", "bf16", "fp32"]


@dataclass(frozen=True)
class GenerationResult:
    """Decoded completion and token counts; ``finished`` means it stopped at an EOS token."""

    text: str
    n_prompt_tokens: int
    n_new_tokens: int
    finished: bool


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def bf16_supported(device: torch.device) -> bool:
    """bf16 on CUDA needs hardware support; on CPU torch always implements it."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def resolve_dtype(dtype: DTypeName | str, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 on a bf16-capable GPU and fp32 elsewhere (CPU bf16 is usually slower)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" and bf16_supported(device) else torch.float32
    if dtype == "fp32":
        return torch.float32
    if dtype == "bf16":
        if not bf16_supported(device):
            raise ValueError(f"dtype 'bf16' is not supported on {device}; use 'fp32' or 'auto'.")
        return torch.bfloat16
    raise ValueError(f"unknown dtype {dtype!r}; expected 'auto', 'bf16' or 'fp32'.")


def load_model(
    path: str | Path,
    device: str = "auto",
    dtype: DTypeName | str = "auto",
    attn_implementation: str | None = None,
    adapter_dir: str | Path | None = None,
) -> tuple[Any, Any]:
    """Load a local model folder for generation: eval mode, left padding, a pad token.

    With ``adapter_dir`` (a LoRA folder from the SFT or GRPO stage) the adapter is merged into
    the weights, so every policy variant generates at the base model's speed.
    """
    target = resolve_device(device)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype, target), "local_files_only": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model = model.to(target).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def render_prompts(
    tokenizer: Any, prompts: Sequence[str | Conversation], use_chat_template: bool = True
) -> list[str]:
    """Prompt strings as the model sees them; a bare string becomes one user message."""
    if not use_chat_template:
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError("conversations need use_chat_template=True")
        return [str(p) for p in prompts]
    rendered = []
    for prompt in prompts:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        rendered.append(
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        )
    return rendered


@torch.inference_mode()
def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | Conversation],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    do_sample: bool = False,
    seed: int = 0,
    batch_size: int = 8,
    use_chat_template: bool = True,
    scaffold: ResponseScaffold | None = None,
    scaffold_steps: int = 1,
) -> list[GenerationResult]:
    """Generate one completion per prompt, in the prompts' order.

    Prompts are grouped by length to waste little compute on padding. Sampling knobs are all
    explicit (``top_k=0`` means off) so a model's own ``generation_config`` defaults, such as
    Qwen's top_k=20 or repetition penalty, never change results silently. With a ``scaffold``
    the response tags are forced (``scaffold_steps`` steps, then the final block).
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError("max_new_tokens and batch_size must be >= 1")
    texts = render_prompts(tokenizer, prompts, use_chat_template)
    # Chat templates already hold their special tokens; adding a BOS again would double it.
    encoded = tokenizer(texts, add_special_tokens=not use_chat_template)["input_ids"]
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature if do_sample else 1.0,
        top_p=top_p if do_sample else 1.0,
        top_k=top_k if do_sample else 50,  # unused when greedy; 50 is what validation expects
        repetition_penalty=1.0,
        num_beams=1,
        use_cache=True,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
    )
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
    results: dict[int, GenerationResult] = {}
    for b, start in enumerate(range(0, len(order), batch_size)):
        rows = order[start : start + batch_size]
        batch = tokenizer.pad(
            {"input_ids": [encoded[i] for i in rows]}, padding=True, return_tensors="pt"
        ).to(device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed + b)
            guide = LogitsProcessorList(
                [scaffold.processor([RowPlan("answer", scaffold_steps)] * len(rows))]
                if scaffold is not None
                else []
            )
            output = model.generate(**batch, generation_config=config, logits_processor=guide)
        new_tokens = output[:, batch["input_ids"].shape[1] :].tolist()
        for i, tokens in zip(rows, new_tokens, strict=True):
            stop = next((k for k, t in enumerate(tokens) if t in eos_ids), None)
            kept = tokens if stop is None else tokens[: stop + 1]
            results[i] = GenerationResult(
                text=tokenizer.decode(kept, skip_special_tokens=True),
                n_prompt_tokens=len(encoded[i]),
                n_new_tokens=len(kept),
                finished=stop is not None,
            )
    return [results[i] for i in range(len(texts))]
