"""MIMIC-IV raw folder (v2.2 / v3.1, official ``hosp/`` + ``icu/`` csv.gz layout) to parquet.

The snapshot keeps the columns the warehouse needs, typed as in MIMIC_IV_SCHEMA.md, and keeps
only the chart and lab itemids the item maps use, which cuts chartevents from hundreds of
millions of rows to the few percent that matter. DuckDB reads the gzip CSVs in parallel and
streams them, so memory stays bounded at any size. Column sets of v2.2 and v3.1 differ only in
columns the pipeline does not read; extra columns are ignored.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import duckdb

from eagrl_pipeline.errors import InputDataError
from eagrl_pipeline.paths import atomic_path


@dataclass(frozen=True)
class TableSpec:
    folder: str
    name: str
    columns: dict[str, str]  # needed column -> DuckDB type

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
        TableSpec("icu", "d_items", {"itemid": "INTEGER", "label": "VARCHAR"}),
        TableSpec("hosp", "d_labitems", {"itemid": "INTEGER", "label": "VARCHAR"}),
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
            fix="point raw_mimic_iv's `root` at the folder holding hosp/ and icu/, or leave it "
            "empty for the synthetic default.",
        )
    paths: dict[str, Path] = {}
    for table in required_tables(feature_set):
        path = root / TABLES[table].relative_path
        if not path.is_file():
            without = [s for s, tables in FEATURE_SETS.items() if table not in tables]
            alternative = f" feature_set={without[0]!r} works without it." if without else ""
            raise InputDataError(
                path,
                f"missing: feature_set={feature_set!r} needs {TABLES[table].relative_path}.",
                fix=f"add the file from your MIMIC-IV download.{alternative}",
            )
        paths[table] = path
    return paths


def read_header(path: Path) -> list[str]:
    try:
        with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
            line = handle.readline()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise InputDataError(path, f"is not a readable gzip CSV ({exc}).") from exc
    if not line.strip():
        raise InputDataError(path, "the file is empty (no header row).")
    return [c.strip().strip('"') for c in line.rstrip("\r\n").split(",")]


def _check_header(path: Path, spec: TableSpec, header: Sequence[str]) -> None:
    import difflib

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
        raise InputDataError(path, "appears more than once.", column=sorted(duplicated)[0])


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
            f"columns = {columns_sql}, quote = '\"', escape = '\"', nullstr = '', "
            "timestampformat = '%Y-%m-%d %H:%M:%S', "
            f"dateformat = '%Y-%m-%d', compression = 'gzip'){where}) "
            f"TO '{_sql_path(tmp)}' (FORMAT parquet, COMPRESSION zstd)"
        )
        try:
            con.execute(query)
        except duckdb.Error as exc:
            message = str(exc)
            match = _COLUMN_IN_ERROR.search(message)
            column = match.group(1) if match and match.group(1) in types else None
            expected = f" (expected {types[column]})" if column else ""
            first_line = message.strip().splitlines()[0][:300]
            raise InputDataError(
                path,
                f"a value does not fit its column type{expected}: {first_line}",
                column=column,
                fix="correct or blank the value; MIMIC-IV types are in MIMIC_IV_SCHEMA.md.",
            ) from exc
        rows = con.execute(f"SELECT count(*) FROM read_parquet('{_sql_path(tmp)}')").fetchone()
    count = int(rows[0]) if rows else 0
    if count == 0 and itemids is None:
        raise InputDataError(path, "has a header but no rows.")
    return count


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

    A gzip stream decompresses on one thread, so the tables convert side by side (largest
    first) on cursors of one DuckDB instance. Tables the feature set does not need are written
    empty, so dbt's sources always resolve.
    """
    paths = check_layout(root, feature_set)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
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


def fingerprint_files(paths: Iterable[Path], root: Path | None = None) -> str:
    """Content hash of files (names included), the data version of a raw input."""
    digest = hashlib.blake2b(digest_size=16)
    for path in sorted(paths):
        name = str(path.relative_to(root)) if root else path.name
        digest.update(name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
