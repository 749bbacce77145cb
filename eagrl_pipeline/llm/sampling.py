"""Temperature, top-k and top-p sampling in one logits processor, without touching the vocabulary
more than once per step.

Why: transformers' ``TopPLogitsWarper`` sorts the whole vocabulary at every decoding step, and
its sampling step draws with ``torch.multinomial`` over the whole vocabulary too. With SmolLM2's
49,152 tokens and 64 rows on 2 CPU threads the draw alone took 44-66 ms of a ~200 ms step (the
CPU multinomial makes one random number per vocabulary entry), and the sort ~15 ms for 16 rows.
The nucleus only ever holds the few most likely tokens, so :class:`TopKTopPSampler` takes the
top ``candidates`` with ``torch.topk``, finds the nucleus among them and draws among them
(0.5 ms for 64 rows); a row whose candidates hold less than ``top_p`` of the mass (a very flat
distribution) falls back to the full sort and a full-vocabulary draw. The kept set is the one
transformers' ``TemperatureLogitsWarper`` -> ``TopKLogitsWarper`` -> ``TopPLogitsWarper`` chain
keeps and the draw follows the same renormalised probabilities (both tested; two finite logits
tied exactly at the k-th place are the one case where transformers keeps both and this one).
The sampler returns the drawn token as the only finite logit, so ``generate`` runs with
``do_sample=False`` and its argmax takes it.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor


class TopKTopPSampler(LogitsProcessor):
    """Scale by ``temperature``, keep the ``top_k`` best (0: all), then the smallest set of most
    likely tokens whose probability reaches ``top_p``, and draw one of them per row.

    Pass it last in ``logits_processor`` with ``do_sample=False`` (the draw is done here, so
    the seed set around ``generate`` still makes it reproducible). :meth:`filter` gives the
    kept logits without drawing.
    """

    def __init__(self, temperature: float, top_p: float, top_k: int = 0, candidates: int = 256):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if top_k < 0 or candidates < 1:
            raise ValueError("top_k must be >= 0 and candidates >= 1")
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.candidates = candidates

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        values, indices, short, full = self._candidates(scores)
        drawn = torch.empty(scores.shape[0], dtype=torch.long, device=scores.device)
        if values is not None:
            pick = torch.multinomial(values.softmax(-1), 1)
            drawn[:] = indices.gather(-1, pick).squeeze(-1)
        if full is not None:
            drawn[short] = torch.multinomial(full.softmax(-1), 1).squeeze(-1)
        out = torch.full_like(scores, -float("inf"))
        return out.scatter_(-1, drawn[:, None], 0.0)

    def filter(self, scores: torch.Tensor) -> torch.Tensor:
        """The kept logits (temperature-scaled), every other one ``-inf``."""
        values, indices, short, full = self._candidates(scores)
        out = torch.full_like(scores, -float("inf"))
        if values is not None:
            out.scatter_(-1, indices, values)
        if full is not None:
            out[short] = full
        return out

    def _candidates(
        self, scores: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """Kept logits among each row's candidates (``-inf`` where dropped) with their token
        ids, the rows whose nucleus reaches past the candidates, and those rows' full filtered
        logits."""
        if self.temperature != 1.0:
            scores = scores / self.temperature
        vocab = scores.shape[-1]
        limit = min(self.top_k, vocab) if self.top_k > 0 else vocab
        if limit < vocab and limit <= self.candidates:  # the top-k set holds the whole nucleus
            values, indices = scores.topk(limit, dim=-1)
            log_norm = values.logsumexp(-1, keepdim=True)
        else:
            if limit < vocab:
                kth = scores.topk(limit, dim=-1).values[..., -1:]
                scores = scores.masked_fill(scores < kth, -float("inf"))
            if self.top_p >= 1.0 and limit == vocab:
                every_row = torch.ones(len(scores), dtype=torch.bool, device=scores.device)
                return None, None, every_row, scores
            values, indices = scores.topk(min(self.candidates, vocab), dim=-1)
            log_norm = scores.logsumexp(-1, keepdim=True)
        probs = (values - log_norm).exp()
        before = probs.cumsum(-1) - probs  # mass of the tokens ranked above each candidate
        keep = (before < self.top_p) | (self.top_p >= 1.0)
        keep[..., 0] = True
        values = values.masked_fill(~keep, -float("inf"))
        short = torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
        if values.shape[-1] < limit:  # a flat row's nucleus may reach past the candidates
            short = keep[..., -1] & (before[..., -1] + probs[..., -1] < self.top_p)
        if not bool(short.any()):
            return values, indices, short, None
        full = self._full(scores[short])
        if bool(short.all()):
            return None, None, short, full
        return values, indices, short, full

    def _full(self, scores: torch.Tensor) -> torch.Tensor:
        """transformers' top-p over the whole (already top-k-masked) vocabulary: the sort."""
        ordered, order = scores.sort(descending=False)
        remove = ordered.softmax(-1).cumsum(-1) <= 1 - self.top_p
        remove[..., -1] = False
        return scores.masked_fill(remove.scatter(-1, order, remove), -float("inf"))
