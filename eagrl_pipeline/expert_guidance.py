"""How the expert reaches the policy: which features prompts show, and the attention target.

Two rules keep the expert's guidance honest (DESIGN §1):

- **What a prompt shows** is ranked by a statistic *of the training split*, the same order for
  every patient, never a patient's own label or expert output: the expert's feature importance
  averaged over the training patients (:func:`feature_priority`), or how well each feature's
  last measured value separates the training patients' outcomes (:func:`feature_discrimination`).
  Both are what a model could know at inference, like any statistic fitted on training data.
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


def feature_discrimination(
    visits: pd.DataFrame,
    feature_ids: Sequence[str],
    split: str = "train",
    min_patients: int = 10,
) -> tuple[str, ...]:
    """Feature ids by how well the last measured value separates ``split``'s outcomes, best
    first: the univariate AUROC's distance from 0.5 (either direction), times the share of the
    split's patients with a value (a perfect marker measured in few patients shows little).
    Features measured in fewer than ``min_patients`` patients, or in one class only, go last in
    the given order.

    Why offer it next to the expert's importance: ConCare's final attention is not a measure of
    predictive value. On real TJH's training split its eight top features had last-value AUROCs
    of 0.67-0.90, while lactate dehydrogenase, hs-CRP and nine others exceed 0.95.

    >>> v = pd.DataFrame({"patient_id": [1, 1, 2, 3, 4], "visit_index": [0, 1, 0, 0, 0],
    ...     "split": "train", "label": [1, 1, 1, 0, 0],
    ...     "a": [9.0, 1.0, 2.0, 3.0, 4.0], "b": [5.0, 8.0, 7.0, 1.0, 7.5]})
    >>> feature_discrimination(v, ["a", "b"], min_patients=2)  # a's last values separate fully
    ('a', 'b')
    """
    from sklearn.metrics import roc_auc_score

    _require(visits, ("patient_id", "split", "label"), "the cohort visits")
    part = visits[visits["split"] == split]
    if part.empty:
        raise ValueError(f"the cohort has no {split!r} patients to rank features on")
    order = ["patient_id", "visit_index"] if "visit_index" in part else ["patient_id"]
    part = part.sort_values(order, kind="stable")
    last = part.groupby("patient_id", sort=False)[list(feature_ids)].last()
    labels = part.groupby("patient_id", sort=False)["label"].first().astype(int)
    scored, unscored = [], []
    for fid in feature_ids:
        present = last[fid].notna()
        y = labels[present]
        if present.sum() < min_patients or y.nunique() < 2:
            unscored.append(str(fid))
            continue
        auroc = roc_auc_score(y, last.loc[present, fid])
        scored.append((abs(auroc - 0.5) * float(present.mean()), str(fid)))
    ranked = [fid for _, fid in sorted(scored, key=lambda item: (-item[0], item[1]))]
    return (*ranked, *unscored)
