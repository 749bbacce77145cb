"""The comparison report: every method against every dataset-task, side by side.

An evaluation report answers "how did this grid cell's policies do"; a researcher reproducing
EAG-RL wants the paper's table instead: rows are methods (the variants of
``eagrl_pipeline/variants.py`` and the expert; ``variant_rows`` gathers them from the cells),
columns are dataset-tasks, and every row is compared with a reference method (eagrl) on the
same test patients by a paired bootstrap, so a difference comes with the interval that says
whether it is more than the sample's noise. Built from what the evaluation reports already wrote
(their JSON and per-patient predictions); nothing is re-generated. A cell whose partition or
method was not materialized says so instead of vanishing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from eagrl_pipeline.evaluation.metrics import paired_bootstrap_metric_difference
from eagrl_pipeline.evaluation.report import (
    _estimate,
    _figure,
    _jsonable,
    _png,
    _Table,
    html_page,
    markdown_page,
)
from eagrl_pipeline.variants import DEFAULT_VARIANT, VARIANTS

DISCRIMINATION = ("auroc", "auprc")
NOT_MATERIALIZED = "not materialized"
DEFAULT_METHODS = ("base", "sft", "rl", "expert")
# The experiment grid's rows that are always shown (a missing one reads "not materialized").
GRID_METHODS = ("decomposition", "sft_only", DEFAULT_VARIANT, "expert")


@dataclass(frozen=True)
class PartitionResults:
    """One dataset-task's evaluation outputs: ``report.json`` as a dict and the per-patient
    predictions (columns ``model``, ``level``, ``patient_id``, ``label``, ``probability``) of
    every model it scored, LLM and expert alike."""

    report: Mapping[str, Any]
    predictions: pd.DataFrame


def _level_zero(results: PartitionResults, method: str) -> pd.DataFrame:
    """The method's unpermuted answers, one row per patient, unparsed ones at the report's
    fallback probability (as the report scored them)."""
    fallback = float(results.report["settings"]["fallback_probability"])
    rows = results.predictions[
        (results.predictions["model"] == method) & (results.predictions["level"] == 0)
    ]
    rows = rows.drop_duplicates("patient_id").set_index("patient_id")
    return pd.DataFrame(
        {"label": rows["label"].astype(int), "probability": rows["probability"].fillna(fallback)}
    )


@dataclass(frozen=True)
class PairedBootstrap:
    """How every row's difference from the reference is resampled."""

    n_resamples: int = 1000
    seed: int = 42
    confidence: float = 0.95


def _paired(
    results: PartitionResults, method: str, reference: str, bootstrap: PairedBootstrap
) -> dict[str, Any]:
    """``method − reference`` per metric on the patients both answered."""
    a, b = _level_zero(results, method), _level_zero(results, reference)
    shared = a.join(b, how="inner", lsuffix="_a", rsuffix="_b")
    out: dict[str, Any] = {"n_patients": len(shared)}
    for metric in DISCRIMINATION:
        if shared.empty or shared["label_a"].nunique() < 2:
            out[metric] = None
            continue
        diff = paired_bootstrap_metric_difference(
            shared["label_a"].to_numpy(),
            shared["probability_a"].to_numpy(),
            shared["probability_b"].to_numpy(),
            metric=metric,
            n_resamples=bootstrap.n_resamples,
            seed=bootstrap.seed,
            confidence=bootstrap.confidence,
        )
        out[metric] = diff.as_dict()
    return out


def _discrimination(model: Mapping[str, Any]) -> dict[str, dict[str, float] | None]:
    """A report row's AUROC and AUPRC estimates: bootstrap mean, std and interval."""
    return {
        metric: None
        if model.get(metric) is None
        else {k: model[metric][k] for k in ("mean", "std", "ci_low", "ci_high")}
        for metric in DISCRIMINATION
    }


def _cell(
    results: PartitionResults | None, method: str, reference: str, bootstrap: PairedBootstrap
) -> dict[str, Any]:
    if results is None:
        return {"status": NOT_MATERIALIZED, "why": "the partition's evaluation_report is missing"}
    model = (results.report.get("models") or {}).get(method)
    if model is None:
        return {"status": NOT_MATERIALIZED, "why": f"no evaluation of {method!r} here"}
    cell: dict[str, Any] = {
        "status": "ok",
        "kind": model["kind"],
        "n_patients": model["n_patients"],
        "n_positive": model["n_positive"],
        "parse_rate": 1.0 - float(model["parse_failure_rate"]),
        "jaccard": (model.get("jaccard") or {}).get("mean"),
    }
    cell.update(_discrimination(model))
    robustness = ((results.report.get("robustness") or {}).get("models") or {}).get(method)
    cell["robustness"] = [
        {
            "level": float(level["level"]),
            **{m: (level.get(m) or {}).get("mean") for m in DISCRIMINATION},
        }
        for level in (robustness or {}).get("levels", [])
    ]
    if method == reference:
        cell["vs_reference"] = None
    elif reference not in (results.report.get("models") or {}):
        cell["vs_reference"] = {"why": f"the reference {reference!r} was not materialized"}
    else:
        cell["vs_reference"] = _paired(results, method, reference, bootstrap)
    return cell


def scored_methods(partitions: Mapping[str, PartitionResults | None]) -> list[str]:
    """Every model the reports scored on the same test sample, in the paper's row order: the
    base model, its prompting baselines, SFT, RL, the expert (``expert_all_test`` is left out:
    it is scored on other patients), then anything else by name."""
    names = {
        name
        for results in partitions.values()
        if results is not None
        for name in results.report.get("models") or {}
    } - {"expert_all_test"}

    def rank(name: str) -> tuple[int, int, str]:
        if name in VARIANTS:  # the grid's rows, in the registry's order
            return (0, list(VARIANTS).index(name), "")
        if name == "expert":
            return (2, 0, "")
        order = {"base": 0, "sft": 2, "rl": 3}  # a single report's policy rows
        return (1, 1 if name.startswith("base_") else order.get(name, 5), name)

    return sorted(names, key=rank)


def _sources(name: str, found: Mapping[str, Any]) -> list[str]:
    """Where variant ``name``'s row may be read, in order: its own output, then, for a policy
    that does not depend on the variant (no GRPO), any other variant's output."""
    own = [name] if name in found else []
    return own + ([] if VARIANTS[name].trains_grpo else [v for v in found if v != name])


def variant_rows(
    cells: Mapping[str, PartitionResults | None],
) -> tuple[PartitionResults | None, dict[str, str]]:
    """One dataset-task's grid cells (variant -> its evaluation outputs, None where never
    materialized) as one ``PartitionResults`` whose rows are the variants, plus the expert, and
    which cell each row was read from.

    A variant's row is its policy's row in its own cell (``Variant.report_row``). The policies
    that do not depend on the cell (the base model in a prompting style, the dataset-task's SFT
    adapter) may come from another cell that scored them as a start policy on the same
    patients: the default run's eagrl cell also answers for decomposition and sft_only. A GRPO
    policy only ever comes from its own cell."""
    found = {name: results for name, results in cells.items() if results is not None}
    if not found:
        return None, {}
    models: dict[str, Any] = {}
    robust: dict[str, Any] = {}
    frames: list[pd.DataFrame] = []
    sources: dict[str, str] = {}

    def take(results: PartitionResults, row: str, name: str, source: str) -> None:
        models[name] = results.report["models"][row]
        levels = ((results.report.get("robustness") or {}).get("models") or {}).get(row)
        if levels is not None:
            robust[name] = levels
        rows = results.predictions[results.predictions["model"] == row]
        frames.append(rows.assign(model=name))
        sources[name] = source

    for name, variant in VARIANTS.items():
        for source in _sources(name, found):
            if variant.report_row in (found[source].report.get("models") or {}):
                take(found[source], variant.report_row, name, source)
                break
    first_name, first = next(iter(found.items()))
    if "expert" in (first.report.get("models") or {}):
        take(first, "expert", "expert", first_name)
    report = {
        "models": models,
        "robustness": {"models": robust} if robust else None,
        "settings": first.report["settings"],
    }
    predictions = pd.concat(frames, ignore_index=True) if frames else first.predictions.iloc[:0]
    return PartitionResults(report, predictions), sources


def variant_generalization(
    reports: Mapping[str, Mapping[str, Any] | None],
) -> tuple[dict[str, Any], dict[str, str]]:
    """The per-variant generalization reports (variant -> its report JSON, None where never
    materialized) as one generalization whose rows are the variants, plus which variant's
    report each row was read from. As in ``variant_rows``, a policy that does not depend on the
    variant (the base model in a style, the SFT adapters) may come from a report that
    transferred it as a start policy; a GRPO policy only from its own variant's report."""
    found = {name: report for name, report in reports.items() if report is not None}
    sections: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    for name, variant in VARIANTS.items():
        for source in _sources(name, found):
            scored = found[source].get("sections") or {}
            if not scored or any(
                variant.report_row not in (section.get("models") or {})
                for section in scored.values()
            ):
                continue
            for direction, section in scored.items():
                models = sections.setdefault(direction, {"models": {}})["models"]
                models[name] = section["models"][variant.report_row]
            sources[name] = source
            break
    return {"sections": sections}, sources


def build_comparison(
    partitions: Mapping[str, PartitionResults | None],
    *,
    methods: Sequence[str] | None = None,
    reference: str = "rl",
    generalization: Mapping[str, Any] | None = None,
    n_resamples: int = 1000,
    seed: int = 42,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """The comparison as a JSON-ready dict: ``cells[method][dataset_task]`` with AUROC and AUPRC
    (the evaluation's bootstrap mean ± std and interval), the paired bootstrap difference from
    ``reference`` on the same test patients, AUROC/AUPRC at each permutation level, parse rate
    and mean Jaccard with the expert's top-k. ``partitions`` maps every requested dataset-task
    to its results, or None where its evaluation report was not materialized.
    ``generalization`` (a generalization report's JSON, or ``variant_generalization``'s rows)
    adds the cross-dataset rows.
    ``methods`` None: every model the reports scored (``scored_methods``), at least
    ``DEFAULT_METHODS``."""
    if methods is None:
        found = scored_methods(partitions)
        methods = [*found, *(m for m in DEFAULT_METHODS if m not in found)]
    if reference not in methods:
        raise ValueError(f"the reference {reference!r} must be one of the methods {methods}")
    columns = list(partitions)
    bootstrap = PairedBootstrap(n_resamples, seed, confidence)
    cells = {
        method: {c: _cell(partitions[c], method, reference, bootstrap) for c in columns}
        for method in methods
    }
    transfer: dict[str, dict[str, Any]] = {}
    for direction, section in ((generalization or {}).get("sections") or {}).items():
        for method, model in (section.get("models") or {}).items():
            transfer.setdefault(method, {})[direction] = {
                "n_patients": model["n_patients"],
                **_discrimination(model),
            }
    missing = sorted(
        f"{method}[{column}]"
        for method, row in cells.items()
        for column, cell in row.items()
        if cell["status"] != "ok"
    )
    return _jsonable(
        {
            "title": "EAG-RL comparison: methods x dataset-tasks",
            "reference": reference,
            "methods": list(methods),
            "columns": columns,
            "settings": {"n_resamples": n_resamples, "seed": seed, "confidence": confidence},
            "cells": cells,
            "generalization": transfer,
            "missing": missing,
        }
    )


def _difference(diff: Mapping[str, Any] | None) -> str:
    if diff is None:
        return "n/a"
    return f"{diff['observed']:+.3f} [{diff['ci_low']:+.3f}, {diff['ci_high']:+.3f}]"


def _tables(comparison: Mapping[str, Any]) -> list[_Table]:
    columns, reference = comparison["columns"], comparison["reference"]
    cells = comparison["cells"]
    level = f"{comparison['settings']['confidence'] * 100:g} %"
    tables = []
    for metric in DISCRIMINATION:
        rows = []
        for method in comparison["methods"]:
            row = [method]
            for column in columns:
                cell = cells[method][column]
                row.append(
                    NOT_MATERIALIZED
                    if cell["status"] != "ok"
                    else _estimate(cell[metric], interval=False)
                )
            rows.append(row)
        tables.append(
            _Table(
                f"Test {metric.upper()} (bootstrap mean ± std)",
                ["method", *columns],
                rows,
                "Each cell: the evaluation report's bootstrap over its test patients.",
            )
        )
        rows = []
        for method in comparison["methods"]:
            if method == reference:
                continue
            row = [method]
            for column in columns:
                cell = cells[method][column]
                versus = cell.get("vs_reference") if cell["status"] == "ok" else None
                if cell["status"] != "ok":
                    row.append(NOT_MATERIALIZED)
                elif versus is None or "why" in versus:
                    row.append((versus or {}).get("why", "n/a"))
                else:
                    row.append(f"{_difference(versus[metric])} (n={versus['n_patients']})")
            rows.append(row)
        tables.append(
            _Table(
                f"{metric.upper()}: method − {reference} (paired bootstrap, {level} interval)",
                ["method", *columns],
                rows,
                f"Same test patients for both rows; an interval excluding 0 is a difference "
                f"beyond the sample's noise. Negative: the method is below {reference}.",
            )
        )
    rows = []
    for method in comparison["methods"]:
        for column in columns:
            cell = cells[method][column]
            if cell["status"] != "ok":
                rows.append([method, column, NOT_MATERIALIZED, "", "", ""])
                continue
            robust = ", ".join(
                f"{r['level'] * 100:g} %: {r['auroc']:.3f}"
                for r in cell["robustness"]
                if r["auroc"] is not None
            )
            jaccard = "n/a" if cell["jaccard"] is None else f"{cell['jaccard']:.3f}"
            rows.append(
                [
                    method,
                    column,
                    f"{cell['n_patients']} ({cell['n_positive']} positive)",
                    f"{cell['parse_rate']:.2f}",
                    jaccard,
                    robust or "n/a",
                ]
            )
    tables.append(
        _Table(
            "Parse rate, Jaccard with the expert's top-k, robustness",
            ["method", "dataset-task", "test patients", "parse rate", "Jaccard", "AUROC by level"],
            rows,
            "Robustness: AUROC with that share of the prompt's feature lines (the expert: its "
            "input columns) permuted.",
        )
    )
    transfer = comparison["generalization"]
    if transfer:
        directions = sorted({d for row in transfer.values() for d in row})
        methods = [*comparison["methods"], *(m for m in transfer if m not in comparison["methods"])]

        def entry(method: str, direction: str) -> str:
            if method == "expert":
                return "not applicable (reads a fixed feature set)"
            row = transfer.get(method) or {}
            if direction not in row:
                return NOT_MATERIALIZED
            return _estimate((row[direction] or {}).get("auroc"), interval=False)

        tables.append(
            _Table(
                "Generalization: trained on one dataset, tested on the other (AUROC)",
                ["method", *directions],
                [[method, *(entry(method, d) for d in directions)] for method in methods],
                "A row per method: its policy trained on the first dataset answers the second's "
                "test prompts (a prompting baseline: the base model asked its way on both).",
            )
        )
    return tables


def _notes(comparison: Mapping[str, Any]) -> list[str]:
    notes = [
        f"Reference row: {comparison['reference']} (EAG-RL's policy); differences are paired "
        f"on the patients both rows answered, at the unpermuted prompts.",
    ]
    if comparison["missing"]:
        notes.append(f"Not materialized: {', '.join(comparison['missing'])}.")
    return notes


def _plots(comparison: Mapping[str, Any]) -> list[tuple[str, str]]:
    """One plot per metric: a bar per method within each dataset-task, ± std as the error."""
    columns, methods, cells = comparison["columns"], comparison["methods"], comparison["cells"]
    plots = []
    width = 0.8 / max(len(methods), 1)
    for metric in DISCRIMINATION:
        fig, (ax,) = _figure(1)
        x = np.arange(len(columns))
        for i, method in enumerate(methods):
            ests = [
                cells[method][c][metric] if cells[method][c]["status"] == "ok" else None
                for c in columns
            ]
            means = [np.nan if e is None else e["mean"] for e in ests]
            stds = [0.0 if e is None else e["std"] for e in ests]
            ax.bar(x + i * width, means, width, yerr=stds, capsize=3, label=method)
        ax.set_xticks(x + width * (len(methods) - 1) / 2, columns, rotation=15)
        ax.set(ylabel=metric.upper(), ylim=(0, 1), title=f"Test {metric.upper()}")
        ax.axhline(0.5, ls=":", color="grey")
        ax.legend(fontsize="small")
        plots.append((f"Test {metric.upper()} per method and dataset-task (± std)", _png(fig)))
    return plots


def render_comparison(comparison: Mapping[str, Any]) -> dict[str, str]:
    """``{"md": ..., "html": ...}``: the same tables, the HTML with a plot per metric."""
    settings = comparison["settings"]
    intro = (
        f"Paired bootstrap: {settings['n_resamples']} resamples, seed {settings['seed']}; "
        f"columns are dataset-tasks, rows methods."
    )
    tables, notes = _tables(comparison), _notes(comparison)
    return {
        "md": markdown_page(comparison["title"], intro, tables, notes),
        "html": html_page(comparison["title"], intro, tables, _plots(comparison), notes),
    }
