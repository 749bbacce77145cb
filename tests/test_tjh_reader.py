"""TJH reader: the real file's known counts, every kind of bad input, and the atomic snapshot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eagrl_pipeline.data.tjh import TJH_COLUMNS, TJH_LAB_COLUMNS, read_tjh, write_tjh_snapshot
from eagrl_pipeline.errors import InputDataError

TJH_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "tjh"
TJH_XLSX = TJH_DIR / "time_series_375_prerpocess_en.xlsx"
TJH_CSV = TJH_DIR / "csv" / "time_series_375_prerpocess_en.csv"


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real_xlsx() -> pd.DataFrame:
    if not TJH_XLSX.is_file():
        pytest.skip(f"real TJH data absent: {TJH_XLSX} not found (shared data not mounted)")
    return read_tjh(TJH_XLSX)


@pytest.fixture(scope="module")
def real_dated(real_xlsx: pd.DataFrame) -> pd.DataFrame:
    return real_xlsx.dropna(subset=["re_date"])


@pytest.mark.realdata
def test_real_xlsx_rows_and_patients(real_xlsx: pd.DataFrame) -> None:
    assert len(real_xlsx) == 6120
    assert real_xlsx["patient_id"].nunique() == 375
    assert sorted(real_xlsx["patient_id"].unique()) == list(range(1, 376))
    assert real_xlsx.shape[1] == 81


@pytest.mark.realdata
def test_real_xlsx_rows_without_re_date(real_xlsx: pd.DataFrame) -> None:
    missing = real_xlsx[real_xlsx["re_date"].isna()]
    assert len(missing) == 14
    # README: these rows carry no labs, and belong to exactly these patients.
    assert sorted(missing["patient_id"]) == [
        187, 189, 192, 197, 200, 201, 253, 268, 285, 289, 311, 347, 354, 359,
    ]  # fmt: skip
    assert missing[[c.strip() for c in TJH_LAB_COLUMNS]].isna().all().all()


@pytest.mark.realdata
def test_real_dated_patients_outcomes_and_days(real_dated: pd.DataFrame) -> None:
    outcome = real_dated.groupby("patient_id")["outcome"].first()
    assert len(outcome) == 361
    assert int((outcome == 0).sum()) == 195
    assert int((outcome == 1).sum()) == 166
    days = real_dated.assign(day=real_dated["re_date"].dt.normalize())[["patient_id", "day"]]
    assert len(days.drop_duplicates()) == 1704


@pytest.mark.realdata
def test_real_csv_copy_reads_to_identical_frame(real_xlsx: pd.DataFrame) -> None:
    if not TJH_CSV.is_file():
        pytest.skip(f"real TJH csv copy absent: {TJH_CSV} not found")
    from_csv = read_tjh(TJH_CSV)
    # assert_frame_equal treats NaN == NaN and checks dtypes and column names exactly.
    pd.testing.assert_frame_equal(from_csv, real_xlsx, check_exact=True)


@pytest.mark.realdata
def test_real_headers_stripped_and_typed(real_xlsx: pd.DataFrame) -> None:
    assert not [c for c in real_xlsx.columns if c != c.strip()]
    assert "Red blood cell distribution width" in real_xlsx.columns
    assert "platelet large cell ratio" in real_xlsx.columns
    assert "mean corpuscular hemoglobin" in real_xlsx.columns
    assert list(real_xlsx.columns[:7]) == [
        "patient_id", "re_date", "age", "gender", "admission_time", "discharge_time", "outcome",
    ]  # fmt: skip
    assert set(real_xlsx["gender"].unique()) == {1, 2}
    assert real_xlsx.groupby("patient_id")["gender"].first().value_counts().to_dict() == {
        1: 224,
        2: 151,
    }
    assert str(real_xlsx["patient_id"].dtype) == "int64"
    assert str(real_xlsx["re_date"].dtype) == "datetime64[us]"
    assert all(str(real_xlsx[c.strip()].dtype) == "float64" for c in TJH_LAB_COLUMNS)


# --------------------------------------------------------------------------- small files

LAB_NAMES = [c.strip() for c in TJH_LAB_COLUMNS]


def _valid_frame() -> pd.DataFrame:
    """Three patients (2, 2 and 1 rows), TJH layout, everything as text like a CSV export."""
    base = {c: "" for c in TJH_COLUMNS}
    rows = []
    spec = [
        # id, re_date, age, gender, admission, discharge, outcome, hemoglobin, albumin
        ("1", "2020-01-31 01:09:00", "73", "1", "2020-01-30 22:12:00", "2020-02-17 12:40:00",
         "0", "136", "36.2"),
        ("", "2020-02-02 10:00:00", "73", "1", "2020-01-30 22:12:00", "2020-02-17 12:40:00",
         "0", "", "35.0"),
        ("2", "2020-02-01 08:00:00", "61", "2", "2020-02-01 07:00:00", "2020-02-10 09:00:00",
         "1", "120.5", ""),
        ("", "", "61", "2", "2020-02-01 07:00:00", "2020-02-10 09:00:00", "1", "", ""),
        ("3", "2020-02-05 09:30:00", "45", "1", "2020-02-04 20:00:00", "2020-02-20 10:00:00",
         "0", "142", "40"),
    ]  # fmt: skip
    for pid, re_date, age, gender, adm, dis, outcome, hb, alb in spec:
        row = dict(base)
        row.update(
            {
                "PATIENT_ID": pid,
                "RE_DATE": re_date,
                "age": age,
                "gender": gender,
                "Admission time": adm,
                "Discharge time": dis,
                "outcome": outcome,
                "hemoglobin": hb,
                "albumin": alb,
            }
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=list(TJH_COLUMNS), dtype=str)


def _write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def _assert_error(exc: pytest.ExceptionInfo[InputDataError], path: Path, column=None) -> str:
    message = str(exc.value)
    assert str(path) in message
    assert "Fix:" in message
    if column is not None:
        assert exc.value.column == column
        assert f"column {column!r}" in message
    return message


def test_valid_small_csv_reads(tmp_path: Path) -> None:
    table = read_tjh(_write(_valid_frame(), tmp_path / "tjh.csv"))
    assert table["patient_id"].tolist() == [1, 1, 2, 2, 3]
    assert table["age"].tolist() == [73.0, 73.0, 61.0, 61.0, 45.0]
    assert table["gender"].tolist() == [1, 1, 2, 2, 1]
    assert table["outcome"].tolist() == [0, 0, 1, 1, 0]
    assert table["re_date"].iloc[0] == pd.Timestamp("2020-01-31 01:09:00")
    assert pd.isna(table["re_date"].iloc[3])
    np.testing.assert_array_equal(table["hemoglobin"], [136.0, np.nan, 120.5, np.nan, 142.0])
    np.testing.assert_array_equal(table["albumin"], [36.2, 35.0, np.nan, np.nan, 40.0])
    assert list(table.columns[7:]) == LAB_NAMES
    assert table[[c for c in LAB_NAMES if c not in ("hemoglobin", "albumin")]].isna().all().all()


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.csv"
    with pytest.raises(InputDataError, match="file not found") as exc:
        read_tjh(path)
    _assert_error(exc, path)


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "tjh.txt"
    _valid_frame().to_csv(path, index=False)
    with pytest.raises(InputDataError, match=r"unsupported file type '\.txt'") as exc:
        read_tjh(path)
    _assert_error(exc, path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "tjh.csv"
    path.write_bytes(b"")
    with pytest.raises(InputDataError, match="empty") as exc:
        read_tjh(path)
    _assert_error(exc, path)


def test_header_only_csv(tmp_path: Path) -> None:
    path = _write(_valid_frame().iloc[:0], tmp_path / "tjh.csv")
    with pytest.raises(InputDataError, match="header but no rows") as exc:
        read_tjh(path)
    _assert_error(exc, path)


def test_missing_column(tmp_path: Path) -> None:
    path = _write(_valid_frame().drop(columns=["albumin"]), tmp_path / "tjh.csv")
    with pytest.raises(InputDataError, match="required column is missing") as exc:
        read_tjh(path)
    _assert_error(exc, path, "albumin")


def test_column_twice_is_named_with_a_fix(tmp_path: Path) -> None:
    path = _write(_valid_frame().rename(columns={"hemoglobin": " albumin"}), tmp_path / "tjh.csv")
    with pytest.raises(InputDataError, match="appears more than once") as exc:
        read_tjh(path)
    assert "rename or delete the other" in _assert_error(exc, path, "albumin")


def test_renamed_column_suggests_rename(tmp_path: Path) -> None:
    path = _write(_valid_frame().rename(columns={"albumin": "albumine"}), tmp_path / "tjh.csv")
    with pytest.raises(InputDataError) as exc:
        read_tjh(path)
    message = _assert_error(exc, path, "albumin")
    assert "'albumine' is present: was it renamed?" in message


def test_non_numeric_lab_value(tmp_path: Path) -> None:
    frame = _valid_frame()
    frame.loc[2, "hemoglobin"] = "abc"
    path = _write(frame, tmp_path / "tjh.csv")
    with pytest.raises(InputDataError) as exc:
        read_tjh(path)
    message = _assert_error(exc, path, "hemoglobin")
    assert "'abc'" in message
    assert "data row 3" in message
    assert "file line 4" in message


def test_unparseable_re_date(tmp_path: Path) -> None:
    frame = _valid_frame()
    frame.loc[1, "RE_DATE"] = "not a date"
    path = _write(frame, tmp_path / "tjh.csv")
    with pytest.raises(InputDataError, match="unparseable date 'not a date'") as exc:
        read_tjh(path)
    message = _assert_error(exc, path, "RE_DATE")
    assert "data row 2" in message


def test_duplicate_patient_id(tmp_path: Path) -> None:
    frame = _valid_frame()
    frame.loc[4, "PATIENT_ID"] = "1"  # patient 3's block now starts with id 1 again
    path = _write(frame, tmp_path / "tjh.csv")
    with pytest.raises(InputDataError, match="duplicate patient id 1") as exc:
        read_tjh(path)
    message = _assert_error(exc, path, "PATIENT_ID")
    assert "data row 5" in message


def test_first_row_without_patient_id(tmp_path: Path) -> None:
    frame = _valid_frame()
    frame.loc[0, "PATIENT_ID"] = ""
    path = _write(frame, tmp_path / "tjh.csv")
    with pytest.raises(InputDataError, match="first row has no patient id") as exc:
        read_tjh(path)
    _assert_error(exc, path, "PATIENT_ID")


IMPOSSIBLE = [
    ("gender", "3", "at data row 3; must be 1 (male) or 2 (female)"),
    ("outcome", "2", "at data row 3; must be 0 (survived) or 1 (died)"),
]


@pytest.mark.parametrize(("column", "value", "expected"), IMPOSSIBLE)
def test_impossible_static_value(tmp_path: Path, column: str, value: str, expected: str) -> None:
    frame = _valid_frame()
    frame.loc[2, column] = value
    path = _write(frame, tmp_path / "tjh.csv")
    with pytest.raises(InputDataError, match="impossible value") as exc:
        read_tjh(path)
    message = _assert_error(exc, path, column)
    assert expected in message


@pytest.mark.parametrize(("column", "value", "expected"), IMPOSSIBLE)
def test_impossible_static_value_shows_plain_number(
    tmp_path: Path, column: str, value: str, expected: str
) -> None:
    frame = _valid_frame()
    frame.loc[2, column] = value
    path = _write(frame, tmp_path / "tjh.csv")
    with pytest.raises(InputDataError) as exc:
        read_tjh(path)
    message = str(exc.value)
    assert "np.float64" not in message
    assert f"impossible value {value} " in message or f"impossible value {value}.0 " in message


@pytest.mark.parametrize("column", ["age", "gender", "outcome"])
def test_an_empty_required_column_is_named_as_empty(tmp_path: Path, column: str) -> None:
    frame = _valid_frame()
    frame[column] = ""
    path = _write(frame, tmp_path / "tjh.csv")
    with pytest.raises(InputDataError, match=r"missing value at data row 1 \(the column is empty"):
        read_tjh(path)


def test_age_varying_within_patient(tmp_path: Path) -> None:
    frame = _valid_frame()
    frame.loc[1, "age"] = "74"  # patient 1: 73 then 74
    path = _write(frame, tmp_path / "tjh.csv")
    with pytest.raises(InputDataError, match="patient 1 has more than one value") as exc:
        read_tjh(path)
    _assert_error(exc, path, "age")


# --------------------------------------------------------------------------- snapshot


def test_write_tjh_snapshot_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = read_tjh(_write(_valid_frame(), tmp_path / "tjh.csv"))
    out_dir = tmp_path / "snapshot"
    target = out_dir / "raw_tjh.parquet"
    assert write_tjh_snapshot(table, target) == target
    good_bytes = target.read_bytes()
    pd.testing.assert_frame_equal(pd.read_parquet(target), table)

    def crash(self: pd.DataFrame, path, *args, **kwargs) -> None:
        Path(path).write_bytes(b"PAR1 half-written")  # partial output, then the crash
        raise RuntimeError("disk full mid-write")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        write_tjh_snapshot(table.iloc[:2], target)

    assert target.read_bytes() == good_bytes
    assert sorted(p.name for p in out_dir.iterdir()) == ["raw_tjh.parquet"]


def test_fractional_patient_id_is_rejected(tmp_path: Path) -> None:
    frame = _valid_frame()
    frame.loc[2, "PATIENT_ID"] = "2.5"
    path = _write(frame, tmp_path / "tjh.csv")
    with pytest.raises(InputDataError, match="ids must be whole numbers") as exc:
        read_tjh(path)
    assert str(path) in str(exc.value)
    assert exc.value.column == "PATIENT_ID"


def test_fractional_patient_id_message_has_fix(tmp_path: Path) -> None:
    frame = _valid_frame()
    frame.loc[2, "PATIENT_ID"] = "2.5"
    path = _write(frame, tmp_path / "tjh.csv")
    with pytest.raises(InputDataError) as exc:
        read_tjh(path)
    assert "Fix:" in str(exc.value)


def _with_re_dates(dates: list[str]) -> pd.DataFrame:
    frame = _valid_frame()
    frame["RE_DATE"] = dates
    return frame


def test_day_first_dates_read_with_one_format_for_the_whole_column(tmp_path: Path) -> None:
    """`format="mixed"` read 02/01/2020 as 1 February next to 31/01/2020 as 31 January."""
    dates = ["31/01/2020 01:09", "02/02/2020 10:00", "01/02/2020 08:00", "", "05/02/2020 09:30"]
    table = read_tjh(_write(_with_re_dates(dates), tmp_path / "tjh.csv"))
    assert table["re_date"].dropna().dt.strftime("%Y-%m-%d").tolist() == [
        "2020-01-31",
        "2020-02-02",
        "2020-02-01",
        "2020-02-05",
    ]


def test_ambiguous_day_month_dates_are_refused_with_the_row(tmp_path: Path) -> None:
    dates = ["01/02/2020 01:09", "02/02/2020 10:00", "02/01/2020 08:00", "", "05/02/2020 09:30"]
    path = _write(_with_re_dates(dates), tmp_path / "tjh.csv")
    with pytest.raises(InputDataError, match="ambiguous date '01/02/2020 01:09'") as exc:
        read_tjh(path)
    message = _assert_error(exc, path, "RE_DATE")
    assert "data row 1" in message and "2020-02-01 or 2020-01-02" in message


def test_one_column_in_two_formats_is_refused(tmp_path: Path) -> None:
    dates = ["2020-01-31 01:09:00", "02/02/2020 10:00", "2020-02-01 08:00:00", "", "2020-02-05"]
    path = _write(_with_re_dates(dates), tmp_path / "tjh.csv")
    with pytest.raises(InputDataError, match="one format per column") as exc:
        read_tjh(path)
    assert "data row 2" in _assert_error(exc, path, "RE_DATE")


@pytest.mark.parametrize("date", ["2099-02-01 08:00:00", "1900-02-01 08:00:00"])
def test_dates_outside_the_plausible_window_are_refused(tmp_path: Path, date: str) -> None:
    frame = _valid_frame()
    frame.loc[2, "RE_DATE"] = date
    path = _write(frame, tmp_path / "tjh.csv")
    with pytest.raises(InputDataError, match=r"lies outside 2019-01-01\.\.2022-12-31") as exc:
        read_tjh(path)
    assert "data row 3" in _assert_error(exc, path, "RE_DATE")


def test_discharge_before_admission_is_refused(tmp_path: Path) -> None:
    frame = _valid_frame()
    frame.loc[[2, 3], "Discharge time"] = "2020-01-25 09:00:00"  # patient 2 admitted 2020-02-01
    path = _write(frame, tmp_path / "tjh.csv")
    with pytest.raises(InputDataError, match="discharge 2020-01-25 09:00:00 before admission") as e:
        read_tjh(path)
    assert "data row 3" in _assert_error(e, path, "Discharge time")


def test_only_minus_one_is_the_missing_sentinel(tmp_path: Path) -> None:
    frame = _valid_frame()
    frame.loc[0, "hemoglobin"] = "-1"
    assert read_tjh(_write(frame, tmp_path / "ok.csv"))["hemoglobin"].iloc[0] == -1.0
    frame.loc[2, "albumin"] = "-3.5"
    path = _write(frame, tmp_path / "tjh.csv")
    with pytest.raises(InputDataError, match=r"negative value -3\.5 at data row 3") as exc:
        read_tjh(path)
    _assert_error(exc, path, "albumin")


def test_tjh_labs_are_non_negative_in_the_dictionary() -> None:
    """The reader refuses negative TJH labs; the dictionary's valid ranges must agree."""
    dictionary = pd.read_csv(
        Path(__file__).resolve().parents[1] / "dbt_project" / "seeds" / "feature_dictionary.csv"
    )
    labs = dictionary[(dictionary["dataset"] == "tjh") & (dictionary["kind"] == "lab")]
    assert len(labs) == 73 and (labs["valid_min"] >= 0).all()


def test_no_report_date_at_all_is_refused(tmp_path: Path) -> None:
    path = _write(_with_re_dates([""] * 5), tmp_path / "tjh.csv")
    with pytest.raises(InputDataError, match="no row has a report date") as exc:
        read_tjh(path)
    _assert_error(exc, path, "RE_DATE")


def test_csv_renamed_to_xlsx_and_empty_xlsx_are_named(tmp_path: Path) -> None:
    renamed = _write(_valid_frame(), tmp_path / "tjh.xlsx")
    with pytest.raises(InputDataError, match=r"is not an Excel workbook .*a CSV renamed") as exc:
        read_tjh(renamed)
    _assert_error(exc, renamed)
    empty = tmp_path / "empty.xlsx"
    empty.write_bytes(b"")
    with pytest.raises(InputDataError, match=r"the file is empty \(0 bytes\)") as exc:
        read_tjh(empty)
    _assert_error(exc, empty)


def test_table_on_a_later_sheet_is_named(tmp_path: Path) -> None:
    path = tmp_path / "tjh.xlsx"
    with pd.ExcelWriter(path) as writer:
        about = pd.DataFrame({"notes": ["exported 2020-03-01"]})
        about.to_excel(writer, sheet_name="About", index=False)
        _valid_frame().to_excel(writer, sheet_name="Data", index=False)
    with pytest.raises(InputDataError, match="the TJH table is on sheet 'Data'") as exc:
        read_tjh(path)
    assert "move sheet 'Data' to the front" in _assert_error(exc, path)


def test_utf8_bom_csv_reads_like_the_plain_one(tmp_path: Path) -> None:
    plain = read_tjh(_write(_valid_frame(), tmp_path / "plain.csv"))
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + (tmp_path / "plain.csv").read_bytes())
    pd.testing.assert_frame_equal(read_tjh(bom), plain)


@pytest.mark.parametrize(
    ("encode", "match"),
    [
        (
            lambda text: text.replace("hemoglobin", "血红蛋白", 1).encode("gbk"),
            "not UTF-8 text .*it reads as GBK",
        ),
        (
            lambda text: text.replace("hemoglobin", "Hämoglobin", 1).encode("cp1252", "replace"),
            "not UTF-8 text .*it reads as Windows-1252",
        ),
        (lambda text: text.encode("utf-16"), "is UTF-16 text"),
        (lambda text: text.replace(",", ";").encode(), "separated by semicolons"),
    ],
    ids=["gbk", "windows-1252", "utf16", "semicolons"],
)
def test_csv_encoding_and_delimiter_are_named(tmp_path: Path, encode, match: str) -> None:
    text = _valid_frame().to_csv(index=False)
    path = tmp_path / "tjh.csv"
    path.write_bytes(encode(text))
    with pytest.raises(InputDataError, match=match) as exc:
        read_tjh(path)
    message = _assert_error(exc, path)
    assert "required column is missing" not in message
