"""EAG-RL rewards (DESIGN §1): R = λ·R_cls + (1−λ)·R_att + w_fmt·R_format.

- ``R_cls = log(y·ŷ + (1−y)(1−ŷ)) + Δ``, ŷ clipped to [0.01, 0.99], with the margin bonus
  ``Δ = β(ŷ−0.5)`` when y=1 and ŷ>0.5, ``β(0.5−ŷ)`` when y=0 and ŷ<0.5, else 0.
- ``R_att`` is the Jaccard index between the features the model lists and the expert's top-k.
- ``R_format`` in [0, 1] rewards a complete, well-formed response. An answer without a readable
  probability gets ``R_cls`` at its worst and ``R_att = R_format = 0``, so its total is
  ``RewardWeights.min_reward``, the global minimum.

β is not given in public material; 0.5 is our default: the bonus then adds at most 0.245, small
next to the log score's range (4.6 within the clip), so it favours confident right answers without
dominating. It is config like every weight, to be logged with the run.

For trl, ``make_trl_reward_functions`` returns the three parts as separate functions named
``r_cls``, ``r_att`` and ``r_format`` (so trl logs each), and the weighted sum is trl's own:
``GRPOConfig(reward_weights=weights.trl_reward_weights())``, i.e. ``[λ, 1−λ, w_fmt]``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from eagrl_pipeline.prompts.features import FeatureMatcher
from eagrl_pipeline.prompts.parser import ParsedResponse, parse_response

RewardPart = Literal["r_cls", "r_att", "r_format"]


@dataclass(frozen=True)
class RewardWeights:
    """Every reward weight, as config. ``lam`` = λ from the paper; ``beta`` is our choice.

    >>> w = RewardWeights()
    >>> round(w.min_reward, 4), w.trl_reward_weights()
    (-2.7631, [0.6, 0.4, 0.1])
    """

    lam: float = 0.6
    beta: float = 0.5
    format_weight: float = 0.1
    clip: tuple[float, float] = (0.01, 0.99)
    allow_words: bool = True

    def __post_init__(self) -> None:
        lo, hi = self.clip
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"RewardWeights.lam must be in [0, 1], got {self.lam}")
        if self.beta < 0 or self.format_weight < 0:
            raise ValueError("RewardWeights.beta and format_weight must be >= 0")
        if not 0.0 < lo < 0.5 < hi < 1.0:
            raise ValueError(
                f"RewardWeights.clip must satisfy 0 < lo < 0.5 < hi < 1, got {self.clip}"
            )

    @property
    def worst_cls(self) -> float:
        """The lowest R_cls: a confident wrong answer at the clip (the bonus is then 0)."""
        lo, hi = self.clip
        return min(math.log(lo), math.log(1.0 - hi))

    @property
    def min_reward(self) -> float:
        """The lowest total reward, given to an unparseable answer."""
        return self.lam * self.worst_cls

    @property
    def max_reward(self) -> float:
        """The highest total: confident and right, the expert's exact features, clean format."""
        lo, hi = self.clip
        best_cls = max(
            math.log(hi) + self.beta * (hi - 0.5), math.log(1 - lo) + self.beta * (0.5 - lo)
        )
        return self.lam * best_cls + (1 - self.lam) + self.format_weight

    def trl_reward_weights(self) -> list[float]:
        """``GRPOConfig.reward_weights`` for ``make_trl_reward_functions``' order."""
        return [self.lam, 1.0 - self.lam, self.format_weight]


@dataclass(frozen=True)
class RewardParts:
    """The three parts and their weighted total, kept together for trajectory logs."""

    r_cls: float
    r_att: float
    r_format: float
    total: float


def classification_reward(
    prob: float | None,
    label: int | float | bool,
    beta: float = 0.5,
    clip: tuple[float, float] = (0.01, 0.99),
) -> float:
    """Log score of the true class plus the margin bonus; a missing/NaN ŷ scores the worst.

    >>> round(classification_reward(0.9, 1), 4)  # log(0.9) + 0.5 * 0.4
    0.0946
    >>> round(classification_reward(0.9, 0), 4)  # log(0.1), wrong side: no bonus
    -2.3026
    >>> round(classification_reward(1.0, 0), 4)  # clipped to 0.99
    -4.6052
    >>> round(classification_reward(0.2, 0, beta=0.0), 4)  # plain log score
    -0.2231
    """
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {label!r}")
    lo, hi = clip
    if prob is None or not math.isfinite(prob):
        return min(math.log(lo), math.log(1.0 - hi))
    p = min(max(float(prob), lo), hi)
    y = int(label)
    score = math.log(y * p + (1 - y) * (1 - p))
    if y == 1 and p > 0.5:
        score += beta * (p - 0.5)
    elif y == 0 and p < 0.5:
        score += beta * (0.5 - p)
    return score


def attention_reward(llm_features: Iterable[str], expert_top_k: Iterable[str]) -> float:
    """Jaccard index of the two feature sets; 0.0 when both are empty.

    Pass canonical names on both sides (``FeatureMatcher`` resolves ids and aliases).

    >>> attention_reward(["LDH", "CRP"], ["CRP", "Age"])
    0.3333333333333333
    >>> attention_reward([], [])
    0.0
    """
    a, b = set(llm_features), set(expert_top_k)
    union = a | b
    return len(a & b) / len(union) if union else 0.0


def format_reward(parsed: ParsedResponse) -> float:
    """Share of five format checks passed; 0.0 without a readable probability.

    Checks: at least one complete step, a final sub-question, at least one dictionary feature,
    a numeric (not word) probability, and no tolerated defects (unclosed/repeated/stray tags,
    unmatched features).

    >>> from eagrl_pipeline.prompts.parser import parse_response
    >>> format_reward(parse_response("<Final answer> 0.3 </Final answer>", []))
    0.4
    >>> format_reward(parse_response("no tags at all", []))
    0.0
    """
    if parsed.probability is None:
        return 0.0
    checks = (
        parsed.complete_steps > 0,
        bool(parsed.final_subquestion),
        bool(parsed.important_features),
        parsed.probability_source in ("number", "percent"),
        not parsed.warnings,
    )
    return sum(checks) / len(checks)


def reward_parts(
    parsed: ParsedResponse,
    label: int | float | bool,
    expert_top_k: Iterable[str],
    weights: RewardWeights = RewardWeights(),
) -> RewardParts:
    """All parts and the total; an unparseable answer gets exactly ``weights.min_reward``."""
    if parsed.probability is None:
        worst = classification_reward(None, label, weights.beta, weights.clip)
        return RewardParts(worst, 0.0, 0.0, weights.min_reward)
    r_cls = classification_reward(parsed.probability, label, weights.beta, weights.clip)
    r_att = attention_reward(parsed.important_features, expert_top_k)
    r_fmt = format_reward(parsed)
    total = weights.lam * r_cls + (1 - weights.lam) * r_att + weights.format_weight * r_fmt
    return RewardParts(r_cls, r_att, r_fmt, total)


def eagrl_reward(
    parsed: ParsedResponse,
    label: int | float | bool,
    expert_top_k: Iterable[str],
    weights: RewardWeights = RewardWeights(),
) -> float:
    """λ·R_cls + (1−λ)·R_att + w_fmt·R_format; the minimum reward when unparseable.

    >>> from eagrl_pipeline.prompts.parser import parse_response
    >>> text = ("<Subquestion> q </Subquestion><Answer> a </Answer>"
    ...         "<Final subquestion> f </Final subquestion>"
    ...         "<Important Features> LDH </Important Features><Final answer> 0.9 </Final answer>")
    >>> parsed = parse_response(text, ["LDH", "CRP"])
    >>> round(eagrl_reward(parsed, 1, ["LDH", "CRP"]), 4)  # 0.6*0.0946 + 0.4*0.5 + 0.1*1
    0.3568
    >>> eagrl_reward(parse_response("", []), 1, ["LDH"]) == RewardWeights().min_reward
    True
    """
    return reward_parts(parsed, label, expert_top_k, weights).total


def _feature_list(value: Any) -> list[str]:
    """Expert top-k from a dataset column: a list of names/ids or (name, score) pairs, a JSON
    list, or a comma-separated string."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return _feature_list(json.loads(text))
            except ValueError:
                pass
        return [s.strip() for s in text.split(",") if s.strip()]
    if isinstance(value, Mapping):
        return [str(k) for k in value]
    out = []
    for item in value:
        if isinstance(item, list | tuple) and item:
            item = item[0]
        elif isinstance(item, Mapping):
            item = item.get("feature", item.get("name", ""))
        out.append(str(item))
    return out


class _BatchParser:
    """Parses a batch once for all three trl functions (trl calls them back to back)."""

    def __init__(self, matcher: FeatureMatcher, allow_words: bool) -> None:
        self.matcher = matcher
        self.allow_words = allow_words
        self._last: tuple[list[Any], list[ParsedResponse]] | None = None

    def __call__(self, completions: Sequence[Any]) -> list[ParsedResponse]:
        items = list(completions)
        if self._last is not None and self._last[0] == items:
            return self._last[1]
        parsed = [parse_response(c, self.matcher, allow_words=self.allow_words) for c in items]
        self._last = (items, parsed)
        return parsed

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_last": None}


class TrlRewardFunction:
    """One reward part as a trl reward function ``(completions, **kwargs) -> list[float]``.

    Reads ``label`` (and, for ``r_att``, ``expert_top_k``) from kwargs: trl passes every
    dataset column as a list aligned with ``completions``. A class, not a closure, so it pickles.
    """

    def __init__(self, part: RewardPart, parser: _BatchParser, weights: RewardWeights) -> None:
        self.__name__ = part
        self.part = part
        self.parser = parser
        self.weights = weights

    def _canonical(self, features: Any) -> list[str]:
        return [self.parser.matcher.match(f) or f for f in _feature_list(features)]

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float]:
        parsed = self.parser(completions)
        n = len(parsed)
        labels = kwargs.get("label")
        if labels is None or len(labels) != n:
            raise ValueError(f"{self.part} needs a 'label' column with one value per completion")
        top_k = kwargs.get("expert_top_k")
        if self.part == "r_att" and (top_k is None or len(top_k) != n):
            raise ValueError("r_att needs an 'expert_top_k' column with one list per completion")
        out = []
        for i, p in enumerate(parsed):
            expert = self._canonical(top_k[i]) if self.part == "r_att" else []
            parts = reward_parts(p, int(labels[i]), expert, self.weights)
            out.append(float(getattr(parts, self.part)))
        return out


def make_trl_reward_functions(
    feature_names: Iterable[str] | FeatureMatcher,
    weights: RewardWeights = RewardWeights(),
    aliases: Mapping[str, str] | None = None,
) -> list[Callable[..., list[float]]]:
    """[r_cls, r_att, r_format] for ``GRPOTrainer(reward_funcs=...)``.

    Use with ``GRPOConfig(reward_weights=weights.trl_reward_weights())`` so trl's weighted sum
    equals ``eagrl_reward``. Pass feature-id aliases (``dictionary_aliases``) when the expert
    ranking holds ids.

    >>> fns = make_trl_reward_functions(["LDH"])
    >>> [f.__name__ for f in fns]
    ['r_cls', 'r_att', 'r_format']
    """
    matcher = (
        feature_names
        if isinstance(feature_names, FeatureMatcher)
        else FeatureMatcher.build(feature_names, aliases)
    )
    parser = _BatchParser(matcher, weights.allow_words)
    return [TrlRewardFunction(part, parser, weights) for part in ("r_cls", "r_att", "r_format")]
