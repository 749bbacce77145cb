"""Patient record -> EAG-RL prompt (DESIGN §1 "Prompt").

Values are the cohort's raw daily values (not z-scores), so the model can compare them with the
reference ranges it is shown. The token budget is enforced here, not left to truncation by the
tokenizer, because cutting the end of a prompt would remove the task and the response format.

The system message holds everything a partition's prompts share (persona, task, instructions,
response format, worked example) and the user message the patient, so every prompt of a
partition starts with the same tokens and generation computes that prefix once
(``eagrl_pipeline.llm.generation``). The task is restated after the patient's data, where a
small model attends to it best.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np
import pandas as pd

from eagrl_pipeline.errors import InputDataError

TokenCounter = Callable[[str], int]

PERSONAS = {
    "tjh": (
        "You are an experienced doctor treating COVID-19 patients. You read laboratory results "
        "over a hospital stay carefully and judge each patient's prognosis from them."
    ),
    "mimic_iv": (
        "You are an experienced ICU physician. You read vital signs and laboratory results over "
        "an ICU stay carefully and judge each patient's prognosis from them."
    ),
}
GENERIC_PERSONA = "You are an experienced physician who judges patients' prognosis from EHR data."

TASKS = {
    "mortality": (
        "Predict the probability that the patient dies during this hospital stay "
        "(in-hospital mortality)."
    ),
    "readmission": (
        "Predict the probability that the patient is readmitted to the ICU or dies within 30 days "
        "of ICU discharge."
    ),
}

# Features the worked example names, when the dictionary has them (else its first features).
EXAMPLE_FEATURES = {
    "tjh": ("Lactate dehydrogenase", "High sensitivity C-reactive protein", "Lymphocytes (%)"),
    "mimic_iv": ("Glasgow coma scale total", "Oxygen saturation", "Respiratory rate"),
}

RESPONSE_FORMAT = """\
<Subquestion> ... </Subquestion> <Answer> ... </Answer>        (repeat for each step, 1 or more)
<Final subquestion> ... </Final subquestion>
<Important Features> feature name, feature name, ... </Important Features>
<Final answer> probability between 0 and 1 </Final answer>"""

_INSTRUCTIONS = (
    "Reason step by step. Break the question into sub-questions and answer each one from the "
    "patient's data. Then ask a final sub-question, list the features most important for your "
    "prediction (use the exact feature names of the patient's data, separated by commas), and "
    "give your final answer as a single probability between 0 and 1. Use exactly these tags:"
)

_HEURISTIC_TOKEN = re.compile(r"\d|[^\W\d_]{1,6}|[^\w\s]")  # a letter run of n: ceil(n/6) hits
_SEX_RANGE = re.compile(r"^\s*(.+?)\s*\(male\)\s*,\s*(.+?)\s*\(female\)\s*$", re.IGNORECASE)


def heuristic_token_count(text: str) -> int:
    """Rough BPE token count: each digit, each punctuation mark, and each 6 letters of a word.

    Digits count one each because Qwen-style tokenizers split numbers into digits; use a real
    tokenizer's ``len(tok.encode(text))`` when one is at hand.

    >>> heuristic_token_count("Hemoglobin: [115, 92]")  # 2 + ":" + "[" + 3 + "," + 2 + "]"
    11
    """
    return len(_HEURISTIC_TOKEN.findall(text))


@dataclass(frozen=True)
class PromptConfig:
    """Serialisation knobs. ``max_tokens=None`` means no budget."""

    max_visits: int | None = None
    feature_filter: Literal["all", "measured"] = "all"
    max_tokens: int | None = None
    include_example: bool = True
    sex_specific_ranges: bool = True

    def __post_init__(self) -> None:
        if self.max_visits is not None and self.max_visits < 1:
            raise ValueError(f"PromptConfig.max_visits must be >= 1, got {self.max_visits}")
        if self.feature_filter not in ("all", "measured"):
            raise ValueError(
                "PromptConfig.feature_filter must be 'all' or 'measured', "
                f"got {self.feature_filter!r}"
            )
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"PromptConfig.max_tokens must be >= 1, got {self.max_tokens}")


@dataclass(frozen=True)
class FeatureSpec:
    """One dictionary row as the prompt needs it."""

    feature_id: str
    name: str
    unit: str | None = None
    reference_range: str | None = None


@dataclass(frozen=True)
class SerializedPrompt:
    """The prompt and what the budget made it leave out."""

    system: str
    user: str
    n_tokens: int
    n_visits: int
    visits_shown: int
    features_shown: tuple[str, ...]
    dropped_visits: int = 0
    dropped_features: tuple[str, ...] = ()
    truncated: bool = False
    fits_budget: bool = True

    @property
    def text(self) -> str:
        return f"{self.system}\n\n{self.user}"


def as_messages(prompt: SerializedPrompt | str, system: str | None = None) -> list[dict[str, str]]:
    """Chat messages (system persona + user content) for ``tokenizer.apply_chat_template``."""
    if isinstance(prompt, SerializedPrompt):
        system, user = prompt.system, prompt.user
    else:
        user = prompt
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": user}]


def _text(value: object) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text if text and text.lower() != "nan" else None


def feature_specs(
    dictionary: pd.DataFrame, dataset: str, columns: Sequence[str] | None = None
) -> list[FeatureSpec]:
    """Time-series features of one dataset in dictionary order (demographics are shown apart),
    restricted to ``columns`` when given (a cohort's visit columns)."""
    needed = {"dataset", "feature_id", "feature_name"}
    if missing := needed - set(dictionary.columns):
        raise InputDataError("feature dictionary", f"missing columns {sorted(missing)}.")
    rows = dictionary[dictionary["dataset"] == dataset]
    if "kind" in rows:
        rows = rows[rows["kind"] != "demographic"]
    if columns is not None:
        rows = rows[rows["feature_id"].isin(set(columns))]
    specs = [
        FeatureSpec(
            str(r["feature_id"]),
            str(r["feature_name"]),
            _text(r.get("unit")),
            _text(r.get("reference_range")),
        )
        for _, r in rows.iterrows()
    ]
    if not specs:
        raise InputDataError(
            "feature dictionary",
            f"no time-series features for dataset {dataset!r} in the visit columns.",
            fix="check the dataset name and that the cohort has the dictionary's feature_id "
            "columns",
        )
    return specs


def format_value(value: object) -> str:
    """Compact number: 4 significant digits, integers from 1000 up, ``NaN`` when missing.

    >>> [format_value(v) for v in (0.15, 115.0, 71.333333, 12345.6, float("nan"), None)]
    ['0.15', '115', '71.33', '12346', 'NaN', 'NaN']
    """
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "NaN"
    if not math.isfinite(x):
        return "NaN"
    if abs(x) >= 1000:
        return str(round(x))
    text = np.format_float_positional(x, precision=4, unique=True, fractional=False, trim="-")
    return "0" if text in ("-0", "0") else text


def _sex_word(value: object) -> str | None:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return {1.0: "male", 0.0: "female"}.get(x)


def _reference(spec: FeatureSpec, sex: str | None, sex_specific: bool) -> str | None:
    ref = spec.reference_range
    if ref and sex_specific and sex and (m := _SEX_RANGE.match(ref)):
        return m.group(1) if sex == "male" else m.group(2)
    return ref


def feature_line(
    name: str, unit: str | None, reference: str | None, values: Sequence[object]
) -> str:
    """``- Name (Unit: U. Reference range: R): [v1, v2]`` with absent parts left out.

    >>> feature_line("pH", None, "7.35-7.45", [7.4, None])
    '- pH (Reference range: 7.35-7.45): [7.4, NaN]'
    """
    parts = [
        p for p in (unit and f"Unit: {unit}", reference and f"Reference range: {reference}") if p
    ]
    label = f"{name} ({'. '.join(parts)})" if parts else name
    return f"- {label}: [{', '.join(format_value(v) for v in values)}]"


def _demographic(value: object, unit: str = "") -> str:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "unknown"
    return f"{format_value(x)}{unit}" if math.isfinite(x) else "unknown"


def _system(persona: str, task: str, example: tuple[str, ...], include_example: bool) -> str:
    """The part of the prompt every patient of a dataset-task shares."""
    out = [
        persona,
        "",
        f"You will be given one patient's data. Task: {TASKS[task]}",
        "",
        _INSTRUCTIONS,
        RESPONSE_FORMAT,
    ]
    if include_example:
        out += ["", "Example of a complete answer (for a different patient):", _example(example)]
    return "\n".join(out)


def _render(
    task: str,
    sex: str | None,
    age: object,
    dates: Sequence[str],
    n_visits: int,
    lines: Sequence[str],
) -> str:
    shown = len(dates)
    visit_word = "visit" if n_visits == 1 else "visits"
    if shown == n_visits:
        visits = f"The patient has {n_visits} {visit_word}, on: {', '.join(dates)}."
    else:
        which = "the last visit is" if shown == 1 else f"the last {shown} are"
        visits = f"The patient has {n_visits} {visit_word}; {which} shown, on: {', '.join(dates)}."
    out = [
        "Patient information:",
        f"- Sex: {sex or 'unknown'}",
        f"- Age: {_demographic(age, ' years')}",
        visits,
        "Each feature lists one value per visit, in visit order (NaN = not measured):",
        *lines,
        "",
        f"Task: {TASKS[task]} Answer in the tagged format.",
    ]
    return "\n".join(out)


def _example(names: tuple[str, ...]) -> str:
    a, b, c = [*names, "the first feature", "the second feature", "the third feature"][:3]
    return (
        f"<Subquestion> How does {a} change across the visits? </Subquestion> "
        f"<Answer> It is above its reference range and rising, which points to worsening "
        f"disease. </Answer>\n"
        f"<Subquestion> Is {b} abnormal? </Subquestion> "
        f"<Answer> Yes, it is markedly elevated at every visit. </Answer>\n"
        f"<Subquestion> What does {c} show? </Subquestion> "
        f"<Answer> It stays below its reference range without recovering. </Answer>\n"
        f"<Final subquestion> Taking these findings together, how likely is the outcome? "
        f"</Final subquestion>\n"
        f"<Important Features> {a}, {b}, {c} </Important Features>\n"
        f"<Final answer> 0.83 </Final answer>"
    )


def serialize_patient(
    patient: pd.DataFrame,
    specs: Sequence[FeatureSpec],
    dataset: str,
    task: str,
    config: PromptConfig = PromptConfig(),
    count_tokens: TokenCounter = heuristic_token_count,
) -> SerializedPrompt:
    """One patient's visits (rows of a cohort's ``visits.parquet``) -> prompt.

    Over ``config.max_tokens``, drops the oldest visits first (keeping at least one), then the
    least-measured features (ties: later in dictionary order), and reports both. Each stage
    binary-searches the number to drop, so a real tokenizer is called O(log n) times.
    """
    if patient.empty:
        raise InputDataError("visits", "a patient with no visits.")
    rows = patient.sort_values("visit_index") if "visit_index" in patient else patient
    first = rows.iloc[0]
    values = rows[[s.feature_id for s in specs]].to_numpy(dtype="float64", na_value=np.nan)
    dates = _dates(rows["visit_date"])
    return _serialize(
        values,
        dates,
        first.get("sex"),
        first.get("age"),
        specs,
        dataset,
        task,
        config,
        count_tokens,
    )


def _dates(column: pd.Series) -> list[str]:
    stamps = pd.to_datetime(column, errors="coerce")
    return [d.strftime("%Y-%m-%d") if pd.notna(d) else "unknown" for d in stamps]


def _serialize(
    values: np.ndarray,
    dates: list[str],
    sex_value: object,
    age: object,
    specs: Sequence[FeatureSpec],
    dataset: str,
    task: str,
    config: PromptConfig,
    count_tokens: TokenCounter,
) -> SerializedPrompt:
    """The serialiser on arrays: visits (rows, oldest first) x features (``specs`` order)."""
    if task not in TASKS:
        raise InputDataError(
            "prompt config", f"unknown task {task!r}.", fix=f"use one of {sorted(TASKS)}"
        )
    n_visits = len(dates)
    if config.max_visits is not None:
        values, dates = values[-config.max_visits :], dates[-config.max_visits :]
    sex = _sex_word(sex_value)
    measured = np.isfinite(values)
    refs = [_reference(s, sex, config.sex_specific_ranges) for s in specs]
    base_features = [
        j for j in range(len(specs)) if config.feature_filter == "all" or measured[:, j].any()
    ]
    names = {s.name for s in specs}
    preferred = tuple(n for n in EXAMPLE_FEATURES.get(dataset, ()) if n in names)
    example = tuple(dict.fromkeys([*preferred, *(s.name for s in specs[:3])]))
    system = _system(PERSONAS.get(dataset, GENERIC_PERSONA), task, example, config.include_example)
    # Counted once: the budget search re-counts only the patient's part (the sum is exact for
    # the heuristic counter and within a token of a tokenizer's count of the joined text).
    n_system = count_tokens(system)

    @cache
    def lines_for(drop_v: int) -> list[str]:
        return [
            feature_line(s.name, s.unit, refs[j], values[drop_v:, j]) for j, s in enumerate(specs)
        ]

    @cache
    def attempt(drop_v: int, drop_f: int) -> tuple[str, list[int], list[int], int]:
        """(user text, features kept, features dropped, tokens) after dropping visits, features."""
        kept = measured[drop_v:]
        feats = [j for j in base_features if config.feature_filter == "all" or kept[:, j].any()]
        lost = [j for j in base_features if j not in feats]  # became unmeasured with the visits
        if drop_f:
            gone = sorted(feats, key=lambda j: (int(kept[:, j].sum()), -j))[:drop_f]
            lost += gone
            feats = [j for j in feats if j not in gone]
        lines = lines_for(drop_v)
        user = _render(task, sex, age, dates[drop_v:], n_visits, [lines[j] for j in feats])
        return user, feats, lost, n_system + count_tokens(user)

    drop_v = drop_f = 0
    budget = config.max_tokens
    if budget is not None and attempt(0, 0)[3] > budget:
        drop_v = _smallest_fitting(len(dates) - 1, lambda k: attempt(k, 0)[3] <= budget)
        if drop_v is None:
            drop_v = len(dates) - 1
            n_feats = len(attempt(drop_v, 0)[1])
            drop_f = _smallest_fitting(n_feats, lambda k: attempt(drop_v, k)[3] <= budget)
            drop_f = n_feats if drop_f is None else drop_f
    user, feats, lost, n_tokens = attempt(drop_v, drop_f)
    return SerializedPrompt(
        system=system,
        user=user,
        n_tokens=n_tokens,
        n_visits=n_visits,
        visits_shown=len(dates) - drop_v,
        features_shown=tuple(specs[j].name for j in feats),
        dropped_visits=drop_v,
        dropped_features=tuple(specs[j].name for j in lost),
        truncated=bool(drop_v or drop_f or lost),
        fits_budget=budget is None or n_tokens <= budget,
    )


def _smallest_fitting(upper: int, fits: Callable[[int], bool]) -> int | None:
    """Smallest k in [1, upper] with fits(k) (monotone in k); None if even upper fails."""
    if upper < 1 or not fits(upper):
        return None
    lo, hi = 1, upper
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def build_prompts(
    visits: pd.DataFrame,
    dictionary: pd.DataFrame,
    dataset: str,
    task: str,
    config: PromptConfig = PromptConfig(),
    count_tokens: TokenCounter = heuristic_token_count,
) -> pd.DataFrame:
    """One prompt per patient of a cohort's ``visits.parquet``, with token counts and what the
    budget dropped; rows in patient order."""
    required = {"patient_id", "visit_date", "sex", "age"}
    if missing := required - set(visits.columns):
        raise InputDataError("visits", f"missing columns {sorted(missing)}.")
    specs = feature_specs(dictionary, dataset, list(visits.columns))
    order = ["patient_id", "visit_index"] if "visit_index" in visits else ["patient_id"]
    frame = visits.sort_values(order, kind="stable").reset_index(drop=True)
    values = frame[[s.feature_id for s in specs]].to_numpy(dtype="float64", na_value=np.nan)
    dates = _dates(frame["visit_date"])
    ids = frame["patient_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    columns = {c: frame[c].tolist() for c in ("sex", "age", "split", "label") if c in frame}
    records = []
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        first = {c: col[a] for c, col in columns.items()}
        prompt = _serialize(
            values[a:b],
            dates[a:b],
            first["sex"],
            first["age"],
            specs,
            dataset,
            task,
            config,
            count_tokens,
        )
        records.append(
            {
                "patient_id": ids[a],
                "split": first.get("split"),
                "label": first.get("label"),
                "system": prompt.system,
                "user": prompt.user,
                "prompt": prompt.text,
                "n_tokens": prompt.n_tokens,
                "n_visits": prompt.n_visits,
                "visits_shown": prompt.visits_shown,
                "n_features_shown": len(prompt.features_shown),
                "dropped_visits": prompt.dropped_visits,
                "dropped_features": list(prompt.dropped_features),
                "truncated": prompt.truncated,
                "fits_budget": prompt.fits_budget,
            }
        )
    return pd.DataFrame.from_records(records)
