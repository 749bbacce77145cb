"""The top-k/top-p sampler keeps what transformers' warper chain keeps and draws as it does."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from eagrl_pipeline.llm.sampling import TopKTopPSampler


def _reference(scores: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    chain = LogitsProcessorList()
    if temperature != 1.0:
        chain.append(TemperatureLogitsWarper(temperature))
    if top_k:
        chain.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        chain.append(TopPLogitsWarper(top_p))
    return chain(torch.zeros(scores.shape[0], 1, dtype=torch.long), scores.clone())


def _logits(rows: int, vocab: int, spread: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=generator) * spread


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "candidates"),
    [
        (0.8, 0, 0.95, 64),
        (1.0, 0, 0.9, 256),
        (0.7, 20, 0.95, 64),  # top-k inside the candidates
        (1.3, 100, 0.8, 16),  # top-k beyond the candidates
        (1.0, 40, 1.0, 64),  # top-k only
        (0.5, 0, 0.5, 1),
    ],
)
@pytest.mark.parametrize("spread", [0.3, 3.0, 8.0])  # flat rows need the fallback sort
def test_matches_transformers_chain(
    temperature: float, top_k: int, top_p: float, candidates: int, spread: float
) -> None:
    scores = _logits(12, 2000, spread, seed=int(spread * 10) + top_k)
    ours = TopKTopPSampler(temperature, top_p, top_k, candidates).filter(scores.clone())
    theirs = _reference(scores, temperature, top_k, top_p)
    assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
    kept = torch.isfinite(theirs)
    assert torch.allclose(ours[kept], theirs[kept])
    assert bool(torch.isfinite(ours).any(-1).all())


def test_masked_rows_keep_only_allowed_tokens() -> None:
    """Guided decoding masks all but a few tokens first; the filter never revives them."""
    scores = _logits(4, 500, 2.0, seed=3)
    allowed = torch.zeros_like(scores, dtype=torch.bool)
    allowed[:, [5, 17, 99]] = True
    allowed[0] = False
    allowed[0, 7] = True
    masked = scores.masked_fill(~allowed, -float("inf"))
    sampler = TopKTopPSampler(0.8, 0.95, 0, candidates=64)
    ours = sampler.filter(masked.clone())
    theirs = _reference(masked, 0.8, 0, 0.95)
    assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
    assert not bool((torch.isfinite(ours) & ~allowed).any())
    assert torch.isfinite(ours[0]).sum() == 1
    drawn = sampler(None, masked.clone()).argmax(-1)
    assert bool(allowed.gather(-1, drawn[:, None]).all())


@pytest.mark.parametrize("candidates", [256, 8])  # 8: the flat rows take the full draw
def test_draws_follow_the_filtered_distribution(candidates: int) -> None:
    """One-hot output; over many draws each token's frequency matches transformers' chain."""
    row = _logits(1, 300, 1.0, seed=5)
    reference = _reference(row, 0.9, 0, 0.9).softmax(-1)[0]
    sampler = TopKTopPSampler(0.9, 0.9, 0, candidates)
    torch.manual_seed(0)
    out = sampler(None, row.expand(20_000, -1).clone())
    assert bool((torch.isfinite(out).sum(-1) == 1).all())
    counts = torch.bincount(out.argmax(-1), minlength=300).double() / 20_000
    assert bool((counts[reference == 0] == 0).all())
    assert torch.allclose(counts, reference.double(), atol=0.01)


def test_a_seed_reproduces_the_draws() -> None:
    scores = _logits(8, 1000, 2.0, seed=2)
    sampler = TopKTopPSampler(0.8, 0.95)
    draws = []
    for _ in range(2):
        torch.manual_seed(7)
        draws.append(sampler(None, scores.clone()).argmax(-1))
    assert torch.equal(draws[0], draws[1])


@pytest.mark.parametrize(
    "kwargs", [{"temperature": 0.0}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}]
)
def test_bad_settings_are_refused(kwargs: dict) -> None:
    settings = {"temperature": 1.0, "top_p": 0.9, "top_k": 0} | kwargs
    with pytest.raises(ValueError):
        TopKTopPSampler(**settings)
