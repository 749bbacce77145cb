"""How the expert reaches the policy: the prompts' feature priority comes from the training split
only, the attention target is a subset of what the prompt shows, and copying the worked example
earns no attention reward."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eagrl_pipeline.expert_guidance import attention_targets, feature_priority
from eagrl_pipeline.prompts import FeatureMatcher, dictionary_aliases, parse_response
from eagrl_pipeline.prompts.serialize import EXAMPLE_FEATURES, example_response, system_message
from eagrl_pipeline.rewards import attention_reward

SEED = Path(__file__).resolve().parents[1] / "dbt_project" / "seeds" / "feature_dictionary.csv"
NAMES = [f"F{i}" for i in range(12)]


def _ranking(scores: np.ndarray, splits: list[str]) -> pd.DataFrame:
    """One row per (patient, feature) with the expert's score and rank (1 = most important)."""
    n_patients, n_features = scores.shape
    ranks = np.argsort(np.argsort(-scores, axis=1), axis=1) + 1
    return pd.DataFrame(
        {
            "patient_id": np.repeat(np.arange(n_patients), n_features),
            "split": np.repeat(splits, n_features),
            "feature_id": np.tile([n.lower() for n in NAMES[:n_features]], n_patients),
            "feature_name": np.tile(NAMES[:n_features], n_patients),
            "score": scores.ravel(),
            "rank": ranks.ravel(),
        }
    )


def test_feature_priority_reads_the_training_split_only() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((6, 5))
    splits = ["train", "train", "train", "val", "test", "test"]
    ranking = _ranking(scores, splits)
    expected = tuple(NAMES[j].lower() for j in np.argsort(-scores[:3].mean(axis=0), kind="stable"))
    assert feature_priority(ranking) == expected
    leaked = scores.copy()
    leaked[3:] = leaked[3:][:, ::-1] * 100  # val/test patients' own importance, reversed
    assert feature_priority(_ranking(leaked, splits)) == expected
    with pytest.raises(ValueError, match="no 'train' patients"):
        feature_priority(ranking[ranking["split"] != "train"])


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_shown=st.integers(0, 12),
    k=st.integers(1, 6),
)
def test_attention_target_is_the_experts_top_k_among_the_shown(
    seed: int, n_shown: int, k: int
) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.random((3, 12))
    ranking = _ranking(scores, ["train"] * 3)
    shown = {p: list(rng.choice(NAMES, size=n_shown, replace=False)) for p in range(3)}
    targets = attention_targets(ranking, shown, k)
    for patient, target in targets.items():
        assert set(target) <= set(shown[patient])
        assert len(target) == min(k, n_shown)
        by_score = sorted(shown[patient], key=lambda n: -scores[patient, NAMES.index(n)])
        assert target == by_score[:k]  # the expert's order, restricted to what was shown


def test_attention_target_without_ranking_or_prompt() -> None:
    ranking = _ranking(np.array([[0.9, 0.1]]), ["train"])
    assert attention_targets(ranking, {0: ["F1"], 5: ["F0"]}, k=2) == {0: ["F1"], 5: []}
    with pytest.raises(ValueError, match="k must be"):
        attention_targets(ranking, {0: ["F0"]}, k=0)


@pytest.mark.parametrize("dataset", ["tjh", "mimic_iv"])
def test_copying_the_worked_example_earns_no_more_attention_than_chance(dataset: str) -> None:
    """A completion that copies the system message's example verbatim gets no more R_att than
    the mean over random choices of the same number of the prompt's features."""
    seed = pd.read_csv(SEED)
    rows = seed[(seed.dataset == dataset) & (seed.kind != "demographic")]
    matcher = FeatureMatcher.build(rows.feature_name, dictionary_aliases(rows, dataset))
    example = example_response()
    assert example in system_message(dataset, "mortality")
    copied = parse_response(example, matcher)
    assert copied.important_features == () and copied.unmatched_features == EXAMPLE_FEATURES
    rng = np.random.default_rng(1)
    names = rows.feature_name.tolist()
    size = len(EXAMPLE_FEATURES)
    for _ in range(20):
        shown = list(rng.choice(names, size=10, replace=False))
        target = shown[:5]  # any target among the shown features
        copy_reward = attention_reward(copied.important_features, target)
        chance = np.mean([attention_reward(c, target) for c in itertools.combinations(shown, size)])
        assert chance > 0
        assert copy_reward <= chance


def test_feature_discrimination_reads_the_training_split_only() -> None:
    """The order comes from the training patients' last values and outcomes; the other splits'
    labels and values (their own outcome) never move it."""
    from eagrl_pipeline.expert_guidance import feature_discrimination

    rng = np.random.default_rng(0)
    n = 60
    label = rng.integers(0, 2, n)
    rows = pd.DataFrame(
        {
            "patient_id": np.arange(n),
            "visit_index": 0,
            "split": np.where(np.arange(n) < 40, "train", "test"),
            "label": label,
            "strong": label * 3.0 + rng.normal(size=n),
            "weak": label * 0.3 + rng.normal(size=n),
            "rare": np.where(np.arange(n) < 5, label, np.nan),
        }
    )
    order = feature_discrimination(rows, ["weak", "rare", "strong"])
    assert order == ("strong", "weak", "rare")  # rare: too few patients, ranked last
    leaked = rows.copy()
    test = leaked["split"] == "test"
    leaked.loc[test, "weak"] = leaked.loc[test, "label"] * 100.0  # test outcomes in "weak"
    assert feature_discrimination(leaked, ["weak", "rare", "strong"]) == order
