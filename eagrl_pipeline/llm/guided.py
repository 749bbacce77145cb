"""Guided decoding of the tagged response format: the tags are forced, the words are sampled.

Why: a small instruct model (the 135M default) copies the worked example's wording but not its
tags, and a run where no answer parses leaves the MCTS nothing to distil. The scaffold forces
only the tags and the transitions between them (sub-question -> answer -> ... -> final
sub-question -> important features -> final answer); every token inside a tag is the model's
own sample, a tag may close early where the model writes its closing tag, and a per-tag token
cap closes it where the model rambles. The final-answer slot starts with a forced ``0.`` (a
probability's leading digits) and then only admits digits and whitespace (without the prefix:
digits, '.', '%' and whitespace; after "0." a '%' read "0.9%" as 0.009). A strong model
loses nothing by the scaffold; switch it off to measure unaided format-following. Works on any
Hugging Face tokenizer (token texts are decoded once).

The important features. With ``features_from_prompt`` the ``<Important Features>`` slot only
admits the names of the features the row's prompt shows (its ``- Name (...): [...]`` lines),
comma-separated, each at most once, at most ``max_listed_features`` of them: which names, how
many and in what order stay the model's choice. A small model otherwise copies the worked
example's placeholders or writes dates, and R_att, which compares this list with the expert's
top-k among the shown features, has nothing to rank trajectories by.

The answer's distribution. Where the model picks the first free digit after the forced ``0.``, the
processor also records the expectation of the probability it is about to write, under its own
next-token distribution over digit tokens (:attr:`ScaffoldProcessor.answer_expectations`). A greedy
answer is that distribution's mode, which collapses a small model's ranking of patients onto a
handful of values ("0.2" for most); the expectation keeps the ranking, at no extra forward pass.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import LogitsProcessor

Segment = Literal["sub", "ans", "fsub", "feat", "final", "think", "done"]
PlanKind = Literal["step", "finish", "answer", "direct", "think"]

OPEN = {
    "think": "<Reasoning>",
    "sub": "<Subquestion>",
    "ans": "<Answer>",
    "fsub": "<Final subquestion>",
    "feat": "<Important Features>",
    "final": "<Final answer>",
}
CLOSE = {
    "think": "</Reasoning>",
    "sub": "</Subquestion>",
    "ans": "</Answer>",
    "fsub": "</Final subquestion>",
    "feat": "</Important Features>",
    "final": "</Final answer>",
}
# \Z, not $: "$" also matches before a trailing newline, which let a "\n" token into the answer
# ("0.6\n64" on a tiny model's think-then-answer).
_NUMERIC = re.compile(r"^[ 0-9.%]*\Z")
# After a forced "0." the answer is a decimal already: a '%' (or another '.') would turn the
# model's "0.9" into 0.009 and its digits would no longer be the probability they look like.
_DECIMAL_DIGITS = re.compile(r"^[ 0-9]*\Z")
_DIGITS = re.compile(r"^[0-9]+\Z")
# The free-text segments before the final answer (``ScaffoldConfig.step_digits``).
_STEP_SEGMENTS = ("sub", "ans", "fsub", "think")


@dataclass(frozen=True)
class ScaffoldConfig:
    """Per-tag token caps (content tokens; the tags themselves are forced on top) and the text
    forced at the start of the final answer.

    ``answer_prefix`` ``"0."`` makes every final answer a decimal probability written digit by
    digit, so the digit distribution after it is the answer's distribution (see the module
    docstring); ``""`` leaves the whole answer to the model and records no expectation.

    ``step_digits`` false bans every token holding a digit from the free text before the final
    answer (sub-questions, their answers, the final sub-question, free reasoning), so the final
    answer is the only number a response writes. Why: a small model states a probability in a
    step (or copies a value in (0, 1) from the prompt) and the final answer copies it; the
    decision is then a greedy step token, SFT trains it at a step's weight, and the final
    answer's digit distribution, the readout, is a near-certain copy.
    """

    subquestion_tokens: int = 20
    answer_tokens: int = 32
    final_subquestion_tokens: int = 16
    features_tokens: int = 32
    final_answer_tokens: int = 4
    answer_prefix: str = "0."
    features_from_prompt: bool = True
    max_listed_features: int = 5
    reasoning_tokens: int = 96
    step_digits: bool = True

    def __post_init__(self) -> None:
        if self.max_listed_features < 1:
            raise ValueError(
                f"ScaffoldConfig.max_listed_features must be >= 1, got {self.max_listed_features}"
            )
        for name in (
            "subquestion_tokens",
            "answer_tokens",
            "final_subquestion_tokens",
            "features_tokens",
            "final_answer_tokens",
            "reasoning_tokens",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"ScaffoldConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.answer_prefix not in ("", "0."):
            raise ValueError(
                f"ScaffoldConfig.answer_prefix must be '0.' or '', got {self.answer_prefix!r}"
            )

    def cap(self, segment: Segment) -> int:
        return {
            "sub": self.subquestion_tokens,
            "ans": self.answer_tokens,
            "fsub": self.final_subquestion_tokens,
            "feat": self.features_tokens,
            "final": self.final_answer_tokens,
            "think": self.reasoning_tokens,
        }[segment]


@dataclass(frozen=True)
class RowPlan:
    """What one generated row must contain.

    ``step``: exactly one sub-question/answer step (an MCTS expansion). ``finish``: the rest of
    a final block whose ``<Final subquestion>`` tag is already in the input. ``answer``: ``steps``
    more steps, then the final block (a rollout, or a whole zero-shot answer). The prompting
    baselines: ``direct``, only the ``<Final answer>`` (answer directly); ``think``, free
    reasoning in one ``<Reasoning>`` block (capped at ``reasoning_tokens``), then the answer.
    ``after_text`` says whether the response already has text, so a new tag starts on a new
    line.
    """

    kind: PlanKind
    steps: int = 0
    after_text: bool = False
    features: tuple[str, ...] = ()  # names the features slot may list (empty: free text)


# A prompt's feature line (``serialize.feature_line``): "- Name (Unit: U. Reference range: R):
# [v1, v2]", the parenthetical only when there is a unit or a range.
_FEATURE_LINE = re.compile(
    r"^- (?P<name>.+?)(?: \((?:Unit|Reference range): [^\n]*\))?: \[[^\[\]\n]*\]\r?$"
)


def prompt_feature_names(prompt: str | Sequence[dict[str, str]]) -> tuple[str, ...]:
    """The feature names a prompt shows, in order (for a conversation: its last user message).

    >>> prompt_feature_names("- Sex: male\\n- Lymphocytes (%) (Unit: %): [20]\\n- pH: [7.4, NaN]")
    ('Lymphocytes (%)', 'pH')
    """
    if not isinstance(prompt, str):
        users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
        prompt = users[-1] if users else ""
    names = [m["name"] for line in prompt.split("\n") if (m := _FEATURE_LINE.match(line))]
    return tuple(dict.fromkeys(names))


@dataclass
class _Row:
    plan: RowPlan
    segment: Segment = "done"
    steps_left: int = 0
    content: str = ""
    n_content: int = 0
    queue: list[int] = field(default_factory=list)
    started: bool = False
    read_answer: bool = False
    names: list[list[int]] | None = None  # token ids of each listable feature name
    current: list[int] = field(default_factory=list)  # ids of the name being written
    listed: set[int] = field(default_factory=set)  # names already listed


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
        if not self.config.step_digits:
            has_digit = torch.tensor([any(c.isdigit() for c in t) for t in self.token_text])
            for segment in _STEP_SEGMENTS:
                self.banned[segment] = self.banned[segment] | has_digit
        allowed = _DECIMAL_DIGITS if self.config.answer_prefix else _NUMERIC
        numeric = torch.tensor([bool(allowed.match(t)) and t != "" for t in self.token_text])
        self.banned["final"] = self.banned["final"] | (~numeric & ~self._close_starters("final"))
        eos = tokenizer.eos_token_id
        self.end_id = eos if eos is not None else tokenizer.pad_token_id
        # Tokens that are all digits, and the probability each starts after "0.": the midpoint of
        # what the answer can still become ("8" -> 0.85, "83" -> 0.835).
        digit_tokens = [(i, t) for i, t in enumerate(self.token_text) if _DIGITS.match(t)]
        self.digit_ids = torch.tensor([i for i, _ in digit_tokens], dtype=torch.long)
        self.digit_values = torch.tensor(
            [(int(t) + 0.5) / 10 ** len(t) for _, t in digit_tokens], dtype=torch.float64
        )

    def _close_starters(self, segment: str) -> torch.Tensor:
        return torch.tensor([_starts_close(t, CLOSE[segment]) for t in self.token_text])

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @functools.cached_property
    def comma_id(self) -> int:
        return self.encode(",")[0]

    @functools.cached_property
    def features_close_ids(self) -> list[int]:
        return self.encode(" " + CLOSE["feat"])

    def name_ids(self, names: Sequence[str]) -> list[list[int]] | None:
        """Token ids of each name as written after a space; None (free text) without names."""
        if not self.config.features_from_prompt or not names:
            return None
        return [self._name_ids(name) for name in names]

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one scaffold per tokenizer, kept for a run
    def _name_ids(self, name: str) -> list[int]:
        return self.encode(" " + name)

    def plan(self, kind: PlanKind, steps: int, after_text: bool, prompt: Any) -> RowPlan:
        """A row's plan, with the feature names of its prompt when the slot is constrained."""
        names = prompt_feature_names(prompt) if self.config.features_from_prompt else ()
        return RowPlan(kind, steps, after_text, names)

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
        self.rows = [_Row(plan, names=scaffold.name_ids(plan.features)) for plan in plans]
        self.width: int | None = None
        self.answer_expectations: list[float | None] = [None] * len(self.rows)

    def _enter(self, row: _Row, segment: Segment, lead: str) -> None:
        forced = lead + OPEN[segment]
        if segment == "final" and self.scaffold.config.answer_prefix:
            forced += " " + self.scaffold.config.answer_prefix
        row.queue += self.scaffold.encode(forced)
        row.segment, row.content, row.n_content = segment, "", 0
        row.current, row.listed = [], set()

    def _start(self, row: _Row) -> None:
        plan, lead = row.plan, "\n" if row.plan.after_text else ""
        row.started = True
        if plan.kind == "finish":
            row.segment = "fsub"
        elif plan.kind == "direct":
            self._enter(row, "final", lead)
        elif plan.kind == "think":
            self._enter(row, "think", lead)
        elif plan.kind == "step":
            row.steps_left = 1
            self._enter(row, "sub", lead)
        else:
            row.steps_left = plan.steps
            self._enter(row, "sub" if plan.steps > 0 else "fsub", lead)

    def _close(self, row: _Row) -> None:
        """The segment's closing tag is complete: force the next tag, or end the row."""
        segment = row.segment
        if segment == "think":
            self._enter(row, "final", "\n")
        elif segment == "sub":
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
            if row.segment == "final" and not row.queue and not row.read_answer:
                self._read_answer(i, row, scores[i])
        return self._mask(scores)

    def _read_answer(self, i: int, row: _Row, logits: torch.Tensor) -> None:
        """The expected probability at the answer's first free digit (after the forced "0.")."""
        row.read_answer = True
        if not self.scaffold.config.answer_prefix:
            return
        keep = self.scaffold.digit_ids < logits.shape[-1]
        ids, values = self.scaffold.digit_ids[keep], self.scaffold.digit_values[keep]
        if ids.numel() == 0:
            return
        probs = torch.softmax(logits.detach().double(), dim=-1)[ids.to(logits.device)].cpu()
        total = float(probs.sum())
        if total > 0.0 and math.isfinite(total):
            self.answer_expectations[i] = float((probs * values).sum() / total)

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
        if row.segment == "feat" and row.names is not None:
            self._step_name(row, token, text)
            return
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

    def _step_name(self, row: _Row, token: int, text: str) -> None:
        """A constrained feature list: the token continues an item, which is a name followed by
        a comma or by the closing tag (``_name_items``)."""
        row.content += text
        row.n_content += 1
        row.current.append(token)
        for i, ids, end in self._name_items(row):
            if ids + end == row.current:
                if i is not None:
                    row.listed.add(i)
                row.current = []
                if end != [self.scaffold.comma_id]:
                    self._close(row)
                return

    def _name_items(self, row: _Row) -> list[tuple[int | None, list[int], list[int]]]:
        """(name index, its ids, what ends it) for every item the list may still hold: an
        unlisted name and a comma (while more may follow), an unlisted name and the closing
        tag, or the closing tag alone once nothing is left to list."""
        assert row.names is not None
        comma, close = [self.scaffold.comma_id], self.scaffold.features_close_ids
        left = [i for i in range(len(row.names)) if i not in row.listed]
        more = len(row.listed) + 1 < self.scaffold.config.max_listed_features and len(left) > 1
        items: list[tuple[int | None, list[int], list[int]]] = []
        for i in left:
            items.append((i, row.names[i], close))
            if more:
                items.append((i, row.names[i], comma))
        return items or [(None, [], close)]

    def _name_options(self, row: _Row) -> list[int]:
        """Tokens a constrained feature list may take next."""
        n = len(row.current)
        options = {
            (ids + end)[n]
            for _, ids, end in self._name_items(row)
            if len(ids + end) > n and (ids + end)[:n] == row.current
        }
        return sorted(options)

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
            if row.segment == "feat" and row.names is not None:
                options = [t for t in self._name_options(row) if t < width]
                if not options:  # cannot happen by construction; end the list rather than hang
                    options = self.scaffold.features_close_ids[:1]
                kept = out[i, options].clone()
                out[i].fill_(low)
                out[i, options] = kept
                continue
            banned = self.scaffold.banned[row.segment]
            n = min(width, banned.shape[0])
            out[i, :n].masked_fill_(banned[:n].to(out.device), low)
            if width > n:
                out[i, n:] = low
        return out
