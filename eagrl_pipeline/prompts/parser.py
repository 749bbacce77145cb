"""Tolerant parser for the tagged EAG-RL response; never raises on model text.

Rewards and evaluation both read model output through here, so the rules live in one place:
tags are matched case- and spacing-insensitively, an unclosed tag runs to the next tag (or the
end, for truncated text), a repeated final tag counts once (the last), and every problem is
reported in ``errors`` (fatal: missing tag, no probability) or ``warnings`` (tolerated).
All regexes use bounded quantifiers and the input is capped, so the work is linear in the input.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from eagrl_pipeline.prompts.features import FeatureMatcher

MAX_INPUT_CHARS = 100_000
MAX_FEATURE_ITEMS = 200

ProbabilitySource = Literal["number", "percent", "word"]

# Words are only a fallback when there is no number; "high" etc. are flagged with source "word".
WORD_PROBABILITIES: dict[str, float] = {
    "very high": 0.9,
    "high": 0.75,
    "moderate": 0.5,
    "medium": 0.5,
    "low": 0.25,
    "very low": 0.1,
}

TAG_LABELS = {
    "subquestion": "<Subquestion>",
    "answer": "<Answer>",
    "final_subquestion": "<Final subquestion>",
    "important_features": "<Important Features>",
    "final_answer": "<Final answer>",
}
REQUIRED_TAGS = ("subquestion", "answer", "final_subquestion", "important_features", "final_answer")

_SEP = r"[\s_-]{0,4}"
_TAG = re.compile(
    r"<\s{0,8}(/?)\s{0,8}("
    rf"final{_SEP}sub{_SEP}questions?|final{_SEP}answer|important{_SEP}features?"
    rf"|sub{_SEP}questions?|answer"
    r")\s{0,8}>",
    re.IGNORECASE,
)
_NUMBER = re.compile(
    r"(?<![\w.])(-?)(\d{1,15}(?:\.\d{1,15})?(?:[eE][-+]?\d{1,3})?|\.\d{1,15})(?![\d.]\d)"
    r"\s{0,3}(%|percent\b|per\s?cent\b)?",
    re.IGNORECASE,
)
_WORDS = re.compile(r"\b(very\s{1,4}high|very\s{1,4}low|high|moderate|medium|low)\b")
_ITEM_SPLIT = re.compile(r"[,;\n]|\s\band\b\s")


def _kind(name: str) -> str:
    key = re.sub(r"[\s_-]", "", name.lower())
    if key.startswith("final"):
        return "final_answer" if key.endswith("answer") else "final_subquestion"
    if key.startswith("important"):
        return "important_features"
    return "answer" if key == "answer" else "subquestion"


@dataclass(frozen=True)
class ParsedResponse:
    """What one completion said, and what could not be read from it."""

    steps: tuple[tuple[str, str], ...] = ()
    final_subquestion: str | None = None
    important_features: tuple[str, ...] = ()
    unmatched_features: tuple[str, ...] = ()
    probability: float | None = None
    probability_source: ProbabilitySource | None = None
    final_answer_text: str | None = None
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    tags_found: frozenset[str] = frozenset()

    @property
    def is_valid(self) -> bool:
        """Every required tag present and a probability parsed (errors hold the reasons)."""
        return not self.errors and self.probability is not None

    @property
    def complete_steps(self) -> int:
        return sum(1 for q, a in self.steps if q and a)


def completion_text(completion: Any) -> str:
    """Plain text of a completion: a string, or chat messages (trl's conversational format).

    >>> completion_text([{"role": "assistant", "content": "<Final answer> 0.4 </Final answer>"}])
    '<Final answer> 0.4 </Final answer>'
    """
    if isinstance(completion, str):
        return completion
    if completion is None:
        return ""
    if isinstance(completion, Mapping):
        content = completion.get("content", "")
        if isinstance(content, list):  # multimodal parts: [{"type": "text", "text": ...}]
            return "".join(
                str(p.get("text", "")) if isinstance(p, Mapping) else str(p) for p in content
            )
        return "" if content is None else str(content)
    if isinstance(completion, list | tuple):
        messages = [m for m in completion if isinstance(m, Mapping)]
        assistant = [m for m in messages if m.get("role") == "assistant"]
        chosen = assistant or messages
        if chosen:
            return "\n".join(completion_text(m) for m in chosen)
        return "".join(str(c) for c in completion)
    return str(completion)


def parse_probability(
    text: str, *, allow_words: bool = True
) -> tuple[float | None, ProbabilitySource | None, str | None]:
    """(probability, source, error) from a final-answer string.

    >>> parse_probability("0.83")
    (0.83, 'number', None)
    >>> parse_probability("83%")
    (0.83, 'percent', None)
    >>> parse_probability("high")
    (0.75, 'word', None)
    >>> parse_probability("83")[2]
    'bare number 83 > 1 is ambiguous (write 0.xx or xx%)'
    """
    head = text[:2000]
    match = _NUMBER.search(head)
    if match:
        sign, digits, percent = match.groups()
        try:
            value = float(digits)
        except ValueError:  # pragma: no cover - the regex only admits float syntax
            return None, None, f"unreadable number {digits!r}"
        if sign:
            return None, None, f"negative probability -{digits}"
        if percent:
            if not 0.0 <= value <= 100.0:
                return None, None, f"percentage {digits}% outside [0, 100]"
            return round(value / 100.0, 12), "percent", None
        if not math.isfinite(value) or value > 1.0:
            return None, None, f"bare number {digits} > 1 is ambiguous (write 0.xx or xx%)"
        return value, "number", None
    words = {re.sub(r"\s+", " ", m.group(1)) for m in _WORDS.finditer(head[:500].lower())}
    if not words:
        return None, None, "no probability in <Final answer>"
    if not allow_words:
        return None, None, f"word probability {sorted(words)[0]!r} rejected (allow_words=False)"
    values = {WORD_PROBABILITIES[w] for w in words}
    if len(values) > 1:
        return None, None, f"conflicting probability words {sorted(words)}"
    return values.pop(), "word", None


def _feature_items(text: str) -> list[str]:
    return [s for s in (p.strip() for p in _ITEM_SPLIT.split(text[:20_000])) if s][
        :MAX_FEATURE_ITEMS
    ]


def parse_response(
    text: Any,
    feature_names: Iterable[str] | FeatureMatcher,
    aliases: Mapping[str, str] | None = None,
    *,
    allow_words: bool = True,
) -> ParsedResponse:
    """Parse one completion (string or chat messages) into a ParsedResponse; never raises.

    ``feature_names`` may be a prebuilt FeatureMatcher (cheaper when parsing many completions).

    >>> r = parse_response(
    ...     "<Subquestion> LDH? </Subquestion> <Answer> High. </Answer>"
    ...     "<Final subquestion> Risk? </Final subquestion>"
    ...     "<Important Features> LDH, age </Important Features><Final answer> 83% </Final answer>",
    ...     ["Lactate dehydrogenase"],
    ... )
    >>> r.is_valid, r.probability, r.important_features, r.unmatched_features
    (True, 0.83, ('Lactate dehydrogenase',), ('age',))
    """
    try:
        matcher = (
            feature_names
            if isinstance(feature_names, FeatureMatcher)
            else FeatureMatcher.build(feature_names, aliases)
        )
        return _parse(completion_text(text), matcher, allow_words)
    except Exception as exc:  # a parser bug must not crash training; report it instead
        return ParsedResponse(errors=(f"parser failure: {type(exc).__name__}: {exc}"[:300],))


def _parse(text: str, matcher: FeatureMatcher, allow_words: bool) -> ParsedResponse:
    warnings: list[str] = []
    errors: list[str] = []
    if len(text) > MAX_INPUT_CHARS:
        warnings.append(f"input of {len(text)} chars cut to {MAX_INPUT_CHARS}")
        text = text[:MAX_INPUT_CHARS]
    tokens = [
        (m.start(), m.end(), bool(m.group(1)), _kind(m.group(2))) for m in _TAG.finditer(text)
    ]

    contents: dict[str, list[str]] = {k: [] for k in TAG_LABELS}
    steps: list[tuple[str, str]] = []
    pending: str | None = None
    for i, (_, end, closing, kind) in enumerate(tokens):
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if closing:
            prev = tokens[i - 1] if i else None
            if prev is None or prev[2] or prev[3] != kind:
                warnings.append(f"stray closing tag for {TAG_LABELS[kind]}")
            continue
        content = text[end : nxt[0] if nxt else len(text)].strip()
        if nxt is None:
            warnings.append(f"{TAG_LABELS[kind]} not closed (truncated text)")
        elif not (nxt[2] and nxt[3] == kind):
            warnings.append(f"{TAG_LABELS[kind]} not closed")
        contents[kind].append(content)
        if kind == "subquestion":
            if pending is not None:
                warnings.append("sub-question without an answer")
                steps.append((pending, ""))
            pending = content
        elif kind == "answer":
            if pending is None:
                warnings.append("answer without a sub-question")
            else:
                steps.append((pending, content))
                pending = None
    if pending is not None:
        warnings.append("sub-question without an answer")
        steps.append((pending, ""))

    found = frozenset(k for k, v in contents.items() if v)
    errors.extend(f"missing {TAG_LABELS[k]}" for k in REQUIRED_TAGS if k not in found)
    for kind in ("final_subquestion", "important_features", "final_answer"):
        if len(contents[kind]) > 1:
            warnings.append(f"{TAG_LABELS[kind]} repeated {len(contents[kind])} times; last kept")

    final_q = contents["final_subquestion"][-1] if contents["final_subquestion"] else None
    matched: tuple[str, ...] = ()
    unmatched: tuple[str, ...] = ()
    if contents["important_features"]:
        matched, unmatched = matcher.match_all(_feature_items(contents["important_features"][-1]))
        if unmatched:
            warnings.append(f"{len(unmatched)} feature(s) not in the dictionary")

    probability: float | None = None
    source: ProbabilitySource | None = None
    answer_text = contents["final_answer"][-1] if contents["final_answer"] else None
    if answer_text is not None:
        if not answer_text:
            errors.append("empty <Final answer>")
        else:
            probability, source, problem = parse_probability(answer_text, allow_words=allow_words)
            if problem:
                errors.append(problem)
    return ParsedResponse(
        steps=tuple(steps),
        final_subquestion=final_q,
        important_features=matched,
        unmatched_features=unmatched,
        probability=probability,
        probability_source=source,
        final_answer_text=None if answer_text is None else answer_text[:1000],
        errors=tuple(errors),
        warnings=tuple(dict.fromkeys(warnings)),
        tags_found=found,
    )
