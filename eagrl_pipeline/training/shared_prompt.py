"""GRPO scoring with each group's prompt run once: the prompt's KV is computed for the distinct
prompts of a micro-batch and shared by every completion of the group.

Why: trl scores every completion as its own prompt + completion sequence. A GRPO group is
``num_generations`` completions of one prompt, and here a prompt is ~530 tokens against a
~100-token completion, so most of each scoring forward (trl's old-log-prob pass and every
update's forward and backward) recomputed the same prompt 4 times. The prompt's keys and
values are computed once per distinct prompt (with gradient), gathered to the rows that share
it, and the completions run on top; gradients flow back through the shared KV, summed over the
group, which is the gradient of the unshared computation. Positions and masks are trl's (the
prompt's left padding included), so the log-probs and entropies are trl's own up to float
rounding (tested against trl's fused head).

Generation shares them too (:func:`group_prompt_cache`): trl hands ``generate`` every prompt
``num_generations`` times, and each copy was prefilled on its own.

SFT shares the same way across a batch (:func:`forward_sharing_prefix`): every trajectory of a
partition starts with the same system message (~215 of ~615 tokens on TJH), which trl runs once
per row in every forward and backward.

Used for one process and full-attention caches only (``can_share_prompts``); elsewhere trl's
path runs unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from eagrl_pipeline.llm.kv_cache import append_in_place, extend_cache


def can_share_prompts(model: Any) -> bool:
    """Whether the model's cache is plain full-attention layers (no sliding window, no
    recurrent state) that a gathered prompt KV can stand in for."""
    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def trainer_can_share(trainer: Any) -> bool:
    """Where a trainer's shared-KV forward is exact: one process (no DDP wrapper replaying two
    forwards), no activation checkpointing (it drops a layer's cache in a forward with
    gradient) and a full-attention cache (:func:`can_share_prompts`)."""
    args = trainer.args
    checkpointing = bool(
        getattr(args, "activation_checkpointing", False)
        or getattr(args, "gradient_checkpointing", False)
    )
    return (
        not checkpointing
        and trainer.accelerator.num_processes == 1
        and can_share_prompts(trainer.model)
    )


def distinct_prompts(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct (ids, mask) rows of a prompt batch and, per row, the index of its distinct
    prompt (a row's padding is part of what makes two prompts the same)."""
    width = prompt_ids.size(1)
    rows = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1)
    unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
    return unique[:, :width], unique[:, width:].to(prompt_mask.dtype), inverse


def score_sharing_prompts(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    *,
    temperature: float = 1.0,
    compute_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs (and entropies) ``[B, logits_to_keep]`` of the completion tokens, the
    last ``logits_to_keep`` columns of ``input_ids``, under ``model`` at ``temperature``; zero
    where ``attention_mask`` is 0, as trl returns them."""
    n = logits_to_keep
    prompt_ids, prompt_mask = input_ids[:, :-n], attention_mask[:, :-n]
    completion_ids, completion_mask = input_ids[:, -n:], attention_mask[:, -n:]
    ids, mask, inverse = distinct_prompts(prompt_ids, prompt_mask)
    prompt_cache = DynamicCache(config=model.config)
    first = model(
        input_ids=ids, attention_mask=mask, cache=prompt_cache, use_cache=True, logits_to_keep=1
    ).logits[:, -1]
    cache = DynamicCache(config=model.config)
    for index, layer in enumerate(prompt_cache.layers):
        cache.update(layer.keys[inverse], layer.values[inverse], index)
    rest = model(
        input_ids=completion_ids,
        attention_mask=attention_mask,
        cache=cache,
        use_cache=True,
        logits_to_keep=n,
    ).logits[:, :-1]
    logits = torch.cat([first[inverse].unsqueeze(1), rest], dim=1).float() / temperature
    log_probs = torch.log_softmax(logits, dim=-1)
    keep = completion_mask.bool()
    logps = log_probs.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1).masked_fill(~keep, 0.0)
    entropies = None
    if compute_entropy:
        entropies = -(log_probs.exp() * log_probs).sum(-1).masked_fill(~keep, 0.0)
    return logps, entropies


def group_prompt_cache(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> DynamicCache | None:
    """A cache for ``generate(input_ids=ids, attention_mask=mask, cache=...)`` holding every
    row's prompt but its last token, each distinct prompt prefilled once (positions from the
    mask, as ``generate`` counts them); None when no prompt repeats (nothing to share)."""
    unique, unique_mask, inverse = distinct_prompts(ids, mask)
    if unique.size(0) == ids.size(0) or ids.size(1) < 2:
        return None
    prefill = DynamicCache(config=model.config)
    with torch.no_grad():
        extend_cache(model, unique, unique_mask, 0, prefill)
    cache = append_in_place(DynamicCache(config=model.config))
    for index, layer in enumerate(prefill.layers):
        cache.update(layer.keys[inverse], layer.values[inverse], index)
    return cache


def common_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """How many leading columns hold the same real (unmasked) token in every row."""
    same = (input_ids == input_ids[:1]).all(dim=0) & attention_mask.bool().all(dim=0)
    differs = torch.nonzero(~same)
    return int(differs[0]) if differs.numel() else int(input_ids.size(1))


def forward_sharing_prefix(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    *,
    min_prefix: int = 8,
) -> Any | None:
    """``model(input_ids, attention_mask, logits_to_keep=...)`` for right-padded rows, with the
    leading tokens every row shares run once: their KV (with gradient) is expanded to the batch
    and the rows' tails run on top, at the positions they hold in the full rows. Returns the
    tail pass's output (its logits are the last ``logits_to_keep`` positions'), or None when
    sharing does not apply (one row, or fewer than ``min_prefix`` shared tokens before the
    logits window): the caller runs the plain forward."""
    batch, width = input_ids.shape
    shared = min(common_prefix_length(input_ids, attention_mask), width - logits_to_keep)
    if batch < 2 or shared < min_prefix:
        return None
    prefix_cache = DynamicCache(config=model.config)
    model(
        input_ids=input_ids[:1, :shared],
        attention_mask=attention_mask[:1, :shared],
        cache=prefix_cache,
        use_cache=True,
        logits_to_keep=1,
    )
    cache = DynamicCache(config=model.config)
    for index, layer in enumerate(prefix_cache.layers):
        expand = (batch, *layer.keys.shape[1:])
        cache.update(layer.keys.expand(expand), layer.values.expand(expand), index)
    return model(
        input_ids=input_ids[:, shared:],
        attention_mask=attention_mask,
        cache=cache,
        use_cache=True,
        logits_to_keep=logits_to_keep,
    )
