"""Seeded synthetic MIMIC-IV raw files in the official ``hosp/`` + ``icu/`` gzip-CSV layout.

Real MIMIC-IV needs PhysioNet credentials, so CI, demos and benchmarks run on this instead. The
files follow ``shared/MIMIC_IV_SCHEMA.md`` exactly (table columns and order, NULL = empty field,
``YYYY-MM-DD HH:MM:SS`` timestamps, dates shifted into 2110-2200, several itemids per variable in
different units, GCS as text, outpatient labs without ``hadm_id``, a few chart rows before
``intime``), so the same dbt code reads both. A latent per-stay severity plus per-subject
frailty drives vitals, labs, in-hospital death, ICU readmission and death after discharge, so
mortality and 30-day readmission are learnable. Large tables are generated per chunk of stays
with numpy and written through pyarrow's CSV writer into a gzip stream (level 1, on a worker
thread), which keeps 100k stays to minutes and a bounded amount of memory.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

__all__ = [
    "CHART_ITEMS",
    "GCS_VALUES",
    "LAB_ITEMS",
    "MIMIC_IV_COLUMNS",
    "write_synthetic_mimic_iv",
]

MIMIC_IV_COLUMNS: dict[str, tuple[str, ...]] = {
    "hosp/patients": (
        "subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"),
    "hosp/admissions": (
        "subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "admission_type",
        "admit_provider_id", "admission_location", "discharge_location", "insurance",
        "language", "marital_status", "race", "edregtime", "edouttime", "hospital_expire_flag"),
    "hosp/labevents": (
        "labevent_id", "subject_id", "hadm_id", "specimen_id", "itemid", "order_provider_id",
        "charttime", "storetime", "value", "valuenum", "valueuom", "ref_range_lower",
        "ref_range_upper", "flag", "priority", "comments"),
    "hosp/d_labitems": ("itemid", "label", "fluid", "category"),
    "icu/icustays": (
        "subject_id", "hadm_id", "stay_id", "first_careunit", "last_careunit", "intime",
        "outtime", "los"),
    "icu/d_items": (
        "itemid", "label", "abbreviation", "linksto", "category", "unitname", "param_type",
        "lownormalvalue", "highnormalvalue"),
    "icu/chartevents": (
        "subject_id", "hadm_id", "stay_id", "caregiver_id", "charttime", "storetime", "itemid",
        "value", "valuenum", "valueuom", "warning"),
}  # fmt: skip

# The 37 chart itemids of the schema doc: itemid -> (label, abbreviation, category, unitname,
# param_type). unitname None = empty in d_items.
CHART_ITEMS: dict[int, tuple[str, str, str, str | None, str]] = {
    223901: ("GCS - Motor Response", "GCS - Motor Response", "Neurological", None, "Text"),
    223900: ("GCS - Verbal Response", "GCS - Verbal Response", "Neurological", None, "Text"),
    220739: ("GCS - Eye Opening", "GCS - Eye Opening", "Neurological", None, "Text"),
    224308: ("Capillary Refill L", "Capillary Refill L", "Cardiovascular (Pulses)", None, "Text"),
    223951: ("Capillary Refill R", "Capillary Refill R", "Cardiovascular (Pulses)", None, "Text"),
    224322: ("IABP Mean", "IABP Mean", "IABP", "mmHg", "Numeric"),
    226537: ("Glucose (whole blood)", "Glucose (whole blood)", "Labs", None, "Numeric"),
    225664: ("Glucose finger stick (range 70-100)", "Glucose FS", "Labs", None, "Numeric"),
    220274: ("PH (Venous)", "PH (Venous)", "Labs", None, "Numeric"),
    220227: ("Arterial O2 Saturation", "Arterial O2 Saturation", "Labs", "%", "Numeric"),
    223830: ("PH (Arterial)", "PH (Arterial)", "Labs", None, "Numeric"),
    220621: ("Glucose (serum)", "Glucose (serum)", "Labs", None, "Numeric"),
    226707: ("Height", "Height", "General", "Inch", "Numeric"),
    226730: ("Height (cm)", "Height (cm)", "General", "cm", "Numeric"),
    226531: ("Admission Weight (lbs.)", "Admission Weight (lbs.)", "General", None, "Numeric"),
    226512: ("Admission Weight (Kg)", "Admission Weight (Kg)", "General", "kg", "Numeric"),
    224690: ("Respiratory Rate (Total)", "RR (Total)", "Respiratory", "insp/min", "Numeric"),
    224422: ("Spont RR", "Spont RR", "Respiratory", "bpm", "Numeric"),
    220277: ("O2 saturation pulseoxymetry", "SpO2", "Respiratory", "%", "Numeric"),
    220210: ("Respiratory Rate", "RR", "Respiratory", "insp/min", "Numeric"),
    223835: ("Inspired O2 Fraction", "FiO2", "Respiratory", None, "Numeric"),
    224689: ("Respiratory Rate (spontaneous)", "RR (Spont)", "Respiratory", "insp/min", "Numeric"),
    225309: ("ART BP Systolic", "ART BP Systolic", "Routine Vital Signs", "mmHg", "Numeric"),
    220052: ("Arterial Blood Pressure mean", "ABPm", "Routine Vital Signs", "mmHg", "Numeric"),
    220180: ("Non Invasive Blood Pressure diastolic", "NBPd", "Routine Vital Signs", "mmHg",
             "Numeric"),
    223761: ("Temperature Fahrenheit", "Temperature F", "Routine Vital Signs", "°F", "Numeric"),
    227243: ("Manual Blood Pressure Systolic Right", "Manual BPs R", "Routine Vital Signs",
             "mmHg", "Numeric"),
    220051: ("Arterial Blood Pressure diastolic", "ABPd", "Routine Vital Signs", "mmHg",
             "Numeric"),
    223762: ("Temperature Celsius", "Temperature C", "Routine Vital Signs", "°C", "Numeric"),
    220181: ("Non Invasive Blood Pressure mean", "NBPm", "Routine Vital Signs", "mmHg", "Numeric"),
    220045: ("Heart Rate", "HR", "Routine Vital Signs", "bpm", "Numeric"),
    225310: ("ART BP Diastolic", "ART BP Diastolic", "Routine Vital Signs", "mmHg", "Numeric"),
    224643: ("Manual Blood Pressure Diastolic Left", "Manual BPd L", "Routine Vital Signs",
             "mmHg", "Numeric"),
    220179: ("Non Invasive Blood Pressure systolic", "NBPs", "Routine Vital Signs", "mmHg",
             "Numeric"),
    220050: ("Arterial Blood Pressure systolic", "ABPs", "Routine Vital Signs", "mmHg", "Numeric"),
    225312: ("ART BP Mean", "ART BP Mean", "Routine Vital Signs", "mmHg", "Numeric"),
    224167: ("Manual Blood Pressure Systolic Left", "Manual BPs L", "Routine Vital Signs", "mmHg",
             "Numeric"),
}  # fmt: skip
# Unrelated d_items rows (other tables, other variables), as a real dictionary has.
_OTHER_D_ITEMS: tuple[tuple[object, ...], ...] = (
    (220046, "Heart rate Alarm - High", "HR Alarm - High", "chartevents", "Alarms", "bpm",
     "Numeric", None, None),
    (220546, "WBC", "WBC", "chartevents", "Labs", "K/uL", "Numeric", 4.0, 11.0),
    (223834, "O2 Flow", "O2 Flow", "chartevents", "Respiratory", "L/min", "Numeric", None, None),
    (225158, "NaCl 0.9%", "NaCl 0.9%", "inputevents", "Fluids/Intake", "mL", "Solution", None,
     None),
    (225624, "BUN", "BUN", "chartevents", "Labs", "mg/dL", "Numeric", 6.0, 20.0),
    (226228, "Gender", "Gender", "chartevents", "ADT", None, "Text", None, None),
    (226559, "Foley", "Foley", "outputevents", "Output", "mL", "Numeric", None, None),
)  # fmt: skip

# GCS text by score (index 0 = score 1): numbered (CareVue-style) and un-numbered (MetaVision).
GCS_VALUES: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {
    220739: (("1 No Response", "2 To pain", "3 To speech", "4 Spontaneously"),
             ("None", "To Pain", "To Speech", "Spontaneously")),
    223901: (("1 No Response", "2 Abnorm extensn", "3 Abnorm flexion", "4 Flex-withdraws",
              "5 Localizes Pain", "6 Obeys Commands"),
             ("No response", "Abnormal extension", "Abnormal Flexion", "Flex-withdraws",
              "Localizes Pain", "Obeys Commands")),
    223900: (("1 No Response", "2 Incomp sounds", "3 Inapprop words", "4 Confused", "5 Oriented"),
             ("No Response", "Incomprehensible sounds", "Inappropriate Words", "Confused",
              "Oriented")),
}  # fmt: skip
_ETT_VALUES = ("No Response-ETT", "1.0 ET/Trach")  # intubated verbal response (score 1)
_CRR_VALUES = ("Normal <3 secs", "Abnormal >3 secs")

# The 30-lab default panel of the schema doc: itemid -> (label, fluid, category).
LAB_ITEMS: dict[int, tuple[str, str, str]] = {
    50902: ("Chloride", "Blood", "Chemistry"), 50983: ("Sodium", "Blood", "Chemistry"),
    50971: ("Potassium", "Blood", "Chemistry"), 50912: ("Creatinine", "Blood", "Chemistry"),
    51006: ("Urea Nitrogen", "Blood", "Chemistry"),
    51265: ("Platelet Count", "Blood", "Hematology"),
    51221: ("Hematocrit", "Blood", "Hematology"), 50882: ("Bicarbonate", "Blood", "Chemistry"),
    50931: ("Glucose", "Blood", "Chemistry"), 51222: ("Hemoglobin", "Blood", "Hematology"),
    50868: ("Anion Gap", "Blood", "Chemistry"), 51249: ("MCHC", "Blood", "Hematology"),
    51250: ("MCV", "Blood", "Hematology"), 51301: ("White Blood Cells", "Blood", "Hematology"),
    51248: ("MCH", "Blood", "Hematology"), 51277: ("RDW", "Blood", "Hematology"),
    51279: ("Red Blood Cells", "Blood", "Hematology"),
    50960: ("Magnesium", "Blood", "Chemistry"), 50970: ("Phosphate", "Blood", "Chemistry"),
    50893: ("Calcium, Total", "Blood", "Chemistry"), 51274: ("PT", "Blood", "Hematology"),
    51237: ("INR(PT)", "Blood", "Hematology"), 51275: ("PTT", "Blood", "Hematology"),
    50920: ("Estimated GFR (MDRD equation)", "Blood", "Chemistry"),
    50885: ("Bilirubin, Total", "Blood", "Chemistry"),
    50878: ("Asparate Aminotransferase (AST)", "Blood", "Chemistry"),
    50861: ("Alanine Aminotransferase (ALT)", "Blood", "Chemistry"),
    50863: ("Alkaline Phosphatase", "Blood", "Chemistry"),
    51200: ("Eosinophils", "Blood", "Hematology"), 51146: ("Basophils", "Blood", "Hematology"),
}  # fmt: skip
# itemid -> (unit, median, spread, log-scale?, severity loading, decimals, ref low, ref high,
# panel, censor above: value ">N" with valuenum NULL, as MIMIC reports eGFR and PTT).
_LAB_SPEC: dict[int, tuple] = {
    50902: ("mEq/L", 102, 4.5, False, 0.0, 0, 96, 108, "bmp", None),
    50983: ("mEq/L", 139, 4.0, False, 0.0, 0, 133, 145, "bmp", None),
    50971: ("mEq/L", 4.1, 0.5, False, 0.1, 1, 3.3, 5.1, "bmp", None),
    50912: ("mg/dL", 1.0, 0.5, True, 0.35, 1, 0.5, 1.2, "bmp", None),
    51006: ("mg/dL", 20, 0.5, True, 0.35, 0, 6, 20, "bmp", None),
    51265: ("K/uL", 200, 0.45, True, -0.3, 0, 150, 440, "cbc", None),
    51221: ("%", 31, 5.0, False, -0.1, 1, 36, 48, "cbc", None),
    50882: ("mEq/L", 24, 3.5, False, -0.3, 0, 22, 32, "bmp", None),
    50931: ("mg/dL", 125, 0.3, True, 0.1, 0, 70, 100, "bmp", None),
    51222: ("g/dL", 10.3, 1.8, False, -0.1, 1, 12, 16, "cbc", None),
    50868: ("mEq/L", 14, 3.0, False, 0.35, 0, 8, 20, "bmp", None),
    51249: ("g/dL", 33, 1.2, False, 0.0, 1, 31, 37, "cbc", None),
    51250: ("fL", 90, 6.0, False, 0.0, 0, 80, 100, "cbc", None),
    51301: ("K/uL", 10, 0.45, True, 0.3, 1, 4, 11, "cbc", None),
    51248: ("pg", 30, 2.0, False, 0.0, 1, 27, 32, "cbc", None),
    51277: ("%", 15, 1.8, False, 0.05, 1, 10.5, 15.5, "cbc", None),
    51279: ("m/uL", 3.5, 0.6, False, -0.05, 2, 4.2, 5.4, "cbc", None),
    50960: ("mg/dL", 2.0, 0.3, False, 0.0, 1, 1.6, 2.6, "mg", None),
    50970: ("mg/dL", 3.5, 1.0, False, 0.1, 1, 2.7, 4.5, "mg", None),
    50893: ("mg/dL", 8.4, 0.6, False, -0.05, 1, 8.4, 10.3, "mg", None),
    51274: ("sec", 14, 0.25, True, 0.1, 1, 9.4, 12.5, "coag", None),
    51237: (None, 1.3, 0.25, True, 0.1, 1, 0.9, 1.1, "coag", None),
    51275: ("sec", 33, 0.35, True, 0.05, 1, 25, 36.5, "coag", 150),
    50920: ("mL/min/1.73 m2", 60, 0.5, True, -0.3, 0, None, None, "egfr", 75),
    50885: ("mg/dL", 0.7, 0.7, True, 0.2, 1, 0, 1.5, "lft", None),
    50878: ("IU/L", 35, 0.8, True, 0.2, 0, 0, 40, "lft", None),
    50861: ("IU/L", 30, 0.8, True, 0.1, 0, 0, 40, "lft", None),
    50863: ("IU/L", 90, 0.5, True, 0.05, 0, 35, 105, "lft", None),
    51200: ("%", 1.2, 0.8, True, -0.2, 1, 1, 4, "diff", None),
    51146: ("%", 0.3, 0.6, True, 0.0, 1, 0, 1, "diff", None),
}
_OTHER_D_LABITEMS: tuple[tuple[object, ...], ...] = (
    (50808, "Free Calcium", "Blood", "Blood Gas"),
    (50813, "Lactate", "Blood", "Blood Gas"),
    (50820, "pH", "Blood", "Blood Gas"),
    (51491, "pH", "Urine", "Hematology"),
    (51678, None, "Blood", "Chemistry"),  # the real dictionary has a few unlabeled items
)
_LAB_PANELS = {"bmp": 0.9, "cbc": 0.8, "mg": 0.6, "coag": 0.4, "lft": 0.25, "egfr": 0.1,
               "diff": 0.15}  # fmt: skip

# Latent per-observation-round chart channels: name -> (mean, stay sd, round sd, severity
# loading, decimals, min, max). Items in other units are converted from these.
_CHANNELS: dict[str, tuple[float, float, float, float, int, float, float]] = {
    "hr": (86, 10, 6, 10, 0, 30, 220), "sbp": (118, 12, 8, -10, 0, 50, 250),
    "dbp": (59, 8, 6, -5, 0, 20, 150), "mbp": (77, 9, 6, -8, 0, 30, 180),
    "rr": (19, 3, 3, 3.5, 0, 4, 60), "spo2": (97, 1.5, 1.5, -1.8, 0, 60, 100),
    "temp": (36.9, 0.3, 0.3, 0.35, 1, 33, 42), "fio2": (40, 10, 5, 12, 0, 21, 100),
    "glucose": (128, 20, 20, 15, 0, 30, 600), "ph": (7.40, 0.03, 0.03, -0.04, 2, 6.8, 7.7),
    "gcs": (-0.3, 0.5, 0.7, 1.0, 0, -9, 9),  # latent GCS deficit
    "crr": (-2.2, 0.5, 0.0, 1.2, 0, -9, 9),  # logit of abnormal capillary refill
}  # fmt: skip
_CHANNEL_NAMES = tuple(_CHANNELS)
# itemid -> (channel, observation group). A group is charted together in one round.
_CHART_ROUTING: dict[int, tuple[str, str]] = {
    220045: ("hr", "hr"), 220179: ("sbp", "nibp"), 220180: ("dbp", "nibp"),
    220181: ("mbp", "nibp"), 220050: ("sbp", "abp"), 220051: ("dbp", "abp"),
    220052: ("mbp", "abp"), 225309: ("sbp", "art2"), 225310: ("dbp", "art2"),
    225312: ("mbp", "art2"), 227243: ("sbp", "manual"), 224167: ("sbp", "manual"),
    224643: ("dbp", "manual"), 224322: ("mbp", "iabp"), 220210: ("rr", "rr"),
    224690: ("rr", "vent_rr"), 224689: ("rr", "vent_rr"), 224422: ("rr", "vent_rr"),
    220277: ("spo2", "spo2"), 220227: ("spo2", "abg"), 223830: ("ph", "abg"),
    220274: ("ph", "vbg"), 223761: ("temp", "temp"), 223762: ("temp", "temp"),
    223835: ("fio2", "fio2"), 225664: ("glucose", "fs"), 220621: ("glucose", "serum"),
    226537: ("glucose", "abg"), 220739: ("gcs", "gcs"), 223901: ("gcs", "gcs"),
    223900: ("gcs", "gcs"), 224308: ("crr", "crr"), 223951: ("crr", "crr"),
}  # fmt: skip
# group -> (probability per round, stay flag that changes it, probability when flagged).
_GROUP_PROB: dict[str, tuple[float, str | None, float]] = {
    "hr": (0.95, None, 0), "nibp": (0.55, "art", 0.25), "abp": (0, "art", 0.85),
    "art2": (0, "art2", 0.5), "manual": (0, "manual", 0.1), "iabp": (0, "iabp", 0.8),
    "rr": (0.9, None, 0), "vent_rr": (0, "vent", 0.6), "spo2": (0.92, None, 0),
    "abg": (0.01, "art", 0.08), "vbg": (0.03, None, 0), "temp": (0.22, None, 0),
    "fio2": (0.03, "vent", 0.35), "fs": (0.15, None, 0), "serum": (0.06, None, 0),
    "gcs": (0.18, None, 0), "crr": (0.12, None, 0),
}  # fmt: skip
_VALUEUOM: dict[int, str | None] = {
    **{i: v[3] for i, v in CHART_ITEMS.items()},
    226537: "mg/dL", 225664: "mg/dL", 220621: "mg/dL", 226531: "lbs",
}  # fmt: skip
_ROUNDS_PER_DAY = 20
_CHUNK_STAYS = 2000

_CAREUNITS = (
    "Medical Intensive Care Unit (MICU)", "Surgical Intensive Care Unit (SICU)",
    "Cardiac Vascular Intensive Care Unit (CVICU)",
    "Medical/Surgical Intensive Care Unit (MICU/SICU)", "Trauma SICU (TSICU)",
    "Coronary Care Unit (CCU)", "Neuro Surgical Intensive Care Unit (Neuro SICU)",
    "Neuro Intermediate", "Neuro Stepdown",
)  # fmt: skip
_ADMISSION_TYPES = ("EW EMER.", "EU OBSERVATION", "OBSERVATION ADMIT", "URGENT",
                    "SURGICAL SAME DAY ADMISSION", "DIRECT EMER.", "ELECTIVE",
                    "DIRECT OBSERVATION", "AMBULATORY OBSERVATION")  # fmt: skip
_ADMISSION_LOCATIONS = ("EMERGENCY ROOM", "PHYSICIAN REFERRAL", "TRANSFER FROM HOSPITAL",
                        "WALK-IN/SELF REFERRAL", "CLINIC REFERRAL", "PROCEDURE SITE",
                        "TRANSFER FROM SKILLED NURSING FACILITY", "PACU",
                        "INFORMATION NOT AVAILABLE")  # fmt: skip
_DISCHARGE_LOCATIONS = (
    "HOME",
    "HOME HEALTH CARE",
    "SKILLED NURSING FACILITY",
    "REHAB",
    "CHRONIC/LONG TERM ACUTE CARE",
    "HOSPICE",
    "AGAINST ADVICE",
)
_RACES = ("WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC/LATINO - PUERTO RICAN", "ASIAN",
          "OTHER", "UNKNOWN", "BLACK/CAPE VERDEAN", "WHITE - OTHER EUROPEAN",
          "ASIAN - CHINESE", "UNABLE TO OBTAIN")  # fmt: skip
_YEAR_GROUPS = ("2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019", "2020 - 2022")
_DAY = 86400
_MINUTE = 60


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _calibrated_bernoulli(rng: np.random.Generator, logit: np.ndarray, rate: float) -> np.ndarray:
    """Bernoulli(sigmoid(logit + c)) with c chosen so the expected rate matches ``rate``."""
    if logit.size == 0:
        return np.zeros(0, bool)
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _sigmoid(logit + mid).mean() < rate else (lo, mid)
    return rng.random(logit.size) < _sigmoid(logit + lo)


def _pick(rng: np.random.Generator, options: tuple[str, ...], n: int, p=None) -> np.ndarray:
    return np.asarray(options, dtype=object)[rng.choice(len(options), size=n, p=p)]


def _ceil_minute(t: np.ndarray) -> np.ndarray:
    return -(-t // _MINUTE) * _MINUTE


def _ts(seconds: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """int64 epoch seconds -> datetime64[s]; masked entries become NaT (written as empty)."""
    out = np.asarray(seconds, dtype=np.int64).astype("datetime64[s]")
    if mask is not None:
        out[mask] = np.datetime64("NaT")
    return out


@dataclass
class _Cohort:
    """Per-stay arrays shared by all tables (one entry per ICU stay, sorted by subject/time)."""

    subject_id: np.ndarray
    hadm_id: np.ndarray
    stay_id: np.ndarray
    intime: np.ndarray  # epoch seconds
    outtime: np.ndarray
    severity: np.ndarray
    trend: np.ndarray  # severity drift over the stay (worse for those who die)
    art: np.ndarray  # arterial line
    art2: np.ndarray
    manual: np.ndarray
    iabp: np.ndarray
    vent: np.ndarray
    patients: pd.DataFrame
    admissions: pd.DataFrame
    icustays: pd.DataFrame


def _cohort(n_stays: int, rng: np.random.Generator, providers: np.ndarray) -> _Cohort:
    """Subjects -> admissions -> ICU stays, their times and outcomes, all driven by severity."""
    n_subj = n_stays
    frailty = rng.normal(size=n_subj)
    age = np.clip(np.round(62 + 10 * frailty + rng.normal(0, 12, n_subj)), 18, 91).astype(int)
    n_adm = 1 + rng.binomial(2, _sigmoid(-1.9 + 0.5 * frailty))
    adm_subj = np.repeat(np.arange(n_subj), n_adm)
    sev_first = 0.6 * frailty[adm_subj] + 0.8 * rng.normal(size=adm_subj.size)
    n_st = 1 + (rng.random(adm_subj.size) < _sigmoid(-2.4 + 0.8 * sev_first))
    stay_adm = np.repeat(np.arange(adm_subj.size), n_st)[:n_stays]
    # Truncate to exactly n_stays stays (the last admission may lose its second stay).
    n_a = stay_adm[-1] + 1
    adm_subj, sev_first = adm_subj[:n_a], sev_first[:n_a]
    n_st = np.bincount(stay_adm, minlength=n_a)
    n_s = adm_subj[-1] + 1
    frailty, age = frailty[:n_s], age[:n_s]
    pos = np.arange(n_stays) - np.repeat(np.cumsum(n_st) - n_st, n_st)  # 0/1 within admission
    sev = np.where(
        pos == 0,
        sev_first[stay_adm],
        0.6 * frailty[adm_subj[stay_adm]] + 0.8 * rng.normal(size=n_stays) + 0.3,
    )

    # Times relative to admission start, in seconds.
    los = np.round(np.clip(rng.lognormal(np.log(2.0), 0.8, n_stays), 0.5, 20) * _DAY)
    pre = np.round(rng.exponential(0.4, n_a) * _DAY).astype(np.int64)
    gap = np.round(rng.uniform(0.5, 10, n_stays) * _DAY)
    rel_in = pre[stay_adm] + rng.integers(0, _MINUTE, n_stays)
    second = np.flatnonzero(pos == 1)  # a second stay starts days after the first one ends
    rel_in[second] = rel_in[second - 1] + los[second - 1] + gap[second]
    rel_out = rel_in + los
    last_stay = np.cumsum(n_st) - 1
    last_sev = sev[last_stay]

    # In-hospital death only on a subject's last admission (~12 % of all admissions).
    is_last_adm = np.r_[adm_subj[1:] != adm_subj[:-1], True]
    died = np.zeros(n_a, bool)
    died[is_last_adm] = _calibrated_bernoulli(
        rng, 1.8 * last_sev[is_last_adm], 0.12 * n_a / is_last_adm.sum()
    )
    in_icu = rng.random(n_a) < 0.7
    death_rel = rel_out[last_stay] + np.where(
        in_icu, rng.integers(0, 30 * _MINUTE, n_a), rng.uniform(0.05, 4, n_a) * _DAY
    )
    post = np.clip(rng.lognormal(np.log(3.0), 0.9, n_a), 0.1, 30) * _DAY
    disch_rel = np.where(died, death_rel, rel_out[last_stay] + post)

    # Admission start: first one in the anchor years, later ones after discharge + a gap that is
    # short (readmission) more often for sicker patients.
    anchor_year = rng.integers(2110, 2181, n_s)
    year_start = (anchor_year - 1970).astype("datetime64[Y]").astype("datetime64[s]")
    first_admit = year_start.astype(np.int64) + rng.integers(0, 900 * _DAY, n_s)
    short = rng.random(n_a) < _sigmoid(-1.6 + 1.0 * last_sev)
    between = np.where(short, rng.uniform(1, 25, n_a), rng.uniform(40, 700, n_a)) * _DAY
    span = np.ceil(disch_rel / _MINUTE) * _MINUTE + np.round(between / _MINUTE) * _MINUTE
    csum = np.cumsum(span) - span
    subj_first = np.r_[0, np.flatnonzero(adm_subj[1:] != adm_subj[:-1]) + 1]
    offset = csum - np.repeat(csum[subj_first], np.bincount(adm_subj))
    admittime = (_ceil_minute(first_admit)[adm_subj] + offset).astype(np.int64)
    dischtime = admittime + np.ceil(disch_rel / _MINUTE).astype(np.int64) * _MINUTE
    deathtime = np.where(died, dischtime, 0)
    intime = (admittime[stay_adm] + rel_in).astype(np.int64)
    outtime = (admittime[stay_adm] + rel_out).astype(np.int64)

    # Death after the last discharge (~5 % of survivors), some within 30 days of ICU discharge.
    subj_last_adm = np.cumsum(np.bincount(adm_subj)) - 1
    alive = ~died[subj_last_adm]
    later = np.zeros(n_s, bool)
    later[alive] = _calibrated_bernoulli(rng, 1.2 * last_sev[subj_last_adm][alive], 0.05)
    dod_t = np.where(
        died[subj_last_adm],
        deathtime[subj_last_adm],
        dischtime[subj_last_adm] + (1 + rng.exponential(90, n_s)) * _DAY,
    )
    dod = np.where(died[subj_last_adm] | later,
                   dod_t.astype(np.int64).astype("datetime64[s]").astype("datetime64[D]")
                   .astype(str), None)  # fmt: skip

    subject_id = 10_000_000 + np.sort(rng.choice(9_999_999, n_s, replace=False))
    hadm_id = 20_000_000 + rng.choice(9_999_999, n_a, replace=False)
    stay_id = 30_000_000 + rng.choice(9_999_999, n_stays, replace=False)

    patients = pd.DataFrame({
        "subject_id": subject_id,
        "gender": _pick(rng, ("F", "M"), n_s, [0.44, 0.56]),
        "anchor_age": age,
        "anchor_year": anchor_year,
        "anchor_year_group": _pick(rng, _YEAR_GROUPS, n_s),
        "dod": pd.array(dod, dtype="str"),
    })  # fmt: skip
    ed = rng.random(n_a) < 0.66
    survivor_loc = _pick(rng, _DISCHARGE_LOCATIONS, n_a, [0.4, 0.22, 0.2, 0.08, 0.04, 0.03, 0.03])
    discharge_location = np.where(died, "DIED", survivor_loc).astype(object)
    discharge_location[~died & (rng.random(n_a) < 0.17)] = None
    marital = _pick(
        rng, ("MARRIED", "SINGLE", "WIDOWED", "DIVORCED"), n_a, [0.45, 0.35, 0.12, 0.08]
    )
    marital[rng.random(n_a) < 0.044] = None
    admissions = pd.DataFrame({
        "subject_id": subject_id[adm_subj],
        "hadm_id": hadm_id,
        "admittime": _ts(admittime),
        "dischtime": _ts(dischtime),
        "deathtime": _ts(deathtime, ~died),
        "admission_type": _pick(rng, _ADMISSION_TYPES, n_a,
                                [0.35, 0.1, 0.12, 0.15, 0.1, 0.06, 0.07, 0.03, 0.02]),
        "admit_provider_id": providers[rng.integers(0, providers.size, n_a)],
        "admission_location": _pick(rng, _ADMISSION_LOCATIONS, n_a,
                                    [0.45, 0.15, 0.12, 0.08, 0.06, 0.05, 0.04, 0.03, 0.02]),
        "discharge_location": pd.array(discharge_location, dtype="str"),
        "insurance": _pick(rng, ("Medicare", "Medicaid", "Other"), n_a, [0.45, 0.2, 0.35]),
        "language": _pick(rng, ("ENGLISH", "?"), n_a, [0.9, 0.1]),
        "marital_status": pd.array(marital, dtype="str"),
        "race": _pick(rng, _RACES, n_a, [0.6, 0.12, 0.04, 0.03, 0.04, 0.06, 0.02, 0.03, 0.03,
                                         0.03]),
        "edregtime": _ts(admittime - rng.integers(60, 480, n_a) * _MINUTE, ~ed),
        "edouttime": _ts(admittime + rng.integers(10, 240, n_a) * _MINUTE, ~ed),
        "hospital_expire_flag": died.astype(int),
    })  # fmt: skip
    first_unit = rng.choice(
        len(_CAREUNITS), n_stays, p=[0.22, 0.15, 0.17, 0.17, 0.12, 0.1, 0.04, 0.02, 0.01]
    )
    moved = rng.random(n_stays) < 0.1
    last_unit = np.where(moved, rng.integers(0, len(_CAREUNITS), n_stays), first_unit)
    units = np.asarray(_CAREUNITS, dtype=object)
    icustays = pd.DataFrame({
        "subject_id": subject_id[adm_subj[stay_adm]],
        "hadm_id": hadm_id[stay_adm],
        "stay_id": stay_id,
        "first_careunit": units[first_unit],
        "last_careunit": units[last_unit],
        "intime": _ts(intime),
        "outtime": _ts(outtime),
        "los": (outtime - intime) / _DAY,
    })  # fmt: skip

    art = rng.random(n_stays) < _sigmoid(-0.8 + 0.8 * sev)
    died_stay = died[stay_adm] & (pos == n_st[stay_adm] - 1)
    return _Cohort(
        subject_id=icustays["subject_id"].to_numpy(),
        hadm_id=icustays["hadm_id"].to_numpy(),
        stay_id=stay_id,
        intime=intime,
        outtime=outtime,
        severity=sev,
        trend=np.where(died_stay, 0.6, -0.3),
        art=art,
        art2=art & (rng.random(n_stays) < 0.1),
        manual=rng.random(n_stays) < 0.1,
        iabp=rng.random(n_stays) < 0.015,
        vent=rng.random(n_stays) < _sigmoid(-1.0 + 1.0 * sev),
        patients=patients,
        admissions=admissions,
        icustays=icustays,
    )


def _round_prob(group: str, c: _Cohort, s: slice) -> np.ndarray:
    """Per-stay probability that an observation round charts this group."""
    base, flag, p_flag = _GROUP_PROB[group]
    if flag is None:
        return np.full(s.stop - s.start, base)
    return np.where(getattr(c, flag)[s], p_flag, base)


def _chart_chunk(c: _Cohort, s: slice, rng: np.random.Generator) -> pa.Table:
    """chartevents rows for the stays in ``s``: rounds of observations at random times."""
    n = s.stop - s.start
    intime, outtime = c.intime[s], c.outtime[s]
    los = outtime - intime
    n_rounds = 1 + rng.poisson(_ROUNDS_PER_DAY * los / _DAY)
    stay = np.repeat(np.arange(n), n_rounds)
    frac = rng.random(stay.size)
    t = _ceil_minute(intime[stay] + frac * los[stay]).astype(np.int64)
    t = np.where(t > outtime[stay], t - _MINUTE, t)
    # A handful of stays get one round charted before intime (cohort logic must drop it).
    early = np.flatnonzero(rng.random(n) < 0.02)
    first_round = np.cumsum(n_rounds) - n_rounds
    t[first_round[early]] = _ceil_minute(intime[early]) - rng.integers(5, 240, early.size) * 60
    sev = c.severity[s][stay] + c.trend[s][stay] * frac
    offsets = rng.normal(size=(n, len(_CHANNEL_NAMES)))
    latent = {}
    for k, name in enumerate(_CHANNEL_NAMES):
        mean, sd_stay, sd_round, load, _, _, _ = _CHANNELS[name]
        noise = rng.normal(size=stay.size)
        latent[name] = mean + load * sev + sd_stay * offsets[stay, k] + sd_round * noise

    vent = c.vent[s]
    numbered = rng.random(n) < 0.2  # stays charted with CareVue-style numbered GCS text
    rows_round, rows_item, rows_num, rows_text = [], [], [], []
    group_mask: dict[str, np.ndarray] = {}
    for itemid, (channel, group) in _CHART_ROUTING.items():
        if group not in group_mask:
            group_mask[group] = rng.random(stay.size) < _round_prob(group, c, s)[stay]
        keep = group_mask[group] & (rng.random(stay.size) < 0.97)
        if group == "temp":  # one thermometer reading per round: 70 % Fahrenheit
            keep = group_mask[group] & ((rng.random(stay.size) < 0.7) == (itemid == 223761))
        elif group == "vent_rr" and itemid != 224690:
            keep &= rng.random(stay.size) < 0.4
        idx = np.flatnonzero(keep)
        num, text = _chart_values(
            itemid, latent[channel][idx], vent[stay[idx]], numbered[stay[idx]], rng
        )
        rows_round.append(idx)
        rows_item.append(np.full(idx.size, itemid))
        rows_num.append(num)
        rows_text.append(text)
    r = np.concatenate(rows_round)
    item = np.concatenate(rows_item)
    num = np.concatenate(rows_num)
    text = np.concatenate(rows_text)
    row_stay, charttime = stay[r], t[r]
    # Height and weight once per stay near admission, in one of two units.
    h_stay = np.flatnonzero(rng.random(n) < 0.85)
    hw_stay = np.r_[h_stay, np.flatnonzero(rng.random(n) < 0.95)]
    hw = _height_weight(hw_stay, h_stay.size, rng)
    hw_t = _ceil_minute(intime[hw_stay] + rng.uniform(0, np.minimum(6 * 3600, los[hw_stay])))
    row_stay = np.r_[row_stay, hw_stay]
    charttime = np.r_[charttime, hw_t].astype(np.int64)
    item = np.r_[item, hw[0]]
    num = np.r_[num, hw[1]]
    text = np.r_[text, np.full(hw_stay.size, -1)]

    order = np.lexsort((item, charttime, row_stay))
    row_stay, charttime, item, num, text = (
        row_stay[order],
        charttime[order],
        item[order],
        num[order],
        text[order],
    )
    m = row_stay.size
    is_text = text >= 0
    value = pc.if_else(
        pa.array(is_text),
        _CHART_TEXT.take(pa.array(np.maximum(text, 0))),
        pa.array(num).cast(pa.string()),
    )
    item_pos = np.searchsorted(_CHART_UOM_IDS, item)
    caregiver = rng.integers(10_000, 99_999, (n, 6))[row_stay, rng.integers(0, 6, m)]
    return pa.table({
        "subject_id": c.subject_id[s][row_stay],
        "hadm_id": c.hadm_id[s][row_stay],
        "stay_id": c.stay_id[s][row_stay],
        "caregiver_id": pa.array(caregiver, mask=rng.random(m) < 0.02),
        "charttime": _ts(charttime),
        "storetime": _ts(charttime + rng.integers(1, 25, m) * _MINUTE),
        "itemid": item,
        "value": value,
        "valuenum": pa.array(num, mask=np.isnan(num)),
        "valueuom": _CHART_UOMS.take(pa.array(item_pos)),
        "warning": (rng.random(m) < 0.01).astype(np.int64),
    })  # fmt: skip


# Text lookups for chart values: GCS numbered/un-numbered, ETT, capillary refill.
_TEXT_VALUES: list[str] = sorted(
    {v for a, b in GCS_VALUES.values() for v in (*a, *b)} | set(_ETT_VALUES) | set(_CRR_VALUES)
)
_CHART_TEXT = pa.array(_TEXT_VALUES)
_TEXT_INDEX = {v: i for i, v in enumerate(_TEXT_VALUES)}
_CHART_UOM_IDS = np.array(sorted(_VALUEUOM))
_CHART_UOMS = pa.array([_VALUEUOM[i] for i in _CHART_UOM_IDS], pa.string())


def _chart_values(
    itemid: int,
    latent: np.ndarray,
    vent: np.ndarray,
    numbered: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(valuenum, text index or -1) for one item from its latent channel, in the item's unit."""
    channel = _CHART_ROUTING[itemid][0]
    _, _, _, _, decimals, lo, hi = _CHANNELS[channel]
    none = np.full(latent.size, -1)
    if itemid in GCS_VALUES:
        top = len(GCS_VALUES[itemid][0])
        score = top - np.clip(np.round(latent * top / 4), 0, top - 1).astype(int)
        lut = np.array([[_TEXT_INDEX[v] for v in variant] for variant in GCS_VALUES[itemid]])
        text = lut[np.where(numbered, 0, 1), score - 1]
        if itemid == 223900:  # intubated patients get the ETT verbal response
            ett = vent & (rng.random(latent.size) < 0.8)
            ett_text = np.where(
                rng.random(latent.size) < 0.85,
                _TEXT_INDEX[_ETT_VALUES[0]],
                _TEXT_INDEX[_ETT_VALUES[1]],
            )
            text = np.where(ett, ett_text, text)
            score = np.where(ett, 1, score)
        return score.astype(float), text
    if channel == "crr":
        abnormal = rng.random(latent.size) < _sigmoid(latent)
        return np.full(latent.size, np.nan), np.where(
            abnormal, _TEXT_INDEX[_CRR_VALUES[1]], _TEXT_INDEX[_CRR_VALUES[0]]
        )
    value = np.clip(latent, lo, hi)
    if itemid == 223761:
        return np.round(value * 9 / 5 + 32, 1), none
    return np.round(value, decimals), none


def _height_weight(
    stays: np.ndarray, n_height: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Itemids and values for height rows (first ``n_height``) and admission weight rows."""
    size = stays.size
    height_cm = np.clip(rng.normal(170, 10, size), 140, 210)
    weight_kg = np.clip(rng.normal(81, 18, size), 35, 250)
    is_h = np.arange(size) < n_height
    inch = rng.random(size) < 0.6
    lbs = rng.random(size) < 0.2
    item = np.where(is_h, np.where(inch, 226707, 226730), np.where(lbs, 226531, 226512))
    value = np.where(
        is_h,
        np.where(inch, np.round(height_cm / 2.54), np.round(height_cm)),
        np.where(lbs, np.round(weight_kg / 0.453592, 1), np.round(weight_kg, 1)),
    )
    return item, value


def _lab_chunk(
    c: _Cohort, s: slice, rng: np.random.Generator, counters: dict[str, int], providers: np.ndarray
) -> pa.Table:
    """labevents for the stays in ``s``: 1-3 draws a day, each a random subset of the panels."""
    n = s.stop - s.start
    intime, outtime = c.intime[s], c.outtime[s]
    los = outtime - intime
    n_draws = 1 + rng.poisson(2.0 * los / _DAY)
    d_stay = np.repeat(np.arange(n), n_draws)
    frac = rng.random(d_stay.size)
    d_time = _ceil_minute(intime[d_stay] + frac * los[d_stay]).astype(np.int64)
    d_time = np.where(d_time > outtime[d_stay], d_time - _MINUTE, d_time)
    draw_rank = np.empty(d_stay.size, np.int64)
    draw_rank[np.lexsort((d_time, d_stay))] = np.arange(d_stay.size)
    sev = c.severity[s][d_stay] + c.trend[s][d_stay] * frac
    panels = list(_LAB_PANELS)
    panel_on = {p: rng.random(d_stay.size) < q for p, q in _LAB_PANELS.items()}
    offsets = rng.normal(size=(n, len(_LAB_SPEC)))

    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for k, (_, median, spread, log, beta, decimals, ref_lo, _, panel, _) in enumerate(
        _LAB_SPEC.values()
    ):
        d = np.flatnonzero(panel_on[panel] & (rng.random(d_stay.size) < 0.97))
        resid = np.sqrt(1 - beta**2)
        z = beta * sev[d] + resid * (0.6 * offsets[d_stay[d], k] + 0.8 * rng.normal(size=d.size))
        v = median * np.exp(spread * z) if log else median + spread * z
        # Lab results stay physiologically possible: no PT of 4 s, whatever the tail draws.
        floor = max(10.0**-decimals, 0.6 * (ref_lo or 0.0))
        parts.append((d, np.full(d.size, k), np.round(np.maximum(v, floor), decimals)))
    d = np.concatenate([p[0] for p in parts])
    spec_pos = np.concatenate([p[1] for p in parts])
    num = np.concatenate([p[2] for p in parts])
    order = np.lexsort((_LAB_IDS[spec_pos], draw_rank[d]))
    d, spec_pos, num = d[order], spec_pos[order], num[order]
    item = _LAB_IDS[spec_pos]
    m = d.size

    cap = _LAB_CAP[spec_pos]
    censored = num > cap
    unknown = rng.random(m) < 0.015  # "___": de-identified free text, no number
    text = pa.array(num).cast(pa.string())
    text = pc.if_else(pa.array(censored), _LAB_CAP_TEXT.take(pa.array(spec_pos)), text)
    text = pc.if_else(pa.array(unknown), pa.scalar("___"), text)
    valuenum = np.where(censored | unknown, np.nan, num)
    lo, hi = _LAB_LO[spec_pos], _LAB_HI[spec_pos]
    abnormal = (valuenum < lo) | (valuenum > hi)
    panel_idx = np.searchsorted(_LAB_PANEL_ORDER, _LAB_PANEL[spec_pos])
    _, specimen = np.unique(draw_rank[d] * len(panels) + panel_idx, return_inverse=True)
    n_spec = int(specimen.max()) + 1 if m else 0
    spec_ids = counters["specimen"] + np.cumsum(rng.integers(1, 40, n_spec))
    counters["specimen"] = int(spec_ids[-1]) if n_spec else counters["specimen"]
    store_delay = rng.integers(20, 240, n_spec)
    no_store = rng.random(n_spec) < 0.01
    labevent_id = counters["labevent"] + 1 + np.arange(m)
    counters["labevent"] += m
    draw_priority = rng.choice(3, d_stay.size, p=[0.55, 0.38, 0.07])
    draw_provider = rng.integers(0, providers.size, d_stay.size)
    no_provider = rng.random(d_stay.size) < 0.84
    outpatient = rng.random(d_stay.size) < 0.25  # charted without hadm_id
    return pa.table({
        "labevent_id": labevent_id,
        "subject_id": c.subject_id[s][d_stay[d]],
        "hadm_id": pa.array(c.hadm_id[s][d_stay[d]], mask=outpatient[d]),
        "specimen_id": spec_ids[specimen],
        "itemid": item,
        "order_provider_id": pa.array(providers[draw_provider[d]], mask=no_provider[d]),
        "charttime": _ts(d_time[d]),
        "storetime": _ts(d_time[d] + store_delay[specimen] * _MINUTE, no_store[specimen]),
        "value": text,
        "valuenum": pa.array(valuenum, mask=np.isnan(valuenum)),
        "valueuom": _LAB_UOMS.take(pa.array(spec_pos)),
        "ref_range_lower": pa.array(lo, mask=np.isnan(lo)),
        "ref_range_upper": pa.array(hi, mask=np.isnan(hi)),
        "flag": pa.array(np.where(abnormal, "abnormal", ""), mask=~abnormal),
        "priority": pa.array(np.array(["ROUTINE", "STAT", ""])[draw_priority[d]],
                             mask=draw_priority[d] == 2),
        "comments": pa.array(np.where(unknown, "___", ""), mask=~unknown),
    })  # fmt: skip


_LAB_IDS = np.array(list(_LAB_SPEC))
_LAB_UOMS = pa.array([v[0] for v in _LAB_SPEC.values()], pa.string())
_LAB_LO = np.array([np.nan if v[6] is None else v[6] for v in _LAB_SPEC.values()], float)
_LAB_HI = np.array([np.nan if v[7] is None else v[7] for v in _LAB_SPEC.values()], float)
_LAB_PANEL = np.array([v[8] for v in _LAB_SPEC.values()])
_LAB_PANEL_ORDER = np.array(sorted(_LAB_PANELS))
_LAB_CAP = np.array([np.inf if v[9] is None else v[9] for v in _LAB_SPEC.values()], float)
_LAB_CAP_TEXT = pa.array([None if v[9] is None else f">{v[9]}" for v in _LAB_SPEC.values()])


def _write_frame(path: Path, frame: pd.DataFrame) -> None:
    """Small tables via pandas: minimal quoting (labels with commas), NULL -> empty field."""
    frame.to_csv(
        path,
        index=False,
        date_format="%Y-%m-%d %H:%M:%S",
        lineterminator="\n",
        compression={"method": "gzip", "compresslevel": 6, "mtime": 0},
    )


def _write_stream(path: Path, columns: tuple[str, ...], tables: Iterator[pa.Table]) -> None:
    """Large tables: CSV-encode and gzip each chunk on a worker thread while the next is built.

    Level-1 gzip: pyarrow's gzip stream uses level 9, about 10x slower for a little smaller file.
    """

    def encode(table: pa.Table, header: bool) -> None:
        buf = pa.BufferOutputStream()
        options = pacsv.WriteOptions(include_header=header, batch_size=1 << 16,
                                     quoting_style="none", quoting_header="none")  # fmt: skip
        pacsv.write_csv(table.select(list(columns)), buf, options)
        out.write(buf.getvalue())

    with (
        gzip.GzipFile(path, "wb", compresslevel=1, mtime=0) as out,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        pending: Future[None] | None = None
        for i, table in enumerate(tables):
            if pending is not None:
                pending.result()
            pending = pool.submit(encode, table, i == 0)
        if pending is None:
            out.write((",".join(columns) + "\n").encode())
        else:
            pending.result()


def _provider_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    chars = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    return np.array(["P" + "".join(row) for row in chars[rng.integers(0, chars.size, (n, 5))]])


def _dictionaries() -> tuple[pd.DataFrame, pd.DataFrame]:
    d_items = pd.DataFrame(
        [(i, v[0], v[1], "chartevents", v[2], v[3], v[4], None, None)
         for i, v in CHART_ITEMS.items()] + list(_OTHER_D_ITEMS),
        columns=MIMIC_IV_COLUMNS["icu/d_items"],
    ).sort_values("itemid")  # fmt: skip
    d_items[["lownormalvalue", "highnormalvalue"]] = d_items[
        ["lownormalvalue", "highnormalvalue"]].astype(float)  # fmt: skip
    d_labitems = pd.DataFrame(
        [(i, v[0], v[1], v[2]) for i, v in LAB_ITEMS.items()] + list(_OTHER_D_LABITEMS),
        columns=MIMIC_IV_COLUMNS["hosp/d_labitems"],
    ).sort_values("itemid")
    return d_items, d_labitems


def write_synthetic_mimic_iv(
    root: str | Path, n_stays: int = 1000, seed: int = 0, include_labevents: bool = True
) -> Path:
    """Write a MIMIC-IV-shaped ``root/hosp`` + ``root/icu`` tree with ``n_stays`` ICU stays.

    Deterministic for a given (seed, n_stays); chunked so 100k stays fit in a few GB.
    ``include_labevents=False`` skips (and removes) ``hosp/labevents.csv.gz``.
    """
    if n_stays < 1:
        raise ValueError("n_stays must be >= 1")
    root = Path(root)
    for sub in ("hosp", "icu"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0])
    providers = _provider_ids(rng, 600)
    cohort = _cohort(n_stays, rng, providers)
    d_items, d_labitems = _dictionaries()
    for name, frame in (("hosp/patients", cohort.patients),
                        ("hosp/admissions", cohort.admissions),
                        ("hosp/d_labitems", d_labitems),
                        ("icu/icustays", cohort.icustays),
                        ("icu/d_items", d_items)):  # fmt: skip
        _write_frame(root / f"{name}.csv.gz", frame[list(MIMIC_IV_COLUMNS[name])])

    chunks = [slice(i, min(i + _CHUNK_STAYS, n_stays)) for i in range(0, n_stays, _CHUNK_STAYS)]
    _write_stream(root / "icu/chartevents.csv.gz", MIMIC_IV_COLUMNS["icu/chartevents"],
                  (_chart_chunk(cohort, s, np.random.default_rng([seed, 1, k]))
                   for k, s in enumerate(chunks)))  # fmt: skip
    labevents = root / "hosp/labevents.csv.gz"
    if include_labevents:
        counters = {"labevent": 0, "specimen": 1_000_000}
        _write_stream(labevents, MIMIC_IV_COLUMNS["hosp/labevents"],
                      (_lab_chunk(cohort, s, np.random.default_rng([seed, 2, k]), counters,
                                  providers) for k, s in enumerate(chunks)))  # fmt: skip
    else:
        labevents.unlink(missing_ok=True)
    return root
