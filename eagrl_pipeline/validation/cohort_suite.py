"""Great Expectations 1.x data-quality suite for cohort marts, built in code.

Why a plain module: the checks must run the same way in Dagster asset checks, in tests and by
hand, so nothing here imports Dagster. GX runs on an ephemeral context (no files, no data docs,
no analytics, no progress bars) and every result is turned into a small frozen dataclass that
is easy to assert on and to put in Dagster metadata.

Four batches are validated, each with its own suite:
- ``visits``: required columns, at least one row, not-nulls, allowed values, dictionary ranges,
  one visit per (patient_id, visit_index);
- ``patients``: distinct (patient_id, label) rows, so a patient with two labels is a duplicate;
- ``groups``: distinct (group_id, split) rows, so a group in two splits is a duplicate;
- ``prevalence.<split>``: distinct (patient_id, label) rows of one split, mean label in bounds.

Bad data never raises: it yields ``success=False`` with outcomes that say what is wrong.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from eagrl_pipeline.errors import InputDataError

# Must be set before GX is imported anywhere in the process; setdefault lets a user opt back in.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

if TYPE_CHECKING:
    from great_expectations.core.batch_definition import BatchDefinition
    from great_expectations.expectations import Expectation

REQUIRED_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "group_id",
    "visit_index",
    "visit_date",
    "label",
    "split",
    "sex",
    "age",
)
NOT_NULL_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "group_id",
    "visit_index",
    "visit_date",
    "label",
    "split",
)
SPLITS: tuple[str, ...] = ("train", "val", "test")
LABELS: tuple[int, ...] = (0, 1)
DICTIONARY_COLUMNS: tuple[str, ...] = ("feature_id", "feature_name", "valid_min", "valid_max")
_EXAMPLES = 3  # unexpected values quoted per failed expectation


@dataclass(frozen=True)
class ExpectationOutcome:
    """One GX expectation result, reduced to what a person or an asset check needs."""

    expectation: str
    column: str | None
    success: bool
    unexpected_count: int
    element_count: int
    detail: str


@dataclass(frozen=True)
class CohortValidation:
    """All outcomes of one cohort validation; ``success`` is True only if every one passed."""

    suite_name: str
    success: bool
    outcomes: list[ExpectationOutcome]
    source: str = "cohort"

    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def summary(self) -> str:
        """Header line with the pass count, then one line per failed expectation."""
        passed = len(self.outcomes) - len(self.failures())
        lines = [
            f"{self.source} [{self.suite_name}]: {passed} of {len(self.outcomes)} "
            "expectations passed"
        ]
        for o in self.failures():
            where = f" on {o.column}" if o.column else ""
            lines.append(f"  FAILED {o.expectation}{where}: {o.detail}")
        return "\n".join(lines)

    def to_records(self) -> list[dict[str, Any]]:
        """Plain dicts of builtin types, safe for JSON and Dagster metadata."""
        return [asdict(o) for o in self.outcomes]


@dataclass
class _Check:
    """An expectation plus how to describe it to a person.

    ``kind`` decides how a failure is counted: ``rows`` uses GX's unexpected_count, ``columns``
    counts missing columns, ``aggregate`` (a mean) blames every row of the batch, since no
    single row is at fault. ``explain`` turns the GX result dict into the "found" text.
    """

    expectation: Expectation
    column: str | None
    expected: str
    kind: Literal["rows", "columns", "aggregate"] = "rows"
    explain: Callable[[dict[str, Any]], str] | None = None


def validate_cohort(
    visits: pd.DataFrame,
    dictionary: pd.DataFrame,
    *,
    suite_name: str,
    prevalence_bounds: tuple[float, float] = (0.02, 0.98),
    source: str = "cohort",
) -> CohortValidation:
    """Validate a visit-level cohort against the structural rules and the feature dictionary.

    Raises ``ValueError`` (``InputDataError``) only for a broken dictionary or bad arguments;
    problems in ``visits`` come back as failed outcomes.
    """
    import great_expectations as gx  # slow import (~2 s): only pay it when validating
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    lo, hi = (float(b) for b in prevalence_bounds)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"prevalence_bounds must satisfy 0 <= lo <= hi <= 1, got {lo}, {hi}")
    ranges = _feature_ranges(visits, dictionary)

    # In-memory stores, no data docs site (not even a temp dir), no analytics, no tqdm bars:
    # GX 1.x prints "Calculating Metrics" bars unless progress_bars is off in the context config.
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        analytics_enabled=False,
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    batch_def = (
        context.data_sources.add_pandas(f"{source}_pandas")
        .add_dataframe_asset(f"{source}_frame")
        .add_batch_definition_whole_dataframe("whole")
    )
    present = set(visits.columns)

    # --- visit level -------------------------------------------------------------------------
    checks = [
        _Check(
            gxe.ExpectTableColumnsToMatchSet(column_set=list(REQUIRED_COLUMNS), exact_match=False),
            None,
            f"columns {', '.join(REQUIRED_COLUMNS)} present",
            kind="columns",
        ),
        _Check(
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
            None,
            "at least one visit",
            kind="aggregate",
            explain=lambda r: f"{r.get('observed_value')} rows",
        ),
    ]
    checks += [
        _Check(gxe.ExpectColumnValuesToNotBeNull(column=c), c, f"{c} never null")
        for c in NOT_NULL_COLUMNS
        if c in present
    ]
    if "split" in present:
        checks.append(
            _Check(
                gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
                "split",
                f"split in {{{', '.join(SPLITS)}}}",
            )
        )
    if "label" in present:
        checks.append(
            _Check(
                gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(LABELS)),
                "label",
                "label in {0, 1}",
            )
        )
    for column, (vmin, vmax) in ranges.items():
        checks.append(
            _Check(
                gxe.ExpectColumnValuesToBeBetween(column=column, min_value=vmin, max_value=vmax),
                column,
                f"{column} in [{_bound(vmin)}, {_bound(vmax)}]",
            )
        )
    if {"patient_id", "visit_index"} <= present:
        checks.append(
            _Check(
                gxe.ExpectCompoundColumnsToBeUnique(column_list=["patient_id", "visit_index"]),
                None,
                "one visit per (patient_id, visit_index)",
            )
        )
    outcomes = _run(gx, batch_def, visits, f"{suite_name}.visits", checks)

    # --- patient level: one label per patient --------------------------------------------------
    if {"patient_id", "label"} <= present:
        patients = visits[["patient_id", "label"]].dropna().drop_duplicates()
        outcomes += _run(
            gx,
            batch_def,
            patients,
            f"{suite_name}.patients",
            [
                _Check(
                    gxe.ExpectColumnValuesToBeUnique(column="patient_id"),
                    "patient_id",
                    "one label per patient",
                    explain=_spread(
                        patients,
                        "patient_id",
                        "label",
                        lambda k, v: f"patient {k} has {len(v)} labels ({_join(v)})",
                    ),
                )
            ],
        )

    # --- group level: no group crosses splits --------------------------------------------------
    if {"group_id", "split"} <= present:
        groups = visits[["group_id", "split"]].dropna().drop_duplicates()
        outcomes += _run(
            gx,
            batch_def,
            groups,
            f"{suite_name}.groups",
            [
                _Check(
                    gxe.ExpectColumnValuesToBeUnique(column="group_id"),
                    "group_id",
                    "each group in exactly one split",
                    explain=_spread(
                        groups,
                        "group_id",
                        "split",
                        lambda k, v: f"group {k} appears in splits {_join(v)}",
                    ),
                )
            ],
        )

    # --- prevalence per split, patient level ---------------------------------------------------
    if {"patient_id", "label", "split"} <= present:
        per_patient = visits[["patient_id", "split", "label"]].dropna().drop_duplicates()
        for split in (s for s in SPLITS if (per_patient["split"] == s).any()):
            rows = per_patient.loc[per_patient["split"] == split, ["patient_id", "label"]]
            n_patients = rows["patient_id"].nunique()
            outcomes += _run(
                gx,
                batch_def,
                rows.reset_index(drop=True),
                f"{suite_name}.prevalence.{split}",
                [
                    _Check(
                        gxe.ExpectColumnMeanToBeBetween(column="label", min_value=lo, max_value=hi),
                        "label",
                        f"{split} split label prevalence in [{lo:g}, {hi:g}]",
                        kind="aggregate",
                        explain=lambda r, s=split, n=n_patients: (
                            f"{s} split prevalence is {_fmt_prev(r.get('observed_value'))} "
                            f"over {n} patients"
                        ),
                    )
                ],
            )

    return CohortValidation(
        suite_name=suite_name,
        success=all(o.success for o in outcomes),
        outcomes=outcomes,
        source=source,
    )


def _feature_ranges(
    visits: pd.DataFrame, dictionary: pd.DataFrame
) -> dict[str, tuple[float | None, float | None]]:
    """Map each visits column that has a dictionary row to its (min, max); NaN bound -> None.

    A dictionary row matches a column by ``feature_id`` or, failing that, ``feature_name``.
    """
    missing = [c for c in DICTIONARY_COLUMNS if c not in dictionary.columns]
    if missing:
        raise InputDataError(
            "feature dictionary",
            f"missing required column(s) {', '.join(missing)}.",
            fix=f"provide columns {', '.join(DICTIONARY_COLUMNS)}.",
        )
    ranges: dict[str, tuple[float | None, float | None]] = {}
    for row in dictionary.itertuples(index=False):
        column = next(
            (str(k) for k in (row.feature_id, row.feature_name) if str(k) in visits.columns), None
        )
        if column is None:
            continue
        if column in ranges:
            raise InputDataError(
                "feature dictionary",
                f"more than one row for feature {column!r}.",
                column="feature_id",
                fix="keep one row per feature.",
            )
        vmin, vmax = (None if pd.isna(b) else float(b) for b in (row.valid_min, row.valid_max))
        if vmin is not None and vmax is not None and vmin > vmax:
            raise InputDataError(
                "feature dictionary",
                f"valid_min {vmin} > valid_max {vmax} for feature {column!r}.",
                column="valid_min",
                fix="correct the two bounds in dbt_project/seeds/feature_dictionary.csv.",
            )
        if vmin is not None or vmax is not None:
            ranges[column] = (vmin, vmax)
    return ranges


def _run(
    gx: Any, batch_def: BatchDefinition, frame: pd.DataFrame, name: str, checks: Sequence[_Check]
) -> list[ExpectationOutcome]:
    """Validate ``frame`` with a suite of ``checks``; outcomes come back in ``checks`` order.

    GX returns suite results in its own order, so each expectation is tagged through ``meta``.
    """
    suite = gx.ExpectationSuite(name=name)
    for i, check in enumerate(checks):
        check.expectation.meta = {"check_index": i}
        suite.add_expectation(check.expectation)
    try:
        batch = batch_def.get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(suite, result_format="SUMMARY")
    except Exception as exc:  # GX catches per-expectation errors; this is the last guard
        return [_broken(c, len(frame), f"{type(exc).__name__}: {exc}") for c in checks]
    by_index = {r.expectation_config.meta["check_index"]: r for r in result.results}
    return [_outcome(checks[i], by_index[i], len(frame)) for i in range(len(checks))]


def _broken(check: _Check, n_rows: int, error: str) -> ExpectationOutcome:
    return ExpectationOutcome(
        expectation=str(check.expectation.expectation_type),
        column=check.column,
        success=False,
        unexpected_count=0,
        element_count=n_rows,
        detail=f"expected {check.expected}; found could not be evaluated: {error}",
    )


def _outcome(check: _Check, res: Any, n_rows: int) -> ExpectationOutcome:
    """Turn one GX ExpectationValidationResult into an ExpectationOutcome."""
    if error := _exception_message(res.exception_info):
        return _broken(check, n_rows, error)
    r: dict[str, Any] = dict(res.result or {})
    success = bool(res.success)
    element_count = int(r.get("element_count", n_rows))
    if check.kind == "columns":
        missing = _missing_columns(r)
        element_count, unexpected = len(REQUIRED_COLUMNS), len(missing)
        found = f"missing {', '.join(missing)}" if missing else "all present"
    elif check.kind == "aggregate":
        unexpected = 0 if success else element_count
        found = check.explain(r) if check.explain else f"observed {r.get('observed_value')}"
    else:
        unexpected = int(r.get("unexpected_count", 0))
        found = f"{unexpected} of {element_count} rows fail" if unexpected else "all rows pass"
        if unexpected and check.explain is not None:
            found += f": {check.explain(r)}"
        elif examples := _examples(r):
            found += f", e.g. {examples}"
    return ExpectationOutcome(
        expectation=str(res.expectation_config.type),
        column=check.column,
        success=success,
        unexpected_count=0 if success else unexpected,
        element_count=element_count,
        detail=f"expected {check.expected}; found {found}",
    )


def _spread(
    frame: pd.DataFrame, key: str, value: str, describe: Callable[[Any, list[Any]], str]
) -> Callable[[dict[str, Any]], str]:
    """Explain duplicated keys by the values each one carries, e.g. the splits of a group."""

    def explain(r: dict[str, Any]) -> str:
        keys = list(dict.fromkeys(_py(k) for k in r.get("partial_unexpected_list") or []))
        values = frame[frame[key].isin(keys)].groupby(key, sort=False)[value]
        parts = [describe(k, [_py(v) for v in values.get_group(k)]) for k in keys[:_EXAMPLES]]
        more = len(keys) - _EXAMPLES
        return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")

    return explain


def _missing_columns(r: dict[str, Any]) -> list[str]:
    return list(((r.get("details") or {}).get("mismatched") or {}).get("missing") or [])


def _examples(r: dict[str, Any]) -> str:
    """A few distinct unexpected values, nulls left out (the count already says how many)."""
    seen: list[str] = []
    for v in r.get("partial_unexpected_list") or []:
        if isinstance(v, dict):
            text = "(" + ", ".join(str(_py(x)) for x in v.values()) + ")"
        elif pd.isna(v):
            continue
        else:
            text = repr(_py(v))
        if text not in seen:
            seen.append(text)
        if len(seen) == _EXAMPLES:
            break
    return ", ".join(seen)


def _exception_message(info: Any) -> str | None:
    """GX nests exception info per metric when a metric fails; flatten to the first message."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def _py(v: Any) -> Any:
    """numpy scalar -> builtin, so messages read ``17`` and not ``np.int64(17)``."""
    return v.item() if hasattr(v, "item") else v


def _join(values: list[Any]) -> str:
    return ", ".join(str(v) for v in values)


def _bound(v: float | None) -> str:
    return "unbounded" if v is None else f"{v:g}"


def _fmt_prev(v: Any) -> str:
    return "undefined (no patients)" if v is None or pd.isna(v) else f"{float(v):.3f}"
