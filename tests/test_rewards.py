"""Rewards: properties of R_cls, R_att and the total (the doctests run from the module)."""

from __future__ import annotations

import math
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eagrl_pipeline.prompts import parse_response
from eagrl_pipeline.rewards import (
    RewardWeights,
    attention_reward,
    classification_reward,
    eagrl_reward,
    format_reward,
    make_trl_reward_functions,
    reward_parts,
)

FEATURES = ["Lactate dehydrogenase", "Heart rate", "Oxygen saturation", "Albumin", "Ferritin"]
IDS = {
    "lactate_dehydrogenase": "Lactate dehydrogenase",
    "heart_rate": "Heart rate",
    "oxygen_saturation": "Oxygen saturation",
}
PROBS = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
BETAS = st.floats(min_value=0.0, max_value=2.0, allow_nan=False)
FEATURE_SETS = st.lists(st.sampled_from(FEATURES), max_size=5)


def _completion(prob: str, features: str = "LDH, HR") -> str:
    return (
        "<Subquestion> q </Subquestion><Answer> a </Answer>"
        "<Final subquestion> f </Final subquestion>"
        f"<Important Features> {features} </Important Features>"
        f"<Final answer> {prob} </Final answer>"
    )


@settings(max_examples=300, deadline=None)
@given(PROBS, PROBS, BETAS)
def test_r_cls_monotone_in_the_right_direction(p1: float, p2: float, beta: float) -> None:
    lo, hi = sorted((p1, p2))
    eps = 1e-12
    assert classification_reward(lo, 1, beta) <= classification_reward(hi, 1, beta) + eps
    assert classification_reward(lo, 0, beta) >= classification_reward(hi, 0, beta) - eps


@settings(max_examples=300, deadline=None)
@given(PROBS, st.sampled_from([0, 1]), BETAS)
def test_r_cls_bounds(p: float, y: int, beta: float) -> None:
    r = classification_reward(p, y, beta)
    assert math.log(0.01) - 1e-12 <= r <= beta * 0.49 + 1e-12


@settings(max_examples=200, deadline=None)
@given(PROBS, BETAS)
def test_r_cls_symmetric_between_classes_and_continuous_at_half(p: float, beta: float) -> None:
    assert classification_reward(p, 1, beta) == pytest.approx(classification_reward(1 - p, 0, beta))
    at_half = classification_reward(0.5, 1, beta)
    assert classification_reward(0.5 + 1e-9, 1, beta) == pytest.approx(at_half, abs=1e-8)


def test_r_cls_edges() -> None:
    assert classification_reward(0.0, 1) == pytest.approx(math.log(0.01))  # clipped
    assert classification_reward(1.0, 1, beta=0.5) == pytest.approx(math.log(0.99) + 0.5 * 0.49)
    assert classification_reward(None, 1) == classification_reward(float("nan"), 0)
    assert classification_reward(0.7, True) == classification_reward(0.7, 1.0)
    with pytest.raises(ValueError, match="label"):
        classification_reward(0.5, 2)


@settings(max_examples=300, deadline=None)
@given(FEATURE_SETS, FEATURE_SETS)
def test_r_att_bounded_and_symmetric(a: list[str], b: list[str]) -> None:
    r = attention_reward(a, b)
    assert 0.0 <= r <= 1.0
    assert r == attention_reward(b, a)
    if a and set(a) == set(b):
        assert r == 1.0
    if not set(a) & set(b):
        assert r == 0.0


PARSEABLE_FINALS = st.one_of(
    PROBS.map(lambda p: f"{p:.3f}"),
    PROBS.map(lambda p: f"{100 * p:.1f}%"),
    st.sampled_from(["high", "very low", "moderate"]),
)
UNPARSEABLE = st.sampled_from(
    ["", "no tags", _completion("83"), _completion("maybe"), _completion("-0.5"), "<Final answer>"]
)
WEIGHTS = st.builds(
    RewardWeights,
    lam=st.floats(min_value=0.0, max_value=1.0),
    beta=BETAS,
    format_weight=st.floats(min_value=0.0, max_value=1.0),
)


@settings(max_examples=300, deadline=None)
@given(
    PARSEABLE_FINALS,
    FEATURE_SETS,
    FEATURE_SETS,
    st.sampled_from([0, 1]),
    WEIGHTS,
    UNPARSEABLE,
    st.booleans(),
)
def test_unparseable_gets_the_global_minimum(
    final: str,
    listed: list[str],
    expert: list[str],
    label: int,
    weights: RewardWeights,
    bad: str,
    drop_tags: bool,
) -> None:
    text = _completion(final, ", ".join(listed))
    if drop_tags:  # a parseable probability with the rest of the format missing
        text = text[text.index("<Final answer>") :]
    parsed = parse_response(text, FEATURES)
    assert parsed.probability is not None
    good = eagrl_reward(parsed, label, expert, weights)
    worst = eagrl_reward(parse_response(bad, FEATURES), label, expert, weights)
    assert worst == pytest.approx(weights.min_reward)
    assert worst <= good + 1e-12
    assert good <= weights.max_reward + 1e-12
    parts = reward_parts(parsed, label, expert, weights)
    assert 0.0 <= parts.r_format <= 1.0 and 0.0 <= parts.r_att <= 1.0
    assert parts.total == pytest.approx(
        weights.lam * parts.r_cls
        + (1 - weights.lam) * parts.r_att
        + weights.format_weight * parts.r_format
    )


def test_format_reward_grades_the_structure() -> None:
    assert format_reward(parse_response(_completion("0.4"), FEATURES)) == 1.0
    assert format_reward(parse_response(_completion("high"), FEATURES)) == 0.8  # a word
    assert format_reward(parse_response(_completion("0.4", "unknown"), FEATURES)) == 0.6
    truncated = _completion("0.4")[: -len("</Final answer>")]
    assert format_reward(parse_response(truncated, FEATURES)) == 0.8  # unclosed tag
    assert format_reward(parse_response(_completion("83"), FEATURES)) == 0.0


def test_reward_weights_validation_and_trl_weights() -> None:
    w = RewardWeights(lam=0.7, beta=0.2, format_weight=0.05)
    assert w.trl_reward_weights() == pytest.approx([0.7, 0.3, 0.05])
    assert w.min_reward == pytest.approx(0.7 * math.log(0.01))
    assert RewardWeights(clip=(0.05, 0.9)).worst_cls == pytest.approx(math.log(0.05))
    for bad in ({"lam": 1.5}, {"beta": -1.0}, {"format_weight": -0.1}, {"clip": (0.6, 0.9)}):
        with pytest.raises(ValueError):
            RewardWeights(**bad)  # type: ignore[arg-type]


def _trl_total(fns, weights: RewardWeights, completions, **kwargs) -> list[float]:
    columns = [fn(completions, **kwargs) for fn in fns]
    return [
        sum(w * c[i] for w, c in zip(weights.trl_reward_weights(), columns, strict=True))
        for i in range(len(completions))
    ]


def test_trl_wrappers_accept_strings_and_chat_and_match_eagrl_reward() -> None:
    weights = RewardWeights()
    fns = make_trl_reward_functions(FEATURES, weights, aliases=IDS)
    assert [fn.__name__ for fn in fns] == ["r_cls", "r_att", "r_format"]
    texts = [_completion("0.9"), _completion("0.2", "SpO2"), "garbage", _completion("high", "")]
    chats = [[{"role": "assistant", "content": t}] for t in texts]
    labels = [1, 0, 1, 0]
    expert = [
        ["Lactate dehydrogenase", "Heart rate"],  # names
        ["oxygen_saturation", "heart_rate"],  # feature ids
        [("heart_rate", 0.6), ("albumin", 0.4)],  # rank_features' (id, score) pairs
        '["Ferritin"]',  # a JSON string column
    ]
    extra = {"prompts": ["p"] * 4, "completion_ids": [[1]] * 4, "trainer_state": None}
    for completions in (texts, chats):
        columns = [fn(completions, label=labels, expert_top_k=expert, **extra) for fn in fns]
        for column in columns:
            assert len(column) == 4 and all(isinstance(v, float) for v in column)
        r_cls, r_att, r_fmt = columns
        assert r_att[:2] == [1.0, 0.5] and r_att[2] == 0.0
        assert r_cls[2] == pytest.approx(math.log(0.01)) and r_fmt[2] == 0.0
        totals = _trl_total(fns, weights, completions, label=labels, expert_top_k=expert)
        canonical = [
            ["Lactate dehydrogenase", "Heart rate"],
            ["Oxygen saturation", "Heart rate"],
            ["Heart rate", "Albumin"],
            ["Ferritin"],
        ]
        for i, text in enumerate(texts):
            parsed = parse_response(text, FEATURES, IDS)
            expected = eagrl_reward(parsed, labels[i], canonical[i], weights)
            assert totals[i] == pytest.approx(expected)
        assert totals[2] == pytest.approx(weights.min_reward)


def test_trl_wrappers_errors_names_and_pickling() -> None:
    from trl.trainer.utils import get_callable_name

    fns = make_trl_reward_functions(FEATURES)
    assert [get_callable_name(fn) for fn in fns] == ["r_cls", "r_att", "r_format"]
    with pytest.raises(ValueError, match="label"):
        fns[0](["x"])
    with pytest.raises(ValueError, match="expert_top_k"):
        fns[1](["x"], label=[1])
    assert fns[2](["x"], label=[0]) == [0.0]  # r_format needs no expert ranking
    clone = pickle.loads(pickle.dumps(fns[1]))
    out = clone([_completion("0.5", "LDH")], label=[1], expert_top_k=[["Lactate dehydrogenase"]])
    assert clone.__name__ == "r_att" and out == [1.0]
