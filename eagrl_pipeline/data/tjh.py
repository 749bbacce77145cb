"""Reader for the TJH COVID-19 file (Yan et al. 2020) with all of its quirks.

The file is long format, one row per lab report; ``PATIENT_ID`` is filled only on each
patient's first row, 14 rows have no ``RE_DATE``, and some headers carry α/β/γ and trailing
spaces. The reader validates everything the warehouse relies on and names the file, the column
and the fix when something is off, so a bad file never reaches dbt.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np
import pandas as pd

from eagrl_pipeline.errors import InputDataError
from eagrl_pipeline.paths import atomic_path

# The header of time_series_375_prerpocess_en.xlsx, byte for byte (three names end in a space).
TJH_COLUMNS: tuple[str, ...] = (
    "PATIENT_ID", "RE_DATE", "age", "gender", "Admission time", "Discharge time", "outcome",
    "Hypersensitive cardiac troponinI", "hemoglobin", "Serum chloride", "Prothrombin time",
    "procalcitonin", "eosinophils(%)", "Interleukin 2 receptor", "Alkaline phosphatase",
    "albumin", "basophil(%)", "Interleukin 10", "Total bilirubin", "Platelet count",
    "monocytes(%)", "antithrombin", "Interleukin 8", "indirect bilirubin",
    "Red blood cell distribution width ", "neutrophils(%)", "total protein",
    "Quantification of Treponema pallidum antibodies", "Prothrombin activity", "HBsAg",
    "mean corpuscular volume", "hematocrit", "White blood cell count", "Tumor necrosis factorα",
    "mean corpuscular hemoglobin concentration", "fibrinogen", "Interleukin 1β", "Urea",
    "lymphocyte count", "PH value", "Red blood cell count", "Eosinophil count",
    "Corrected calcium", "Serum potassium", "glucose", "neutrophils count", "Direct bilirubin",
    "Mean platelet volume", "ferritin", "RBC distribution width SD", "Thrombin time",
    "(%)lymphocyte", "HCV antibody quantification", "D-D dimer", "Total cholesterol",
    "aspartate aminotransferase", "Uric acid", "HCO3-", "calcium",
    "Amino-terminal brain natriuretic peptide precursor(NT-proBNP)", "Lactate dehydrogenase",
    "platelet large cell ratio ", "Interleukin 6", "Fibrin degradation products",
    "monocytes count", "PLT distribution width", "globulin", "γ-glutamyl transpeptidase",
    "International standard ratio", "basophil count(#)", "2019-nCoV nucleic acid detection",
    "mean corpuscular hemoglobin ", "Activation of partial thromboplastin time",
    "High sensitivity C-reactive protein", "HIV antibody quantification", "serum sodium",
    "thrombocytocrit", "ESR", "glutamic-pyruvic transaminase", "eGFR", "creatinine",
)  # fmt: skip
TJH_STATIC_COLUMNS: tuple[str, ...] = TJH_COLUMNS[:7]
TJH_LAB_COLUMNS: tuple[str, ...] = TJH_COLUMNS[7:]

# Snapshot column names: snake_case for the fixed columns, stripped headers for the labs.
_RENAMES = {
    "PATIENT_ID": "patient_id",
    "RE_DATE": "re_date",
    "Admission time": "admission_time",
    "Discharge time": "discharge_time",
}
_DATE_COLUMNS = ("RE_DATE", "Admission time", "Discharge time")
_FIX_FORMAT = "export the file as TJH's time_series_375_prerpocess_en.xlsx (or its CSV) is laid out"


def _read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise InputDataError(
            path,
            "file not found.",
            fix="point raw_tjh's `path` at the TJH xlsx/csv file, or leave it empty for the "
            "synthetic default.",
        )
    if path.is_dir():
        raise InputDataError(path, "is a folder, expected the TJH xlsx or csv file.")
    suffix = path.suffix.lower()
    try:
        if suffix in {".xlsx", ".xls"}:
            frame = pd.read_excel(path, dtype=object)
        elif suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        else:
            raise InputDataError(
                path, f"unsupported file type {suffix!r}.", fix="use the .xlsx file or a .csv."
            )
    except pd.errors.EmptyDataError as exc:
        raise InputDataError(path, "the file is empty.", fix=_FIX_FORMAT + ".") from exc
    except InputDataError:
        raise
    except Exception as exc:
        raise InputDataError(path, f"cannot be read ({exc}).", fix=_FIX_FORMAT + ".") from exc
    if frame.empty:
        raise InputDataError(path, "has a header but no rows.", fix=_FIX_FORMAT + ".")
    return frame


def _check_columns(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.rename(columns=lambda c: str(c).strip())
    duplicated = frame.columns[frame.columns.duplicated()].tolist()
    if duplicated:
        raise InputDataError(path, "appears more than once.", column=duplicated[0])
    present = set(frame.columns)
    for expected in (c.strip() for c in TJH_COLUMNS):
        if expected not in present:
            close = difflib.get_close_matches(expected, sorted(present), n=1, cutoff=0.6)
            hint = f" A column {close[0]!r} is present: was it renamed?" if close else ""
            raise InputDataError(
                path,
                f"required column is missing.{hint}",
                column=expected,
                fix=f"restore the column header {expected!r} as in the TJH file.",
            )
    return frame[[c.strip() for c in TJH_COLUMNS]]


def _to_numeric(path: Path, frame: pd.DataFrame, column: str) -> pd.Series:
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce")
    bad = raw.notna() & values.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputDataError(
            path,
            f"non-numeric value {raw.iloc[row]!r} at data row {row + 1} (file line {row + 2}).",
            column=column,
            fix="replace it with a number or leave the cell empty (missing).",
        )
    return values.astype("float64")


def _to_datetime(path: Path, frame: pd.DataFrame, column: str) -> pd.Series:
    raw = frame[column]
    values = pd.to_datetime(raw, errors="coerce", format="mixed")
    bad = raw.notna() & values.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputDataError(
            path,
            f"unparseable date {raw.iloc[row]!r} at data row {row + 1}.",
            column=column,
            fix="use dates like 2020-01-31 01:09:00.",
        )
    return values.astype("datetime64[us]")


def _patient_ids(path: Path, frame: pd.DataFrame) -> pd.Series:
    ids = _to_numeric(path, frame, "PATIENT_ID")
    if pd.isna(ids.iloc[0]):
        raise InputDataError(
            path,
            "the first row has no patient id, so its rows belong to no patient.",
            column="PATIENT_ID",
            fix="fill PATIENT_ID on the first row of each patient.",
        )
    if (ids.dropna() % 1 != 0).any():
        raise InputDataError(
            path,
            "ids must be whole numbers.",
            column="PATIENT_ID",
            fix="use integer patient ids (1, 2, ...) on each patient's first row.",
        )
    starts = ids.dropna()
    repeated = starts[starts.duplicated()]
    if not repeated.empty:
        raise InputDataError(
            path,
            f"duplicate patient id {int(repeated.iloc[0])}: a second block of rows starts with "
            f"an id already used (data row {int(repeated.index[0]) + 1}).",
            column="PATIENT_ID",
            fix="give each patient one id, on the first row of its block only.",
        )
    return ids.ffill().astype("int64")


def read_tjh(path: str | Path) -> pd.DataFrame:
    """Read and validate a TJH file; return the typed long table the warehouse snapshots.

    Columns: ``patient_id``, ``re_date``, ``age``, ``gender`` (1 male, 2 female), the admission
    and discharge times, ``outcome`` (1 = died), then the 74 labs under their stripped headers.
    Rows without ``RE_DATE`` are kept (they are part of the raw file); staging drops them.
    """
    path = Path(path)
    frame = _check_columns(path, _read_table(path))
    out = pd.DataFrame(index=frame.index)
    out["patient_id"] = _patient_ids(path, frame)
    for column in TJH_STATIC_COLUMNS[1:]:
        name = _RENAMES.get(column, column)
        if column in _DATE_COLUMNS:
            out[name] = _to_datetime(path, frame, column)
        else:
            out[name] = _to_numeric(path, frame, column)
    labs = {c.strip(): _to_numeric(path, frame, c.strip()) for c in TJH_LAB_COLUMNS}
    out = pd.concat([out, pd.DataFrame(labs, index=frame.index)], axis=1)
    _check_values(path, out)
    out["age"] = out["age"].astype("float64")
    out["gender"] = out["gender"].astype("int64")
    out["outcome"] = out["outcome"].astype("int64")
    return out.reset_index(drop=True)


def _check_values(path: Path, table: pd.DataFrame) -> None:
    checks = {
        "gender": (table["gender"].isin([1, 2]), "must be 1 (male) or 2 (female)"),
        "outcome": (table["outcome"].isin([0, 1]), "must be 0 (survived) or 1 (died)"),
        "age": (table["age"].between(0, 120), "must be an age in years between 0 and 120"),
    }
    for column, (ok, expected) in checks.items():
        if not ok.all():
            row = int(np.flatnonzero(~ok.to_numpy())[0])
            raise InputDataError(
                path,
                f"impossible value {table[column].iloc[row]:g} at data row {row + 1}; {expected}.",
                column=column,
                fix="correct the value in the source file.",
            )
    for column in ("age", "gender", "outcome"):
        varying = table.groupby("patient_id")[column].nunique()
        if (varying > 1).any():
            patient = int(varying[varying > 1].index[0])
            raise InputDataError(
                path,
                f"patient {patient} has more than one value; it must be constant per patient.",
                column=column,
                fix="check whether two patients' rows were merged under one PATIENT_ID.",
            )


def write_tjh_snapshot(table: pd.DataFrame, target: str | Path) -> Path:
    """Write the validated table as parquet atomically (the old snapshot survives a crash)."""
    target = Path(target)
    with atomic_path(target) as tmp:
        table.to_parquet(tmp, index=False)
    return target
