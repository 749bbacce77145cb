"""Seeded synthetic TJH (Tongji COVID-19) raw file, shaped exactly like the published xlsx.

The real file cannot live in the repo or CI, so tests and demos read this one instead: same 81
headers (α/β/γ, trailing spaces), same long layout (one row per lab report, ``PATIENT_ID`` only
on a patient's first row, a few patients with a single row and no ``RE_DATE``), and a real,
learnable mortality signal so expert models and the LLM pipeline have something to learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from eagrl_pipeline.data.tjh import TJH_COLUMNS, TJH_LAB_COLUMNS

__all__ = ["write_synthetic_tjh"]

# name -> (panel, median, spread, log-scale?, severity loading, decimals). Medians and spreads
# are rough magnitudes of the real file; loadings follow the published mortality associations
# (Yan et al.: LDH, hs-CRP, lymphocyte % as the top three).
_LABS: dict[str, tuple[str, float, float, bool, float, int]] = {
    "Hypersensitive cardiac troponinI": ("card", 20.0, 1.6, True, 0.7, 1),
    "hemoglobin": ("cbc", 125.0, 18.0, False, -0.1, 0),
    "Serum chloride": ("chem", 102.0, 6.0, False, 0.2, 1),
    "Prothrombin time": ("coag", 14.8, 0.15, True, 0.6, 1),
    "procalcitonin": ("infl", 0.1, 1.6, True, 0.7, 2),
    "eosinophils(%)": ("cbc", 0.3, 1.2, True, -0.5, 1),
    "Interleukin 2 receptor": ("cyto", 680.0, 0.6, True, 0.5, 0),
    "Alkaline phosphatase": ("chem", 70.0, 0.4, True, 0.3, 0),
    "albumin": ("chem", 32.0, 5.5, False, -0.7, 1),
    "basophil(%)": ("cbc", 0.2, 0.6, True, -0.3, 1),
    "Interleukin 10": ("cyto", 6.0, 0.6, True, 0.5, 1),
    "Total bilirubin": ("chem", 10.7, 0.6, True, 0.4, 1),
    "Platelet count": ("cbc", 180.0, 0.55, True, -0.6, 0),
    "monocytes(%)": ("cbc", 5.7, 0.5, True, -0.5, 1),
    "antithrombin": ("coag", 86.0, 17.0, False, -0.4, 0),
    "Interleukin 8": ("cyto", 16.0, 1.0, True, 0.5, 1),
    "indirect bilirubin": ("chem", 5.4, 0.6, True, 0.2, 1),
    "Red blood cell distribution width ": ("cbc", 12.6, 0.1, True, 0.4, 1),
    "neutrophils(%)": ("cbc", 80.0, 14.0, False, 0.75, 1),
    "total protein": ("chem", 66.0, 7.0, False, -0.4, 1),
    "Quantification of Treponema pallidum antibodies": ("sero", 0.05, 0.5, True, 0.0, 2),
    "Prothrombin activity": ("coag", 81.0, 20.0, False, -0.6, 0),
    "HBsAg": ("sero", 0.01, 0.7, True, 0.0, 2),
    "mean corpuscular volume": ("cbc", 90.0, 5.5, False, 0.1, 1),
    "hematocrit": ("cbc", 36.6, 5.0, False, -0.1, 1),
    "White blood cell count": ("cbc", 7.7, 0.55, True, 0.5, 2),
    "Tumor necrosis factorα": ("cyto", 8.6, 0.45, True, 0.4, 1),
    "mean corpuscular hemoglobin concentration": ("cbc", 343.0, 13.0, False, 0.0, 0),
    "fibrinogen": ("coag", 4.1, 1.9, False, -0.1, 2),
    "Interleukin 1β": ("cyto", 5.0, 0.15, True, 0.0, 1),
    "Urea": ("chem", 6.0, 0.7, True, 0.6, 2),
    "lymphocyte count": ("cbc", 0.8, 0.6, True, -0.7, 2),
    "PH value": ("misc", 6.5, 0.7, False, 0.0, 1),
    "Red blood cell count": ("cbc", 4.1, 0.6, False, -0.05, 2),
    "Eosinophil count": ("cbc", 0.02, 1.2, True, -0.5, 2),
    "Corrected calcium": ("chem", 2.36, 0.12, False, 0.0, 2),
    "Serum potassium": ("chem", 4.4, 0.75, False, 0.15, 2),
    "glucose": ("misc", 7.0, 0.45, True, 0.5, 2),
    "neutrophils count": ("cbc", 5.9, 0.65, True, 0.65, 2),
    "Direct bilirubin": ("chem", 4.8, 0.8, True, 0.5, 1),
    "Mean platelet volume": ("cbc", 10.8, 1.1, False, 0.4, 1),
    "ferritin": ("infl", 710.0, 1.0, True, 0.5, 1),
    "RBC distribution width SD": ("cbc", 41.0, 0.12, True, 0.4, 1),
    "Thrombin time": ("coag", 16.8, 0.15, True, 0.3, 1),
    "(%)lymphocyte": ("cbc", 11.5, 0.9, True, -0.8, 1),
    "HCV antibody quantification": ("sero", 0.06, 0.5, True, 0.1, 2),
    "D-D dimer": ("coag", 2.2, 1.6, True, 0.75, 2),
    "Total cholesterol": ("chem", 3.6, 0.8, False, -0.4, 2),
    "aspartate aminotransferase": ("chem", 27.0, 0.6, True, 0.55, 0),
    "Uric acid": ("chem", 244.0, 0.45, True, 0.1, 1),
    "HCO3-": ("chem", 23.5, 4.0, False, -0.45, 1),
    "calcium": ("chem", 2.08, 0.15, False, -0.65, 2),
    "Amino-terminal brain natriuretic peptide precursor(NT-proBNP)": (
        "card", 585.0, 2.0, True, 0.7, 0),
    "Lactate dehydrogenase": ("chem", 340.0, 0.6, True, 0.85, 0),
    "platelet large cell ratio ": ("cbc", 31.0, 8.5, False, 0.4, 1),
    "Interleukin 6": ("cyto", 19.0, 1.7, True, 0.7, 2),
    "Fibrin degradation products": ("coag", 18.0, 1.4, True, 0.75, 1),
    "monocytes count": ("cbc", 0.41, 0.5, True, -0.1, 2),
    "PLT distribution width": ("cbc", 12.4, 0.2, True, 0.4, 1),
    "globulin": ("chem", 32.7, 5.5, False, 0.3, 1),
    "γ-glutamyl transpeptidase": ("chem", 34.0, 0.8, True, 0.3, 0),
    "International standard ratio": ("coag", 1.14, 0.18, True, 0.65, 2),
    "basophil count(#)": ("cbc", 0.01, 0.7, True, 0.0, 2),
    "2019-nCoV nucleic acid detection": ("sero", -1.0, 0.0, False, 0.0, 0),
    "mean corpuscular hemoglobin ": ("cbc", 30.9, 2.0, False, 0.1, 1),
    "Activation of partial thromboplastin time": ("coag", 39.0, 0.17, True, 0.15, 1),
    "High sensitivity C-reactive protein": ("infl", 50.0, 1.5, True, 0.8, 1),
    "HIV antibody quantification": ("sero", 0.09, 0.3, True, -0.1, 2),
    "serum sodium": ("chem", 140.4, 6.0, False, 0.2, 1),
    "thrombocytocrit": ("cbc", 0.21, 0.45, True, -0.5, 2),
    "ESR": ("infl", 28.0, 0.9, True, 0.2, 0),
    "glutamic-pyruvic transaminase": ("chem", 24.0, 0.75, True, 0.2, 0),
    "eGFR": ("chem", 88.0, 0.45, True, -0.5, 1),
    "creatinine": ("chem", 76.0, 0.5, True, 0.4, 0),
}  # fmt: skip
# Assay / physiological limits, so log-normal tails stay inside what a lab can report.
_LIMITS: dict[str, tuple[float, float]] = {
    "Hypersensitive cardiac troponinI": (1.9, 50000), "Interleukin 2 receptor": (50, 7500),
    "Interleukin 10": (5, 1000), "Interleukin 8": (5, 7500), "Tumor necrosis factorα": (4, 200),
    "Interleukin 1β": (5, 100), "Interleukin 6": (1.5, 5000), "Platelet count": (2, 800),
    "eosinophils(%)": (0, 10), "(%)lymphocyte": (0, 70), "neutrophils(%)": (20, 99),
    "neutrophils count": (0.05, 40), "Eosinophil count": (0, 0.8), "D-D dimer": (0.2, 60),
    "Amino-terminal brain natriuretic peptide precursor(NT-proBNP)": (5, 70000),
    "Lactate dehydrogenase": (100, 2500), "Fibrin degradation products": (4, 200),
    "High sensitivity C-reactive protein": (0.1, 320), "ESR": (1, 120), "eGFR": (2, 200),
    "thrombocytocrit": (0.01, 0.6), "PH value": (5, 8.5), "procalcitonin": (0.02, 60),
}  # fmt: skip
# Which panel a lab report holds (real reports are whole panels: blood routine, biochemistry...).
_PANELS: dict[str, float] = {
    "cbc": 0.22, "chem": 0.21, "coag": 0.14, "cyto": 0.06,
    "infl": 0.10, "sero": 0.05, "card": 0.11, "misc": 0.11,
}  # fmt: skip
_MAX_ROWS = 40
_T0 = np.datetime64("2020-01-10T00:00:00", "s")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _synthetic_frame(n_patients: int, seed: int) -> pd.DataFrame:
    """Build the long table: latent severity -> outcome, labs and their drift over the stay."""
    rng = np.random.default_rng(seed)
    severity = rng.normal(size=n_patients)
    died = rng.random(n_patients) < _sigmoid(-0.25 + 2.5 * severity)
    age = np.clip(np.round(62 + 9 * severity + rng.normal(0, 12, n_patients)), 18, 95)
    gender = np.where(rng.random(n_patients) < 0.6, 1, 2)
    no_labs = rng.random(n_patients) < 0.04  # single row, empty RE_DATE (as in the real file)

    rows: list[pd.DataFrame] = []
    for p in range(n_patients):
        start = _T0 + np.timedelta64(int(rng.integers(0, 28)), "D")
        admission = start + np.timedelta64(int(rng.integers(0, 20 * 3600)), "s")
        if no_labs[p]:
            times = np.array(["NaT"], dtype="datetime64[s]")
            last = admission + np.timedelta64(int(rng.integers(3, 20) * 86400), "s")
        else:
            span = int(rng.integers(1, 16))
            days = np.unique(np.r_[0, span - 1, rng.integers(0, span, rng.poisson(4))])
            day = np.repeat(days, 1 + rng.poisson(2.8, days.size))[:_MAX_ROWS]
            day0 = start.astype("datetime64[m]")
            adm_min = int((admission.astype("datetime64[m]") - day0).astype(int)) + 5
            lo = np.where(day == 0, adm_min, 6 * 60)  # first-day reports follow admission
            minute = lo + (rng.random(day.size) * (1439 - lo)).astype(int)
            times = np.sort(day0 + day * 1440 + minute).astype("datetime64[s]")
            last = times[-1]
        stay_h = int(rng.integers(1, 24)) if died[p] else int(rng.integers(4, 96))
        discharge = last + np.timedelta64(stay_h * 3600 + int(rng.integers(0, 3600)), "s")
        n = times.size
        frame = {
            "PATIENT_ID": pd.array([p + 1] + [pd.NA] * (n - 1), dtype="Int64"),
            "RE_DATE": times,
            "age": np.full(n, int(age[p])),
            "gender": np.full(n, gender[p]),
            "Admission time": np.full(n, admission),
            "Discharge time": np.full(n, discharge),
            "outcome": np.full(n, int(died[p])),
        }
        labs = np.full((n, len(TJH_LAB_COLUMNS)), np.nan)
        if not no_labs[p]:
            labs = _patient_labs(rng, severity[p], bool(died[p]), n)
        rows.append(pd.concat([pd.DataFrame(frame), pd.DataFrame(labs, columns=TJH_LAB_COLUMNS)],
                              axis=1))  # fmt: skip
    return pd.concat(rows, ignore_index=True)[list(TJH_COLUMNS)]


def _patient_labs(rng: np.random.Generator, severity: float, died: bool, n: int) -> np.ndarray:
    """Sparse lab matrix for one patient: one panel per report, values track severity over time."""
    frac = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    sev_t = severity + (1.0 if died else -0.6) * frac  # non-survivors worsen, survivors recover
    names = list(TJH_LAB_COLUMNS)
    panel_names = list(_PANELS)
    panel = rng.choice(len(panel_names), size=n, p=np.array(list(_PANELS.values())))
    second = np.where(rng.random(n) < 0.15, rng.choice(len(panel_names), size=n), -1)
    out = np.full((n, len(names)), np.nan)
    patient_offset = rng.normal(size=len(names))
    for j, name in enumerate(names):
        group, median, spread, log, beta, decimals = _LABS[name]
        g = panel_names.index(group)
        present = ((panel == g) | (second == g)) & (rng.random(n) < 0.93)
        resid = np.sqrt(max(1.0 - beta**2, 0.0))
        z = beta * sev_t + resid * (0.6 * patient_offset[j] + 0.8 * rng.normal(size=n))
        value = median * np.exp(spread * z) if log else median + spread * z
        if median > 0:
            lo, hi = _LIMITS.get(name, (10.0**-decimals, np.inf))
            value = np.clip(value, lo, min(hi, 99.9) if "(%)" in name else hi)
        out[present, j] = np.round(value[present], decimals)
    return out


def write_synthetic_tjh(path: str | Path, n_patients: int = 375, seed: int = 0) -> Path:
    """Write a TJH-shaped file (``.xlsx`` like upstream, or ``.csv`` like ``shared/data/tjh/csv``).

    Same seed, same rows; the csv output is byte-identical across runs.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in {".xlsx", ".csv"}:
        raise ValueError(f"unsupported TJH file type {path.suffix!r}: use .xlsx or .csv")
    frame = _synthetic_frame(n_patients, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        frame.to_csv(path, index=False, date_format="%Y-%m-%d %H:%M:%S", lineterminator="\n")
    else:
        frame.to_excel(path, index=False, engine="openpyxl")
    return path
