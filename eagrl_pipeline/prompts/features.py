"""Feature-name matching: map what a model writes ("LDH", "hs-CRP") to dictionary names.

The attention reward compares sets of names, so every spelling a model might use has to land on
one canonical dictionary name; anything that does not is reported, never guessed.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

_GREEK = {"α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "µ": "u", "μ": "u"}
_PAREN = re.compile(r"\(([^()]{1,80})\)")
_BULLET = re.compile(r"^\s{0,8}(?:[-*•·]+|\d{1,3}[.)]|[a-zA-Z][.)](?=\s))\s{0,8}")

# Curated abbreviations: alias -> candidate targets (the first present in the dictionary wins).
# Targets are matched like model text, so "Urea nitrogen" also finds "Urea nitrogen (BUN)".
CURATED_ALIASES: dict[str, tuple[str, ...]] = {
    "LDH": ("Lactate dehydrogenase",),
    "LD": ("Lactate dehydrogenase",),
    "hs-CRP": ("High sensitivity C-reactive protein",),
    "hsCRP": ("High sensitivity C-reactive protein",),
    "CRP": ("High sensitivity C-reactive protein",),
    "C-reactive protein": ("High sensitivity C-reactive protein",),
    "SpO2": ("Oxygen saturation",),
    "SaO2": ("Oxygen saturation",),
    "O2 saturation": ("Oxygen saturation",),
    "HR": ("Heart rate",),
    "Pulse": ("Heart rate",),
    "RR": ("Respiratory rate",),
    "SBP": ("Systolic blood pressure",),
    "DBP": ("Diastolic blood pressure",),
    "MAP": ("Mean blood pressure",),
    "MBP": ("Mean blood pressure",),
    "FiO2": ("Fraction of inspired oxygen",),
    "GCS": ("Glasgow coma scale total",),
    "Temp": ("Temperature",),
    "CRT": ("Capillary refill rate",),
    "BUN": ("Urea nitrogen", "Urea"),
    "WBC": ("White blood cell count",),
    "Leukocytes": ("White blood cell count",),
    "RBC": ("Red blood cell count",),
    "PLT": ("Platelet count",),
    "Platelets": ("Platelet count",),
    "Hb": ("Hemoglobin",),
    "Hgb": ("Hemoglobin",),
    "Hct": ("Hematocrit",),
    "IL-6": ("Interleukin 6",),
    "IL-8": ("Interleukin 8",),
    "IL-10": ("Interleukin 10",),
    "IL-1β": ("Interleukin 1β",),
    "IL-2R": ("Interleukin 2 receptor",),
    "sIL-2R": ("Interleukin 2 receptor",),
    "TNF-α": ("Tumor necrosis factor α",),
    "TNF": ("Tumor necrosis factor α",),
    "PCT": ("Procalcitonin",),
    "cTnI": ("Hypersensitive cardiac troponin I",),
    "hs-cTnI": ("Hypersensitive cardiac troponin I",),
    "Troponin": ("Hypersensitive cardiac troponin I",),
    "Troponin I": ("Hypersensitive cardiac troponin I",),
    "BNP": ("N-terminal pro-brain natriuretic peptide",),
    "ESR": ("Erythrocyte sedimentation rate",),
    "eGFR": ("Estimated glomerular filtration rate", "Estimated GFR"),
    "GFR": ("Estimated glomerular filtration rate", "Estimated GFR"),
    "AST": ("Aspartate aminotransferase",),
    "SGOT": ("Aspartate aminotransferase",),
    "ALT": ("Alanine aminotransferase",),
    "SGPT": ("Alanine aminotransferase",),
    "ALP": ("Alkaline phosphatase",),
    "GGT": ("γ-glutamyl transpeptidase",),
    "TBIL": ("Total bilirubin",),
    "Bilirubin": ("Total bilirubin",),
    "DBIL": ("Direct bilirubin",),
    "IBIL": ("Indirect bilirubin",),
    "APTT": ("Activated partial thromboplastin time", "Partial thromboplastin time"),
    "PTT": ("Partial thromboplastin time", "Activated partial thromboplastin time"),
    "PT": ("Prothrombin time",),
    "TT": ("Thrombin time",),
    "INR": ("International normalized ratio",),
    "FDP": ("Fibrin degradation products",),
    "MPV": ("Mean platelet volume",),
    "PDW": ("Platelet distribution width",),
    "P-LCR": ("Platelet large cell ratio",),
    "RDW": ("Red blood cell distribution width", "Red cell distribution width"),
    "RDW-CV": ("Red blood cell distribution width", "Red cell distribution width"),
    "RDW-SD": ("RBC distribution width SD",),
    "MCV": ("Mean corpuscular volume",),
    "MCH": ("Mean corpuscular hemoglobin",),
    "MCHC": ("Mean corpuscular hemoglobin concentration",),
    "HCO3": ("Bicarbonate",),
    "Bicarb": ("Bicarbonate",),
    "K": ("Serum potassium", "Potassium"),
    "Potassium": ("Serum potassium",),
    "Na": ("Serum sodium", "Sodium"),
    "Sodium": ("Serum sodium",),
    "Cl": ("Serum chloride", "Chloride"),
    "Chloride": ("Serum chloride",),
    "Ca": ("Calcium", "Total calcium"),
    "Mg": ("Magnesium",),
    "Phos": ("Phosphate",),
    "Cr": ("Creatinine",),
    "SCr": ("Creatinine",),
    "pH": ("pH value",),
}


def normalize_name(text: str) -> str:
    """Case-, whitespace- and punctuation-insensitive key; Greek letters spelled out.

    >>> normalize_name("  Tumor necrosis factor α ")
    'tumornecrosisfactoralpha'
    >>> normalize_name("hs-CRP") == normalize_name("HS CRP")
    True
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(_GREEK.get(ch, ch) for ch in text)
    return "".join(ch for ch in text if ch.isalnum())


def _strip_parens(name: str) -> str:
    return _PAREN.sub(" ", name).strip()


@dataclass(frozen=True)
class FeatureMatcher:
    """Resolves free-text feature mentions to canonical dictionary names.

    Priority: exact name, then explicit aliases (feature ids, the caller's table), then names
    derived from the dictionary (name without its parenthetical, an abbreviation in parentheses),
    then the curated map. A derived or curated key that would point at two names is dropped.
    """

    names: tuple[str, ...]
    lookup: Mapping[str, str] = field(repr=False)

    @classmethod
    def build(
        cls,
        feature_names: Iterable[str],
        aliases: Mapping[str, str] | None = None,
        *,
        curated: bool = True,
    ) -> FeatureMatcher:
        names = tuple(dict.fromkeys(str(n) for n in feature_names))
        by_key = {normalize_name(n): n for n in names if normalize_name(n)}
        by_stripped: dict[str, set[str]] = {}
        for n in names:
            by_stripped.setdefault(normalize_name(_strip_parens(n)), set()).add(n)

        def resolve_target(target: str) -> str | None:
            key = normalize_name(target)
            if key in by_key:
                return by_key[key]
            hits = by_stripped.get(normalize_name(_strip_parens(target)), set())
            return next(iter(hits)) if len(hits) == 1 else None

        lookup: dict[str, str] = dict(by_key)
        for alias, target in (aliases or {}).items():
            key, resolved = normalize_name(str(alias)), resolve_target(str(target))
            if key and resolved and key not in lookup:
                lookup[key] = resolved
        derived: dict[str, set[str]] = {}
        for n in names:
            derived.setdefault(normalize_name(_strip_parens(n)), set()).add(n)
            for inner in _PAREN.findall(n):
                if any(ch.isupper() for ch in inner):  # abbreviations only, not "(%)" or "(male)"
                    derived.setdefault(normalize_name(inner), set()).add(n)
        if curated:
            for alias, targets in CURATED_ALIASES.items():
                hit = next((r for t in targets if (r := resolve_target(t))), None)
                if hit:
                    derived.setdefault(normalize_name(alias), set()).add(hit)
        for key, hits in derived.items():
            if key and key not in lookup and len(hits) == 1:
                lookup[key] = next(iter(hits))
        return cls(names=names, lookup=lookup)

    def match(self, mention: str) -> str | None:
        """The canonical name for one mention, or None.

        Tries the mention as written (minus list bullets), then without a parenthetical, then
        the parenthetical itself ("Lactate dehydrogenase (LDH)", "LDH (elevated)").
        """
        text = _BULLET.sub("", mention[:300]).strip().strip("*_`'\"")
        candidates = [text, _strip_parens(text), *_PAREN.findall(text)]
        for cand in candidates:
            hit = self.lookup.get(normalize_name(cand))
            if hit:
                return hit
        return None

    def match_all(self, mentions: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(matched canonical names, unmatched mentions), each deduplicated in order."""
        matched: dict[str, None] = {}
        unmatched: dict[str, None] = {}
        for mention in mentions:
            hit = self.match(mention)
            if hit:
                matched[hit] = None
            elif mention.strip():
                unmatched[mention.strip()[:200]] = None
        return tuple(matched), tuple(unmatched)


def dictionary_aliases(dictionary: pd.DataFrame, dataset: str | None = None) -> dict[str, str]:
    """feature_id -> feature_name from the feature dictionary, so expert rankings (ids) match."""
    frame = dictionary
    if dataset is not None and "dataset" in frame:
        frame = frame[frame["dataset"] == dataset]
    return {
        str(i): str(n)
        for i, n in zip(frame["feature_id"], frame["feature_name"], strict=True)
        if str(i) != str(n)
    }
