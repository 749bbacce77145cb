"""Predictions behind the evaluation reports, in plain Python (no Dagster).

- ``llm_predictions``: the one batched inference helper for every policy variant. The caller
  loads the base model with or without a merged LoRA adapter (base, SFT, RL); this generates the
  answers to several prompt sets in one ``generate_batch`` call (length-sorted batches across
  the sets waste less padding than one call per set) and parses them into ``ModelPredictions``.
- ``PromptSet.permuted`` and ``expert_robustness``: the feature-order perturbations, each
  patient's prompt with its own seed, the expert's input columns with one seed per level.
- ``shared_features`` and ``expert_transfer``: what the expert could be evaluated on across
  datasets, and why it is not.
- ``write_combined_report``: several reports (one per transfer direction) as one JSON, Markdown
  and self-contained HTML file each, rendered by ``report.py`` so the formats stay the same.
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pandas as pd

from eagrl_pipeline.data.cohort import CohortArrays
from eagrl_pipeline.evaluation.report import (
    ModelPredictions,
    render_html,
    render_markdown,
    write_texts,
)
from eagrl_pipeline.evaluation.robustness import (
    count_feature_lines,
    patient_seed,
    permute_feature_columns,
    permute_prompt_features,
)
from eagrl_pipeline.llm.guided import ScaffoldConfig
from eagrl_pipeline.prompts import FeatureMatcher, dictionary_aliases, parse_response
from eagrl_pipeline.rewards import RewardWeights, reward_parts

K = TypeVar("K")
PROMPT_COLUMNS: tuple[str, ...] = ("patient_id", "label", "system", "user")


@dataclass(frozen=True)
class PromptSet:
    """The patients an LLM answers, in one order: ids, labels and the two chat messages."""

    patient_ids: tuple[Any, ...]
    labels: tuple[int, ...]
    system: tuple[str, ...]
    user: tuple[str, ...]
    unpermutable: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.patient_ids)
        if not len(self.labels) == len(self.system) == len(self.user) == n:
            raise ValueError("PromptSet: patient_ids, labels, system and user differ in length")
        if len(set(self.patient_ids)) != n:
            raise ValueError("PromptSet: patient_ids has duplicates")

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> PromptSet:
        """From rows of ``llm_prompts``' prompts.parquet."""
        missing = [c for c in PROMPT_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"prompt frame lacks columns {missing}")
        return cls(
            tuple(frame["patient_id"].tolist()),
            tuple(int(v) for v in frame["label"]),
            tuple(str(s) for s in frame["system"]),
            tuple(str(u) for u in frame["user"]),
        )

    def __len__(self) -> int:
        return len(self.patient_ids)

    def messages(self) -> list[list[dict[str, str]]]:
        return [
            [{"role": "system", "content": s}, {"role": "user", "content": u}]
            for s, u in zip(self.system, self.user, strict=True)
        ]

    def permuted(self, fraction: float, seed: int) -> PromptSet:
        """The same patients with ``fraction`` of each prompt's feature lines moved; each patient
        gets its own permutation (``patient_seed(seed, patient_id)``), stable across runs.

        A prompt with fewer than two feature lines has no order to permute: it stays as it is
        and its patient is listed in ``unpermutable`` (the report says how many)."""
        users, unpermutable = [], []
        for pid, user in zip(self.patient_ids, self.user, strict=True):
            if count_feature_lines(user) < 2:
                users.append(user)
                unpermutable.append(pid)
                continue
            users.append(permute_prompt_features(user, fraction, patient_seed(seed, pid)))
        return dataclasses.replace(self, user=tuple(users), unpermutable=tuple(unpermutable))


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding of the evaluation: greedy, so a rerun reproduces every answer.

    ``readout`` says which probability an answer stands for. ``"expected"`` (guided decoding
    only): the expectation of the probability the model writes, under its own distribution at
    the answer's first digit (``GenerationResult.answer_expectation``); the greedy text is that
    distribution's mode, which collapses a small model's ranking of patients onto a few values.
    ``"text"``: the number written. Both are kept per answer; the rewards use the readout.
    ``plan`` is the guided shape of an answer: ``"answer"`` the tagged reasoning (EAG-RL's
    format), ``"direct"`` and ``"think"`` the prompting baselines' (``RowPlan``).
    """

    max_new_tokens: int = 160
    batch_size: int = 8
    seed: int = 0
    guided: bool = True
    guided_steps: int = 1
    scaffold: ScaffoldConfig = field(default_factory=ScaffoldConfig)
    readout: Literal["expected", "text"] = "expected"
    plan: Literal["answer", "direct", "think"] = "answer"

    def __post_init__(self) -> None:
        if self.readout not in ("expected", "text"):
            raise ValueError(f"readout must be 'expected' or 'text', got {self.readout!r}")
        if self.plan not in ("answer", "direct", "think"):
            raise ValueError(f"plan must be 'answer', 'direct' or 'think', got {self.plan!r}")


@dataclass(frozen=True)
class LLMAnswers:
    """One model's answers to one prompt set: the report's input and the per-patient record
    (completion, parse errors, reward) kept as an artifact."""

    predictions: ModelPredictions
    records: pd.DataFrame


def llm_predictions(
    name: str,
    model: Any,
    tokenizer: Any,
    prompt_sets: Mapping[K, PromptSet],
    matcher: FeatureMatcher,
    expert_top_k: Mapping[Any, Sequence[str]],
    settings: GenerationSettings,
    weights: RewardWeights | None = None,
) -> dict[K, LLMAnswers]:
    """Answer every prompt set with one model and parse the answers.

    An answer without a readable probability keeps ``y_prob`` NaN (the report scores it at its
    fallback and counts it as a parse failure); its important features are still compared with
    the expert's top-k for the Jaccard, and it gets the minimum reward. ``weights`` default to
    ``RewardWeights()``, the reward the policy was trained on.
    """
    from eagrl_pipeline.llm.generation import generate_batch
    from eagrl_pipeline.llm.guided import ResponseScaffold

    keys = list(prompt_sets)
    messages = [m for key in keys for m in prompt_sets[key].messages()]
    results = generate_batch(
        model,
        tokenizer,
        messages,
        max_new_tokens=settings.max_new_tokens,
        do_sample=False,
        seed=settings.seed,
        batch_size=settings.batch_size,
        scaffold=ResponseScaffold(tokenizer, settings.scaffold) if settings.guided else None,
        scaffold_steps=settings.guided_steps,
        scaffold_plan=settings.plan,
    )
    out: dict[K, LLMAnswers] = {}
    start = 0
    for key in keys:
        prompts = prompt_sets[key]
        rows = []
        for pid, label, result in zip(
            prompts.patient_ids, prompts.labels, results[start : start + len(prompts)], strict=True
        ):
            parsed = parse_response(result.text, matcher)
            written = parsed.probability
            expected = result.answer_expectation
            if settings.readout == "expected" and written is not None and expected is not None:
                parsed = dataclasses.replace(parsed, probability=expected)
            top_k = list(expert_top_k.get(pid, []))
            parts = reward_parts(parsed, label, top_k, weights or RewardWeights())
            rows.append(
                {
                    "patient_id": pid,
                    "label": label,
                    "probability": np.nan if parsed.probability is None else parsed.probability,
                    "probability_text": np.nan if written is None else written,
                    "answer_expectation": np.nan if expected is None else expected,
                    "valid": parsed.is_valid,
                    "errors": "; ".join(parsed.errors),
                    "important_features": list(parsed.important_features),
                    "expert_top_k": top_k,
                    "r_cls": parts.r_cls,
                    "r_att": parts.r_att,
                    "r_format": parts.r_format,
                    "reward": parts.total,
                    "completion": result.text,
                    "n_new_tokens": result.n_new_tokens,
                }
            )
        start += len(prompts)
        records = pd.DataFrame(rows)
        predictions = ModelPredictions(
            name=name,
            kind="llm",
            patient_ids=prompts.patient_ids,
            y_true=prompts.labels,
            y_prob=records["probability"].to_numpy(dtype=float),
            important_features=records["important_features"].tolist(),
            expert_top_k=records["expert_top_k"].tolist(),
            rewards=records["reward"].to_numpy(dtype=float),
        )
        out[key] = LLMAnswers(predictions, records)
    return out


def subset_cohort(arrays: CohortArrays, indices: np.ndarray) -> CohortArrays:
    """The cohort restricted to ``indices`` (every per-patient array sliced alike)."""
    idx = np.asarray(indices)
    return dataclasses.replace(
        arrays,
        x=arrays.x[idx],
        observed=arrays.observed[idx],
        visit_mask=arrays.visit_mask[idx],
        static=arrays.static[idx],
        y=arrays.y[idx],
        patient_ids=arrays.patient_ids[idx],
        group_ids=arrays.group_ids[idx],
        split=arrays.split[idx],
    )


def permuted_cohort(arrays: CohortArrays, fraction: float, seed: int) -> CohortArrays:
    """Values and observed masks with the same feature columns permuted, so the model reads one
    feature's values (and its measured-or-not flags) in another's slot; demographics stay."""
    return dataclasses.replace(
        arrays,
        x=permute_feature_columns(arrays.x, fraction, seed),
        observed=permute_feature_columns(arrays.observed, fraction, seed),
    )


def level_seed(seed: int, level: float) -> int:
    """One stable seed per permutation level for the expert's columns.

    >>> level_seed(42, 0.2) == level_seed(42, 0.2) != level_seed(42, 0.4)
    True
    """
    return patient_seed(seed, f"level={level:g}")


def expert_predictions(
    name: str, model: Any, arrays: CohortArrays, indices: np.ndarray, device: str = "cpu"
) -> ModelPredictions:
    """The expert's probabilities for ``indices`` of the cohort."""
    from eagrl_pipeline.experts import predict_proba

    idx = np.asarray(indices)
    probs = predict_proba(model, arrays, idx, device=device)
    return ModelPredictions(name, "expert", arrays.patient_ids[idx].tolist(), arrays.y[idx], probs)


def expert_robustness(
    name: str,
    model: Any,
    arrays: CohortArrays,
    indices: np.ndarray,
    levels: Sequence[float],
    seed: int,
    device: str = "cpu",
) -> dict[float, ModelPredictions]:
    """The expert on the same patients with ``level`` of its input columns permuted."""
    from eagrl_pipeline.experts import predict_proba

    part = subset_cohort(arrays, indices)
    out: dict[float, ModelPredictions] = {}
    for level in levels:
        moved = permuted_cohort(part, level, level_seed(seed, level))
        probs = predict_proba(model, moved, device=device)
        out[level] = ModelPredictions(name, "expert", part.patient_ids.tolist(), part.y, probs)
    return out


@dataclass(frozen=True)
class SharedFeature:
    """A feature both cohorts hold, under each dataset's id, name and unit."""

    id_a: str
    name_a: str
    unit_a: str
    id_b: str
    name_b: str
    unit_b: str

    @property
    def same_unit(self) -> bool:
        return self.unit_a.strip().casefold() == self.unit_b.strip().casefold()


def _cohort_dictionary(dictionary: pd.DataFrame, feature_ids: Sequence[str]) -> pd.DataFrame:
    wanted = set(feature_ids)
    frame = dictionary[dictionary["feature_id"].isin(wanted)]
    unknown = sorted(wanted - set(frame["feature_id"]))
    if unknown:
        raise ValueError(f"cohort features missing from the feature dictionary: {unknown[:5]}")
    return frame.drop_duplicates("feature_id")


def shared_features(
    dictionary_a: pd.DataFrame,
    feature_ids_a: Sequence[str],
    dictionary_b: pd.DataFrame,
    feature_ids_b: Sequence[str],
) -> list[SharedFeature]:
    """Features of cohort A that cohort B also has, matched by name like the LLM's answers are
    (``FeatureMatcher``: exact name, dictionary aliases, curated abbreviations). Matched both
    ways, since curated aliases point one way ("Sodium" finds "Serum sodium", not the reverse).

    >>> a = pd.DataFrame({"feature_id": ["hemoglobin", "serum_sodium", "ferritin"],
    ...                   "feature_name": ["Hemoglobin", "Serum sodium", "Ferritin"],
    ...                   "unit": ["g/L", "mmol/L", "ng/mL"]})
    >>> b = pd.DataFrame({"feature_id": ["lab_hemoglobin", "lab_sodium", "heart_rate"],
    ...                   "feature_name": ["Hemoglobin", "Sodium", "Heart rate"],
    ...                   "unit": ["g/dL", "mmol/L", "bpm"]})
    >>> [(f.id_a, f.id_b, f.same_unit) for f in shared_features(a, a.feature_id, b, b.feature_id)]
    [('hemoglobin', 'lab_hemoglobin', False), ('serum_sodium', 'lab_sodium', True)]
    """
    frame_a = _cohort_dictionary(dictionary_a, feature_ids_a)
    frame_b = _cohort_dictionary(dictionary_b, feature_ids_b)

    def matcher(frame: pd.DataFrame) -> FeatureMatcher:
        return FeatureMatcher.build(frame["feature_name"].tolist(), dictionary_aliases(frame))

    match_a, match_b = matcher(frame_a), matcher(frame_b)
    rows_a = {str(r.feature_name): r for r in frame_a.itertuples()}
    rows_b = {str(r.feature_name): r for r in frame_b.itertuples()}
    pairs: dict[tuple[str, str], None] = {}
    for name_a in rows_a:
        if (hit := match_b.match(name_a)) is not None:
            pairs[(name_a, hit)] = None
    for name_b in rows_b:
        if (hit := match_a.match(name_b)) is not None:
            pairs[(hit, name_b)] = None
    order = {name: i for i, name in enumerate(rows_a)}

    def unit(row: Any) -> str:
        value = getattr(row, "unit", None)
        return "" if value is None or pd.isna(value) else str(value)

    return [
        SharedFeature(
            str(rows_a[a].feature_id),
            a,
            unit(rows_a[a]),
            str(rows_b[b].feature_id),
            b,
            unit(rows_b[b]),
        )
        for a, b in sorted(pairs, key=lambda pair: (order[pair[0]], pair[1]))
    ]


def expert_transfer(
    source: str,
    target: str,
    shared: Sequence[SharedFeature],
    n_features_source: int,
    n_features_target: int,
) -> dict[str, Any]:
    """Why the source dataset's expert is not evaluated on the target dataset, with the shared
    features it could be retrained on (``shared`` as ``shared_features(source, target)``)."""
    mismatched = [f for f in shared if not f.same_unit]
    reason = (
        f"not applicable, because the expert models read the fixed, positional input layout of "
        f"their training cohort ({source}: {n_features_source} features plus sex and age; "
        f"{target}: {n_features_target} features plus sex and age), so a {source} expert cannot "
        f"take {target}'s inputs without retraining. Retrained on the {len(shared)} features the "
        "two cohorts share (matched by name) it could be compared"
        + (
            f"; the unit labels of {len(mismatched)} of them differ (some only in spelling, such "
            "as mEq/L and mmol/L, others need a conversion, such as g/dL and g/L)"
            if mismatched
            else ""
        )
        + "."
    )
    return {
        "source": source,
        "target": target,
        "applicable": False,
        "reason": reason,
        "shared_features": [
            {
                "source_id": f.id_a,
                "source_name": f.name_a,
                "source_unit": f.unit_a,
                "target_id": f.id_b,
                "target_name": f.name_b,
                "target_unit": f.unit_b,
                "same_unit": f.same_unit,
            }
            for f in shared
        ],
        "shared_static": ["sex", "age"],
    }


_STYLE = re.compile(r"<style>(.*?)</style>", re.DOTALL)
_BODY = re.compile(r"<body>\n(.*)\n</body>", re.DOTALL)


def _demote_markdown(text: str) -> str:
    return "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())


def _demote_html(body: str) -> str:
    for level in (3, 2, 1):
        body = body.replace(f"<h{level}>", f"<h{level + 1}>")
        body = body.replace(f"</h{level}>", f"</h{level + 1}>")
    return body


@dataclass(frozen=True)
class ReportSection:
    """One report of a combined file, with the predictions its plots need."""

    report: Mapping[str, Any]
    models: Sequence[ModelPredictions]
    robustness: Mapping[str, Mapping[float, ModelPredictions]] | None = None


def write_combined_report(
    out_dir: str | Path,
    title: str,
    preface: Sequence[str],
    sections: Mapping[str, ReportSection],
    extra: Mapping[str, Any],
) -> dict[str, Path]:
    """report.json / .md / .html holding several reports, each rendered exactly as
    ``write_report`` renders one (tables, plots, notes), under one title and preface.

    ``extra`` goes into the JSON next to the sections (e.g. what was not applicable and why).
    Everything is rendered before anything is written, then each file is replaced atomically.
    """
    esc = html.escape
    md = [f"# {title}", "", *(f"- {line}" for line in preface)]
    style = ""
    html_body = [f"<h1>{esc(title)}</h1>", "<ul>", *(f"<li>{esc(p)}</li>" for p in preface)]
    html_body.append("</ul>")
    for section in sections.values():
        md += ["", _demote_markdown(render_markdown(section.report))]
        page = render_html(section.report, section.models, section.robustness)
        style_match, body_match = _STYLE.search(page), _BODY.search(page)
        if style_match is None or body_match is None:
            raise ValueError("render_html's page has no <style> or <body> to combine")
        style = style_match.group(1)
        html_body += ["<hr>", _demote_html(body_match.group(1))]
    texts = {
        "json": json.dumps(
            {
                "title": title,
                "preface": list(preface),
                **extra,
                "sections": {k: s.report for k, s in sections.items()},
            },
            indent=2,
            allow_nan=False,
        )
        + "\n",
        "md": "\n".join(md) + "\n",
        "html": (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{esc(title)}</title>\n<style>{style}</style>\n</head>\n<body>\n"
            + "\n".join(html_body)
            + "\n</body>\n</html>\n"
        ),
    }
    return write_texts(out_dir, texts)
