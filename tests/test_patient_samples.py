"""The seeded patient samples the LLM stages draw (assets.llm_inputs.sample_patients)."""

from __future__ import annotations

import pandas as pd
import pytest

from assets.llm_inputs import sample_patients


def _split(n: int, positives: int, split: str = "train") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "patient_id": range(n),
            "split": split,
            "label": [1] * positives + [0] * (n - positives),
        }
    )


def test_default_sample_keeps_the_class_shares() -> None:
    sample = sample_patients(_split(100, 12), 16, seed=0)
    assert len(sample) == 16
    assert sample["label"].sum() == 2  # round(16 * 12 / 100)


def test_balanced_sample_takes_half_of_each_class() -> None:
    """A rare outcome: the proportional sample of 16 holds 2 positives, the balanced one 8."""
    sample = sample_patients(_split(100, 12), 16, seed=0, balanced=True)
    assert len(sample) == 16 and sample["label"].sum() == 8
    assert sample["patient_id"].is_unique


@pytest.mark.parametrize(("positives", "expected"), [(3, 3), (97, 13)])
def test_balanced_sample_fills_from_the_other_class(positives: int, expected: int) -> None:
    """Too few of one class: the sample still has its size, the rest from the other class."""
    sample = sample_patients(_split(100, positives), 16, seed=0, balanced=True)
    assert len(sample) == 16
    assert sample["label"].sum() == expected


def test_samples_are_seeded_and_per_split() -> None:
    frame = pd.concat([_split(50, 10, "train"), _split(30, 6, "val")]).reset_index(drop=True)
    frame["patient_id"] = range(len(frame))
    a = sample_patients(frame, 8, seed=3, balanced=True)
    b = sample_patients(frame, 8, seed=3, balanced=True)
    pd.testing.assert_frame_equal(a, b)
    assert a.groupby("split")["label"].agg(["size", "sum"]).to_dict() == {
        "size": {"train": 8, "val": 8},
        "sum": {"train": 4, "val": 4},
    }
    assert sample_patients(frame, None, seed=3) is frame
