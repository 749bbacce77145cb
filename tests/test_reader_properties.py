"""Property-based: whatever a broken input looks like, the raw readers answer with the result of
a valid equivalent or the project's input error, never another exception, never a write outside
EAGRL_HOME, and the previous snapshot stays byte-identical after any failure.

CI runs a bounded number of examples; ``EAGRL_PROPERTY_EXAMPLES=3000`` runs a long search.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_mimic_iv_snapshot import COLUMNS, ROWS, _build

from eagrl_pipeline.data.mimic_iv import snapshot_mimic_iv
from eagrl_pipeline.data.tjh import TJH_COLUMNS, read_tjh, write_tjh_snapshot
from eagrl_pipeline.errors import InputDataError

EXAMPLES = int(os.environ.get("EAGRL_PROPERTY_EXAMPLES", "40"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 40,  # CI: the same examples every run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CELL_TEXT = st.text(max_size=12)
ENCODINGS = ("utf-8-sig", "utf-16", "gbk", "latin-1", "cp1252")


def _tjh_valid() -> pd.DataFrame:
    """Two patients in TJH's layout (the first with two reports), every cell as text."""
    rows = [
        ["1", "2020-01-31 01:09:00", "73", "1", "2020-01-30 22:12:00", "2020-02-17 12:40:00", "0"],
        ["", "2020-02-02 10:00:00", "73", "1", "2020-01-30 22:12:00", "2020-02-17 12:40:00", "0"],
        ["2", "2020-02-01 08:00:00", "61", "2", "2020-02-01 07:00:00", "2020-02-10 09:00:00", "1"],
    ]
    labs = {"hemoglobin": ["136", "", "120.5"], "albumin": ["36.2", "35", "-1"]}
    frame = pd.DataFrame("", index=range(3), columns=list(TJH_COLUMNS))
    frame[list(TJH_COLUMNS[:7])] = rows
    for column, values in labs.items():
        frame[column] = values
    return frame


def _files_outside(root: Path, home: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if home not in p.parents and p != home}


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# ---------------------------------------------------------------- TJH

TJH_MUTATIONS = st.one_of(
    st.tuples(st.just("cell"), st.integers(0, 2), st.integers(0, 10), CELL_TEXT),
    st.tuples(st.just("header"), st.integers(0, len(TJH_COLUMNS) - 1), CELL_TEXT),
    st.tuples(st.just("drop_column"), st.integers(0, len(TJH_COLUMNS) - 1)),
    st.tuples(st.just("encoding"), st.sampled_from(ENCODINGS)),
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0)),
    st.tuples(st.just("crlf")),
    st.tuples(st.just("bom")),
)
LAB_CELLS = ("hemoglobin", "albumin", "RE_DATE", "age", "gender", "outcome", "PATIENT_ID")


def _tjh_bytes(mutation: tuple) -> tuple[bytes, bool]:
    """The mutated file and whether it means the same as the valid one."""
    frame = _tjh_valid()
    kind = mutation[0]
    if kind == "cell":
        _, row, column, text = mutation
        names = [*LAB_CELLS, "Admission time", "Discharge time", "Urea", "eGFR"]
        frame.loc[row, names[column % len(names)]] = text
    elif kind == "header":
        frame = frame.rename(columns={TJH_COLUMNS[mutation[1]]: mutation[2]})
    elif kind == "drop_column":
        frame = frame.drop(columns=[TJH_COLUMNS[mutation[1]]])
    text = frame.to_csv(index=False, lineterminator="\n")
    if kind == "encoding":
        try:
            return text.encode(mutation[1]), mutation[1] == "utf-8-sig"
        except UnicodeEncodeError:
            return text.encode(mutation[1], errors="replace"), False
    data = text.encode()
    if kind == "truncate":
        return data[: int(len(data) * mutation[1])], mutation[1] == 1.0
    if kind == "crlf":
        return text.replace("\n", "\r\n").encode(), True
    if kind == "bom":
        return b"\xef\xbb\xbf" + data, True
    return data, False


@PROPERTY
@given(mutation=TJH_MUTATIONS)
def test_tjh_reader_answers_a_result_or_an_input_error(mutation: tuple) -> None:
    with tempfile.TemporaryDirectory(prefix="eagrl-prop-") as folder:
        root = Path(folder)
        home = root / "home"
        valid = root / "valid.csv"
        valid.write_bytes(_tjh_valid().to_csv(index=False, lineterminator="\n").encode())
        snapshot = write_tjh_snapshot(read_tjh(valid), home / "raw_tjh" / "lab_reports.parquet")
        before = snapshot.read_bytes()
        broken = root / "broken.csv"
        data, equivalent = _tjh_bytes(mutation)
        broken.write_bytes(data)
        outside = _files_outside(root, home)
        cwd = os.getcwd()
        os.chdir(root)
        try:
            table = read_tjh(broken)
        except InputDataError as exc:
            assert str(broken) in str(exc), exc
            table = None
        finally:
            os.chdir(cwd)
        if table is not None:
            if equivalent:
                pd.testing.assert_frame_equal(table, read_tjh(valid))
            write_tjh_snapshot(table, snapshot)
        else:
            assert not equivalent, f"a file meaning the same as the valid one was refused: {data!r}"
            assert snapshot.read_bytes() == before
        assert _files_outside(root, home) == outside


# ---------------------------------------------------------------- MIMIC-IV

MIMIC_TABLES = sorted(COLUMNS)
MIMIC_MUTATIONS = st.tuples(
    st.sampled_from(MIMIC_TABLES),
    st.one_of(
        st.tuples(st.just("cell"), st.integers(0, 2), st.integers(0, 15), CELL_TEXT),
        st.tuples(st.just("header"), st.integers(0, 15), CELL_TEXT),
        st.tuples(st.just("duplicate_row"), st.integers(0, 2)),
        st.tuples(st.just("encoding"), st.sampled_from(ENCODINGS)),
        st.tuples(st.just("delimiter"), st.sampled_from([";", "\t", "|"])),
        st.tuples(st.just("truncate_gzip"), st.floats(0.0, 0.999)),
        st.tuples(st.just("flip_byte"), st.floats(0.0, 0.999)),
    ),
)


def _csv_text(header: list[str], rows: list[list[str]], delimiter: str = ",") -> str:
    import csv
    import io

    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\n").writerows([header, *rows])
    return out.getvalue()


def _mimic_bytes(table: str, mutation: tuple) -> tuple[bytes, bool]:
    header, rows = list(COLUMNS[table]), [list(r) for r in ROWS[table]]
    kind = mutation[0]
    delimiter = ","
    if kind == "cell" and rows:
        _, row, column, text = mutation
        rows[row % len(rows)][column % len(header)] = text
    elif kind == "header":
        header[mutation[1] % len(header)] = mutation[2]
    elif kind == "duplicate_row" and rows:
        rows.append(list(rows[mutation[1] % len(rows)]))
    elif kind == "delimiter":
        delimiter = mutation[1]
    text = _csv_text(header, rows, delimiter)
    if kind == "encoding":
        equivalent = mutation[1] == "utf-8-sig" or (
            mutation[1] in ("latin-1", "cp1252", "gbk") and text.isascii()
        )
        return gzip.compress(text.encode(mutation[1], errors="replace"), mtime=0), equivalent
    data = gzip.compress(text.encode(), mtime=0)
    if kind == "truncate_gzip":
        return data[: int(len(data) * mutation[1])], False
    if kind == "flip_byte":
        at = 10 + int((len(data) - 10) * mutation[1])  # past the gzip header
        return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :], False
    return data, False


@pytest.fixture(scope="module")
def mimic_valid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = _build(tmp_path_factory.mktemp("valid") / "mimic-iv")
    snapshot = tmp_path_factory.mktemp("valid_snapshot") / "raw_mimic_iv"
    _snapshot(root, snapshot)
    return root, snapshot


def _snapshot(root: Path, out: Path) -> dict[str, int]:
    return snapshot_mimic_iv(
        root, out, feature_set="vitals_labs", chart_itemids=[220045], lab_itemids=[50912]
    )


@PROPERTY
@given(mutation=MIMIC_MUTATIONS)
def test_mimic_iv_snapshot_answers_a_result_or_an_input_error(
    mimic_valid: tuple[Path, Path], mutation: tuple
) -> None:
    valid_root, valid_snapshot = mimic_valid
    table, change = mutation
    with tempfile.TemporaryDirectory(prefix="eagrl-prop-") as folder:
        root = Path(folder)
        raw = root / "mimic-iv"
        shutil.copytree(valid_root, raw)
        home = root / "home"
        snapshot = home / "artifacts" / "raw_mimic_iv"
        shutil.copytree(valid_snapshot, snapshot)
        before = _digest(snapshot)
        data, equivalent = _mimic_bytes(table, change)
        path = raw / f"{table}.csv.gz"
        path.write_bytes(data)
        outside = _files_outside(root, home)
        cwd = os.getcwd()
        os.chdir(root)
        try:
            _snapshot(raw, snapshot)
            failed = None
        except InputDataError as exc:
            failed = exc
        finally:
            os.chdir(cwd)
        if failed is None:
            if equivalent:
                assert _digest(snapshot) == before
        else:
            assert not equivalent, f"a file meaning the same as the valid one was refused: {failed}"
            assert str(raw) in str(failed), failed
            assert _digest(snapshot) == before
        assert _files_outside(root, home) == outside
