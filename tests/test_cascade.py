"""Cascade attention (a batch-wide prompt prefix read once) against plain SDPA."""

from __future__ import annotations

import os

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from eagrl_pipeline.llm.cascade import cascade_attention

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class _Attention(torch.nn.Module):
    """What the attention functions read from a model's attention module."""

    def __init__(self, groups: int, prefix=None):
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, True
        self.shared_prefix_kv = prefix


def _inputs(rows=3, q_heads=6, kv_heads=2, prefix=7, own=9, q_len=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    dim = 8
    query = torch.randn(rows, q_heads, q_len, dim, generator=g)
    pk, pv = torch.randn(2, kv_heads, prefix, dim, generator=g)
    key = torch.randn(rows, kv_heads, own, dim, generator=g)
    value = torch.randn(rows, kv_heads, own, dim, generator=g)
    # left padding in the rows' own part (row r has r padded positions), causal for the queries
    positions = torch.arange(prefix + own)
    causal = positions[None, :] <= positions[-q_len:, None] if q_len > 1 else None
    mask = torch.ones(rows, 1, q_len, prefix + own, dtype=torch.bool)
    for r in range(rows):
        mask[r, :, :, prefix : prefix + r] = False
    if causal is not None:
        mask &= causal
    return query, (pk, pv), key, value, mask


def _plain(query, prefix, key, value, mask, groups):
    """The same attention with the prefix copied into every row."""
    rows = key.shape[0]
    full_k = torch.cat([prefix[0].expand(rows, -1, -1, -1), key], 2)
    full_v = torch.cat([prefix[1].expand(rows, -1, -1, -1), value], 2)
    return sdpa_attention_forward(_Attention(groups), query, full_k, full_v, mask)[0]


@pytest.mark.parametrize("q_len", [1, 4])
@pytest.mark.parametrize("kv_heads", [1, 2, 6])
def test_cascade_matches_sdpa_over_the_concatenated_keys(q_len: int, kv_heads: int) -> None:
    query, prefix, key, value, mask = _inputs(kv_heads=kv_heads, q_len=q_len)
    groups = 6 // kv_heads
    got, _ = cascade_attention(_Attention(groups, prefix), query, key, value, mask)
    expected = _plain(query, prefix, key, value, mask, groups)
    assert got.shape == expected.shape == (3, q_len, 6, 8)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_cascade_without_a_mask_is_causal_over_the_rows_own_keys() -> None:
    query, prefix, key, value, _ = _inputs(q_len=3)
    positions = torch.arange(7 + 9)
    causal = (positions[None, :] <= positions[-3:, None]).expand(3, 1, 3, 16)
    got, _ = cascade_attention(_Attention(3, prefix), query, key, value, None)
    torch.testing.assert_close(
        got, _plain(query, prefix, key, value, causal, 3), atol=1e-5, rtol=1e-5
    )


def test_cascade_in_bf16_is_close_to_sdpa() -> None:
    query, prefix, key, value, mask = _inputs(own=40, prefix=300)
    half = [t.bfloat16() for t in (query, *prefix, key, value)]
    query, pk, pv, key, value = half
    got, _ = cascade_attention(_Attention(3, (pk, pv)), query, key, value, mask)
    expected = _plain(query, (pk, pv), key, value, mask, 3)
    torch.testing.assert_close(got.float(), expected.float(), atol=2e-2, rtol=2e-2)


def test_a_module_without_a_prefix_runs_plain_sdpa() -> None:
    query, _, key, value, mask = _inputs()
    got, _ = cascade_attention(_Attention(3), query, key, value, mask[..., 7:])
    expected, _ = sdpa_attention_forward(_Attention(3), query, key, value, mask[..., 7:])
    assert torch.equal(got, expected)
