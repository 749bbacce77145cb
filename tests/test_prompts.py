"""Prompt serialisation: a hand-checked patient, the knobs, the token budget, real cohorts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eagrl_pipeline.errors import InputDataError
from eagrl_pipeline.prompts import (
    PromptConfig,
    as_messages,
    build_prompts,
    feature_specs,
    heuristic_token_count,
    serialize_patient,
)
from eagrl_pipeline.prompts.serialize import (
    EXAMPLE_FEATURES,
    RESPONSE_FORMAT,
    feature_line,
    minimum_budget,
)

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "dbt_project" / "seeds" / "feature_dictionary.csv"
NaN = np.nan


@pytest.fixture
def dictionary() -> pd.DataFrame:
    rows = [
        ("tjh", "sex", "Sex", "demographic", None, None, None, None),
        ("tjh", "age", "Age", "demographic", "years", None, None, None),
        (
            "tjh",
            "lactate_dehydrogenase",
            "Lactate dehydrogenase",
            "lab",
            "U/L",
            "120-250",
            120,
            250,
        ),
        (
            "tjh",
            "hemoglobin",
            "Hemoglobin",
            "lab",
            "g/L",
            "130-175 (male), 115-150 (female)",
            115,
            175,
        ),
        ("tjh", "ph_value", "pH value", "lab", None, "7.35-7.45", 7.35, 7.45),
        ("tjh", "mystery", "Mystery marker", "lab", None, None, None, None),
        ("tjh", "ferritin", "Ferritin", "lab", "µg/L", None, None, None),
        ("tjh", "never", "Never measured", "lab", "mg/L", "< 3", None, 3),
        ("tjh", "not_in_visits", "Not in visits", "lab", "U/L", "1-2", 1, 2),
        ("mimic_iv", "heart_rate", "Heart rate", "vital", "bpm", "60-100", 60, 100),
    ]
    columns = ["dataset", "feature_id", "feature_name", "kind", "unit", "reference_range"]
    columns += ["reference_low", "reference_high"]
    return pd.DataFrame(rows, columns=columns).fillna(NaN)  # the seed loads empty cells as NaN


def _visits() -> pd.DataFrame:
    """Patient 7: male, 63, three visits (rows shuffled); patient 3: female, one visit."""
    cols = ["lactate_dehydrogenase", "hemoglobin", "ph_value", "mystery", "ferritin", "never"]
    p7 = {
        0: [310.0, 128.0, 7.401, 0.000123456, NaN, NaN],
        1: [NaN, 121.5, NaN, 2.0, 2074.4, NaN],
        2: [1234.56, 119.26, 7.3, NaN, NaN, NaN],
    }
    dates = {0: "2020-02-01", 1: "2020-02-03", 2: "2020-02-04"}
    rows = [
        {"patient_id": 7, "visit_index": i, "visit_date": pd.Timestamp(dates[i]), "label": 1}
        | {"sex": 1, "age": 63.0, "split": "train"}
        | dict(zip(cols, p7[i], strict=True))
        for i in (2, 0, 1)
    ]
    rows.append(
        {"patient_id": 3, "visit_index": 0, "visit_date": pd.Timestamp("2020-03-05"), "label": 0}
        | {"sex": 0, "age": 41.0, "split": "test"}
        | dict(zip(cols, [200.0, 120.0, NaN, NaN, NaN, NaN], strict=True))
    )
    return pd.DataFrame(rows)


def _patient7(dictionary: pd.DataFrame, config: PromptConfig | None = None, **kw):
    visits = _visits()
    specs = feature_specs(dictionary, "tjh", list(visits.columns))
    patient = visits[visits.patient_id == 7]
    return serialize_patient(patient, specs, "tjh", "mortality", config or PromptConfig(), **kw)


HAND_CHECKED = """\
Patient information:
- Sex: male
- Age: 63 years
The patient has 3 visits, on: 2020-02-01, 2020-02-03, 2020-02-04.
Each feature lists one value per visit shown, in visit order (NaN = not measured):
- Lactate dehydrogenase (Unit: U/L. Reference range: 120-250): [310, NaN, 1235]
- Hemoglobin (Unit: g/L. Reference range: 130-175): [128, 121.5, 119.3]
- pH value (Reference range: 7.35-7.45): [7.401, NaN, 7.3]
- Mystery marker: [0.0001235, 2, NaN]
- Ferritin (Unit: µg/L): [NaN, 2074, NaN]
- Never measured (Unit: mg/L. Reference range: < 3): [NaN, NaN, NaN]

Task: Predict the probability that the patient dies during this hospital stay (in-hospital \
mortality). Answer in the tagged format."""


def test_hand_checked_patient(dictionary: pd.DataFrame) -> None:
    prompt = _patient7(dictionary)
    assert prompt.system.startswith("You are an experienced doctor treating COVID-19 patients")
    assert prompt.user == HAND_CHECKED
    assert prompt.text == f"{prompt.system}\n\n{prompt.user}"
    assert RESPONSE_FORMAT in prompt.system and "dies during this hospital stay" in prompt.system
    example = prompt.system.split("Example of the format")[1]
    assert "<Important Features> Feature A, Feature B </Important Features>" in example
    assert "<Final answer> 0.xx </Final answer>" in example
    assert (prompt.n_visits, prompt.visits_shown, prompt.dropped_visits) == (3, 3, 0)
    assert len(prompt.features_shown) == 6 and "Not in visits" not in prompt.user
    assert not prompt.truncated and prompt.fits_budget
    assert prompt.n_tokens == heuristic_token_count(prompt.text)


def test_flag_abnormal_places_each_value_against_its_own_range(dictionary: pd.DataFrame) -> None:
    prompt = _patient7(dictionary, PromptConfig(flag_abnormal=True))
    lines = prompt.user.split("\n")
    assert "(NaN = not measured; low/normal/high against the reference range):" in lines[4]
    assert lines[5:10] == [
        "- Lactate dehydrogenase (Unit: U/L. Reference range: 120-250): "
        "[310 (high), NaN, 1235 (high)]",
        # The male range of a sex-specific one: 128 is low for a man (130-175).
        "- Hemoglobin (Unit: g/L. Reference range: 130-175): [128 (low), 121.5 (low), 119.3 (low)]",
        "- pH value (Reference range: 7.35-7.45): [7.401 (normal), NaN, 7.3 (low)]",
        "- Mystery marker: [0.0001235, 2, NaN]",  # no range: no flag
        "- Ferritin (Unit: µg/L): [NaN, 2074, NaN]",
    ]
    plain = _patient7(dictionary)
    assert plain.features_shown == prompt.features_shown
    # Flags cost tokens: the budget check counts them, so a budget that fits the plain prompt's
    # minimum does not pass for a flagged one.
    specs = feature_specs(dictionary, "tjh", list(_visits().columns))
    assert minimum_budget(specs, "tjh", "mortality", PromptConfig(flag_abnormal=True)) > (
        minimum_budget(specs, "tjh", "mortality", PromptConfig())
    )


def test_flagged_lines_stay_feature_lines_for_the_parsers(dictionary: pd.DataFrame) -> None:
    from eagrl_pipeline.evaluation.robustness import count_feature_lines
    from eagrl_pipeline.llm.guided import prompt_feature_names

    prompt = _patient7(dictionary, PromptConfig(flag_abnormal=True))
    assert count_feature_lines(prompt.user) == 6
    assert prompt_feature_names(prompt.user) == prompt.features_shown


def test_female_range_unknown_sex_and_readmission_task(dictionary: pd.DataFrame) -> None:
    visits = _visits()
    specs = feature_specs(dictionary, "tjh", list(visits.columns))
    female = serialize_patient(visits[visits.patient_id == 3], specs, "tjh", "mortality")
    assert "- Hemoglobin (Unit: g/L. Reference range: 115-150): [120]" in female.user
    assert "The patient has 1 visit, on: 2020-03-05." in female.user
    unknown = visits[visits.patient_id == 3].assign(sex=NaN, age=NaN)
    text = serialize_patient(unknown, specs, "tjh", "readmission").user
    assert "- Sex: unknown\n- Age: unknown\n" in text
    assert "Reference range: 130-175 (male), 115-150 (female)): [120]" in text
    assert "readmitted to the ICU or dies within 30 days of ICU discharge" in text
    mimic = serialize_patient(
        unknown.assign(heart_rate=88.0),
        feature_specs(dictionary, "mimic_iv", ["heart_rate"]),
        "mimic_iv",
        "mortality",
    )
    assert mimic.system.startswith("You are an experienced ICU physician")
    assert "- Heart rate (Unit: bpm. Reference range: 60-100): [88]" in mimic.user


def test_feature_line_omits_missing_parts_and_renders_nan() -> None:
    assert (
        feature_line("A", "mg", "1-2", [1.0, NaN])
        == "- A (Unit: mg. Reference range: 1-2): [1, NaN]"
    )
    assert feature_line("A", "mg", None, [None]) == "- A (Unit: mg): [NaN]"
    assert feature_line("A", None, "1-2", [np.inf]) == "- A (Reference range: 1-2): [NaN]"
    assert feature_line("A", None, None, [-0.0, 1e-5, 99999.5]) == "- A: [0, 0.00001, 100000]"


def test_max_visits_shows_the_last_visits(dictionary: pd.DataFrame) -> None:
    prompt = _patient7(dictionary, PromptConfig(max_visits=2))
    assert "The patient has 3 visits; the last 2 are shown, on: 2020-02-03, 2020-02-04." in (
        prompt.user
    )
    assert "- Lactate dehydrogenase (Unit: U/L. Reference range: 120-250): [NaN, 1235]" in (
        prompt.user
    )
    assert (prompt.n_visits, prompt.visits_shown, prompt.dropped_visits) == (3, 2, 0)
    one = _patient7(dictionary, PromptConfig(max_visits=1))
    assert "the last visit is shown, on: 2020-02-04." in one.user


def test_feature_filter_measured_drops_never_measured(dictionary: pd.DataFrame) -> None:
    prompt = _patient7(dictionary, PromptConfig(feature_filter="measured"))
    assert "Never measured" not in prompt.user
    assert prompt.features_shown == (
        "Lactate dehydrogenase",
        "Hemoglobin",
        "pH value",
        "Mystery marker",
        "Ferritin",
    )
    last = _patient7(dictionary, PromptConfig(feature_filter="measured", max_visits=1))
    assert last.features_shown == ("Lactate dehydrogenase", "Hemoglobin", "pH value")
    assert not last.truncated  # a config choice, not the budget


def test_budget_drops_oldest_visits_first_and_reports(dictionary: pd.DataFrame) -> None:
    base = PromptConfig(include_example=False)
    full = _patient7(dictionary, base, count_tokens=len)
    two = _patient7(dictionary, PromptConfig(include_example=False, max_visits=2), count_tokens=len)
    budgeted = _patient7(
        dictionary, PromptConfig(include_example=False, max_tokens=two.n_tokens), count_tokens=len
    )
    assert full.n_tokens > two.n_tokens
    assert budgeted.text == two.text
    assert (budgeted.dropped_visits, budgeted.visits_shown, budgeted.n_visits) == (1, 2, 3)
    assert budgeted.dropped_features == () and budgeted.truncated and budgeted.fits_budget
    assert budgeted.n_tokens <= two.n_tokens


def test_budget_then_drops_lowest_priority_features(dictionary: pd.DataFrame) -> None:
    one = _patient7(dictionary, PromptConfig(include_example=False, max_visits=1), count_tokens=len)
    cfg = PromptConfig(include_example=False, max_tokens=one.n_tokens - 1)
    prompt = _patient7(dictionary, cfg, count_tokens=len)
    # Without a priority the dictionary's order is the priority: its last feature goes first.
    assert prompt.dropped_visits == 2 and prompt.visits_shown == 1
    assert prompt.dropped_features == ("Never measured",)
    assert "Never measured" not in prompt.user and "Ferritin" in prompt.user
    assert prompt.truncated and prompt.fits_budget and prompt.n_tokens <= cfg.max_tokens

    ranked = PromptConfig(
        include_example=False,
        max_tokens=one.n_tokens - 1,
        feature_priority=("never", "ferritin", "mystery", "ph_value", "hemoglobin"),
    )
    prompt = _patient7(dictionary, ranked, count_tokens=len)
    assert prompt.dropped_features == ("Lactate dehydrogenase",)  # unranked: lowest priority

    impossible = _patient7(dictionary, PromptConfig(max_tokens=1), count_tokens=len)
    assert not impossible.fits_budget and impossible.truncated
    assert impossible.features_shown == () and impossible.visits_shown == 1
    assert impossible.dropped_features == (
        "Lactate dehydrogenase",
        "Hemoglobin",
        "pH value",
        "Mystery marker",
        "Ferritin",
        "Never measured",
    )


def test_priority_and_max_features_choose_what_is_shown(dictionary: pd.DataFrame) -> None:
    cfg = PromptConfig(
        feature_filter="measured",
        feature_priority=("never", "ferritin", "mystery", "ph_value"),
        max_features=2,
    )
    prompt = _patient7(dictionary, cfg)
    # "never" is never measured, so the next two in priority order are shown, in that order.
    assert prompt.features_shown == ("Ferritin", "Mystery marker")
    assert prompt.user.index("- Ferritin") < prompt.user.index("- Mystery marker")
    assert prompt.dropped_features == () and not prompt.truncated  # config, not the budget


def test_measured_visit_selection_skips_visits_without_shown_features(
    dictionary: pd.DataFrame,
) -> None:
    """Visit 2020-02-03 holds neither LDH nor pH: the last two visits *with* them are shown."""
    cfg = PromptConfig(
        feature_filter="measured",
        feature_priority=("lactate_dehydrogenase", "ph_value"),
        max_features=2,
        max_visits=2,
        visit_selection="measured",
    )
    prompt = _patient7(dictionary, cfg)
    assert "the last 2 with these measurements are shown, on: 2020-02-01, 2020-02-04." in (
        prompt.user
    )
    assert "- Lactate dehydrogenase (Unit: U/L. Reference range: 120-250): [310, 1235]" in (
        prompt.user
    )
    assert prompt.features_shown == ("Lactate dehydrogenase", "pH value")
    last = _patient7(dictionary, PromptConfig(**{**cfg.__dict__, "visit_selection": "last"}))
    assert "on: 2020-02-03, 2020-02-04." in last.user and "[NaN, 1235]" in last.user


def test_minimum_budget_fits_min_features(dictionary: pd.DataFrame) -> None:
    visits = _visits()
    specs = feature_specs(dictionary, "tjh", list(visits.columns))
    sizes = [
        minimum_budget(specs, "tjh", "mortality", PromptConfig(min_features=k), len)
        for k in (0, 1, 3)
    ]
    assert sizes[0] < sizes[1] < sizes[2]
    cfg = PromptConfig(min_features=3, max_tokens=sizes[2], feature_filter="measured")
    for pid in (7, 3):
        prompt = serialize_patient(visits[visits.patient_id == pid], specs, "tjh", "mortality",
                                   cfg, count_tokens=len)  # fmt: skip
        assert prompt.fits_budget and len(prompt.features_shown) >= 2  # patient 3 measured 2


def test_budget_with_measured_filter_reports_features_lost_with_visits(
    dictionary: pd.DataFrame,
) -> None:
    cfg = PromptConfig(include_example=False, feature_filter="measured")
    one = _patient7(dictionary, PromptConfig(**{**cfg.__dict__, "max_visits": 1}), count_tokens=len)
    budgeted = _patient7(
        dictionary, PromptConfig(**{**cfg.__dict__, "max_tokens": one.n_tokens}), count_tokens=len
    )
    assert budgeted.visits_shown == 1
    assert set(budgeted.dropped_features) == {"Mystery marker", "Ferritin"}


def test_as_messages(dictionary: pd.DataFrame) -> None:
    prompt = _patient7(dictionary)
    messages = as_messages(prompt)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == prompt.system and messages[1]["content"] == prompt.user
    assert as_messages("hi") == [{"role": "user", "content": "hi"}]
    assert as_messages("hi", system="S")[0] == {"role": "system", "content": "S"}


def test_build_prompts_one_row_per_patient(dictionary: pd.DataFrame) -> None:
    frame = build_prompts(_visits(), dictionary, "tjh", "mortality", PromptConfig())
    assert frame["patient_id"].tolist() == [3, 7]
    assert frame["split"].tolist() == ["test", "train"] and frame["label"].tolist() == [0, 1]
    assert frame.loc[1, "prompt"] == _patient7(dictionary).text
    assert frame.loc[1, "n_visits"] == 3 and frame.loc[1, "n_features_shown"] == 6
    assert list(frame.loc[1, "features_shown"]) == list(_patient7(dictionary).features_shown)
    assert len(frame.loc[0, "features_shown"]) == frame.loc[0, "n_features_shown"] == 6
    assert set(frame.columns) >= {"system", "user", "n_tokens", "truncated", "dropped_features"}
    # One shared system message per partition: generation prefills it once for every prompt.
    assert frame["system"].nunique() == 1 and "Patient information" not in frame.loc[0, "system"]


def test_errors_are_input_data_errors(dictionary: pd.DataFrame) -> None:
    with pytest.raises(InputDataError, match="unknown task"):
        build_prompts(_visits(), dictionary, "tjh", "survival")
    with pytest.raises(InputDataError, match="missing columns"):
        build_prompts(_visits().drop(columns="age"), dictionary, "tjh", "mortality")
    with pytest.raises(InputDataError, match="no time-series features"):
        build_prompts(_visits(), dictionary, "eicu", "mortality")
    with pytest.raises(ValueError, match="feature_filter"):
        PromptConfig(feature_filter="some")  # type: ignore[arg-type]


def test_seed_dictionary_counts_and_example_names_no_feature() -> None:
    """The worked example's placeholders match no dictionary name or alias of either dataset."""
    from eagrl_pipeline.prompts import FeatureMatcher, dictionary_aliases

    seed = pd.read_csv(SEED)
    assert len(feature_specs(seed, "tjh")) == 73
    assert len(feature_specs(seed, "mimic_iv")) == 47
    for dataset in ("tjh", "mimic_iv"):
        rows = seed[seed.dataset == dataset]
        matcher = FeatureMatcher.build(rows.feature_name, dictionary_aliases(rows, dataset))
        assert [matcher.match(name) for name in EXAMPLE_FEATURES] == [None, None]


def _cohort_files() -> list[Path]:
    roots = [os.environ.get("EAGRL_HOME"), REPO / ".eagrl"]
    for root in filter(None, roots):
        found = sorted(Path(root).glob("artifacts/cohort_dataset/*-*/visits.parquet"))
        if found:
            return found
    return []


COHORTS = _cohort_files()


@pytest.mark.skipif(not COHORTS, reason="no materialized cohort_dataset visits.parquet found")
@pytest.mark.parametrize("path", COHORTS, ids=[p.parent.name for p in COHORTS])
def test_build_prompts_on_real_cohorts_respects_the_budget(path: Path) -> None:
    dataset, task = path.parent.name.split("-", 1)
    visits = pd.read_parquet(path)
    keep = visits["patient_id"].drop_duplicates().iloc[:300]  # bound the test's time
    visits = visits[visits["patient_id"].isin(keep)]
    seed = pd.read_csv(SEED)
    budget = 1500
    frame = build_prompts(visits, seed, dataset, task, PromptConfig(max_tokens=budget))
    assert len(frame) == visits["patient_id"].nunique() and frame["patient_id"].is_unique
    assert (frame["n_tokens"] <= budget).all() and frame["fits_budget"].all()
    assert frame["prompt"].map(heuristic_token_count).equals(frame["n_tokens"])
    firsts = visits.groupby("patient_id").first()
    assert (frame.set_index("patient_id")["label"] == firsts["label"]).all()
    assert (frame.set_index("patient_id")["split"] == firsts["split"]).all()
    assert frame["prompt"].str.contains("<Final answer>").all()
    full = build_prompts(visits, seed, dataset, task, PromptConfig(max_visits=2))
    assert (full["visits_shown"] <= 2).all() and not full["truncated"].any()


def test_prompting_baselines_ask_another_way_about_the_same_patient() -> None:
    from eagrl_pipeline.prompts import PROMPTING_BASELINES, baseline_prompt
    from eagrl_pipeline.prompts.serialize import ANSWER_TAGGED, system_message

    user = (
        "Patient information:\n- Sex: male\n- Age: 61 years\n"
        "- Lactate dehydrogenase (Unit: U/L): [480, 512]\n\n"
        f"Task: Predict the probability that the patient dies. {ANSWER_TAGGED}"
    )
    tagged = system_message("tjh", "mortality", include_example=False)
    for style, baseline in PROMPTING_BASELINES.items():
        system, restyled = baseline_prompt(user, "tjh", "mortality", style)
        patient = user[: -len(ANSWER_TAGGED)]
        assert restyled == patient + baseline.closing  # the same data, another request
        assert system != tagged and baseline.response_format in system
        assert system.split("\n")[0] == tagged.split("\n")[0]  # the persona is kept
        assert "<Subquestion>" not in system and "<Important Features>" not in system
    with pytest.raises(ValueError, match="unknown prompting baseline"):
        baseline_prompt(user, "tjh", "mortality", "chain_of_thought")
    with pytest.raises(ValueError, match="rematerialize llm_prompts"):
        baseline_prompt(user.replace(ANSWER_TAGGED, ""), "tjh", "mortality", "vanilla")
