"""Case studies: which patients are shown (both labels, then the largest disagreements), what
each method's answer shows (steps, features against the expert's top-k), and the pages."""

from __future__ import annotations

import numpy as np
import pandas as pd

from eagrl_pipeline.evaluation.case_studies import (
    build_case_studies,
    case_studies_json,
    render_case_studies,
    select_patients,
)

EXPERT_TOP = ["Albumin", "Lactate dehydrogenase"]


def _completion(feature: str, probability: float) -> str:
    return (
        "<Subquestion> Is albumin low? </Subquestion> <Answer> Yes, 30 g/L. </Answer>\n"
        "<Final subquestion> Risk? </Final subquestion>\n"
        f"<Important Features> {feature} </Important Features>\n"
        f"<Final answer> {probability} </Final answer>"
    )


def _predictions() -> pd.DataFrame:
    """Six patients, two LLM methods and the expert; patient 5 is where they disagree most."""
    rows = []
    probabilities = {
        "eagrl": [0.2, 0.3, 0.7, 0.8, 0.4, 0.9],
        "vanilla": [0.3, 0.3, 0.6, 0.7, 0.4, 0.1],
    }
    for method, values in probabilities.items():
        for pid, p in enumerate(values):
            feature = "Albumin" if method == "eagrl" else "Platelet count"
            rows.append(
                {
                    "model": method,
                    "level": 0.0,
                    "patient_id": pid,
                    "label": int(pid >= 3),
                    "probability": p,
                    "completion": _completion(feature, p),
                    # as parquet gives them back: arrays
                    "important_features": np.array([feature], dtype=object),
                    "expert_top_k": np.array(EXPERT_TOP, dtype=object),
                }
            )
            rows.append({**rows[-1], "level": 1.0, "probability": 0.5})  # permuted: ignored
    for pid in range(6):
        rows.append(
            {"model": "expert", "level": 0.0, "patient_id": pid, "label": int(pid >= 3),
             "probability": 0.1 + 0.15 * pid}
        )  # fmt: skip
    return pd.DataFrame(rows)


def test_both_labels_then_the_largest_disagreement():
    chosen = select_patients(_predictions(), per_class=1, disagreements=1, seed=0)
    labels = [int(pid >= 3) for pid, _ in chosen[:2]]
    assert sorted(labels) == [0, 1]  # one of each outcome, seeded
    assert chosen == select_patients(_predictions(), per_class=1, disagreements=1, seed=0)
    pid, why = chosen[2]
    if pid == 5:
        assert why.startswith("methods disagree most: eagrl 0.90 vs vanilla 0.10")
    else:  # patient 5 was already drawn for its label: the next widest spread
        assert 5 in [p for p, _ in chosen[:2]] and "methods disagree most" in why
    assert len({p for p, _ in chosen}) == 3


def test_each_answer_shows_steps_features_against_the_expert_and_probability():
    prompts = pd.DataFrame(
        {
            "patient_id": range(6),
            "user": ["Patient:\n- Sex: male\n- Albumin (Unit: g/L): [30]\nTask: ..."] * 6,
        }
    )
    cases = build_case_studies(
        "tjh-mortality", _predictions(), prompts, ["vanilla", "eagrl", "expert"], 1, 1, 0
    )
    assert len(cases) == 3
    case = cases[0]
    assert case.shown == ("Sex: male", "Albumin (Unit: g/L): [30]")
    assert case.expert_top_k == tuple(EXPERT_TOP)
    assert [a.method for a in case.answers] == ["vanilla", "eagrl"]  # the expert is its own line
    eagrl = case.answers[1]
    assert eagrl.steps == (("Is albumin low?", "Yes, 30 g/L."),)
    assert eagrl.overlap == ("Albumin",) and case.answers[0].overlap == ()
    assert case.expert_probability is not None
    pages = render_case_studies(cases, "Case studies")
    assert "<mark>Albumin</mark>" in pages["html"] and "Platelet count" in pages["html"]
    assert "**Albumin**" in pages["md"] and "<script" not in pages["html"]
    assert case_studies_json(cases)[0]["patient_id"] == str(case.patient_id)


def test_no_evaluated_cells_says_so():
    pages = render_case_studies([], "Case studies")
    assert "No dataset-task has evaluated cells" in pages["md"]
