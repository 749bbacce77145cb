"""MIMIC-IV raw folder (v2.2 / v3.1, official ``hosp/`` + ``icu/`` csv.gz layout) to parquet.

The snapshot keeps the columns the warehouse needs, typed as in MIMIC_IV_SCHEMA.md, and keeps
only the chart and lab itemids the item maps use, which cuts chartevents from hundreds of
millions of rows to the few percent that matter. DuckDB reads the gzip CSVs in parallel and
streams them, so memory stays bounded at any size. Column sets of v2.2 and v3.1 differ only in
columns the pipeline does not read; extra columns are ignored.
"""

from __future__ import annotations

import csv
import gzip
import re
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import duckdb

from eagrl_pipeline.data.text_files import decode_utf8, refuse_other_delimiter
from eagrl_pipeline.errors import InputDataError
from eagrl_pipeline.paths import atomic_path

_REDOWNLOAD_FIX = "download the file again from PhysioNet and compare it with SHA256SUMS.txt."


@dataclass(frozen=True)
class TableSpec:
    folder: str
    name: str
    columns: dict[str, str]  # needed column -> DuckDB type
    primary_key: str | None = None  # checked unique before the snapshot replaces anything

    @property
    def relative_path(self) -> str:
        return f"{self.folder}/{self.name}.csv.gz"


TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec(
            "hosp",
            "patients",
            {
                "subject_id": "BIGINT",
                "gender": "VARCHAR",
                "anchor_age": "INTEGER",
                "anchor_year": "INTEGER",
                "dod": "DATE",
            },
            primary_key="subject_id",
        ),
        TableSpec(
            "hosp",
            "admissions",
            {
                "subject_id": "BIGINT",
                "hadm_id": "BIGINT",
                "admittime": "TIMESTAMP",
                "dischtime": "TIMESTAMP",
                "deathtime": "TIMESTAMP",
                "hospital_expire_flag": "INTEGER",
            },
            primary_key="hadm_id",
        ),
        TableSpec(
            "icu",
            "icustays",
            {
                "subject_id": "BIGINT",
                "hadm_id": "BIGINT",
                "stay_id": "BIGINT",
                "intime": "TIMESTAMP",
                "outtime": "TIMESTAMP",
                "los": "DOUBLE",
            },
            primary_key="stay_id",
        ),
        TableSpec(
            "icu",
            "chartevents",
            # Chart rows belong to a stay (stay_id); subject_id, hadm_id and valueuom are left
            # out: the item map fixes each itemid's unit, and at 100k stays they were about a
            # fifth of the snapshot's time for columns nothing reads.
            {
                "stay_id": "BIGINT",
                "charttime": "TIMESTAMP",
                "itemid": "INTEGER",
                "value": "VARCHAR",
                "valuenum": "DOUBLE",
            },
        ),
        TableSpec(
            "hosp",
            "labevents",
            {
                "subject_id": "BIGINT",
                "hadm_id": "BIGINT",
                "itemid": "INTEGER",
                "charttime": "TIMESTAMP",
                "valuenum": "DOUBLE",
            },
        ),
        # A dictionary's itemid names one item: a duplicate would fan out every event joined to it.
        TableSpec(
            "icu", "d_items", {"itemid": "INTEGER", "label": "VARCHAR"}, primary_key="itemid"
        ),
        TableSpec(
            "hosp", "d_labitems", {"itemid": "INTEGER", "label": "VARCHAR"}, primary_key="itemid"
        ),
    )
}

FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "vitals": ("patients", "admissions", "icustays", "chartevents", "d_items"),
    "vitals_labs": (
        "patients", "admissions", "icustays", "chartevents", "d_items", "labevents", "d_labitems",
    ),
}  # fmt: skip


def required_tables(feature_set: str) -> tuple[str, ...]:
    if feature_set not in FEATURE_SETS:
        raise InputDataError(
            "raw_mimic_iv config",
            f"unknown feature_set {feature_set!r}.",
            column="feature_set",
            fix=f"use one of {sorted(FEATURE_SETS)}.",
        )
    return FEATURE_SETS[feature_set]


def check_layout(root: str | Path, feature_set: str) -> dict[str, Path]:
    """Find every table the feature set needs; a missing one names the set that works without."""
    root = Path(root)
    if not root.is_dir():
        raise InputDataError(
            root,
            "MIMIC-IV folder not found.",
            fix="set EAGRL_MIMIC_IV_ROOT (the `sources` resource's mimic_iv_root) to the "
            "folder holding hosp/ and icu/, or unset it for the synthetic default.",
        )
    paths: dict[str, Path] = {}
    for table in required_tables(feature_set):
        path = root / TABLES[table].relative_path
        if not path.is_file():
            without = [s for s, tables in FEATURE_SETS.items() if table not in tables]
            alternative = (
                f" EAGRL_MIMIC_IV_FEATURE_SET={without[0]} (the `sources` resource's "
                "mimic_iv_feature_set) works without it."
                if without
                else ""
            )
            raise InputDataError(
                path,
                f"missing: feature_set={feature_set!r} needs {TABLES[table].relative_path}.",
                fix=f"add the file from your MIMIC-IV download.{alternative}",
            )
        paths[table] = path
    return paths


def read_header(path: Path) -> list[str]:
    """The header row's names; an encoding or delimiter MIMIC-IV never uses is named as such.

    A UTF-8 byte-order mark is accepted (DuckDB skips it too).
    """
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.readline()
    except (OSError, EOFError, zlib.error) as exc:
        raise InputDataError(
            path, f"is not a readable gzip file ({exc}).", fix=_REDOWNLOAD_FIX
        ) from exc
    resave = "use the file as downloaded, or re-save it as UTF-8, comma-separated CSV and gzip it."
    line = decode_utf8(path, raw, resave)
    refuse_other_delimiter(path, line, resave)
    if not line.strip():
        raise InputDataError(path, "the file is empty (no header row).")
    try:
        names = [c.strip() for c in next(csv.reader([line.rstrip("\r\n")], strict=True))]
    except csv.Error as exc:
        raise InputDataError(
            path,
            f"its header row is not valid CSV ({exc}).",
            fix="restore the header row as shipped by PhysioNet, or " + _REDOWNLOAD_FIX,
        ) from exc
    return names


_PLAIN_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _check_header(path: Path, spec: TableSpec, header: Sequence[str]) -> None:
    """Refuse a header the snapshot cannot read safely.

    Every header name reaches DuckDB's ``read_csv(columns = ...)`` (the extra columns too: the
    reader needs a type for each), so a name must be a plain identifier, as every MIMIC-IV
    column is; anything else is refused before any SQL is built.
    """
    import difflib

    for name in header:
        if not _PLAIN_IDENTIFIER.match(name):
            raise InputDataError(
                path,
                "the header holds a name that is not a plain column name (letters, digits "
                "and underscores, not starting with a digit); MIMIC-IV files have none.",
                column=name[:80],
                fix=f"restore {spec.relative_path}'s header as shipped by PhysioNet "
                "(a header row of MIMIC-IV column names separated by commas).",
            )
    for column in spec.columns:
        if column not in header:
            close = difflib.get_close_matches(column, header, n=1, cutoff=0.6)
            hint = f" A column {close[0]!r} is present: was it renamed?" if close else ""
            raise InputDataError(
                path,
                f"required column is missing.{hint}",
                column=column,
                fix=f"{spec.relative_path} must have the MIMIC-IV columns "
                f"{', '.join(spec.columns)}.",
            )
    duplicated = {c for c in header if header.count(c) > 1}
    if duplicated:
        name = sorted(duplicated)[0]
        raise InputDataError(
            path,
            "appears more than once in the header.",
            column=name,
            fix=f"keep one column named {name!r} ({spec.relative_path}'s header as shipped by "
            "PhysioNet names each column once).",
        )


_COLUMN_IN_ERROR = re.compile(r'column "?([A-Za-z_]+)"?', re.IGNORECASE)


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


def snapshot_table(
    path: Path,
    spec: TableSpec,
    target: Path,
    *,
    itemids: Iterable[int] | None = None,
    connection: duckdb.DuckDBPyConnection | None = None,
) -> int:
    """Convert one csv.gz table to typed parquet; return its row count.

    A value that does not fit its column's type fails with the file, the column and the line.
    """
    header = read_header(path)
    _check_header(path, spec, header)
    types = {c: spec.columns.get(c, "VARCHAR") for c in header}
    columns_sql = "{" + ", ".join(f"'{c}': '{t}'" for c, t in types.items()) + "}"
    select = ", ".join(f'"{c}"' for c in spec.columns)
    where = ""
    if itemids is not None:
        ids = sorted({int(i) for i in itemids})
        where = f" WHERE itemid IN ({', '.join(map(str, ids))})" if ids else " WHERE FALSE"
    con = connection or duckdb.connect()
    with atomic_path(target) as tmp:
        query = (
            f"COPY (SELECT {select} FROM read_csv('{_sql_path(path)}', header = true, "
            "auto_detect = false, delim = ',', "
            f"columns = {columns_sql}, quote = '\"', escape = '\"', nullstr = '', "
            "timestampformat = '%Y-%m-%d %H:%M:%S', "
            f"dateformat = '%Y-%m-%d', compression = 'gzip'){where}) "
            f"TO '{_sql_path(tmp)}' (FORMAT parquet, COMPRESSION zstd)"
        )
        try:
            con.execute(query)
        except duckdb.Error as exc:
            raise _read_error(path, exc, types) from exc
        rows = con.execute(f"SELECT count(*) FROM read_parquet('{_sql_path(tmp)}')").fetchone()
        if spec.primary_key:
            _check_unique(con, path, tmp, spec.primary_key)
    count = int(rows[0]) if rows else 0
    if count == 0 and itemids is None:
        raise InputDataError(path, "has a header but no rows.")
    return count


_LINE_IN_ERROR = re.compile(r"CSV Error on Line: (\d+)")
_FIELDS_IN_ERROR = re.compile(r"Expected Number of Columns: (\d+) Found: (\d+)")


def _read_error(path: Path, exc: duckdb.Error, types: dict[str, str]) -> InputDataError:
    """Say what went wrong reading a csv.gz: a cut or corrupt gzip, a row with the wrong number
    of fields, or a value of the wrong type; never a cell's content (it is patient data)."""
    message = str(exc)
    line = _LINE_IN_ERROR.search(message)
    at = f" at line {line.group(1)}" if line else ""
    if isinstance(exc, duckdb.IOException) and "gzip" in message.lower():
        return InputDataError(
            path, "is not a complete gzip file (truncated or corrupted).", fix=_REDOWNLOAD_FIX
        )
    fields = _FIELDS_IN_ERROR.search(message)
    if fields:
        expected, found = fields.groups()
        return InputDataError(
            path,
            f"a row has {found} fields where the header has {expected}{at} (a field lost its "
            "quotes, the file was edited, or its bytes are corrupted).",
            fix="restore that line, or " + _REDOWNLOAD_FIX,
        )
    if isinstance(exc, duckdb.ConversionException):
        match = _COLUMN_IN_ERROR.search(message)
        column = match.group(1) if match and match.group(1) in types else None
        expected_type = f" (expected {types[column]})" if column else ""
        return InputDataError(
            path,
            f"a value does not fit its column type{expected_type}{at}.",
            column=column,
            fix="correct or blank the value; MIMIC-IV types are in MIMIC_IV_SCHEMA.md.",
        )
    first_line = message.strip().splitlines()[0][:300]
    return InputDataError(
        path,
        f"DuckDB could not read the file: {first_line}",
        fix="check the file, or " + _REDOWNLOAD_FIX,
    )


def _check_unique(con: duckdb.DuckDBPyConnection, path: Path, parquet: Path, key: str) -> None:
    """A table's key names one row: a duplicate (say, a file concatenated twice) is refused
    with the first duplicated value, before the snapshot replaces anything."""
    duplicate = con.execute(
        f"SELECT \"{key}\", count(*) AS n FROM read_parquet('{_sql_path(parquet)}') "
        f'GROUP BY "{key}" HAVING count(*) > 1 ORDER BY "{key}" LIMIT 1'
    ).fetchone()
    if duplicate:
        value, n = duplicate
        raise InputDataError(
            path,
            f"{key} {value} appears on {n} rows; {key} identifies one row of this table.",
            column=key,
            fix=f"remove the duplicate rows (every {key} once), e.g. from a file concatenated "
            "twice or two MIMIC-IV versions merged.",
        )


def empty_table(spec: TableSpec, target: Path) -> None:
    """A typed, empty table for a feature set that does not use it (keeps dbt's sources valid)."""
    columns = ", ".join(f'CAST(NULL AS {t}) AS "{c}"' for c, t in spec.columns.items())
    with atomic_path(target) as tmp:
        duckdb.execute(f"COPY (SELECT {columns} LIMIT 0) TO '{_sql_path(tmp)}' (FORMAT parquet)")


def snapshot_mimic_iv(
    root: str | Path,
    out_dir: str | Path,
    *,
    feature_set: str,
    chart_itemids: Iterable[int],
    lab_itemids: Iterable[int],
    workers: int = 2,
) -> dict[str, int]:
    """Snapshot every table of the feature set to ``out_dir/<table>.parquet``; return row counts.

    All or nothing: the tables are written into a temporary folder that replaces ``out_dir`` in
    one swap once every table converted, so a failure leaves the previous snapshot whole.

    A gzip stream decompresses on one thread, so the tables convert side by side (largest
    first) on cursors of one DuckDB instance. Tables the feature set does not need are written
    empty, so dbt's sources always resolve.
    """
    paths = check_layout(root, feature_set)
    with atomic_path(out_dir) as staged:
        staged.mkdir()
        return _snapshot_tables(
            paths, staged, chart_itemids=chart_itemids, lab_itemids=lab_itemids, workers=workers
        )


def _snapshot_tables(
    paths: dict[str, Path],
    out_dir: Path,
    *,
    chart_itemids: Iterable[int],
    lab_itemids: Iterable[int],
    workers: int,
) -> dict[str, int]:
    con = duckdb.connect()
    con.execute("SET preserve_insertion_order = false")
    itemid_filters = {"chartevents": list(chart_itemids), "labevents": list(lab_itemids)}
    counts: dict[str, int] = {}
    for table, spec in TABLES.items():
        if table not in paths:
            empty_table(spec, out_dir / f"{table}.parquet")
            counts[table] = 0
    by_size = sorted(paths, key=lambda t: paths[t].stat().st_size, reverse=True)

    def convert(table: str) -> int:
        cursor = con.cursor()
        try:
            return snapshot_table(
                paths[table],
                TABLES[table],
                out_dir / f"{table}.parquet",
                itemids=itemid_filters.get(table),
                connection=cursor,
            )
        finally:
            cursor.close()

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {table: pool.submit(convert, table) for table in by_size}
        for table, future in futures.items():
            counts[table] = future.result()
    con.close()
    return {table: counts[table] for table in TABLES}
