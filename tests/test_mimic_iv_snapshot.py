"""MIMIC-IV snapshot on a hand-made raw folder in the official hosp/ + icu/ csv.gz layout."""

from __future__ import annotations

import csv
import gzip
import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from eagrl_pipeline.data.fingerprints import content_fingerprint
from eagrl_pipeline.data.mimic_iv import TABLES, snapshot_mimic_iv
from eagrl_pipeline.errors import InputDataError

# Column lists exactly as in MIMIC_IV_SCHEMA.md.
COLUMNS: dict[str, list[str]] = {
    "hosp/patients": ["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group",
                      "dod"],
    "hosp/admissions": [
        "subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "admission_type",
        "admit_provider_id", "admission_location", "discharge_location", "insurance", "language",
        "marital_status", "race", "edregtime", "edouttime", "hospital_expire_flag",
    ],
    "icu/icustays": ["subject_id", "hadm_id", "stay_id", "first_careunit", "last_careunit",
                     "intime", "outtime", "los"],
    "icu/chartevents": ["subject_id", "hadm_id", "stay_id", "caregiver_id", "charttime",
                        "storetime", "itemid", "value", "valuenum", "valueuom", "warning"],
    "icu/d_items": ["itemid", "label", "abbreviation", "linksto", "category", "unitname",
                    "param_type", "lownormalvalue", "highnormalvalue"],
    "hosp/labevents": [
        "labevent_id", "subject_id", "hadm_id", "specimen_id", "itemid", "order_provider_id",
        "charttime", "storetime", "value", "valuenum", "valueuom", "ref_range_lower",
        "ref_range_upper", "flag", "priority", "comments",
    ],
    "hosp/d_labitems": ["itemid", "label", "fluid", "category"],
}  # fmt: skip

ROWS: dict[str, list[list[str]]] = {
    "hosp/patients": [
        ["10000001", "F", "64", "2150", "2011 - 2013", "2152-03-01"],
        ["10000002", "M", "45", "2160", "2014 - 2016", ""],
    ],
    "hosp/admissions": [
        ["10000001", "20000001", "2150-01-01 10:00:00", "2150-01-10 12:30:00", "", "URGENT", "P1",
         "EMERGENCY ROOM", "HOME", "Medicare", "ENGLISH", "MARRIED", "WHITE",
         "2150-01-01 08:00:00", "2150-01-01 10:00:00", "0"],
        ["10000002", "20000002", "2160-05-02 00:00:00", "2160-05-04 00:00:00",
         "2160-05-04 00:00:00", "EW EMER.", "P2", "EMERGENCY ROOM", "DIED", "Medicaid", "ENGLISH",
         "", "BLACK/CAPE VERDEAN", "", "", "1"],
    ],
    "icu/icustays": [
        ["10000001", "20000001", "30000001", "MICU", "MICU", "2150-01-01 11:00:00",
         "2150-01-03 11:00:00", "2.0"],
        ["10000002", "20000002", "30000002", "SICU", "SICU", "2160-05-02 01:00:00",
         "2160-05-03 13:00:00", "1.5"],
    ],
    "icu/chartevents": [
        ["10000001", "20000001", "30000001", "", "2150-01-01 12:00:00", "2150-01-01 12:05:00",
         "220045", "88", "88", "bpm", "0"],
        ["10000001", "20000001", "30000001", "5", "2150-01-01 13:00:00", "", "220739",
         "4 Spontaneously", "4", "", "0"],
        ["10000002", "20000002", "30000002", "", "2160-05-02 02:00:00", "", "220045", "110", "",
         "bpm", ""],
    ],
    "icu/d_items": [
        ["220045", "Heart Rate", "HR", "chartevents", "Routine Vital Signs", "bpm", "Numeric",
         "", ""],
        ["220739", "GCS - Eye Opening", "GCS - Eye Opening", "chartevents", "Neurological", "",
         "Text", "", ""],
    ],
    "hosp/labevents": [
        ["1", "10000001", "20000001", "900", "50912", "P1", "2150-01-01 06:00:00",
         "2150-01-01 07:00:00", "1.1", "1.1", "mg/dL", "0.5", "1.2", "", "ROUTINE",
         "New reference range, as of ___."],
        ["2", "10000001", "", "901", "50912", "", "2150-01-05 06:00:00", "", "1.4", "1.4",
         "mg/dL", "0.5", "1.2", "abnormal", "STAT", ""],
        ["3", "10000002", "20000002", "902", "50983", "", "2160-05-02 03:00:00", "", "140", "140",
         "mEq/L", "133", "145", "", "ROUTINE", ""],
    ],
    "hosp/d_labitems": [
        ["50912", "Creatinine", "Blood", "Chemistry"],
        ["50983", "Sodium", "Blood", "Chemistry"],
    ],
}  # fmt: skip


def _write_gz(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _build(root: Path, skip: tuple[str, ...] = ()) -> Path:
    for table, header in COLUMNS.items():
        if table not in skip:
            _write_gz(root / f"{table}.csv.gz", header, ROWS[table])
    return root


def _replace_column(root: Path, table: str, column: str, row: int, value: str) -> Path:
    header = COLUMNS[table]
    rows = [list(r) for r in ROWS[table]]
    rows[row][header.index(column)] = value
    path = root / f"{table}.csv.gz"
    _write_gz(path, header, rows)
    return path


def _types(path: Path) -> dict[str, str]:
    rows = duckdb.execute(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()
    return {name: kind for name, kind, *_ in rows}


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    return _build(tmp_path / "mimic-iv-3.1")


def _snapshot(root: Path, out: Path, feature_set: str = "vitals_labs") -> dict[str, int]:
    return snapshot_mimic_iv(
        root, out, feature_set=feature_set, chart_itemids=[220045], lab_itemids=[50912]
    )


def test_snapshot_writes_seven_typed_tables(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    counts = _snapshot(raw, out)
    assert counts == {
        "patients": 2, "admissions": 2, "icustays": 2, "chartevents": 2, "labevents": 2,
        "d_items": 2, "d_labitems": 2,
    }  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{t}.parquet" for t in TABLES)
    for table, spec in TABLES.items():
        assert _types(out / f"{table}.parquet") == spec.columns, table


def test_snapshot_values_nulls_and_pandas_dtypes(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _snapshot(raw, out)
    patients = pd.read_parquet(out / "patients.parquet").sort_values("subject_id")
    assert str(patients["subject_id"].dtype) == "int64"
    assert str(patients["anchor_age"].dtype) == "int32"
    assert patients["anchor_age"].tolist() == [64, 45]
    assert str(patients["dod"].iloc[0]) == "2152-03-01"
    assert pd.isna(patients["dod"].iloc[1])

    admissions = pd.read_parquet(out / "admissions.parquet").sort_values("hadm_id")
    for column in ("admittime", "dischtime", "deathtime"):
        assert pd.api.types.is_datetime64_any_dtype(admissions[column]), column
    assert admissions["admittime"].iloc[0] == pd.Timestamp("2150-01-01 10:00:00")
    assert pd.isna(admissions["deathtime"].iloc[0])
    assert admissions["deathtime"].iloc[1] == pd.Timestamp("2160-05-04 00:00:00")
    assert admissions["hospital_expire_flag"].tolist() == [0, 1]

    stays = pd.read_parquet(out / "icustays.parquet").sort_values("stay_id")
    assert str(stays["stay_id"].dtype) == "int64"
    assert stays["los"].tolist() == [2.0, 1.5]
    assert stays["outtime"].iloc[1] == pd.Timestamp("2160-05-03 13:00:00")


def test_snapshot_keeps_only_listed_itemids(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _snapshot(raw, out)
    chart = pd.read_parquet(out / "chartevents.parquet").sort_values("charttime")
    assert chart["itemid"].tolist() == [220045, 220045]
    assert chart["value"].tolist() == ["88", "110"]
    assert chart["valuenum"].iloc[0] == 88.0
    assert pd.isna(chart["valuenum"].iloc[1])  # value present, valuenum NULL
    assert pd.api.types.is_datetime64_any_dtype(chart["charttime"])

    labs = duckdb.execute(
        f"SELECT itemid, hadm_id, valuenum FROM read_parquet('{out / 'labevents.parquet'}') "
        "ORDER BY charttime"
    ).fetchall()
    assert labs == [(50912, 20000001, 1.1), (50912, None, 1.4)]  # outpatient lab: NULL hadm_id
    # Dictionaries are not filtered.
    assert sorted(pd.read_parquet(out / "d_items.parquet")["itemid"]) == [220045, 220739]
    assert sorted(pd.read_parquet(out / "d_labitems.parquet")["itemid"]) == [50912, 50983]


def test_extra_unknown_columns_are_ignored(raw: Path, tmp_path: Path) -> None:
    header = [*COLUMNS["icu/chartevents"], "extra_v31_column"]
    rows = [[*row, "whatever, with comma"] for row in ROWS["icu/chartevents"]]
    _write_gz(raw / "icu/chartevents.csv.gz", header, rows)
    # And one of the schema's own columns dropped that the pipeline does not read (v2.2 vs v3.1).
    _write_gz(
        raw / "hosp/patients.csv.gz",
        [c for c in COLUMNS["hosp/patients"] if c != "anchor_year_group"],
        [r[:4] + r[5:] for r in ROWS["hosp/patients"]],
    )
    out = tmp_path / "out"
    counts = _snapshot(raw, out)
    assert counts["chartevents"] == 2
    assert counts["patients"] == 2
    assert _types(out / "chartevents.parquet") == TABLES["chartevents"].columns
    assert _types(out / "patients.parquet") == TABLES["patients"].columns


def test_vitals_works_without_labevents(raw: Path, tmp_path: Path) -> None:
    (raw / "hosp/labevents.csv.gz").unlink()
    out = tmp_path / "out"
    counts = _snapshot(raw, out, feature_set="vitals")
    assert counts["labevents"] == 0
    assert counts["d_labitems"] == 0  # not part of 'vitals': written empty although present
    assert counts["chartevents"] == 2
    for table in ("labevents", "d_labitems"):
        path = out / f"{table}.parquet"
        assert _types(path) == TABLES[table].columns
        assert len(pd.read_parquet(path)) == 0


def test_vitals_labs_without_labevents_names_file_and_alternative(
    raw: Path, tmp_path: Path
) -> None:
    (raw / "hosp/labevents.csv.gz").unlink()
    with pytest.raises(InputDataError) as exc:
        _snapshot(raw, tmp_path / "out")
    message = str(exc.value)
    assert str(raw / "hosp/labevents.csv.gz") in message
    assert "needs hosp/labevents.csv.gz" in message
    assert "EAGRL_MIMIC_IV_FEATURE_SET=vitals" in message and "works without it" in message
    assert "Fix:" in message


def test_column_twice_is_named_with_a_fix(raw: Path, tmp_path: Path) -> None:
    header = COLUMNS["hosp/patients"]
    path = raw / "hosp/patients.csv.gz"
    _write_gz(path, [*header, "dod"], [[*r, r[-1]] for r in ROWS["hosp/patients"]])
    with pytest.raises(InputDataError, match="appears more than once") as exc:
        _snapshot(raw, tmp_path / "out")
    assert exc.value.column == "dod" and str(path) in str(exc.value)
    assert "Fix: keep one column named 'dod'" in str(exc.value)


def test_missing_column_is_named(raw: Path, tmp_path: Path) -> None:
    header = COLUMNS["icu/chartevents"]
    keep = [i for i, c in enumerate(header) if c != "valuenum"]
    path = raw / "icu/chartevents.csv.gz"
    _write_gz(
        path, [header[i] for i in keep], [[r[i] for i in keep] for r in ROWS["icu/chartevents"]]
    )
    with pytest.raises(InputDataError, match="required column is missing") as exc:
        _snapshot(raw, tmp_path / "out")
    assert exc.value.column == "valuenum"
    assert str(path) in str(exc.value)
    assert "column 'valuenum'" in str(exc.value)
    assert "Fix:" in str(exc.value)


@pytest.mark.parametrize(
    ("table", "column", "row", "value", "expected_type"),
    [
        ("icu/chartevents", "valuenum", 1, "abc", "DOUBLE"),
        ("icu/chartevents", "charttime", 0, "2150-13-45 99:00:00", "TIMESTAMP"),
        ("hosp/admissions", "hadm_id", 1, "H20000002", "BIGINT"),
    ],
)
def test_value_not_fitting_type_names_file_and_column(
    raw: Path, tmp_path: Path, table: str, column: str, row: int, value: str, expected_type: str
) -> None:
    path = _replace_column(raw, table, column, row, value)
    out = tmp_path / "out"
    with pytest.raises(InputDataError) as exc:
        _snapshot(raw, out)
    message = str(exc.value)
    assert str(path) in message
    assert exc.value.column == column
    assert f"column {column!r}" in message
    assert f"(expected {expected_type})" in message
    assert "Fix:" in message
    # The failed snapshot (the first one here) leaves neither output nor temporary files behind.
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def _gz_bytes(text: str, encoding: str = "utf-8") -> bytes:
    return gzip.compress(text.encode(encoding))


def _patients_text(delimiter: str = ",") -> str:
    lines = [COLUMNS["hosp/patients"], *ROWS["hosp/patients"]]
    return "".join(delimiter.join(line) + "\n" for line in lines)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "the file is empty"),
        (gzip.compress(b""), "the file is empty"),
        (gzip.compress(b"\n"), "the file is empty"),
        (b"subject_id,gender\n", "not a readable gzip file"),
        (_gz_bytes(_patients_text(), "utf-16"), "is UTF-16 text"),
        (_gz_bytes(_patients_text().replace("gender", "性别"), "gbk"), "UTF-8 .*reads as GBK"),
        (_gz_bytes(_patients_text(";")), "separated by semicolons"),
        (_gz_bytes(_patients_text("\t")), "separated by tabs"),
        (_gz_bytes(_patients_text())[:-12], "not a complete gzip file"),
        (_gz_bytes(_patients_text() + "10000003,F,50,2150\n"), "a row has 4 fields where the "),
    ],
    ids=[
        "zero-bytes", "empty-gzip", "blank-line", "not-gzip",
        "utf16", "gbk", "semicolons", "tabs", "truncated-gzip", "ragged-row",
    ],
)  # fmt: skip
def test_empty_or_unreadable_file_is_diagnosed_as_what_it_is(
    raw: Path, tmp_path: Path, content: bytes, match: str
) -> None:
    """An encoding, delimiter, cut gzip or ragged row used to read as a renamed column or as
    'a value does not fit its column type'."""
    path = raw / "hosp/patients.csv.gz"
    path.write_bytes(content)
    with pytest.raises(InputDataError, match=match) as exc:
        _snapshot(raw, tmp_path / "out")
    assert str(path) in str(exc.value)
    assert "does not fit its column type" not in str(exc.value)


def test_header_only_file_raises(raw: Path, tmp_path: Path) -> None:
    path = raw / "hosp/admissions.csv.gz"
    _write_gz(path, COLUMNS["hosp/admissions"], [])
    with pytest.raises(InputDataError, match="has a header but no rows") as exc:
        _snapshot(raw, tmp_path / "out")
    assert str(path) in str(exc.value)


def test_wrong_root_folder(tmp_path: Path) -> None:
    root = tmp_path / "not-mimic"
    with pytest.raises(InputDataError, match="MIMIC-IV folder not found") as exc:
        _snapshot(root, tmp_path / "out")
    assert str(root) in str(exc.value)
    assert "Fix:" in str(exc.value)


def test_wrong_root_holding_no_tables(tmp_path: Path) -> None:
    root = tmp_path / "empty-root"
    root.mkdir()
    with pytest.raises(InputDataError, match="missing") as exc:
        _snapshot(root, tmp_path / "out")
    assert str(root / "hosp/patients.csv.gz") in str(exc.value)


def test_unknown_feature_set(raw: Path, tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="unknown feature_set 'labs_only'") as exc:
        _snapshot(raw, tmp_path / "out", feature_set="labs_only")
    assert exc.value.column == "feature_set"
    assert "raw_mimic_iv config" in str(exc.value)
    assert "'vitals'" in str(exc.value) and "'vitals_labs'" in str(exc.value)


def test_fingerprint_changes_with_one_byte_and_is_stable(raw: Path, tmp_path: Path) -> None:
    files = sorted(raw.rglob("*.csv.gz"))
    first = content_fingerprint(files, root=raw)
    assert content_fingerprint(files, root=raw) == first
    assert content_fingerprint(list(reversed(files)), root=raw) == first  # order does not matter
    # A byte-identical copy under another root has the same fingerprint (relative names).
    copy = tmp_path / "copy"
    shutil.copytree(raw, copy)
    assert content_fingerprint(sorted(copy.rglob("*.csv.gz")), root=copy) == first

    target = raw / "icu/chartevents.csv.gz"
    data = bytearray(target.read_bytes())
    data[-5] ^= 0x01
    target.write_bytes(bytes(data))
    changed = content_fingerprint(files, root=raw)
    assert changed != first
    data[-5] ^= 0x01
    target.write_bytes(bytes(data))
    assert content_fingerprint(files, root=raw) == first


def test_fingerprint_includes_names(raw: Path) -> None:
    files = sorted(raw.rglob("*.csv.gz"))
    first = content_fingerprint(files, root=raw)
    renamed = raw / "icu/chartevents_old.csv.gz"
    (raw / "icu/chartevents.csv.gz").rename(renamed)
    assert content_fingerprint(sorted(raw.rglob("*.csv.gz")), root=raw) != first


def test_quoted_comma_after_sniffer_sample(raw: Path, tmp_path: Path) -> None:
    template = ROWS["hosp/labevents"][1]
    rows = [[str(i), *template[1:]] for i in range(1, 25_001)]
    late = [str(25_001), *ROWS["hosp/labevents"][0][1:]]  # comments "New reference range, ..."
    rows.append(late)
    _write_gz(raw / "hosp/labevents.csv.gz", COLUMNS["hosp/labevents"], rows)
    counts = _snapshot(raw, tmp_path / "out")
    assert counts["labevents"] == 25_001


@pytest.mark.parametrize(
    "name",
    [
        "x': 'VARCHAR'}) TO 'pwned.csv' (FORMAT csv); SELECT ('",
        'valuenum"; DROP TABLE t; --',
        "first name",
        "1st",
    ],
)
def test_header_name_that_is_not_an_identifier_is_refused_before_any_sql(
    raw: Path, tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Header names reach read_csv(columns = ...): only plain identifiers may get there."""
    header = [*COLUMNS["icu/chartevents"], name]
    rows = [[*row, "1"] for row in ROWS["icu/chartevents"]]
    path = raw / "icu/chartevents.csv.gz"
    _write_gz(path, header, rows)
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(InputDataError, match="not a plain column name") as exc:
        _snapshot(raw, out)
    assert str(path) in str(exc.value)
    assert exc.value.column == name
    assert "Fix:" in str(exc.value)
    assert not (tmp_path / "pwned.csv").exists()
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "out" not in p.parts)
    assert after == [p for p in before if "out" not in p.parts]


def test_failed_snapshot_leaves_the_previous_one_whole(raw: Path, tmp_path: Path) -> None:
    """A second folder whose patients are fine but whose labevents are broken replaces nothing."""
    out = tmp_path / "out"
    _snapshot(raw, out)
    before = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    second = _build(tmp_path / "second")
    _write_gz(second / "hosp/patients.csv.gz", COLUMNS["hosp/patients"], ROWS["hosp/patients"][:1])
    _replace_column(second, "hosp/labevents", "valuenum", 0, "not a number")
    with pytest.raises(InputDataError):
        _snapshot(second, out)
    assert {p.name: p.read_bytes() for p in sorted(out.iterdir())} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mimic-iv-3.1", "out", "second"]


@pytest.mark.parametrize(
    ("table", "key", "value"),
    [
        ("hosp/patients", "subject_id", "10000001"),
        ("hosp/admissions", "hadm_id", "20000002"),
        ("icu/icustays", "stay_id", "30000001"),
        ("icu/d_items", "itemid", "220045"),
        ("hosp/d_labitems", "itemid", "50983"),
    ],
)
def test_duplicate_primary_key_is_refused_naming_file_key_and_value(
    raw: Path, tmp_path: Path, table: str, key: str, value: str
) -> None:
    out = tmp_path / "out"
    _snapshot(raw, out)
    before = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    rows = ROWS[table]
    duplicated = next(r for r in rows if r[COLUMNS[table].index(key)] == value)
    path = raw / f"{table}.csv.gz"
    _write_gz(path, COLUMNS[table], [*rows, duplicated])
    with pytest.raises(InputDataError, match=f"{key} {value} appears on 2 rows") as exc:
        _snapshot(raw, out)
    assert str(path) in str(exc.value) and exc.value.column == key and "Fix:" in str(exc.value)
    assert {p.name: p.read_bytes() for p in sorted(out.iterdir())} == before


def test_utf8_byte_order_mark_is_accepted(raw: Path, tmp_path: Path) -> None:
    _snapshot(raw, tmp_path / "plain")
    (raw / "hosp/patients.csv.gz").write_bytes(_gz_bytes("\ufeff" + _patients_text()))
    _snapshot(raw, tmp_path / "bom")
    plain = pd.read_parquet(tmp_path / "plain/patients.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "bom/patients.parquet"), plain)
