"""Guided decoding of the tagged response format: the tags are forced, the words are sampled.

Why: a small instruct model (the 135M default) copies the worked example's wording but not its
tags, and a run where no answer parses leaves the MCTS nothing to distil. The scaffold forces
only the tags and the transitions between them (sub-question -> answer -> ... -> final
sub-question -> important features -> final answer); every token inside a tag is the model's
own sample, a tag may close early where the model writes its closing tag, and a per-tag token
cap closes it where the model rambles. The final-answer slot only admits digits, '.', '%' and
whitespace. A strong model loses nothing by the scaffold; switch it off to measure unaided
format-following. Works on any Hugging Face tokenizer (token texts are decoded once).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import LogitsProcessor

Segment = Literal["sub", "ans", "fsub", "feat", "final", "done"]
PlanKind = Literal["step", "finish", "answer"]

OPEN = {
    "sub": "<Subquestion>",
    "ans": "<Answer>",
    "fsub": "<Final subquestion>",
    "feat": "<Important Features>",
    "final": "<Final answer>",
}
CLOSE = {
    "sub": "</Subquestion>",
    "ans": "</Answer>",
    "fsub": "</Final subquestion>",
    "feat": "</Important Features>",
    "final": "</Final answer>",
}
_NUMERIC = re.compile(r"^[ 0-9.%]*$")


@dataclass(frozen=True)
class ScaffoldConfig:
    """Per-tag token caps (content tokens; the tags themselves are forced on top)."""

    subquestion_tokens: int = 20
    answer_tokens: int = 32
    final_subquestion_tokens: int = 16
    features_tokens: int = 32
    final_answer_tokens: int = 6

    def cap(self, segment: Segment) -> int:
        return {
            "sub": self.subquestion_tokens,
            "ans": self.answer_tokens,
            "fsub": self.final_subquestion_tokens,
            "feat": self.features_tokens,
            "final": self.final_answer_tokens,
        }[segment]


@dataclass(frozen=True)
class RowPlan:
    """What one generated row must contain.

    ``step``: exactly one sub-question/answer step (an MCTS expansion). ``finish``: the rest of
    a final block whose ``<Final subquestion>`` tag is already in the input. ``answer``: ``steps``
    more steps, then the final block (a rollout, or a whole zero-shot answer). ``after_text``
    says whether the response already has text, so a new tag starts on a new line.
    """

    kind: PlanKind
    steps: int = 0
    after_text: bool = False


@dataclass
class _Row:
    plan: RowPlan
    segment: Segment = "done"
    steps_left: int = 0
    content: str = ""
    n_content: int = 0
    queue: list[int] = field(default_factory=list)
    started: bool = False


class ResponseScaffold:
    """Token tables for one tokenizer; ``processor(plans)`` makes a fresh per-call processor."""

    def __init__(self, tokenizer: Any, config: ScaffoldConfig | None = None):
        self.tokenizer = tokenizer
        self.config = config or ScaffoldConfig()
        n = len(tokenizer)
        self.token_text: list[str] = tokenizer.batch_decode(
            [[i] for i in range(n)], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        special = set(tokenizer.all_special_ids)
        has_lt = torch.tensor(["<" in t for t in self.token_text])
        is_special = torch.zeros(n, dtype=torch.bool)
        is_special[list(special)] = True
        # Tokens a segment must not produce: specials, and any '<' that does not begin the
        # segment's own closing tag (a stray tag would break the structure).
        self.banned: dict[str, torch.Tensor] = {}
        for segment, close in CLOSE.items():
            opens_close = torch.tensor([_starts_close(t, close) for t in self.token_text])
            self.banned[segment] = is_special | (has_lt & ~opens_close)
        numeric = torch.tensor([bool(_NUMERIC.match(t)) and t != "" for t in self.token_text])
        self.banned["final"] = self.banned["final"] | (~numeric & ~self._close_starters("final"))
        eos = tokenizer.eos_token_id
        self.end_id = eos if eos is not None else tokenizer.pad_token_id

    def _close_starters(self, segment: str) -> torch.Tensor:
        return torch.tensor([_starts_close(t, CLOSE[segment]) for t in self.token_text])

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def processor(self, plans: Sequence[RowPlan]) -> ScaffoldProcessor:
        return ScaffoldProcessor(self, plans)


def _starts_close(token: str, close: str) -> bool:
    """Whether a token holding '<' is whitespace then a prefix of ``close`` (e.g. ' </')."""
    if "<" not in token:
        return False
    stripped = token.lstrip()
    return (
        bool(stripped)
        and close.startswith(stripped)
        and token.index("<") == len(token) - len(stripped)
    )


class ScaffoldProcessor(LogitsProcessor):
    """Forces the tags of each row's plan; rows are the batch rows in order."""

    def __init__(self, scaffold: ResponseScaffold, plans: Sequence[RowPlan]):
        self.scaffold = scaffold
        self.rows = [_Row(plan) for plan in plans]
        self.width: int | None = None

    def _enter(self, row: _Row, segment: Segment, lead: str) -> None:
        row.queue += self.scaffold.encode(lead + OPEN[segment])
        row.segment, row.content, row.n_content = segment, "", 0

    def _start(self, row: _Row) -> None:
        plan, lead = row.plan, "\n" if row.plan.after_text else ""
        row.started = True
        if plan.kind == "finish":
            row.segment = "fsub"
        elif plan.kind == "step":
            row.steps_left = 1
            self._enter(row, "sub", lead)
        else:
            row.steps_left = plan.steps
            self._enter(row, "sub" if plan.steps > 0 else "fsub", lead)

    def _close(self, row: _Row) -> None:
        """The segment's closing tag is complete: force the next tag, or end the row."""
        segment = row.segment
        if segment == "sub":
            self._enter(row, "ans", " ")
        elif segment == "ans":
            row.steps_left -= 1
            if row.plan.kind == "step":
                row.segment = "done"
            elif row.steps_left > 0:
                self._enter(row, "sub", "\n")
            else:
                self._enter(row, "fsub", "\n")
        elif segment == "fsub":
            self._enter(row, "feat", "\n")
        elif segment == "feat":
            self._enter(row, "final", "\n")
        else:
            row.segment = "done"

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        first = self.width is None
        if first:
            self.width = input_ids.shape[1]
        last = input_ids[:, -1].tolist()
        for i, row in enumerate(self.rows):
            if not row.started:
                self._start(row)
            elif not first:
                self._step(row, last[i])
        return self._mask(scores)

    def _step(self, row: _Row, token: int) -> None:
        """Account for the token just generated."""
        if row.queue:
            row.queue.pop(0)
            if row.n_content < 0:  # forcing the rest of a closing tag
                row.n_content += 1
                if not row.queue:
                    self._close(row)
            return
        if row.segment == "done":
            return
        text = self.scaffold.token_text[token] if token < len(self.scaffold.token_text) else ""
        row.content += text
        row.n_content += 1
        close = CLOSE[row.segment]
        if close in row.content:
            self._close(row)
            return
        lt = row.content.rfind("<")
        if lt >= 0 and close.startswith(row.content[lt:]):
            self._force_close(row, close[len(row.content) - lt :])
        elif row.n_content >= self.scaffold.config.cap(row.segment):
            self._force_close(row, ("" if row.content[-1:].isspace() else " ") + close)

    def _force_close(self, row: _Row, rest: str) -> None:
        ids = self.scaffold.encode(rest)
        if not ids:
            self._close(row)
            return
        row.queue += ids
        row.content += rest
        row.n_content = -len(ids)

    def _mask(self, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = scores.clone()
        low = torch.finfo(scores.dtype).min
        width = scores.shape[1]
        for i, row in enumerate(self.rows):
            forced = row.queue[0] if row.queue else None
            if forced is None and row.segment == "done":
                forced = self.scaffold.end_id
            if forced is not None:
                out[i].fill_(low)
                out[i, forced] = 0.0
                continue
            banned = self.scaffold.banned[row.segment]
            n = min(width, banned.shape[0])
            out[i, :n].masked_fill_(banned[:n].to(out.device), low)
            if width > n:
                out[i, n:] = low
        return out
