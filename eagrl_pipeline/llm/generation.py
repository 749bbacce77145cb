"""One batched generation helper shared by every LLM stage (zero-shot, MCTS, evaluation).

Left padding with attention masks keeps each prompt's last token at the end of the row, so a
prompt generates the same greedy text alone or in a batch; the KV cache is on; sampling is
seeded per batch inside a forked RNG, so a seed reproduces results without disturbing the
caller's random state.

Shared-prefix reuse: every prompt of a partition starts with the same system message (persona,
instructions, response format, worked example), about half of each prompt. Batches never mix
system messages; the tokens a batch's prompts share are prefilled once per call (cached by
their token ids) and copied into the batch; each row then feeds only its own tail, placed after
the prefix with padding in the middle and positions taken from the attention mask, so a row
computes what it would alone (prefill drops by the prefix's share; see ``benchmarks/mcts.py``).

The KV cache appends in place (``eagrl_pipeline.llm.kv_cache``), and on CPU the shared prefix is
not copied into the rows at all: the rows attend to its one copy (``eagrl_pipeline.llm.cascade``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    GenerationConfig,
    LogitsProcessorList,
)
from transformers.cache_utils import DynamicLayer

from eagrl_pipeline.llm.cascade import cascade_supported, shared_prefix_attention
from eagrl_pipeline.llm.guided import PlanKind, ResponseScaffold
from eagrl_pipeline.llm.kv_cache import append_in_place, extend_cache, shared_prefix_cache
from eagrl_pipeline.llm.sampling import TopKTopPSampler

Conversation = list[dict[str, str]]
DTypeName = Literal["auto", "bf16", "fp32"]


@dataclass(frozen=True)
class GenerationResult:
    """Decoded completion and token counts; ``finished`` means it stopped at an EOS token.

    ``answer_expectation``: with a scaffold that forces the answer's ``0.``, the expected
    probability under the model's distribution at the answer's first digit (see
    ``eagrl_pipeline.llm.guided``); None without one.
    """

    text: str
    n_prompt_tokens: int
    n_new_tokens: int
    finished: bool
    answer_expectation: float | None = None


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


# CPU flags that mean bf16 dot products run in hardware: Intel AMX tiles (Sapphire Rapids on),
# and AVX-512 BF16 (Cooper Lake, AMD Zen 4 on).
NATIVE_BF16_FLAGS: tuple[str, ...] = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_native_bf16() -> str | None:
    """The first flag of ``NATIVE_BF16_FLAGS`` this CPU reports, or None.

    Where bf16 is native, generation in bf16 is faster than fp32 (measured on 2 threads: an AMX
    Xeon 1,111 vs 274 GFLOP/s on a 2048³ matmul; an AMD EPYC with AVX-512 BF16 and no AMX 415 vs
    182, and 352 vs 159 on a 64-row decoding-shaped product); elsewhere torch emulates bf16,
    slower than fp32. Flags rather than a timing decide, so the choice is the same from run to
    run on one machine (:func:`bf16_speed_probe` measures it for the record). Linux reports the
    flags in /proc/cpuinfo; other systems count as without.
    """
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return None
    return next((flag for flag in NATIVE_BF16_FLAGS if flag in flags), None)


@functools.cache
def bf16_speed_probe(rows: int = 64, inner: int = 576, cols: int = 1536) -> dict[str, float]:
    """GFLOP/s of one decoding-shaped matmul (SmolLM2's MLP at 64 rows) in fp32 and bf16 on this
    CPU, about 0.1 s: the evidence next to :func:`cpu_native_bf16`'s choice in asset metadata."""
    import time

    out: dict[str, float] = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, cols, dtype=dtype)
        for _ in range(3):
            a @ b
        reps, started = 50, time.perf_counter()
        for _ in range(reps):
            a @ b
        seconds = time.perf_counter() - started
        out[f"{name}_gflops"] = round(2 * rows * inner * cols * reps / seconds / 1e9, 1)
    out["bf16_speedup"] = round(out["bf16_gflops"] / out["fp32_gflops"], 2)
    return out


def resolve_dtype(dtype: DTypeName | str, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 on a bf16-capable GPU or a CPU with native bf16 (AMX or AVX-512 BF16),
    fp32 elsewhere (emulated bf16 on other CPUs is slower than fp32)."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if bf16_supported(device) else torch.float32
        native = device.type == "cpu" and cpu_native_bf16() is not None
        return torch.bfloat16 if native else torch.float32
    if dtype == "fp32":
        return torch.float32
    if dtype == "bf16":
        if not bf16_supported(device):
            raise ValueError(f"dtype 'bf16' is not supported on {device}; use 'fp32' or 'auto'.")
        return torch.bfloat16
    raise ValueError(f"unknown dtype {dtype!r}; expected 'auto', 'bf16' or 'fp32'.")


def dtype_choice(dtype: DTypeName | str, device: torch.device) -> dict[str, Any]:
    """What ``resolve_dtype`` picked and why, for asset metadata."""
    chosen = resolve_dtype(dtype, device)
    out: dict[str, Any] = {
        "generation_dtype": str(chosen).removeprefix("torch."),
        "dtype_setting": dtype,
        "device": str(device),
    }
    if device.type == "cpu":
        out["cpu_native_bf16_flag"] = cpu_native_bf16() or "none"
        out.update({f"cpu_probe_{k}": v for k, v in bf16_speed_probe().items()})
    return out


PolicyFormat = Literal["lora", "full"]


def policy_format(folder: str | Path | None) -> PolicyFormat | None:
    """What a trained policy folder holds: a LoRA adapter (``adapter_config.json``, applied to
    the model it was trained on) or a whole fine-tuned model (``config.json``, loaded in its
    place); None where it holds neither. SFT and GRPO write one or the other (``finetune``)."""
    if folder is None:
        return None
    folder = Path(folder)
    if (folder / "adapter_config.json").is_file():
        return "lora"
    if (folder / "config.json").is_file():
        return "full"
    return None


def load_model(
    path: str | Path,
    device: str = "auto",
    dtype: DTypeName | str = "auto",
    attn_implementation: str | None = None,
    adapter_dir: str | Path | None = None,
) -> tuple[Any, Any]:
    """Load a local model folder for generation: eval mode, left padding, a pad token.

    With ``adapter_dir`` (a policy folder from the SFT or GRPO stage) a LoRA adapter is merged
    into the weights, so every policy variant generates at the base model's speed; a whole
    fine-tuned model is loaded instead of the base model (the tokenizer stays the base's).
    """
    target = resolve_device(device)
    kind = policy_format(adapter_dir)
    if adapter_dir is not None and kind is None:
        raise FileNotFoundError(
            f"{adapter_dir} holds neither a LoRA adapter (adapter_config.json) nor a model "
            "(config.json): materialize the stage that trains it first"
        )
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype, target), "local_files_only": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(adapter_dir if kind == "full" else path, **kwargs)
    if kind == "lora":
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


def reuse_blocker(model: Any) -> str | None:
    """Why KV prefix reuse cannot work for this model, or None when it can."""
    try:
        layers = DynamicCache(config=model.config).layers
    except Exception as exc:  # an exotic config: fall back to plain generation
        return f"DynamicCache(config) failed: {exc}"
    if not all(type(layer) is DynamicLayer for layer in layers):
        return "cache layers are not plain full-attention DynamicLayers (sliding/linear attention)"
    return None


def shared_prefix_length(encoded: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with, leaving each at least one token of its own to feed.

    >>> shared_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]])
    2
    >>> shared_prefix_length([[1, 2], [1, 2]])
    1
    """
    if not encoded:
        return 0
    first, n = encoded[0], min(len(e) for e in encoded) - 1
    for other in encoded[1:]:
        n = next((i for i in range(n) if other[i] != first[i]), n)
    return max(n, 0)


@dataclass
class _SharedPrefix:
    """The KV of the tokens every prompt of a batch starts with (computed with a batch of one).
    With ``cascade`` the rows attend to this one copy, keeping only its last token as their own
    (so every row has a real key of its own before any padding); otherwise it is copied into
    each row."""

    tokens: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    def prefill(cls, model: Any, tokens: list[int]) -> _SharedPrefix:
        device = next(model.parameters()).device
        cache = DynamicCache(config=model.config)
        model(
            input_ids=torch.tensor([tokens], device=device),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return cls(tokens, [(layer.keys, layer.values) for layer in cache.layers])

    def attention(self, model: Any, cascade: bool) -> AbstractContextManager[None]:
        """Where the rows' attention reads this prefix from: its one copy, or their own."""
        if not cascade:
            return nullcontext()
        return shared_prefix_attention(
            model, [(k[0, :, :-1], v[0, :, :-1]) for k, v in self.layers]
        )

    def batch_inputs(
        self, model: Any, tails: Sequence[Sequence[int]], pad_id: int, cascade: bool
    ) -> dict[str, Any]:
        """``generate`` inputs for rows ``prefix + padding + tail``, the cache filled up to each
        row's last token (which ``generate`` feeds to get the first logits); with ``cascade``
        run ``generate`` inside :meth:`attention`."""
        device = next(model.parameters()).device
        n, width_p, width_t = len(tails), len(self.tokens), max(len(t) for t in tails)
        ids = torch.full((n, width_p + width_t), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        ids[:, :width_p] = torch.tensor(self.tokens)
        mask[:, :width_p] = 1
        for i, tail in enumerate(tails):
            ids[i, ids.shape[1] - len(tail) :] = torch.tensor(tail)
            mask[i, ids.shape[1] - len(tail) :] = 1
        own = 1 if cascade else width_p  # prefix positions each row holds itself
        rows = [
            (
                k[:, :, width_p - own :].expand(n, -1, -1, -1).clone(),
                v[:, :, width_p - own :].expand(n, -1, -1, -1).clone(),
            )
            for k, v in self.layers
        ]
        cache = shared_prefix_cache(model.config, rows, own, width_p - own)
        ids, mask = ids.to(device), mask.to(device)
        if width_t > 1:
            with self.attention(model, cascade):
                extend_cache(model, ids, mask, width_p, cache)
        return {"input_ids": ids, "attention_mask": mask, "cache": cache}


def _batches(
    prompts: Sequence[str | Conversation], encoded: Sequence[Sequence[int]], batch_size: int
) -> list[list[int]]:
    """Row indices per batch: prompts grouped by their system message (a batch never mixes two,
    so its rows share that prefix), longest first within a group to waste little on padding."""
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        first = prompt[0] if not isinstance(prompt, str) and prompt else {}
        system = first.get("content", "") if first.get("role") == "system" else ""
        groups.setdefault(system, []).append(i)
    batches = []
    for rows in groups.values():
        rows = sorted(rows, key=lambda i: -len(encoded[i]))
        batches += [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]
    return batches


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
    scaffold_plan: PlanKind = "answer",
    prefix_reuse: bool = True,
    min_shared_tokens: int = 32,
) -> list[GenerationResult]:
    """Generate one completion per prompt, in the prompts' order.

    Prompts are grouped by system message, then by length (little compute wasted on padding).
    Sampling knobs are all explicit (``top_k=0`` means off) so a model's own
    ``generation_config`` defaults, such as Qwen's top_k=20 or repetition penalty, never change
    results silently. With a ``scaffold`` the response tags are forced (``scaffold_plan``
    "answer": ``scaffold_steps`` steps, then the final block; "direct"/"think": the prompting
    baselines' shapes, see ``RowPlan``). With ``prefix_reuse`` the tokens a batch's prompts
    share (at least ``min_shared_tokens``) are prefilled once per call (see the module
    docstring); results match plain generation.
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
        do_sample=False,  # a sampled draw is TopKTopPSampler's (below): generate takes its argmax
        temperature=1.0,
        top_p=1.0,
        top_k=50,  # unused when greedy; 50 is what validation expects
        repetition_penalty=1.0,
        num_beams=1,
        use_cache=True,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
    )
    device = next(model.parameters()).device
    prefixes: dict[tuple[int, ...], _SharedPrefix] = {}
    in_place = reuse_blocker(model) is None
    cascade = in_place and cascade_supported(model)
    results: dict[int, GenerationResult] = {}
    for b, rows in enumerate(_batches(prompts, encoded, batch_size)):
        shared = 0
        if prefix_reuse and in_place and len(rows) > 1:
            shared = shared_prefix_length([encoded[i] for i in rows])
        if shared >= min_shared_tokens:
            prefix = prefixes.get(key := tuple(encoded[rows[0]][:shared]))
            if prefix is None:
                prefix = prefixes[key] = _SharedPrefix.prefill(model, list(key))
            batch = prefix.batch_inputs(model, [encoded[i][shared:] for i in rows], pad_id, cascade)
            attention = prefix.attention(model, cascade)
        else:
            batch = dict(
                tokenizer.pad(
                    {"input_ids": [encoded[i] for i in rows]}, padding=True, return_tensors="pt"
                ).to(device)
            )
            if in_place:
                batch["cache"] = append_in_place(DynamicCache(config=model.config))
            attention = nullcontext()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed + b)
            guided = (
                scaffold.processor(
                    [scaffold.plan(scaffold_plan, scaffold_steps, False, prompts[i]) for i in rows]
                )
                if scaffold is not None
                else None
            )
            guide = LogitsProcessorList([guided] if guided is not None else [])
            if do_sample:
                guide.append(TopKTopPSampler(temperature, top_p, top_k))
            with attention:
                output = model.generate(**batch, generation_config=config, logits_processor=guide)
        new_tokens = output[:, batch["input_ids"].shape[1] :].tolist()
        for j, (i, tokens) in enumerate(zip(rows, new_tokens, strict=True)):
            stop = next((k for k, t in enumerate(tokens) if t in eos_ids), None)
            kept = tokens if stop is None else tokens[: stop + 1]
            results[i] = GenerationResult(
                text=tokenizer.decode(kept, skip_special_tokens=True),
                n_prompt_tokens=len(encoded[i]),
                n_new_tokens=len(kept),
                finished=stop is not None,
                answer_expectation=guided.answer_expectations[j] if guided else None,
            )
    return [results[i] for i in range(len(texts))]
