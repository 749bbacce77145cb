"""Cascade attention: a batch whose rows all start with the same tokens reads that prefix's KV
once per layer and step, instead of once per row.

Why: every prompt of a partition opens with the same system message (persona, instructions,
response format, worked example): 408 of the ~510 tokens of the MCTS benchmark's prompts. A
decoding step of a 64-row batch otherwise streams 64 copies of it from memory at every layer,
and on CPU that stream is most of the step (measured on the 2-core VM: SDPA 4.1 ms per layer for
64 rows x 545 tokens, about 40 % of a step). Here the rows' queries attend to the shared prefix
in one call (one K/V, all queries: a large, efficient block) and to their own keys in another;
the two partial results are merged exactly by their log-sum-exp weights.

The parts: ``kv_cache.SharedPrefixLayer`` is a cache layer that holds only a row's own keys but
reports the prefix in its length (so positions and masks cover it), :func:`cascade_attention`
is registered with transformers as the ``CASCADE`` attention implementation (it falls back to
SDPA for any module without a prefix attached), and :func:`shared_prefix_attention` switches a
model to it for the duration of a call. CPU only: its kernel is ATen's CPU flash attention,
which returns the log-sum-exp the merge needs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

CASCADE = "eagrl_cascade_sdpa"
_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def cascade_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention over ``module.shared_prefix_kv`` (keys, values ``[kv_heads, P, dim]``, seen by
    every query) followed by the rows' own ``key``/``value``; plain SDPA without a prefix.

    ``attention_mask`` is SDPA's boolean mask over prefix and own keys (True = attend); its
    first ``P`` columns are the prefix, which no query may be masked from.
    """
    prefix = getattr(module, "shared_prefix_kv", None)
    if prefix is None or query.device.type != "cpu" or dropout:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
            is_causal=is_causal, **kwargs,
        )  # fmt: skip
    prefix_keys, prefix_values = prefix
    rows, q_heads, q_len, dim = query.shape
    kv_heads, p_len, own_len = key.shape[1], prefix_keys.shape[1], key.shape[2]
    group = q_heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    # query heads h = kv_head * group + g: group them under their kv head, (g, position) rows
    grouped = query.reshape(rows, kv_heads, group * q_len, dim)
    if attention_mask is None:  # SDPA skipped the mask: causal over the row's own keys
        positions = torch.arange(own_len, device=query.device)
        own_mask = positions[None, :] <= positions[-q_len:, None]
    else:
        own_mask = attention_mask[..., p_len:]
        if own_mask.dtype != torch.bool:
            own_mask = own_mask == 0  # an additive float mask: 0 where attended
    # the kernel takes an additive mask in the query's dtype, one row per grouped query
    bias = torch.zeros(own_mask.shape, dtype=query.dtype, device=query.device)
    bias = bias.masked_fill_(~own_mask, float("-inf")).repeat(1, 1, group, 1)
    own_out, own_lse = _flash(grouped, key, value, attn_mask=bias, scale=scale)
    # every row's queries against the one prefix: [1, kv_heads, rows * group * q_len, dim]
    flat = grouped.transpose(0, 1).reshape(1, kv_heads, rows * group * q_len, dim)
    pre_out, pre_lse = _flash(flat, prefix_keys[None], prefix_values[None], scale=scale)
    pre_out = pre_out.reshape(kv_heads, rows, group * q_len, dim).transpose(0, 1)
    pre_lse = pre_lse.reshape(kv_heads, rows, group * q_len).transpose(0, 1)
    top = torch.maximum(own_lse, pre_lse)
    w_own, w_pre = (own_lse - top).exp(), (pre_lse - top).exp()
    total = w_own + w_pre
    out = (
        own_out.float() * (w_own / total)[..., None] + pre_out.float() * (w_pre / total)[..., None]
    )
    out = out.to(query.dtype).reshape(rows, q_heads, q_len, dim)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(CASCADE, cascade_attention)
AttentionMaskInterface.register(CASCADE, sdpa_mask)


def attention_modules(model: Any) -> dict[int, torch.nn.Module]:
    """The model's self-attention modules by layer index."""
    return {
        module.layer_idx: module
        for module in model.modules()
        if type(module).__name__.endswith("Attention") and hasattr(module, "layer_idx")
    }


def cascade_supported(model: Any) -> bool:
    """Cascade needs a CPU model that runs SDPA, with one attention module per cache layer."""
    device = next(model.parameters()).device
    n_layers = getattr(model.config, "num_hidden_layers", None)
    return (
        device.type == "cpu"
        and model.config._attn_implementation in ("sdpa", CASCADE)
        and len(attention_modules(model)) == n_layers
    )


@contextmanager
def shared_prefix_attention(
    model: Any, prefix_kv: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> Iterator[None]:
    """Within the block, every attention layer also attends to ``prefix_kv[layer]`` (keys,
    values ``[kv_heads, P, dim]``); the caller's cache must hold the rest (SharedPrefixLayer)."""
    modules = attention_modules(model)
    previous = model.config._attn_implementation
    for index, module in modules.items():
        module.shared_prefix_kv = prefix_kv[index]
    model.config._attn_implementation = CASCADE
    try:
        yield
    finally:
        model.config._attn_implementation = previous
        for module in modules.values():
            module.shared_prefix_kv = None
