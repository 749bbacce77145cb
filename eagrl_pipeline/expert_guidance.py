"""How the expert reaches the policy: which features prompts show, and the attention target.

Two rules keep the expert's guidance honest (DESIGN §1):

- **What a prompt shows** is ranked by the expert's feature importance *averaged over the
  training split* (:func:`feature_priority`): something a model could know at inference, the
  same order for every patient, never a patient's own label or expert output.
- **The attention target** (the expert's top-k that R_att compares the model's
  ``<Important Features>`` with) is taken among the features the patient's prompt shows
  (:func:`attention_targets`): a policy can only attend to what it was given, and rewarding it
  for naming a feature it never saw would teach it to guess the expert's favourites.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

RANKING_COLUMNS = ("patient_id", "split", "feature_id", "feature_name", "score", "rank")


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}")


def feature_priority(ranking: pd.DataFrame, split: str = "train") -> tuple[str, ...]:
    """Feature ids by mean expert importance over ``split``'s patients, highest first (ties in
    feature-id order, so the order is stable).

    >>> ranking = pd.DataFrame({
    ...     "patient_id": [1, 1, 2, 2, 3, 3], "split": ["train"] * 4 + ["test"] * 2,
    ...     "feature_id": ["a", "b"] * 3, "score": [0.2, 0.8, 0.6, 0.4, 1.0, 0.0]})
    >>> feature_priority(ranking)
    ('b', 'a')
    """
    _require(ranking, ("split", "feature_id", "score"), "the expert ranking")
    part = ranking[ranking["split"] == split]
    if part.empty:
        raise ValueError(f"the expert ranking has no {split!r} patients to average over")
    mean = part.groupby("feature_id")["score"].mean()
    ordered = sorted(mean.items(), key=lambda item: (-item[1], str(item[0])))
    return tuple(str(fid) for fid, _ in ordered)


def attention_targets(
    ranking: pd.DataFrame,
    shown: Mapping[Any, Sequence[str]],
    k: int,
) -> dict[Any, list[str]]:
    """Each patient's expert top-``k`` feature names among the features their prompt shows, in
    the expert's order; a patient absent from ``shown`` gets no target.

    >>> ranking = pd.DataFrame({
    ...     "patient_id": [7, 7, 7], "feature_name": ["LDH", "CRP", "Age"], "rank": [1, 2, 3]})
    >>> attention_targets(ranking, {7: ["Age", "CRP"]}, k=1)
    {7: ['CRP']}
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    _require(ranking, ("patient_id", "feature_name", "rank"), "the expert ranking")
    ordered = ranking[ranking["patient_id"].isin(list(shown))].sort_values(["patient_id", "rank"])
    by_patient = ordered.groupby("patient_id", sort=False)["feature_name"].agg(list).to_dict()
    out: dict[Any, list[str]] = {}
    for patient, names in shown.items():
        visible = set(names)
        out[patient] = [f for f in by_patient.get(patient, []) if f in visible][:k]
    return out
