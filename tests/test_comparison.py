"""The comparison report (methods x dataset-tasks) from evaluation reports built by the real
report builder: paired differences against the reference row, cells that were not materialized,
and the rendered pages."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from eagrl_pipeline.evaluation.comparison import (
    NOT_MATERIALIZED,
    PartitionResults,
    build_comparison,
    render_comparison,
    variant_generalization,
)
from eagrl_pipeline.evaluation.report import ModelPredictions, build_report

N = 40


def _partition(seed: int, methods: dict[str, float]) -> PartitionResults:
    """A partition whose models separate the classes with the given signal strength (0: noise);
    the LLM rows leave one answer unparsed (NaN), scored at the fallback as the report does."""
    rng = np.random.default_rng(seed)
    ids = list(range(100, 100 + N))
    y = np.array([i % 2 for i in range(N)])
    models, rows = [], []
    for name, signal in methods.items():
        kind = "expert" if name == "expert" else "llm"
        prob = np.clip(0.5 + signal * (y - 0.5) + rng.normal(0, 0.2, N), 0.0, 1.0)
        if kind == "llm":
            prob[3] = np.nan
        models.append(ModelPredictions(name, kind, ids, y, prob))
        rows += [
            {"model": name, "level": level, "patient_id": pid, "label": int(t), "probability": p}
            for level in (0.0, 1.0)
            for pid, t, p in zip(ids, y, prob, strict=True)
        ]
    robustness = {m.name: {1.0: m} for m in models}
    report = build_report("t", models, robustness, [], n_resamples=200, seed=0)
    return PartitionResults(json.loads(json.dumps(report)), pd.DataFrame(rows))


@pytest.fixture(scope="module")
def partitions() -> dict[str, PartitionResults | None]:
    strong = {"base": 0.0, "sft": 0.4, "rl": 0.6, "expert": 0.9}
    return {
        "tjh-mortality": _partition(0, strong),
        "mimic_iv-mortality": _partition(1, {"base": 0.1, "rl": 0.3, "expert": 0.8}),  # no sft
        "mimic_iv-readmission": None,  # never evaluated
    }


def test_every_row_is_compared_with_the_reference_on_the_same_patients(partitions):
    comparison = build_comparison(partitions, n_resamples=300, seed=1)
    cell = comparison["cells"]["base"]["tjh-mortality"]
    assert cell["status"] == "ok" and cell["n_patients"] == N
    results = partitions["tjh-mortality"]
    frame = results.predictions[results.predictions["level"] == 0]

    def probs(name: str) -> np.ndarray:
        return frame[frame["model"] == name]["probability"].fillna(0.5).to_numpy()

    labels = frame[frame["model"] == "rl"]["label"].to_numpy()
    expected = roc_auc_score(labels, probs("base")) - roc_auc_score(labels, probs("rl"))
    versus = cell["vs_reference"]
    assert versus["n_patients"] == N
    assert versus["auroc"]["observed"] == pytest.approx(expected)
    assert versus["auroc"]["ci_low"] <= versus["auroc"]["observed"] <= versus["auroc"]["ci_high"]
    assert versus["auroc"]["ci_high"] < 0  # noise against a strong policy: credibly below
    assert comparison["cells"]["rl"]["tjh-mortality"]["vs_reference"] is None
    # AUROC/AUPRC as the evaluation report estimated them (bootstrap mean ± std)
    rl = results.report["models"]["rl"]["auroc"]
    assert comparison["cells"]["rl"]["tjh-mortality"]["auroc"]["mean"] == rl["mean"]
    assert [r["level"] for r in cell["robustness"]] == [0.0, 1.0]
    assert cell["parse_rate"] == pytest.approx(1 - 1 / N)


def test_missing_partitions_and_rows_say_not_materialized(partitions):
    comparison = build_comparison(partitions, n_resamples=50)
    assert comparison["cells"]["sft"]["mimic_iv-mortality"]["status"] == NOT_MATERIALIZED
    assert all(
        comparison["cells"][m]["mimic_iv-readmission"]["status"] == NOT_MATERIALIZED
        for m in comparison["methods"]
    )
    assert "sft[mimic_iv-mortality]" in comparison["missing"]
    assert len(comparison["missing"]) == 1 + 4  # one row, one whole column
    without_reference = build_comparison(
        {"tjh-mortality": _partition(2, {"base": 0.0, "sft": 0.5})}, n_resamples=50
    )
    cell = without_reference["cells"]["base"]["tjh-mortality"]
    assert cell["status"] == "ok" and "not materialized" in cell["vs_reference"]["why"]
    with pytest.raises(ValueError, match="reference"):
        build_comparison(partitions, methods=["base", "sft"], reference="rl")


def test_rendered_pages_hold_every_cell_and_a_plot_per_metric(partitions):
    comparison = build_comparison(partitions, n_resamples=50)
    json.dumps(comparison, allow_nan=False)  # strict JSON
    pages = render_comparison(comparison)
    md, page = pages["md"], pages["html"]
    assert "| rl |" in md and NOT_MATERIALIZED in md
    assert "AUROC: method − rl (paired bootstrap, 95 % interval)" in md
    for column in partitions:
        assert column in md
    assert page.count("data:image/png;base64,") == 2  # AUROC and AUPRC
    assert "http://" not in page and "https://" not in page  # self-contained


def test_rows_default_to_every_model_scored_in_the_papers_order():
    with_baseline = _partition(3, {"rl": 0.5, "base_vanilla": 0.1, "expert": 0.9, "base": 0.0})
    comparison = build_comparison(
        {"tjh-mortality": with_baseline, "mimic_iv-mortality": None}, n_resamples=20
    )
    # sft is in no report: a row all the same, "not materialized", never a vanishing one
    assert comparison["methods"] == ["base", "base_vanilla", "rl", "expert", "sft"]
    assert comparison["cells"]["sft"]["tjh-mortality"]["status"] == NOT_MATERIALIZED
    vanilla = comparison["cells"]["base_vanilla"]["tjh-mortality"]["vs_reference"]
    assert vanilla["auroc"]["n"] == N


def _estimate(mean: float) -> dict[str, float]:
    return {"mean": mean, "std": 0.1, "ci_low": mean - 0.2, "ci_high": mean + 0.2}


def _transfer(rows: dict[str, float]) -> dict:
    """A generalization report's JSON: each row's AUROC estimate in both directions."""
    return {
        "sections": {
            direction: {
                "models": {
                    row: {"n_patients": 12, "auroc": _estimate(v), "auprc": None}
                    for row, v in rows.items()
                }
            }
            for direction in ("a_to_b", "b_to_a")
        }
    }


def test_generalization_rows_are_variants_read_from_each_variants_report():
    """eagrl's report transferred its start policies (base, sft): they answer for decomposition
    and sft_only; grpo_only's rl is its own, never eagrl's; a variant with no report has no
    row, and the table says not materialized for it."""
    rows, sources = variant_generalization(
        {
            "eagrl": _transfer({"base": 0.5, "sft": 0.6, "rl": 0.7}),
            "vanilla": _transfer({"base_vanilla": 0.55}),
            "grpo_only": None,
        }
    )
    assert sources == {
        "vanilla": "vanilla",
        "decomposition": "eagrl",
        "sft_only": "eagrl",
        "eagrl": "eagrl",
    }
    models = rows["sections"]["a_to_b"]["models"]
    assert models["eagrl"]["auroc"]["mean"] == 0.7 and models["sft_only"]["auroc"]["mean"] == 0.6
    comparison = build_comparison(
        {"tjh-mortality": _partition(4, {"eagrl": 0.5, "expert": 0.9})},
        methods=["eagrl", "expert"],
        reference="eagrl",
        generalization=rows,
        n_resamples=20,
    )
    assert set(comparison["generalization"]) == set(sources)
    assert comparison["generalization"]["decomposition"]["b_to_a"]["auroc"]["mean"] == 0.5
    markdown = render_comparison(comparison)["md"]
    table = markdown[markdown.index("## Generalization") :]
    assert "| eagrl | 0.700 ± 0.100 | 0.700 ± 0.100 |" in table
    assert "| expert | not applicable" in table  # a row of the table, never missing
    assert "| sft_only | 0.600 ± 0.100 |" in table
