"""Reader for the TJH COVID-19 file (Yan et al. 2020) with all of its quirks.

The file is long format, one row per lab report; ``PATIENT_ID`` is filled only on each
patient's first row, 14 rows have no ``RE_DATE``, and some headers carry α/β/γ and trailing
spaces. The reader validates everything the warehouse relies on and names the file, the column
and the fix when something is off, so a bad file never reaches dbt.
"""

from __future__ import annotations

import difflib
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from eagrl_pipeline.data.text_files import decode_utf8, refuse_other_delimiter
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
# TJH writes -1 for "no result" (PyEHR reads it as missing); staging drops exactly this value.
TJH_MISSING_SENTINEL = -1.0
_FIX_FORMAT = "export the file as TJH's time_series_375_prerpocess_en.xlsx (or its CSV) is laid out"


def _read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise InputDataError(
            path,
            "file not found.",
            fix="set EAGRL_TJH_PATH (the `sources` resource's tjh_path) to the TJH xlsx/csv "
            "file, or unset it for the synthetic default.",
        )
    if path.is_dir():
        raise InputDataError(path, "is a folder, expected the TJH xlsx or csv file.")
    suffix = path.suffix.lower()
    if suffix not in {".xlsx", ".xls", ".csv"}:
        raise InputDataError(
            path, f"unsupported file type {suffix!r}.", fix="use the .xlsx file or a .csv."
        )
    if path.stat().st_size == 0:
        raise InputDataError(path, "the file is empty (0 bytes).", fix=_FIX_FORMAT + ".")
    try:
        frame = _read_excel(path) if suffix in {".xlsx", ".xls"} else _read_csv(path)
    except pd.errors.EmptyDataError as exc:
        raise InputDataError(path, "the file is empty.", fix=_FIX_FORMAT + ".") from exc
    except InputDataError:
        raise
    except Exception as exc:
        raise InputDataError(path, f"cannot be read ({exc}).", fix=_FIX_FORMAT + ".") from exc
    if frame.empty:
        raise InputDataError(path, "has a header but no rows.", fix=_FIX_FORMAT + ".")
    return frame


_XLSX_MAGIC = b"PK\x03\x04"  # an xlsx workbook is a zip archive
_XLS_MAGIC = b"\xd0\xcf\x11\xe0"  # the legacy binary workbook


def _read_excel(path: Path) -> pd.DataFrame:
    """The first sheet of a workbook; a file that is no workbook, or a workbook whose TJH
    table sits on another sheet, is named as such instead of pandas' engine message."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if not head.startswith((_XLSX_MAGIC, _XLS_MAGIC)):
        text = head.decode("utf-8", errors="replace")
        looks = " (it starts like text: a CSV renamed?)" if text.isprintable() else ""
        raise InputDataError(
            path,
            f"is not an Excel workbook{looks}.",
            fix="give the file its real extension (.csv for a CSV export), or re-export it "
            "from Excel as .xlsx.",
        )
    with pd.ExcelFile(path) as book:
        names = book.sheet_names
        first = book.parse(names[0], dtype=object)
        if _has_tjh_header(first.columns):
            return first
        # Only a first sheet without the TJH header makes the other sheets worth a look (their
        # header rows only).
        holding = [n for n in names[1:] if _has_tjh_header(book.parse(n, nrows=0).columns)]
    if holding:
        raise InputDataError(
            path,
            f"the TJH table is on sheet {holding[0]!r}, not on the first sheet "
            f"({names[0]!r}), which the reader reads.",
            fix=f"move sheet {holding[0]!r} to the front of the workbook.",
        )
    return first


def _has_tjh_header(columns: pd.Index) -> bool:
    return {"PATIENT_ID", "RE_DATE"} <= {str(c).strip() for c in columns}


def _read_csv(path: Path) -> pd.DataFrame:
    """A UTF-8 CSV (a byte-order mark is fine); another encoding or delimiter is named."""
    resave = "save the CSV as UTF-8 with comma separators (Excel: 'CSV UTF-8')."
    text = decode_utf8(path, path.read_bytes(), resave)
    refuse_other_delimiter(path, text.split("\n", 1)[0], resave)
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""])


def _check_columns(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.rename(columns=lambda c: str(c).strip())
    duplicated = frame.columns[frame.columns.duplicated()].tolist()
    if duplicated:
        raise InputDataError(
            path,
            "appears more than once (names are compared without surrounding spaces).",
            column=duplicated[0],
            fix=f"keep one column headed {duplicated[0]!r}: rename or delete the other.",
        )
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


def _first_row(mask: pd.Series, index: pd.Index | None = None) -> int | None:
    """Position of the first True of ``mask`` (over ``index``, where the mask covers a subset
    of the frame's rows); None when there is none."""
    if index is not None:
        mask = mask.reindex(index, fill_value=False)
    rows = np.flatnonzero(mask.to_numpy())
    return int(rows[0]) if len(rows) else None


def _to_numeric(path: Path, frame: pd.DataFrame, column: str) -> pd.Series:
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce")
    row = _first_row(raw.notna() & values.isna())
    if row is not None:
        raise InputDataError(
            path,
            f"non-numeric value {raw.iloc[row]!r} at data row {row + 1} (file line {row + 2}).",
            column=column,
            fix="replace it with a number or leave the cell empty (missing).",
        )
    return values.astype("float64")


# One format per date column, tried in this order; a column is read with the single group that
# parses all of its text cells (Excel cells that are already dates are taken as they are).
_DATE_GROUPS: dict[str, tuple[str, ...]] = {
    "ISO 8601 (2020-01-31 01:09:00)": ("ISO8601",),
    "year/month/day": ("%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M", "%Y/%m/%d"),
    "day/month/year": ("%d/%m/%Y %H:%M:%S", "%d/%m/%Y %H:%M", "%d/%m/%Y", "%d.%m.%Y %H:%M:%S",
                       "%d.%m.%Y %H:%M", "%d.%m.%Y"),
    "month/day/year": ("%m/%d/%Y %H:%M:%S", "%m/%d/%Y %H:%M", "%m/%d/%Y"),
}  # fmt: skip
# TJH's records run from January to February 2020; a date outside this window is a typo or a
# wrong format, never a lab report of this cohort.
TJH_DATE_WINDOW = (pd.Timestamp("2019-01-01"), pd.Timestamp("2022-12-31 23:59:59"))
_FIX_DATES = "write dates as YYYY-MM-DD HH:MM:SS (e.g. 2020-01-31 01:09:00)"


def _parse_group(text: pd.Series, formats: tuple[str, ...]) -> pd.Series:
    parsed = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns]")
    for fmt in formats:
        missing = parsed.isna()
        if not missing.any():
            break
        parsed[missing] = pd.to_datetime(text[missing], format=fmt, errors="coerce")
    return parsed


def _to_datetime(path: Path, frame: pd.DataFrame, column: str) -> pd.Series:
    """One explicit format per column: never a cell-by-cell guess.

    pandas' ``format="mixed"`` reads ``02/01/2020`` month first and ``31/01/2020`` day first in
    one column, so a file can be silently wrong by a month. Here the text cells of a column must
    all fit one format group; a column that fits both day/month and month/day orders differently
    is refused with the first row where the two readings differ.
    """
    raw = frame[column]
    out = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns]")
    is_text = raw.map(lambda v: isinstance(v, str)) & raw.notna()
    others = raw[raw.notna() & ~is_text]
    if not others.empty:
        out[others.index] = pd.to_datetime(others, errors="coerce")
        row = _first_row(out[others.index].isna(), raw.index)
        if row is not None:
            raise InputDataError(
                path,
                f"unparseable date {raw.iloc[row]!r} at data row {row + 1}.",
                column=column,
                fix=_FIX_DATES + ".",
            )
    text = raw[is_text].str.strip()
    if not text.empty:
        readings = {name: _parse_group(text, f) for name, f in _DATE_GROUPS.items()}
        fitting = [name for name, parsed in readings.items() if parsed.notna().all()]
        if not fitting:
            best = max(readings, key=lambda name: int(readings[name].notna().sum()))
            row = _first_row(readings[best].isna(), raw.index)
            also = (
                f" (the column's other dates are {best}: one format per column)"
                if readings[best].notna().any()
                else ""
            )
            raise InputDataError(
                path,
                f"unparseable date {raw.iloc[row]!r} at data row {row + 1}{also}.",
                column=column,
                fix=_FIX_DATES + ".",
            )
        if {"day/month/year", "month/day/year"} <= set(fitting):
            day_first, month_first = readings["day/month/year"], readings["month/day/year"]
            row = _first_row(day_first != month_first, raw.index)
            if row is not None:
                at = raw.index[row]
                raise InputDataError(
                    path,
                    f"ambiguous date {raw.iloc[row]!r} at data row {row + 1}: every date of the "
                    "column reads as day/month/year and as month/day/year, and this one means "
                    f"{day_first[at]:%Y-%m-%d} or {month_first[at]:%Y-%m-%d}.",
                    column=column,
                    fix=_FIX_DATES + ", which has one reading.",
                )
        out[text.index] = readings[fitting[0]]
    row = _first_row((out < TJH_DATE_WINDOW[0]) | (out > TJH_DATE_WINDOW[1]))
    if row is not None:
        raise InputDataError(
            path,
            f"date {raw.iloc[row]!r} at data row {row + 1} lies outside "
            f"{TJH_DATE_WINDOW[0]:%Y-%m-%d}..{TJH_DATE_WINDOW[1]:%Y-%m-%d} (TJH's records are "
            "from January and February 2020).",
            column=column,
            fix="correct the date (a typo in the year, or a day/month swap).",
        )
    return out.astype("datetime64[us]")


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
    _check_dates_and_labs(path, out)
    out["age"] = out["age"].astype("float64")
    out["gender"] = out["gender"].astype("int64")
    out["outcome"] = out["outcome"].astype("int64")
    return out.reset_index(drop=True)


def _check_dates_and_labs(path: Path, table: pd.DataFrame) -> None:
    """Row-level facts a date or lab value must respect, each refused with its row."""
    if table["re_date"].isna().all():
        raise InputDataError(
            path,
            "no row has a report date, so no lab value can be placed in time (the cohort would "
            "be empty).",
            column="RE_DATE",
            fix="fill RE_DATE with each lab report's time, as in the TJH file.",
        )
    admitted, discharged = table["admission_time"], table["discharge_time"]
    _refuse_first_row(
        path,
        discharged < admitted,
        "Discharge time",
        lambda row: f"discharge {discharged.iloc[row]} before admission {admitted.iloc[row]}",
        "correct the admission or discharge time (a swapped pair or a typo).",
    )
    sentinel = f"{TJH_MISSING_SENTINEL:g}"
    for column in (c.strip() for c in TJH_LAB_COLUMNS):
        values = table[column]
        _refuse_first_row(
            path,
            (values < 0) & (values != TJH_MISSING_SENTINEL),
            column,
            lambda row, values=values: f"negative value {values.iloc[row]:g}",
            f"correct the value, or write {sentinel} or an empty cell for a missing result "
            f"(TJH's labs are never negative; only {sentinel} stands for no result).",
        )


def _refuse_first_row(
    path: Path, bad: pd.Series, column: str, problem: Callable[[int], str], fix: str
) -> None:
    """Refuse the table at the first row where ``bad`` holds, naming the row."""
    row = _first_row(bad)
    if row is not None:
        raise InputDataError(path, f"{problem(row)} at data row {row + 1}.", column=column, fix=fix)


def _check_values(path: Path, table: pd.DataFrame) -> None:
    checks = {
        "gender": (table["gender"].isin([1, 2]), "must be 1 (male) or 2 (female)"),
        "outcome": (table["outcome"].isin([0, 1]), "must be 0 (survived) or 1 (died)"),
        "age": (table["age"].between(0, 120), "must be an age in years between 0 and 120"),
    }
    for column, (ok, expected) in checks.items():
        row = _first_row(~ok)
        if row is not None:
            value = table[column].iloc[row]
            missing = pd.isna(value)
            raise InputDataError(
                path,
                f"{'missing value' if missing else f'impossible value {value:g}'} at data row "
                f"{row + 1}{' (the column is empty)' if table[column].isna().all() else ''}; "
                f"{expected}.",
                column=column,
                fix=f"{'fill' if missing else 'correct'} the value in the source file.",
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
