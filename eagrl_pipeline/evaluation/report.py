"""Evaluation report (DESIGN §1 "Evaluation"): base / SFT / RL LLMs and the expert, side by side.

Per model: AUROC and AUPRC (bootstrap mean ± std and percentile interval), Brier score, expected
calibration error, parse-failure rate, mean Jaccard between the LLM's important features and the
expert's top-k, rewards; the relative improvement of each LLM over the base model (the paper's
headline is RL's average over AUROC and AUPRC); AUROC and AUPRC under feature-order permutation.

``build_report`` returns one JSON-ready dict holding every number; ``render_markdown`` and
``render_html`` only format it (the HTML adds matplotlib plots that need the raw predictions), so
the three files written by ``write_report`` can never disagree.

An unparsed LLM answer (``y_prob`` NaN) is scored at ``fallback_probability`` (0.5: no
information) rather than dropped, since dropping would reward a model for failing on hard
patients; the parse-failure rate is reported next to it. A metric that cannot be computed (one
class, too few patients) is ``None`` with its reason in ``null_reasons``, never an exception.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from eagrl_pipeline.evaluation.calibration import calibration_points, expected_calibration_error
from eagrl_pipeline.evaluation.metrics import bootstrap_metrics, brier_score
from eagrl_pipeline.paths import atomic_path
from eagrl_pipeline.rewards import attention_reward

ModelKind = Literal["llm", "expert"]
MODEL_KINDS: tuple[str, ...] = ("llm", "expert")
DISCRIMINATION: tuple[str, ...] = ("auroc", "auprc")
MIN_PATIENTS = 10  # below this a bootstrap interval says nothing useful
CONFIDENCE = 0.95
ECE_BINS = 10

EXPERT_PERMUTATION_NOTE = (
    "Robustness of the expert model: its inputs are positional, so the comparable perturbation is "
    "permuting its input columns (the model then reads one feature's values in another's slot). "
    "The LLM's feature lines keep their names when reordered, so the expert's test is the harsher."
)
LLM_PERMUTATION = "feature lines of the prompt reordered (names kept)"
EXPERT_PERMUTATION = "input feature columns permuted"


def _feature_lists(
    value: Sequence[Sequence[str] | None] | None, n: int, field: str, model: str
) -> tuple[tuple[str, ...], ...] | None:
    if value is None:
        return None
    if len(value) != n:
        raise ValueError(f"model {model!r}: {field} has {len(value)} entries for {n} patients")
    out = []
    for item in value:
        if isinstance(item, str):
            raise ValueError(
                f"model {model!r}: {field} entries must be lists of feature names, got a string "
                f"{item[:40]!r}"
            )
        out.append(tuple(str(f) for f in item) if item is not None else ())
    return tuple(out)


@dataclass(frozen=True, eq=False)
class ModelPredictions:
    """One model's predictions on the test patients.

    ``y_prob`` is NaN where an LLM answer had no readable probability (experts always predict).
    ``important_features`` / ``expert_top_k`` hold one list per patient (``None`` = no features
    listed, counted as an empty list); ``rewards`` one EAG-RL reward per patient.
    """

    name: str
    kind: ModelKind
    patient_ids: Sequence[Any]
    y_true: Sequence[int] | np.ndarray
    y_prob: Sequence[float] | np.ndarray
    important_features: Sequence[Sequence[str] | None] | None = None
    expert_top_k: Sequence[Sequence[str] | None] | None = None
    rewards: Sequence[float] | np.ndarray | None = None

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name:
            raise ValueError(f"model name must be a non-empty string, got {name!r}")
        if self.kind not in MODEL_KINDS:
            raise ValueError(
                f"model {name!r}: kind must be one of {MODEL_KINDS}, got {self.kind!r}"
            )
        ids = tuple(self.patient_ids)
        n = len(ids)
        if len(set(ids)) != n:
            raise ValueError(f"model {name!r}: patient_ids has duplicates")
        y = np.asarray(self.y_true, dtype=float).reshape(-1)
        p = np.asarray(self.y_prob, dtype=float).reshape(-1)
        if y.shape != (n,) or p.shape != (n,):
            raise ValueError(
                f"model {name!r}: {n} patient ids but {y.size} labels and {p.size} probabilities"
            )
        if not np.isin(y, (0.0, 1.0)).all():
            raise ValueError(f"model {name!r}: y_true must hold only 0 and 1")
        finite = np.isfinite(p)
        if np.isinf(p).any() or (p[finite] < 0).any() or (p[finite] > 1).any():
            raise ValueError(f"model {name!r}: y_prob must be probabilities in [0, 1] or NaN")
        if self.kind == "expert" and not finite.all():
            raise ValueError(f"model {name!r}: an expert model must predict every patient (NaN)")
        rewards = None
        if self.rewards is not None:
            rewards = np.asarray(self.rewards, dtype=float).reshape(-1)
            if rewards.shape != (n,):
                raise ValueError(f"model {name!r}: {rewards.size} rewards for {n} patients")
        object.__setattr__(self, "patient_ids", ids)
        object.__setattr__(self, "y_true", y.astype(int))
        object.__setattr__(self, "y_prob", p)
        object.__setattr__(self, "rewards", rewards)
        for field in ("important_features", "expert_top_k"):
            object.__setattr__(self, field, _feature_lists(getattr(self, field), n, field, name))

    @property
    def n_patients(self) -> int:
        return len(self.patient_ids)

    @property
    def parsed(self) -> np.ndarray:
        """True where the model gave a probability."""
        return np.isfinite(np.asarray(self.y_prob))

    def filled(self, fallback_probability: float) -> np.ndarray:
        """Probabilities with unparsed answers set to ``fallback_probability``."""
        return np.where(self.parsed, self.y_prob, fallback_probability)

    def jaccards(self) -> np.ndarray | None:
        """Per-patient Jaccard of listed vs expert top-k features; None without both lists."""
        if self.important_features is None or self.expert_top_k is None:
            return None
        pairs = zip(self.important_features, self.expert_top_k, strict=True)
        return np.array([attention_reward(f, k) for f, k in pairs], dtype=float)


def _summary(values: np.ndarray) -> dict[str, float | int]:
    return {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "min": float(values.min()),
        "max": float(values.max()),
        "n": int(values.size),
    }


def _discrimination_problem(y_true: np.ndarray, min_patients: int) -> str | None:
    n = y_true.size
    if n == 0:
        return "no patients"
    if n < min_patients:
        return f"too few patients ({n} < {min_patients})"
    if np.unique(y_true).size < 2:
        return f"labels hold one class only (all {int(y_true[0])})"
    return None


def evaluate_predictions(
    pred: ModelPredictions,
    *,
    n_resamples: int = 1000,
    seed: int = 42,
    fallback_probability: float = 0.5,
    min_patients: int = MIN_PATIENTS,
    n_bins: int = ECE_BINS,
) -> dict[str, Any]:
    """Every metric for one model; unavailable ones are ``None`` with a reason in
    ``null_reasons``."""
    if not 0.0 <= fallback_probability <= 1.0:
        raise ValueError(f"fallback_probability must be in [0, 1], got {fallback_probability}")
    if n_resamples < 0:
        raise ValueError(f"n_resamples must be >= 0, got {n_resamples}")
    y = np.asarray(pred.y_true)
    n = pred.n_patients
    n_unparsed = int((~pred.parsed).sum())
    probs = pred.filled(fallback_probability)
    reasons: dict[str, str] = {}
    out: dict[str, Any] = {
        "name": pred.name,
        "kind": pred.kind,
        "n_patients": n,
        "n_positive": int(y.sum()),
        "n_negative": int(n - y.sum()),
        "n_unparsed": n_unparsed,
        "parse_failure_rate": n_unparsed / n if n else None,
        "fallback_probability": fallback_probability,
        "unparsed_scoring": (
            f"{n_unparsed} unparsed answer(s) scored at probability {fallback_probability:g} "
            "for AUROC, AUPRC, Brier and ECE"
        ),
    }
    problem = _discrimination_problem(y, min_patients)
    if problem is None:
        estimates = bootstrap_metrics(
            y,
            probs,
            metrics=DISCRIMINATION,
            n_resamples=n_resamples,
            seed=seed,
            confidence=CONFIDENCE,
        )
        out.update({m: estimates[m].as_dict() for m in DISCRIMINATION})
    else:
        out.update(dict.fromkeys(DISCRIMINATION))
        reasons.update(dict.fromkeys(DISCRIMINATION, problem))
    if n:
        out["brier"] = brier_score(y, probs)
        out["ece"] = expected_calibration_error(y, probs, n_bins)
        out["calibration_bins"] = [b._asdict() for b in calibration_points(y, probs, n_bins)]
    else:
        out.update(brier=None, ece=None, calibration_bins=None)
        for key in ("parse_failure_rate", "brier", "ece", "calibration_bins"):
            reasons[key] = "no patients"
    jaccards = pred.jaccards()
    out["jaccard"] = _summary(jaccards) if jaccards is not None and jaccards.size else None
    if out["jaccard"] is None:
        reasons["jaccard"] = (
            "no patients" if not n else "important features or expert top-k not given"
        )
    rewards = pred.rewards[np.isfinite(pred.rewards)] if pred.rewards is not None else None
    out["reward"] = _summary(rewards) if rewards is not None and rewards.size else None
    if out["reward"] is None:
        reasons["reward"] = "no rewards given" if pred.rewards is None else "no finite rewards"
    out["null_reasons"] = reasons
    return out


def _central(result: Mapping[str, Any], metric: str) -> float | None:
    value = result.get(metric)
    if isinstance(value, Mapping):
        value = value.get("mean")
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def relative_improvement(
    base: Mapping[str, Any], rl: Mapping[str, Any], metrics: Sequence[str] = DISCRIMINATION
) -> dict[str, Any]:
    """Relative improvement of ``rl`` over ``base`` in %, per metric and averaged (the headline).

    Takes ``evaluate_predictions`` results (the bootstrap mean is compared) or plain numbers.

    >>> out = relative_improvement({"auroc": 0.8, "auprc": 0.5}, {"auroc": 0.88, "auprc": 0.6})
    >>> [round(v["relative_improvement_pct"], 6) for v in out["metrics"].values()]
    [10.0, 20.0]
    >>> round(out["average_pct"], 6)
    15.0
    """
    per_metric: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    for metric in metrics:
        b, r = _central(base, metric), _central(rl, metric)
        entry: dict[str, Any] = {"base": b, "model": r, "relative_improvement_pct": None}
        if b is None or r is None:
            entry["reason"] = f"{metric} unavailable for {'base' if b is None else 'the model'}"
        elif b == 0:
            entry["reason"] = f"base {metric} is 0"
        else:
            entry["relative_improvement_pct"] = (r - b) / b * 100.0
        if entry["relative_improvement_pct"] is None:
            missing.append(metric)
        per_metric[metric] = entry
    values = [e["relative_improvement_pct"] for e in per_metric.values()]
    out: dict[str, Any] = {
        "base_model": base.get("name"),
        "model": rl.get("name"),
        "basis": "bootstrap mean (full-sample value where no bootstrap was given)",
        "metrics": per_metric,
        "average_pct": float(np.mean(values)) if values and not missing else None,
    }
    if missing:
        out["reason"] = f"no average: {', '.join(missing)} unavailable"
    return out


def _jsonable(value: Any) -> Any:
    """Plain JSON types; non-finite floats become None so the file is strict JSON."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _robustness_section(
    robustness: Mapping[str, Mapping[float, ModelPredictions]],
    models: Mapping[str, ModelPredictions],
    results: Mapping[str, Mapping[str, Any]],
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    levels: set[float] = set()
    section: dict[str, Any] = {}
    for name, by_level in robustness.items():
        reference = models.get(name)
        kinds = {p.kind for p in by_level.values()} | ({reference.kind} if reference else set())
        if len(kinds) > 1:
            raise ValueError(f"robustness model {name!r} mixes kinds {sorted(kinds)}")
        rows = []
        if reference is not None:
            rows.append({"level": 0.0, **_discrimination_row(results[name])})
        for level in sorted(by_level):
            if not 0.0 < float(level) <= 1.0:
                raise ValueError(f"robustness model {name!r}: level {level} not in (0, 1]")
            pred = by_level[level]
            if reference is not None:
                _check_same_patients(name, float(level), reference, pred)
            result = evaluate_predictions(pred, **settings)
            rows.append({"level": float(level), **_discrimination_row(result)})
            levels.add(float(level))
        kind = kinds.pop() if kinds else "llm"
        section[name] = {
            "kind": kind,
            "perturbation": EXPERT_PERMUTATION if kind == "expert" else LLM_PERMUTATION,
            "levels": rows,
        }
    return {"levels": [0.0, *sorted(levels)], "models": section}


def _discrimination_row(result: Mapping[str, Any]) -> dict[str, Any]:
    reasons = {k: v for k, v in result["null_reasons"].items() if k in DISCRIMINATION}
    return {
        "n_patients": result["n_patients"],
        "parse_failure_rate": result["parse_failure_rate"],
        **{m: result[m] for m in DISCRIMINATION},
        "null_reasons": reasons,
    }


def _check_same_patients(
    name: str, level: float, reference: ModelPredictions, pred: ModelPredictions
) -> None:
    expected = dict(zip(reference.patient_ids, reference.y_true.tolist(), strict=True))
    got = dict(zip(pred.patient_ids, pred.y_true.tolist(), strict=True))
    if expected != got:
        raise ValueError(
            f"robustness model {name!r} at level {level:g}: not the same test patients and "
            "labels as its unperturbed predictions"
        )


def build_report(
    title: str,
    models: Sequence[ModelPredictions],
    robustness: Mapping[str, Mapping[float, ModelPredictions]] | None,
    notes: Sequence[str],
    *,
    n_resamples: int,
    seed: int,
    fallback_probability: float = 0.5,
    min_patients: int = MIN_PATIENTS,
    base_model: str = "base",
    rl_model: str = "rl",
    robustness_resamples: int | None = None,
) -> dict[str, Any]:
    """The whole report as a JSON-ready dict.

    ``robustness_resamples`` (default: ``n_resamples``) bootstraps the permuted levels.

    Every LLM other than ``base_model`` gets its relative improvement over it; the headline is
    ``rl_model``'s average improvement over AUROC and AUPRC (``None`` with a reason when either
    model is missing). ``robustness`` maps a model name to its predictions per permutation level;
    the unperturbed predictions appear as level 0.
    """
    by_name = {m.name: m for m in models}
    if len(by_name) != len(models):
        raise ValueError(f"model names must be unique, got {[m.name for m in models]}")
    settings = {
        "n_resamples": n_resamples,
        "seed": seed,
        "fallback_probability": fallback_probability,
        "min_patients": min_patients,
    }
    results = {m.name: evaluate_predictions(m, **settings) for m in models}
    improvements: dict[str, Any] = {}
    if base_model in results:
        improvements = {
            m.name: relative_improvement(results[base_model], results[m.name])
            for m in models
            if m.kind == "llm" and m.name != base_model
        }
    headline: dict[str, Any] = {"base_model": base_model, "model": rl_model, "average_pct": None}
    if rl_model in improvements:
        headline["average_pct"] = improvements[rl_model]["average_pct"]
        if headline["average_pct"] is None:
            headline["reason"] = improvements[rl_model]["reason"]
    else:
        absent = [n for n in (base_model, rl_model) if n not in results]
        headline["reason"] = f"model(s) {absent} not in the report"
    auto_notes = [
        "AUROC and AUPRC are bootstrap mean ± std with the "
        f"{CONFIDENCE:.0%} percentile interval over {n_resamples} patient-level resamples "
        f"(seed {seed}); resamples holding one class are skipped.",
        f"Unparsed LLM answers are scored at probability {fallback_probability:g} for AUROC, "
        "AUPRC, Brier and ECE, not dropped; see each model's parse-failure rate.",
        f"ECE uses {ECE_BINS} equal-width bins weighted by bin size.",
        "Relative improvement = (model − base) / base × 100 on the bootstrap means; the headline "
        f"is {rl_model}'s average over AUROC and AUPRC.",
    ]
    robust = None
    if robustness:
        level_resamples = n_resamples if robustness_resamples is None else robustness_resamples
        robust = _robustness_section(
            robustness, by_name, results, {**settings, "n_resamples": level_resamples}
        )
        robust["n_resamples"] = level_resamples
        if level_resamples != n_resamples:
            auto_notes.append(
                f"Robustness levels above 0 are bootstrapped with {level_resamples} resamples "
                f"(level 0 is the headline's {n_resamples})."
            )
        if any(m["kind"] == "expert" for m in robust["models"].values()):
            auto_notes.append(EXPERT_PERMUTATION_NOTE)
    report = {
        "title": title,
        "settings": {**settings, "confidence": CONFIDENCE, "ece_bins": ECE_BINS},
        "models": results,
        "relative_improvement": improvements,
        "headline": headline,
        "robustness": robust,
        "notes": [*notes, *auto_notes],
    }
    return _jsonable(report)


@dataclass(frozen=True)
class _Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _estimate(est: Mapping[str, Any] | None, interval: bool = True) -> str:
    if est is None:
        return "n/a"
    text = f"{est['mean']:.3f} ± {est['std']:.3f}"
    return f"{text} [{est['ci_low']:.3f}, {est['ci_high']:.3f}]" if interval else text


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f} %"


def _level(level: float) -> str:
    return f"{level * 100:g} %"


def _tables(report: Mapping[str, Any]) -> list[_Table]:
    """The report's tables, shared by the Markdown and HTML renderers."""
    metrics = _Table(
        "Metrics per model",
        [
            "Model",
            "Kind",
            "Patients (pos/neg)",
            "AUROC",
            "AUPRC",
            "Brier",
            "ECE",
            "Parse failures",
            "Mean Jaccard",
            "Mean reward",
        ],
        [],
        "AUROC/AUPRC: bootstrap mean ± std [95 % interval]. Lower is better for Brier and ECE.",
    )
    reasons = _Table("Unavailable values", ["Model", "Value", "Reason"], [])
    for name, r in report["models"].items():
        rate = r["parse_failure_rate"]
        failures = "n/a" if rate is None else f"{rate:.1%} ({r['n_unparsed']}/{r['n_patients']})"
        metrics.rows.append(
            [
                name,
                r["kind"],
                f"{r['n_patients']} ({r['n_positive']}/{r['n_negative']})",
                _estimate(r["auroc"]),
                _estimate(r["auprc"]),
                _num(r["brier"]),
                _num(r["ece"]),
                failures,
                _num(r["jaccard"]["mean"]) if r["jaccard"] else "n/a",
                _num(r["reward"]["mean"]) if r["reward"] else "n/a",
            ]
        )
        reasons.rows.extend([name, key, why] for key, why in r["null_reasons"].items())
    tables = [metrics]
    headline = report["headline"]
    if report["relative_improvement"]:
        caption = (
            f"Headline: {headline['model']} over {headline['base_model']}, average "
            f"{_pct(headline['average_pct'])}"
            if headline["average_pct"] is not None
            else f"Headline unavailable: {headline.get('reason', '')}"
        )
        improvement = _Table(
            f"Relative improvement over {headline['base_model']}",
            ["Model", "AUROC", "AUPRC", "Average"],
            [],
            caption,
        )
        for name, imp in report["relative_improvement"].items():
            cells = [_pct(imp["metrics"][m]["relative_improvement_pct"]) for m in DISCRIMINATION]
            improvement.rows.append([name, *cells, _pct(imp["average_pct"])])
        tables.append(improvement)
    robust = report["robustness"]
    if robust:
        levels = robust["levels"]
        table = _Table(
            "Robustness: feature order permuted",
            ["Model", "Perturbation", "Metric", *(_level(lv) for lv in levels)],
            [],
            "Share of features moved; 0 % is the unperturbed test set. Bootstrap mean ± std.",
        )
        for name, entry in robust["models"].items():
            rows = {row["level"]: row for row in entry["levels"]}
            for metric in DISCRIMINATION:
                cells = [
                    _estimate(rows[lv][metric], interval=False) if lv in rows else "—"
                    for lv in levels
                ]
                table.rows.append([name, entry["perturbation"], metric.upper(), *cells])
            for row in entry["levels"]:
                reasons.rows.extend(
                    [name, f"{key} at {_level(row['level'])}", why]
                    for key, why in row["null_reasons"].items()
                )
        tables.append(table)
    if reasons.rows:
        tables.append(reasons)
    return tables


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_page(title: str, intro: str, tables: Sequence[_Table], notes: Sequence[str]) -> str:
    """A report page as Markdown: title, one line of settings, a section per table, the notes."""
    out = [f"# {title}", "", intro]
    for table in tables:
        out += ["", f"## {table.title}", ""]
        if table.caption:
            out += [table.caption, ""]
        out.append("| " + " | ".join(_md_cell(h) for h in table.headers) + " |")
        out.append("|" + "---|" * len(table.headers))
        out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    out += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    return "\n".join(out) + "\n"


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: one table per section, then the notes."""
    settings = report["settings"]
    intro = f"Bootstrap: {settings['n_resamples']} resamples, seed {settings['seed']}."
    return markdown_page(report["title"], intro, _tables(report), report["notes"])


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(n_axes: int) -> tuple[Any, list[Any]]:
    # Figure + Agg canvas, not pyplot: no global backend or figure registry to leak across
    # threads or runs. Imported here so loading the pipeline does not pay for matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * n_axes, 4.2))
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, n_axes, i + 1) for i in range(n_axes)]
    return fig, axes


def _plots(
    report: Mapping[str, Any],
    models: Sequence[ModelPredictions],
    robustness: Mapping[str, Mapping[float, ModelPredictions]] | None,
) -> list[tuple[str, str]]:
    """(caption, base64 PNG) for each plot that has something to show."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    fallback = report["settings"]["fallback_probability"]
    names = list(dict.fromkeys([*(m.name for m in models), *(robustness or {})]))
    colour = {name: f"C{i % 10}" for i, name in enumerate(names)}
    plots: list[tuple[str, str]] = []

    curves = [m for m in models if np.unique(m.y_true).size == 2]
    if curves:
        fig, (roc_ax, pr_ax) = _figure(2)
        for m in curves:
            probs = m.filled(fallback)
            fpr, tpr, _ = roc_curve(m.y_true, probs)
            precision, recall, _ = precision_recall_curve(m.y_true, probs)
            roc_ax.plot(fpr, tpr, color=colour[m.name], label=m.name)
            pr_ax.step(recall, precision, where="post", color=colour[m.name], label=m.name)
        roc_ax.plot([0, 1], [0, 1], ls=":", color="grey")
        roc_ax.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC")
        pr_ax.set(xlabel="Recall", ylabel="Precision", title="Precision–recall")
        for ax in (roc_ax, pr_ax):
            ax.legend(loc="lower right" if ax is roc_ax else "lower left", fontsize="small")
        plots.append(
            ("ROC and precision–recall curves (unparsed answers at the fallback)", _png(fig))
        )

    calibrated = {
        n: r["calibration_bins"] for n, r in report["models"].items() if r["calibration_bins"]
    }
    if calibrated:
        fig, (ax,) = _figure(1)
        ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfect")
        for name, bins in calibrated.items():
            x = [b["mean_predicted"] for b in bins]
            y = [b["observed_fraction"] for b in bins]
            ax.plot(x, y, marker="o", color=colour[name], label=name)
        ax.set(xlabel="Mean predicted probability", ylabel="Observed fraction", title="Calibration")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize="small")
        plots.append((f"Calibration curves ({report['settings']['ece_bins']} bins)", _png(fig)))

    robust = report["robustness"]
    if robust:
        fig, axes = _figure(2)
        for ax, metric in zip(axes, DISCRIMINATION, strict=True):
            for name, entry in robust["models"].items():
                rows = [r for r in entry["levels"] if r[metric] is not None]
                ax.errorbar(
                    [r["level"] * 100 for r in rows],
                    [r[metric]["mean"] for r in rows],
                    yerr=[r[metric]["std"] for r in rows],
                    marker="o",
                    capsize=3,
                    color=colour[name],
                    label=f"{name} ({entry['kind']})",
                )
            ax.set(xlabel="Features permuted (%)", ylabel=metric.upper(), title=metric.upper())
            ax.legend(fontsize="small")
        plots.append(("Robustness: AUROC and AUPRC vs share of features permuted", _png(fig)))

    distributions: dict[str, list[tuple[str, np.ndarray]]] = {}
    for m in models:
        for label, values in (("Jaccard index", m.jaccards()), ("Reward", m.rewards)):
            finite = values[np.isfinite(values)] if values is not None else np.empty(0)
            if finite.size:
                distributions.setdefault(label, []).append((m.name, finite))
    if distributions:
        fig, axes = _figure(len(distributions))
        for ax, (label, series) in zip(axes, distributions.items(), strict=True):
            pooled = np.concatenate([values for _, values in series])
            # Shared bins so the models' histograms are comparable; Jaccard lives on [0, 1].
            edges = np.linspace(0, 1, 21) if label == "Jaccard index" else 20
            edges = np.histogram_bin_edges(pooled, bins=edges)
            for name, values in series:
                ax.hist(values, bins=edges, histtype="step", lw=1.6, color=colour[name], label=name)
            ax.set(xlabel=label, ylabel="Patients", title=f"Distribution: {label}")
            ax.legend(fontsize="small")
        plots.append(("Distribution of Jaccard (LLM vs expert top-k) and rewards", _png(fig)))
    return plots


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 80rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; }
th { background: #f2f2f2; }
figure { margin: 1rem 0 2rem; }
img { max-width: 100%; }
.caption { color: #555; }
"""


def html_page(
    title: str,
    intro: str,
    tables: Sequence[_Table],
    plots: Sequence[tuple[str, str]],
    notes: Sequence[str],
) -> str:
    """A self-contained HTML page: the tables plus plots (caption, base64 PNG) as data URIs (no
    external CSS, JS or images), so the file can be mailed or attached as-is."""
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>", f"<p>{esc(intro)}</p>"]
    for table in tables:
        body.append(f"<h2>{esc(table.title)}</h2>")
        if table.caption:
            body.append(f'<p class="caption">{esc(table.caption)}</p>')
        head = "".join(f"<th>{esc(h)}</th>" for h in table.headers)
        rows = "".join(
            "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in table.rows
        )
        body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    if plots:
        body.append("<h2>Plots</h2>")
    for caption, data in plots:
        body.append(
            f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>"
        )
    body += ["<h2>Notes</h2>", "<ul>", *(f"<li>{esc(n)}</li>" for n in notes), "</ul>"]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def render_html(
    report: Mapping[str, Any],
    models: Sequence[ModelPredictions],
    robustness: Mapping[str, Mapping[float, ModelPredictions]] | None,
) -> str:
    """The report as a self-contained HTML page: the Markdown's tables plus the plots."""
    settings = report["settings"]
    intro = f"Bootstrap: {settings['n_resamples']} resamples, seed {settings['seed']}."
    plots = _plots(report, models, robustness)
    return html_page(report["title"], intro, _tables(report), plots, report["notes"])


def write_report(
    out_dir: str | Path,
    report: Mapping[str, Any],
    models: Sequence[ModelPredictions],
    robustness: Mapping[str, Mapping[float, ModelPredictions]] | None,
) -> dict[str, Path]:
    """Write report.json, report.md and report.html, each atomically; everything is rendered
    first, so a rendering error leaves the previous files untouched."""
    out = Path(out_dir)
    texts = {
        "json": json.dumps(_jsonable(report), indent=2, allow_nan=False) + "\n",
        "md": render_markdown(report),
        "html": render_html(report, models, robustness),
    }
    return write_texts(out, texts)


def write_texts(
    out_dir: str | Path, texts: dict[str, str], stem: str = "report"
) -> dict[str, Path]:
    """``<stem>.<key>`` for each rendered text, each written atomically."""
    paths: dict[str, Path] = {}
    for key, text in texts.items():
        target = Path(out_dir) / f"{stem}.{key}"
        with atomic_path(target) as tmp:
            tmp.write_text(text, encoding="utf-8")
        paths[key] = target
    return paths
