"""Patient record -> EAG-RL prompt (DESIGN §1 "Prompt").

Values are the cohort's raw daily values (not z-scores), so the model can compare them with the
reference ranges it is shown. The token budget is enforced here, not left to truncation by the
tokenizer, because cutting the end of a prompt would remove the task and the response format.

What a prompt shows is chosen for the patient, within the budget: features in a priority order
the caller gives (the pipeline passes the expert's importance averaged over the training split,
something the model could know at inference, never the patient's own label or expert output),
measured ones only, and the most recent visits that hold a measurement of a shown feature (a
sparse discharge-day record does not crowd out the last full panel). Over the budget, visits go
first (down to one), then the lowest-priority features.

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
from typing import Any, Literal

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

# The worked example names placeholders, never dictionary features: a policy that copies the
# example must not earn attention reward (R_att) by it, and a real name in every system message
# would be one a small model repeats for every patient.
EXAMPLE_FEATURES = ("Feature A", "Feature B")
EXAMPLE_HEADER = (
    "Example of the format (for a different patient; Feature A and Feature B stand for feature "
    "names from the patient's data, 0.xx for your probability):"
)

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
_SEX_PART = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*-|<|≤)\s*(\d+(?:\.\d+)?)\s*$")


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
    """Serialisation knobs. ``max_tokens=None`` means no budget.

    ``feature_priority``: feature ids in the order they are worth showing (ids not in it follow
    in dictionary order); None keeps dictionary order. ``max_features`` caps the features shown
    and ``min_features`` is what a budget must leave room for (``minimum_budget``).
    ``visit_selection="measured"`` shows the most recent visits holding a measured value of a
    shown feature; ``"last"`` the most recent visits, measured or not. ``flag_abnormal`` writes
    each value's place against the feature's reference range after it (``480 (high)``): the
    dictionary's knowledge, the same for every patient, never the label.
    """

    max_visits: int | None = None
    feature_filter: Literal["all", "measured"] = "all"
    max_tokens: int | None = None
    include_example: bool = True
    sex_specific_ranges: bool = True
    feature_priority: tuple[str, ...] | None = None
    max_features: int | None = None
    min_features: int = 1
    visit_selection: Literal["measured", "last"] = "last"
    flag_abnormal: bool = False

    def __post_init__(self) -> None:
        if self.max_visits is not None and self.max_visits < 1:
            raise ValueError(f"PromptConfig.max_visits must be >= 1, got {self.max_visits}")
        if self.max_features is not None and self.max_features < 1:
            raise ValueError(f"PromptConfig.max_features must be >= 1, got {self.max_features}")
        if self.min_features < 0:
            raise ValueError(f"PromptConfig.min_features must be >= 0, got {self.min_features}")
        if self.max_features is not None and self.min_features > self.max_features:
            raise ValueError(
                f"PromptConfig.min_features ({self.min_features}) must be <= max_features "
                f"({self.max_features})"
            )
        if self.visit_selection not in ("measured", "last"):
            raise ValueError(
                "PromptConfig.visit_selection must be 'measured' or 'last', "
                f"got {self.visit_selection!r}"
            )
        if self.feature_filter not in ("all", "measured"):
            raise ValueError(
                "PromptConfig.feature_filter must be 'all' or 'measured', "
                f"got {self.feature_filter!r}"
            )
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"PromptConfig.max_tokens must be >= 1, got {self.max_tokens}")


Bounds = tuple[float | None, float | None] | None


@dataclass(frozen=True)
class FeatureSpec:
    """One dictionary row as the prompt needs it."""

    feature_id: str
    name: str
    unit: str | None = None
    reference_range: str | None = None
    bounds: Bounds = None  # the dictionary's reference_low/high (None: neither given)


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


def _bounds(low: Any, high: Any) -> Bounds:
    """A dictionary row's numeric reference bounds (None when neither is given)."""
    low, high = (None if v is None or pd.isna(v) else float(v) for v in (low, high))
    return None if low is None and high is None else (low, high)


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
            _bounds(r.get("reference_low"), r.get("reference_high")),
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


def _reference(spec: FeatureSpec, sex: str | None, sex_specific: bool) -> tuple[str | None, Bounds]:
    """The range shown for this patient and its bounds: for a sex-specific range and a known
    sex, that sex's part (the dictionary's numeric bounds span both sexes), else the dictionary's.

    >>> ref = "130-175 (male), 115-150 (female)"
    >>> spec = FeatureSpec("hb", "Hemoglobin", "g/L", ref, (115.0, 175.0))
    >>> _reference(spec, "female", True), _reference(spec, None, True)
    (('115-150', (115.0, 150.0)), ('130-175 (male), 115-150 (female)', (115.0, 175.0)))
    """
    ref = spec.reference_range
    if ref and sex_specific and sex and (m := _SEX_RANGE.match(ref)):
        part = m.group(1) if sex == "male" else m.group(2)
        if bound := _SEX_PART.match(part):
            low = None if bound.group(1) is None else float(bound.group(1))
            return part, (low, float(bound.group(2)))
        return part, spec.bounds
    return ref, spec.bounds


def value_flag(value: object, bounds: Bounds) -> str | None:
    """``"low"``, ``"high"`` or ``"normal"`` against ``bounds`` (inclusive); None when the value
    is missing or the range unknown.

    >>> [value_flag(v, (120.0, 250.0)) for v in (100, 120, 250, 251, float("nan"))]
    ['low', 'normal', 'normal', 'high', None]
    """
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if bounds is None or not math.isfinite(x):
        return None
    low, high = bounds
    if low is not None and x < low:
        return "low"
    if high is not None and x > high:
        return "high"
    return "normal"


def feature_line(
    name: str,
    unit: str | None,
    reference: str | None,
    values: Sequence[object],
    bounds: Bounds = None,
) -> str:
    """``- Name (Unit: U. Reference range: R): [v1, v2]`` with absent parts left out; with
    ``bounds`` (the range's, to flag values), each measured value carries its place.

    >>> feature_line("pH", None, "7.35-7.45", [7.4, None])
    '- pH (Reference range: 7.35-7.45): [7.4, NaN]'
    >>> feature_line("LDH", "U/L", "120-250", [480.0, 231.0, None], (120.0, 250.0))
    '- LDH (Unit: U/L. Reference range: 120-250): [480 (high), 231 (normal), NaN]'
    """
    parts = [
        p for p in (unit and f"Unit: {unit}", reference and f"Reference range: {reference}") if p
    ]
    label = f"{name} ({'. '.join(parts)})" if parts else name
    texts = []
    for v in values:
        text, flag = format_value(v), value_flag(v, bounds)
        texts.append(f"{text} ({flag})" if flag else text)
    return f"- {label}: [{', '.join(texts)}]"


def _demographic(value: object, unit: str = "") -> str:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "unknown"
    return f"{format_value(x)}{unit}" if math.isfinite(x) else "unknown"


def _system(
    persona: str,
    task: str,
    include_example: bool,
    instructions: str = _INSTRUCTIONS,
    response_format: str = RESPONSE_FORMAT,
) -> str:
    """The part of the prompt every patient of a dataset-task shares (a prompting baseline
    passes its own instructions and response format)."""
    out = [
        persona,
        "",
        f"You will be given one patient's data. Task: {TASKS[task]}",
        "",
        instructions,
        response_format,
    ]
    if include_example:
        out += ["", EXAMPLE_HEADER, example_response()]
    return "\n".join(out)


def system_message(dataset: str, task: str, include_example: bool = True) -> str:
    """The system message of a dataset-task's prompts."""
    if task not in TASKS:
        raise InputDataError(
            "prompt config", f"unknown task {task!r}.", fix=f"use one of {sorted(TASKS)}"
        )
    return _system(PERSONAS.get(dataset, GENERIC_PERSONA), task, include_example)


def _visits_line(n_visits: int, dates: Sequence[str], selection: str) -> str:
    shown = len(dates)
    visit_word = "visit" if n_visits == 1 else "visits"
    if shown == n_visits:
        return f"The patient has {n_visits} {visit_word}, on: {', '.join(dates)}."
    if selection == "measured":
        which = (
            "the last visit with these measurements is"
            if shown == 1
            else f"the last {shown} with these measurements are"
        )
    else:
        which = "the last visit is" if shown == 1 else f"the last {shown} are"
    return f"The patient has {n_visits} {visit_word}; {which} shown, on: {', '.join(dates)}."


def _render(
    task: str,
    sex: str | None,
    age: object,
    visits_line: str,
    lines: Sequence[str],
    flags: bool = False,
) -> str:
    legend = "NaN = not measured" + (
        "; low/normal/high against the reference range" if flags else ""
    )
    out = [
        "Patient information:",
        f"- Sex: {sex or 'unknown'}",
        f"- Age: {_demographic(age, ' years')}",
        visits_line,
        f"Each feature lists one value per visit shown, in visit order ({legend}):",
        *lines,
        "",
        f"Task: {TASKS[task]} {ANSWER_TAGGED}",
    ]
    return "\n".join(out)


ANSWER_TAGGED = "Answer in the tagged format."


@dataclass(frozen=True)
class PromptingBaseline:
    """A prompting baseline of the paper's tables: the base model asked another way, the same
    patient shown. ``plan`` is the guided shape of its answer (``eagrl_pipeline.llm.guided``)."""

    name: str
    instructions: str
    response_format: str
    closing: str
    plan: Literal["direct", "think"]


PROMPTING_BASELINES = {
    "vanilla": PromptingBaseline(
        "vanilla",
        "Answer directly, without any explanation: give only the probability, a single number "
        "between 0 and 1, in this format:",
        "<Final answer> probability between 0 and 1 </Final answer>",
        "Answer with the probability only.",
        "direct",
    ),
    "think_answer": PromptingBaseline(
        "think_answer",
        "Think step by step about the patient's data, then give your final answer as a single "
        "probability between 0 and 1. Use exactly these tags:",
        "<Reasoning> your reasoning </Reasoning>\n"
        "<Final answer> probability between 0 and 1 </Final answer>",
        "Reason first, then answer.",
        "think",
    ),
}


def baseline_prompt(user: str, dataset: str, task: str, style: str) -> tuple[str, str]:
    """(system, user) of a patient's prompt under the prompting baseline ``style``: the system
    message's instructions and response format replaced (persona and task kept), the user
    message's closing request restated; the patient's lines are untouched, so the baseline and
    the policies read the same data."""
    if style not in PROMPTING_BASELINES:
        raise ValueError(
            f"unknown prompting baseline {style!r}: choose from {sorted(PROMPTING_BASELINES)}"
        )
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose from {sorted(TASKS)}")
    baseline = PROMPTING_BASELINES[style]
    if not user.endswith(ANSWER_TAGGED):
        raise ValueError(
            f"the user message does not end with {ANSWER_TAGGED!r}: it was not written by "
            "llm_prompts (rematerialize llm_prompts, then evaluate the baselines again)"
        )
    persona = PERSONAS.get(dataset, GENERIC_PERSONA)
    system = _system(persona, task, False, baseline.instructions, baseline.response_format)
    return system, user[: -len(ANSWER_TAGGED)] + baseline.closing


def example_response() -> str:
    """The worked example: the format with placeholder features (``EXAMPLE_FEATURES``)."""
    a, b = EXAMPLE_FEATURES
    return (
        f"<Subquestion> How does {a} change across the visits? </Subquestion> "
        f"<Answer> It is above its reference range and rising, which points to worsening "
        f"disease. </Answer>\n"
        f"<Subquestion> Is {b} abnormal? </Subquestion> "
        f"<Answer> It stays below its reference range without recovering. </Answer>\n"
        f"<Final subquestion> Taking these findings together, how likely is the outcome? "
        f"</Final subquestion>\n"
        f"<Important Features> {a}, {b} </Important Features>\n"
        f"<Final answer> 0.xx </Final answer>"
    )


def _priority(specs: Sequence[FeatureSpec], priority: Sequence[str] | None) -> list[int]:
    """Column indices of ``specs`` in priority order (the rest in dictionary order)."""
    if priority is None:
        return list(range(len(specs)))
    rank = {fid: i for i, fid in enumerate(dict.fromkeys(priority))}
    return sorted(range(len(specs)), key=lambda j: (rank.get(specs[j].feature_id, len(rank)), j))


def _sample_line(spec: FeatureSpec, flags: bool = False) -> str:
    """The longest one-visit line a feature can take (a 6-character value), for budgets."""
    bounds = (None, None) if flags and spec.bounds else None  # "(normal)", the longest place
    return feature_line(spec.name, spec.unit, spec.reference_range, [123456.0], bounds)


def minimum_budget(
    specs: Sequence[FeatureSpec],
    dataset: str,
    task: str,
    config: PromptConfig,
    count_tokens: TokenCounter = heuristic_token_count,
) -> int:
    """Tokens a prompt needs to show ``config.min_features`` features at one visit, whichever
    features they are (the longest lines count), with the longest demographics and dates.

    A budget below it is a configuration error: the prompts asset refuses it before any work,
    with this number, rather than serialising patients it cannot show."""
    system = system_message(dataset, task, config.include_example)
    longest = sorted(
        (_sample_line(s, config.flag_abnormal) for s in specs), key=count_tokens, reverse=True
    )
    visits_line = _visits_line(999, ["0000-00-00"], config.visit_selection)
    user = _render(
        task, "female", 100.0, visits_line, longest[: config.min_features], config.flag_abnormal
    )
    return count_tokens(system) + count_tokens(user)


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
    system = system_message(dataset, task, config.include_example)
    n_visits = len(dates)
    sex = _sex_word(sex_value)
    measured = np.isfinite(values)
    refs = [_reference(s, sex, config.sex_specific_ranges) for s in specs]
    flags = config.flag_abnormal
    order = _priority(specs, config.feature_priority)
    measured_only = config.feature_filter == "measured"
    candidates = [j for j in order if not measured_only or measured[:, j].any()]
    cap = len(candidates) if config.max_features is None else config.max_features
    # Counted once: the budget search re-counts only the patient's part (the sum is exact for
    # the heuristic counter and within a token of a tokenizer's count of the joined text).
    n_system = count_tokens(system)

    @cache
    def choose(n_vis: int, n_feat: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(visit rows, feature columns): the top ``n_feat`` features and the last ``n_vis``
        visits that hold one of them (or simply the last visits)."""
        top = candidates[:n_feat]
        if config.visit_selection == "measured" and top:
            rows = [i for i in range(n_visits) if measured[i, top].any()] or [n_visits - 1]
        else:
            rows = list(range(n_visits))
        rows = rows[-n_vis:]
        if measured_only:
            feats = [j for j in candidates if measured[rows, j].any()][:n_feat]
        else:
            feats = top
        return tuple(rows), tuple(feats)

    @cache
    def attempt(n_vis: int, n_feat: int) -> tuple[str, int]:
        rows, feats = choose(n_vis, n_feat)
        lines = [
            feature_line(
                specs[j].name,
                specs[j].unit,
                refs[j][0],
                values[list(rows), j],
                refs[j][1] if flags else None,
            )
            for j in feats
        ]
        visits_line = _visits_line(n_visits, [dates[i] for i in rows], config.visit_selection)
        user = _render(task, sex, age, visits_line, lines, flags)
        return user, n_system + count_tokens(user)

    n_feat = min(cap, len(candidates))
    n_vis = n_visits if config.max_visits is None else min(config.max_visits, n_visits)
    n_vis = min(n_vis, len(choose(n_visits, n_feat)[0]))
    wanted_rows, wanted_feats = choose(n_vis, n_feat)  # the config's choice, before the budget
    budget = config.max_tokens
    fits = budget is None or attempt(n_vis, n_feat)[1] <= budget
    if not fits:
        # Largest visit count that fits with every feature, else one visit and fewer features.
        n_vis = _largest_fitting(n_vis, lambda k: attempt(k, n_feat)[1] <= budget) or 1
        if attempt(n_vis, n_feat)[1] > budget:
            n_feat = _largest_fitting(n_feat, lambda k: attempt(1, k)[1] <= budget) or 0
    user, n_tokens = attempt(n_vis, n_feat)
    rows, feats = choose(n_vis, n_feat)
    lost = [j for j in wanted_feats if j not in feats]
    return SerializedPrompt(
        system=system,
        user=user,
        n_tokens=n_tokens,
        n_visits=n_visits,
        visits_shown=len(rows),
        features_shown=tuple(specs[j].name for j in feats),
        dropped_visits=len(wanted_rows) - len(rows),
        dropped_features=tuple(specs[j].name for j in lost),
        truncated=not fits,
        fits_budget=budget is None or n_tokens <= budget,
    )


def _largest_fitting(upper: int, fits: Callable[[int], bool]) -> int | None:
    """Largest k in [1, upper] with fits(k) (fits is monotone: true up to some k); None if even
    k = 1 fails."""
    if upper < 1 or not fits(1):
        return None
    lo, hi = 1, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


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
    lowest-priority features, and reports both. Each stage binary-searches the number to keep,
    so a real tokenizer is called O(log n) times.
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
                "features_shown": list(prompt.features_shown),
                "dropped_visits": prompt.dropped_visits,
                "dropped_features": list(prompt.dropped_features),
                "truncated": prompt.truncated,
                "fits_budget": prompt.fits_budget,
            }
        )
    return pd.DataFrame.from_records(records)
