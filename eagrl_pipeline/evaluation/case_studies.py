"""Case studies beside the comparison's numbers: a few test patients per dataset-task, each on
one page section with the features the prompt showed, every method's reasoning steps, its
important features against the expert's top-k (the overlap highlighted), its probability, and
the label: what the paper shows in its figures, and what tells a reader *why* a row scored as it
did.

Patients are chosen without looking at any method's score beyond its disagreement: a seeded
draw per class (so both outcomes are shown), then the patients on which the methods disagree
most (the largest spread of their probabilities), which are the ones a reader wants to inspect.
Built from what the evaluation cells already wrote (per-patient predictions with completions)
and the prompts; nothing is generated.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from eagrl_pipeline.prompts import parse_response

EXPERT_ROWS = ("expert",)


@dataclass(frozen=True)
class MethodAnswer:
    method: str
    probability: float | None
    steps: tuple[tuple[str, str], ...]
    important_features: tuple[str, ...]
    overlap: tuple[str, ...]
    completion: str


@dataclass(frozen=True)
class CaseStudy:
    dataset_task: str
    patient_id: Any
    label: int
    why: str
    shown: tuple[str, ...]  # the prompt's feature lines, as the model read them
    expert_top_k: tuple[str, ...]
    expert_probability: float | None
    answers: tuple[MethodAnswer, ...] = field(default=())


def _unperturbed(predictions: pd.DataFrame) -> pd.DataFrame:
    return predictions[predictions["level"] == 0.0].drop_duplicates(["model", "patient_id"])


def select_patients(
    predictions: pd.DataFrame, per_class: int = 1, disagreements: int = 2, seed: int = 0
) -> list[tuple[Any, str]]:
    """(patient id, why chosen): ``per_class`` seeded patients of each label among those every
    LLM method answered, then the ``disagreements`` patients with the widest spread of the
    methods' probabilities (ties broken by id)."""
    level0 = _unperturbed(predictions)
    llm = level0[~level0["model"].isin(EXPERT_ROWS) & level0["model"].ne("expert_all_test")]
    wide = llm.pivot(index="patient_id", columns="model", values="probability").dropna()
    if wide.empty:
        return []
    labels = level0.drop_duplicates("patient_id").set_index("patient_id")["label"]
    rng = np.random.default_rng(seed)
    chosen: list[tuple[Any, str]] = []
    for label in sorted(labels.loc[wide.index].unique(), reverse=True):
        pool = sorted(p for p in wide.index if labels[p] == label)
        outcome = "positive (label 1)" if label == 1 else "negative (label 0)"
        for pid in rng.choice(pool, size=min(per_class, len(pool)), replace=False):
            chosen.append((pid.item() if hasattr(pid, "item") else pid, f"seeded draw, {outcome}"))
    spread = (wide.max(axis=1) - wide.min(axis=1)).sort_values(ascending=False, kind="stable")
    taken = {pid for pid, _ in chosen}
    for pid in [p for p in spread.index if p not in taken][:disagreements]:
        low, high = wide.loc[pid].idxmin(), wide.loc[pid].idxmax()
        chosen.append(
            (
                pid,
                f"methods disagree most: {high} {wide.loc[pid, high]:.2f} vs {low} "
                f"{wide.loc[pid, low]:.2f} (spread {spread[pid]:.2f})",
            )
        )
    return chosen


def _names(value: Any) -> tuple[str, ...]:
    """A list column's value (a list, a numpy array from parquet, or missing) as names."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ()
    return tuple(str(v) for v in value)


def _feature_lines(user: str) -> tuple[str, ...]:
    return tuple(line[2:] for line in user.split("\n") if line.startswith("- "))


def build_case_studies(
    dataset_task: str,
    predictions: pd.DataFrame,
    prompts: pd.DataFrame,
    methods: Sequence[str],
    per_class: int = 1,
    disagreements: int = 2,
    seed: int = 0,
) -> list[CaseStudy]:
    """The case studies of one dataset-task from its merged per-patient predictions (rows per
    method, ``completion`` and ``important_features`` for the LLM rows) and its prompts
    (``patient_id``, ``user``); ``methods`` in the comparison's row order."""
    level0 = _unperturbed(predictions).set_index(["model", "patient_id"])
    users = prompts.set_index("patient_id")["user"]
    cases = []
    for pid, why in select_patients(predictions, per_class, disagreements, seed):
        answers = []
        expert_top: tuple[str, ...] = ()
        for method in methods:
            if (method, pid) not in level0.index or method in EXPERT_ROWS:
                continue
            row = level0.loc[(method, pid)]
            expert_top = _names(row.get("expert_top_k")) or expert_top
            important = _names(row.get("important_features"))
            completion = str(row.get("completion", "") or "")
            probability = row["probability"]
            answers.append(
                MethodAnswer(
                    method=method,
                    probability=None if pd.isna(probability) else float(probability),
                    steps=parse_response(completion, []).steps,
                    important_features=important,
                    overlap=tuple(f for f in important if f in set(expert_top)),
                    completion=completion,
                )
            )
        expert = (
            level0.loc[("expert", pid), "probability"] if ("expert", pid) in level0.index else None
        )
        label = int(level0.xs(pid, level="patient_id")["label"].iloc[0])
        cases.append(
            CaseStudy(
                dataset_task=dataset_task,
                patient_id=pid,
                label=label,
                why=why,
                shown=_feature_lines(str(users.get(pid, ""))),
                expert_top_k=expert_top,
                expert_probability=None if expert is None else float(expert),
                answers=tuple(answers),
            )
        )
    return cases


def _probability(value: float | None) -> str:
    return "unparsed" if value is None else f"{value:.3f}"


def _features_md(answer: MethodAnswer) -> str:
    return ", ".join(f"**{f}**" if f in answer.overlap else f for f in answer.important_features)


def render_case_studies(cases: Sequence[CaseStudy], title: str) -> dict[str, str]:
    """``{"md": ..., "html": ...}``: one section per patient; a listed feature that is among the
    expert's top-k is bold (Markdown) or highlighted (HTML)."""
    md = [f"# {title}", ""]
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>"]
    if not cases:
        md.append("No dataset-task has evaluated cells with per-patient answers yet.")
        body.append("<p>No dataset-task has evaluated cells with per-patient answers yet.</p>")
    for case in cases:
        head = f"{case.dataset_task}, patient {case.patient_id}: label {case.label}"
        expert = f"expert probability {_probability(case.expert_probability)}; " + (
            f"expert top-k among the features shown: {', '.join(case.expert_top_k)}"
        )
        md += [f"## {head}", "", f"Chosen: {case.why}. {expert}.", "", "Features shown:", ""]
        md += [f"- {line}" for line in case.shown] or ["- (none)"]
        md += ["", "| method | probability | important features (bold: in the expert's top-k) "
               "| reasoning steps |", "|---|---:|---|---|"]  # fmt: skip
        for a in case.answers:
            steps = " / ".join(f"{q} → {ans}" for q, ans in a.steps) or "-"
            md.append(
                f"| {a.method} | {_probability(a.probability)} | {_features_md(a) or '-'} | "
                f"{steps.replace('|', '/')} |"
            )
        md.append("")
        body += [f"<h2>{esc(head)}</h2>", f"<p>Chosen: {esc(case.why)}. {esc(expert)}.</p>"]
        body.append(
            "<ul>" + "".join(f"<li>{esc(line)}</li>" for line in case.shown) + "</ul>"
            if case.shown
            else "<p>No feature lines.</p>"
        )
        rows = []
        for a in case.answers:
            listed = ", ".join(
                f"<mark>{esc(f)}</mark>" if f in a.overlap else esc(f) for f in a.important_features
            )
            steps = "".join(f"<li>{esc(q)} → {esc(ans)}</li>" for q, ans in a.steps)
            rows.append(
                f"<tr><td>{esc(a.method)}</td><td>{_probability(a.probability)}</td>"
                f"<td>{listed or '-'}</td><td><ol>{steps}</ol><details><summary>completion"
                f"</summary><pre>{esc(a.completion)}</pre></details></td></tr>"
            )
        body.append(
            "<table><tr><th>method</th><th>probability</th><th>important features "
            "(highlighted: in the expert's top-k)</th><th>reasoning</th></tr>"
            + "".join(rows)
            + "</table>"
        )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:"
        "collapse}td,th{border:1px solid #ccc;padding:4px;vertical-align:top}mark{"
        "background:#ffe28a}pre{white-space:pre-wrap}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )
    return {"md": "\n".join(md) + "\n", "html": page}


def case_studies_json(cases: Sequence[CaseStudy]) -> list[dict[str, Any]]:
    """The case studies as JSON-ready dicts."""
    return [{**asdict(c), "patient_id": str(c.patient_id)} for c in cases]
