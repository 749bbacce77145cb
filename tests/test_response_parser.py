"""The tolerant response parser: well-formed, truncated, malformed and adversarial text."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eagrl_pipeline.prompts import (
    CURATED_ALIASES,
    FeatureMatcher,
    dictionary_aliases,
    parse_probability,
    parse_response,
)

SEED = Path(__file__).resolve().parents[1] / "dbt_project" / "seeds" / "feature_dictionary.csv"
DICTIONARY = pd.read_csv(SEED)
TJH = DICTIONARY.loc[DICTIONARY.dataset == "tjh", "feature_name"].tolist()
MIMIC = DICTIONARY.loc[DICTIONARY.dataset == "mimic_iv", "feature_name"].tolist()
TJH_MATCHER = FeatureMatcher.build(TJH, dictionary_aliases(DICTIONARY, "tjh"))
MIMIC_MATCHER = FeatureMatcher.build(MIMIC, dictionary_aliases(DICTIONARY, "mimic_iv"))

WELL_FORMED = """\
<Subquestion> How does LDH change? </Subquestion> <Answer> It rises to 877 U/L. </Answer>
<Subquestion> Is the patient lymphopenic? </Subquestion> <Answer> Yes. </Answer>
<Final subquestion> How likely is death? </Final subquestion>
<Important Features> Lactate dehydrogenase, hs-CRP, Lymphocytes (%) </Important Features>
<Final answer> 0.83 </Final answer>"""


def _answer(final: str, features: str = "LDH") -> str:
    return (
        "<Subquestion> q </Subquestion><Answer> a </Answer>"
        "<Final subquestion> f </Final subquestion>"
        f"<Important Features> {features} </Important Features>"
        f"<Final answer> {final} </Final answer>"
    )


def test_well_formed() -> None:
    r = parse_response(WELL_FORMED, TJH_MATCHER)
    assert r.is_valid and r.errors == () and r.warnings == ()
    assert r.steps == (
        ("How does LDH change?", "It rises to 877 U/L."),
        ("Is the patient lymphopenic?", "Yes."),
    )
    assert r.final_subquestion == "How likely is death?"
    assert r.important_features == (
        "Lactate dehydrogenase",
        "High sensitivity C-reactive protein",
        "Lymphocytes (%)",
    )
    assert r.unmatched_features == ()
    assert (r.probability, r.probability_source) == (0.83, "number")


def test_case_spacing_and_newlines_in_tags() -> None:
    text = (
        "<SUBQUESTION>\n q \n</subquestion>\n\n< Answer >a</ANSWER>"
        "<final_subquestion>f</Final Subquestion>"
        "<important features>\n1. LDH\n2. SpO2\n</IMPORTANT FEATURES>"
        "<  Final-Answer  >\n 0.4 \n</final answer>"
    )
    r = parse_response(text, TJH + MIMIC)
    assert r.is_valid and r.warnings == ()
    assert r.steps == (("q", "a"),) and r.final_subquestion == "f"
    assert r.important_features == ("Lactate dehydrogenase", "Oxygen saturation")
    assert r.probability == 0.4


def test_chat_format_completion() -> None:
    chat = [{"role": "assistant", "content": WELL_FORMED}]
    assert parse_response(chat, TJH_MATCHER).probability == 0.83


def test_truncated_text() -> None:
    cut = WELL_FORMED[: WELL_FORMED.index("</Final answer>")]
    r = parse_response(cut, TJH_MATCHER)
    assert r.is_valid and r.probability == 0.83
    assert any("truncated" in w for w in r.warnings)

    mid_step = WELL_FORMED[: WELL_FORMED.index("Yes.")]
    r = parse_response(mid_step, TJH_MATCHER)
    assert not r.is_valid and r.probability is None
    assert "missing <Final answer>" in r.errors and "missing <Important Features>" in r.errors
    assert r.steps[-1] == ("Is the patient lymphopenic?", "")

    r = parse_response(WELL_FORMED[: WELL_FORMED.index("Lymphocytes")], TJH_MATCHER)
    assert r.important_features == (
        "Lactate dehydrogenase",
        "High sensitivity C-reactive protein",
    )
    assert "missing <Final answer>" in r.errors


def test_repeated_final_answer_takes_the_last() -> None:
    r = parse_response(_answer("0.2") + "<Final answer> 0.9 </Final answer>", TJH)
    assert r.probability == 0.9 and r.is_valid
    assert any("repeated" in w for w in r.warnings)


def test_malformed() -> None:
    r = parse_response("The patient will probably die. 0.9", TJH)
    assert not r.is_valid and r.probability is None and r.steps == ()
    assert len(r.errors) == 5 and r.tags_found == frozenset()

    r = parse_response(_answer(""), TJH)
    assert "empty <Final answer>" in r.errors and not r.is_valid
    r = parse_response(_answer("maybe"), TJH)
    assert r.probability is None and "no probability in <Final answer>" in r.errors

    r = parse_response("<Answer> orphan </Answer></Subquestion>" + _answer("0.5"), TJH)
    assert r.is_valid
    assert any("without a sub-question" in w for w in r.warnings)
    assert any("stray closing" in w for w in r.warnings)


@pytest.mark.parametrize(
    ("text", "prob", "source"),
    [
        ("0.83", 0.83, "number"),
        (".5", 0.5, "number"),
        ("1", 1.0, "number"),
        ("0", 0.0, "number"),
        ("Probability: 0.27.", 0.27, "number"),
        ("83%", 0.83, "percent"),
        ("83 %", 0.83, "percent"),
        ("83 percent", 0.83, "percent"),
        ("100%", 1.0, "percent"),
        ("0.5%", 0.005, "percent"),
        ("high (0.8)", 0.8, "number"),
        ("8.3e-1", 0.83, "number"),
        ("high", 0.75, "word"),
        ("Very High", 0.9, "word"),
        ("moderate risk", 0.5, "word"),
        ("low", 0.25, "word"),
        ("very   low", 0.1, "word"),
    ],
)
def test_probability_forms(text: str, prob: float, source: str) -> None:
    value, src, error = parse_probability(text)
    assert error is None and src == source and value == pytest.approx(prob)
    r = parse_response(_answer(text), TJH)
    assert r.probability == pytest.approx(prob) and r.probability_source == source


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("83", "ambiguous"),
        ("1.5", "ambiguous"),
        ("-0.2", "negative"),
        ("150%", "outside [0, 100]"),
        ("high or low", "conflicting"),
        ("unclear", "no probability"),
    ],
)
def test_rejected_probabilities(text: str, message: str) -> None:
    r = parse_response(_answer(text), TJH)
    assert r.probability is None and not r.is_valid
    assert any(message in e for e in r.errors), r.errors


def test_words_rejected_when_not_allowed() -> None:
    r = parse_response(_answer("high"), TJH, allow_words=False)
    assert r.probability is None and any("allow_words=False" in e for e in r.errors)
    assert parse_response(_answer("0.7"), TJH, allow_words=False).probability == 0.7


@pytest.mark.parametrize(
    ("mention", "canonical"),
    [
        ("LDH", "Lactate dehydrogenase"),
        ("lactate  DEHYDROGENASE", "Lactate dehydrogenase"),
        ("Lactate dehydrogenase (LDH)", "Lactate dehydrogenase"),
        ("lactate_dehydrogenase", "Lactate dehydrogenase"),  # a feature id
        ("hs-CRP", "High sensitivity C-reactive protein"),
        ("CRP", "High sensitivity C-reactive protein"),
        ("Lymphocytes", "Lymphocytes (%)"),
        ("NT-proBNP", "N-terminal pro-brain natriuretic peptide (NT-proBNP)"),
        ("HBsAg", "Hepatitis B surface antigen (HBsAg)"),
        ("TNF-alpha", "Tumor necrosis factor α"),
        ("IL-6", "Interleukin 6"),
        ("D dimer", "D-dimer"),
        ("eGFR", "Estimated glomerular filtration rate"),
        ("pH", "pH value"),
        ("- **Ferritin**", "Ferritin"),
    ],
)
def test_tjh_aliases(mention: str, canonical: str) -> None:
    assert TJH_MATCHER.match(mention) == canonical


@pytest.mark.parametrize(
    ("mention", "canonical"),
    [
        ("SpO2", "Oxygen saturation"),
        ("HR", "Heart rate"),
        ("GCS", "Glasgow coma scale total"),
        ("BUN", "Urea nitrogen"),
        ("INR", "International normalized ratio (INR)"),
        ("PTT", "Partial thromboplastin time (PTT)"),
        ("Glucose", "Glucose"),
        ("glucose (laboratory)", "Glucose (laboratory)"),
        ("pH", "pH"),
        ("K+", "Potassium"),
        ("FiO2", "Fraction of inspired oxygen"),
    ],
)
def test_mimic_aliases(mention: str, canonical: str) -> None:
    assert MIMIC_MATCHER.match(mention) == canonical


def test_curated_aliases_all_resolve_somewhere() -> None:
    """Catches typos in the curated table: every alias lands on a real dictionary name."""
    for alias in CURATED_ALIASES:
        assert TJH_MATCHER.match(alias) or MIMIC_MATCHER.match(alias), alias


def test_custom_aliases_dedupe_and_unmatched() -> None:
    r = parse_response(
        _answer("0.6", "troponin, LDH; Lactate dehydrogenase\nfoo bar and Ferritin"),
        TJH,
        aliases={"trop": "Hypersensitive cardiac troponin I", "foo bar": "no such feature"},
    )
    assert r.important_features == (
        "Hypersensitive cardiac troponin I",
        "Lactate dehydrogenase",
        "Ferritin",
    )
    assert r.unmatched_features == ("foo bar",)
    custom = FeatureMatcher.build(["Heart rate"], {"pulse rate": "Heart rate"})
    assert custom.match("Pulse-Rate") == "Heart rate"


def test_nested_tags() -> None:
    text = (
        "<Subquestion> <Subquestion> q </Subquestion> </Subquestion><Answer> a "
        "<Final answer> 0.1 </Final answer> </Answer>"
        "<Final subquestion> f </Final subquestion>"
        "<Important Features> <Important Features> LDH </Important Features>"
        "</Important Features><Final answer><Final answer> 0.7 </Final answer></Final answer>"
    )
    r = parse_response(text, TJH)
    assert r.probability == 0.7
    assert r.important_features == ("Lactate dehydrogenase",)
    assert r.warnings  # the mess is reported


@pytest.mark.parametrize(
    "text",
    [
        "a" * 1_000_000,
        "<" + " " * 200_000 + "Final answer>",
        "<Final answer>" * 50_000,
        "<Subquestion" * 50_000,
        "< / final " + " " * 100_000 + "answer >",
        "0." + "9" * 500_000,
        "<Final answer> " + "1" * 100 + "." + "5" * 100 + "%",
        "<Important Features>" + ", ".join(["LDH"] * 100_000),
        "\x00\ud7ff\U0010ffff<Final answer>\u00a00.5\u2003</Final answer>",
    ],
)
def test_adversarial_inputs_are_bounded(text: str) -> None:
    start = time.perf_counter()
    r = parse_response(text, TJH_MATCHER)
    assert time.perf_counter() - start < 2.0
    _check(r)
    assert r.probability is None or 0.0 <= r.probability <= 1.0
    assert len(r.important_features) <= len(TJH)


@pytest.mark.parametrize("value", [None, 42, 3.5, ["x", 1], {"content": None}, b"bytes", object()])
def test_non_string_input_never_raises(value: object) -> None:
    r = parse_response(value, TJH)
    assert r.probability is None and not r.is_valid


FRAGMENTS = st.sampled_from(
    [
        "<Subquestion>",
        "</Subquestion>",
        "<Answer>",
        "</Answer>",
        "<Final subquestion>",
        "</Final subquestion>",
        "<Important Features>",
        "</Important Features>",
        "<Final answer>",
        "</Final answer>",
        "< final  ANSWER >",
        "<",
        ">",
        "/",
        " ",
        "\n",
        ",",
        "%",
        "-",
        ".",
        "e",
        "0.83",
        "83",
        "1e-3",
        "high",
        "very low",
        "LDH",
        "SpO2",
        "Lactate dehydrogenase",
    ]
)
MODEL_LIKE = st.lists(st.one_of(FRAGMENTS, st.text(max_size=8)), max_size=40).map("".join)


def _check(parsed) -> None:
    assert not any(e.startswith("parser failure") for e in parsed.errors), parsed.errors
    assert parsed.probability is None or 0.0 <= parsed.probability <= 1.0
    assert parsed.is_valid == (not parsed.errors and parsed.probability is not None)
    assert (parsed.probability is None) == (parsed.probability_source is None)
    assert set(parsed.important_features) <= set(TJH)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=2000))
def test_fuzz_arbitrary_text_never_raises(text: str) -> None:
    _check(parse_response(text, TJH_MATCHER))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MODEL_LIKE, st.booleans())
def test_fuzz_tag_soup_never_raises(text: str, allow_words: bool) -> None:
    parsed = parse_response(text, TJH_MATCHER, allow_words=allow_words)
    _check(parsed)
    if not allow_words:
        assert parsed.probability_source != "word"


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0.0, max_value=1.0, allow_nan=False))
def test_fuzz_round_trip_of_formatted_probabilities(p: float) -> None:
    for text in (f"{p:.4f}", f"{100 * p:.2f}%"):
        value, _, error = parse_probability(text)
        assert error is None and value == pytest.approx(p, abs=1e-4)
