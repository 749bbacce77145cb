"""Learning study: does the lineage learn? Real TJH, SmolLM2-135M, this CPU, the pipeline's own
assets with a study configuration, ending in one table.

Every stage of the ``tjh-mortality`` partition is materialized through Dagster into a fresh
``EAGRL_HOME`` (raw TJH file -> dbt -> cohort on the ClinicRealm split -> ConCare expert and
ranking -> prompts -> base answers -> MCTS trajectories -> SFT -> GRPO -> evaluation report on
the full 200-patient test split), one asset at a time so each stage's wall time is its own.
Nothing is tuned on the test split: the settings below were chosen before the test numbers were
read, on validation reward, and the same settings run every time.

    .venv/bin/python -m benchmarks.learning [--tjh PATH] [--home DIR] [--out DIR]

Prints the table, writes ``learning.md`` and ``learning.json`` under ``--out`` (default
``benchmarks/results``), and ends with one machine-readable line::

    study: base_auroc=... sft_auroc=... rl_auroc=... expert_auroc=... rl_minus_base_auroc_lo=...
    rl_minus_sft_reward_lo=... minutes=...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.results import RESULTS_DIR, record

REPO = Path(__file__).resolve().parent.parent
TJH_FILE = REPO.parent / "shared" / "data" / "tjh" / "time_series_375_prerpocess_en.xlsx"
PARTITION = "tjh-mortality"
MODELS = ("base", "sft", "rl", "expert")

# The study configuration: the pipeline's defaults where they are not CPU shortcuts, and the
# full splits where the defaults sample (every train patient searched, every validation patient
# in the gate, every test patient evaluated). Robustness levels are left to the reports' own
# runs: the study asks whether the policy learns.
# Short segments: the study trains on every token it generates (CPU time is per token).
SCAFFOLD = {
    "subquestion_tokens": 12,
    "answer_tokens": 16,
    "final_subquestion_tokens": 8,
    "features_tokens": 24,
    "final_answer_tokens": 2,
    "max_listed_features": 3,
    # No digits before the final answer: otherwise a step states a probability (or copies a
    # value in (0, 1) from the prompt) and the final answer copies it, so the decision is one
    # greedy step token and the final answer's digit distribution, the readout, a certain copy.
    "step_digits": False,
}
STUDY_CONFIG: dict[str, dict[str, Any]] = {
    "llm_prompts": {
        "max_features": 8,
        "max_visits": 1,
        "include_example": False,
        "max_tokens": 640,
    },
    "base_llm_predictions": {
        "splits": ["val"],
        "max_patients_per_split": None,
        "batch_size": 32,
        "scaffold": SCAFFOLD,
    },
    "mcts_trajectories": {
        "max_patients": None,
        "n_simulations": 4,
        # A second search of the train patients whose first found no right answer: the
        # patients the base model answers on the wrong side are SFT's counter-examples (chosen
        # on validation: SFT val reward -0.375 -> -0.162; README, the study section).
        "retry_simulations": 12,
        "branching": 2,
        "max_depth": 1,
        "rollout_steps": 0,
        "batch_patients": 32,
        "top_k_trajectories": 1,
        # The search-vs-sampling comparison costs as many tokens as the search it checks: on a
        # label-balanced 40 of the 140 (20 per class), not on every train patient.
        "sampling_patients": 40,
        "scaffold": SCAFFOLD,
    },
    # Every weight, the answer's digits weighted 1000 times: on the trajectories the probe read
    # validation AUROC 0.809 after two epochs against LoRA's 0.555 (and 0.755, 0.709 after a
    # third and fourth; benchmarks/results/sft_probe.json), and the study's RL policy then had
    # the better validation reward (-0.141 against -0.213) with the gate passing (README).
    "sft_checkpoint": {
        "finetune": "full",
        "num_train_epochs": 2.0,
        "learning_rate": 5e-5,
        "answer_loss_weight": 1000.0,
        "per_device_train_batch_size": 4,
        "eval_fraction": 0.1,
        "parse_sample": 4,
    },
    "rl_checkpoint": {
        "max_steps": 40,
        # A fresh LoRA on the fully fine-tuned model starts at the identity; at 5e-5 on the
        # SFT adapter GRPO never moved the policy in 40 steps.
        "learning_rate": 2e-4,
        "num_generations": 4,
        "per_device_train_batch_size": 8,
        # Two updates per generation batch, as the asset's default: with one, the importance
        # ratio is exactly 1 and EAG-RL's adaptive clip never acts (the study at a39f272 ran so).
        "num_iterations": 2,
        "max_train_prompts": None,
        "val_prompts": None,
        "scaffold": SCAFFOLD,
    },
    "evaluation_report": {
        "max_test_patients": None,
        "permutation_levels": [],
        "batch_size": 32,
        "scaffold": SCAFFOLD,
    },
}
CELL = f"{PARTITION}|eagrl"  # EAG-RL's cell of the experiment grid
STAGES: tuple[tuple[str, str | None], ...] = (  # (asset, partition key)
    ("raw_tjh", None),
    ("base_language_model", None),
    ("cohort_dataset", PARTITION),
    ("expert_model", PARTITION),
    ("expert_feature_ranking", PARTITION),
    ("llm_prompts", PARTITION),
    ("base_llm_predictions", PARTITION),
    ("mcts_trajectories", PARTITION),
    ("sft_checkpoint", PARTITION),
    ("rl_checkpoint", CELL),
    ("evaluation_report", CELL),
)


def _materialize(
    asset: str, partition: str | None, resources: dict, instance: Any
) -> tuple[float, list[str]]:
    """One asset (the warehouse with raw_tjh): its wall seconds and the checks that failed.

    A failed blocking gate is a finding, not the end of the study: when the asset's output was
    written, the study records the gate and goes on (the table says which gates failed). Any
    other failure stops it.
    """
    from dagster import AssetKey, AssetSelection, materialize

    from assets.gates import REPORT_TAG
    from definitions import all_assets

    selection = AssetSelection.assets(asset)
    if asset == "raw_tjh":  # dbt builds every mart, so the (synthetic) MIMIC-IV raw comes too
        selection = AssetSelection.groups("raw", "warehouse")
    config = STUDY_CONFIG.get(asset)
    started = time.monotonic()
    result = materialize(
        all_assets,
        selection=selection,
        partition_key=partition,
        resources=resources,
        instance=instance,
        run_config={"ops": {asset: {"config": config}}} if config else None,
        tags={REPORT_TAG: "report"},  # a failed gate is reported in the table, not a stop
        raise_on_error=False,
    )
    seconds = time.monotonic() - started
    failed = [c.check_name for c in result.get_asset_check_evaluations() if not c.passed]
    print(f"[study] {asset}: {seconds:.1f} s" + (f"; checks failed: {failed}" if failed else ""))
    written = any(
        m.asset_key == AssetKey(asset) for m in result.asset_materializations_for_node(asset)
    )
    if not result.success and not (failed and written):
        sys.exit(f"[study] {asset} failed; see the log above")
    return seconds, failed


def _paired_auroc(predictions: pd.DataFrame, a: str, b: str) -> dict[str, float]:
    from eagrl_pipeline.evaluation.metrics import paired_bootstrap_auroc_difference

    level0 = predictions[predictions["level"] == 0.0]
    wide = level0.pivot(index="patient_id", columns="model", values="probability")
    labels = level0.drop_duplicates("patient_id").set_index("patient_id")["label"]
    wide = wide.fillna(0.5)  # an unparsed answer is scored as the report scores it
    diff = paired_bootstrap_auroc_difference(
        labels.loc[wide.index].to_numpy(), wide[a].to_numpy(), wide[b].to_numpy(), seed=42
    )
    return {"observed": diff.observed, "ci_low": diff.ci_low, "ci_high": diff.ci_high}


def collect(
    home: Path, stage_seconds: dict[str, float], failed_checks: dict[str, list[str]]
) -> dict[str, Any]:
    """The study's figures from the artifacts the assets wrote."""
    artifacts = home / "artifacts"
    cell = Path(*CELL.split("|"))
    report = json.loads((artifacts / "evaluation_report" / cell / "report.json").read_text())
    rl = json.loads((artifacts / "rl_checkpoint" / cell / "manifest.json").read_text())
    sft = json.loads((artifacts / "sft_checkpoint" / PARTITION / "manifest.json").read_text())
    base_val = pd.read_parquet(
        artifacts / "base_llm_predictions" / PARTITION / "predictions.parquet"
    )
    predictions = pd.read_parquet(
        artifacts / "evaluation_report" / cell / "llm_predictions.parquet"
    )
    models: dict[str, dict[str, Any]] = {}
    for name in MODELS:
        entry = report["models"][name]
        models[name] = {
            "n_patients": entry["n_patients"],
            "auroc": entry["auroc"],
            "auprc": entry["auprc"],
            "parse_rate": None
            if entry["parse_failure_rate"] is None
            else 1.0 - entry["parse_failure_rate"],
            "jaccard": None if entry["jaccard"] is None else entry["jaccard"]["mean"],
        }
    val_parts = {
        "base": {c: float(base_val[c].mean()) for c in ("reward", "r_cls", "r_att", "r_format")},
        **{
            policy: {c: rl[f"val_{c}_{policy}"] for c in ("reward", "r_cls", "r_att", "r_format")}
            for policy in ("sft", "rl")
        },
    }
    trajectories = artifacts / "mcts_trajectories" / PARTITION / "trajectories.jsonl"
    return {
        "partition": PARTITION,
        "config": STUDY_CONFIG,
        "models": models,
        "rl_minus_base_auroc": _paired_auroc(predictions, "rl", "base"),
        "sft_minus_base_auroc": _paired_auroc(predictions, "sft", "base"),
        "rl_minus_sft_val_reward": {
            "observed": rl["val_reward_gain"],
            "ci_low": rl["val_reward_gain_lo"],
            "ci_high": rl["val_reward_gain_hi"],
            "patients": rl["val_patients"],
        },
        "val_reward_parts": val_parts,
        "trajectories_kept": len(trajectories.read_text().splitlines()),
        "sft_eval_loss": sft["eval_loss"],
        "sft_base_eval_loss": sft["base_eval_loss"],
        "curves": {
            "sft_train_loss": sft.get("train_loss_per_step", []),
            "grpo_train_reward": rl.get("train_reward_per_step", []),
        },
        "grpo_groups_with_reward_spread": rl.get("groups_with_reward_spread"),
        "grpo_groups": rl.get("groups"),
        "failed_checks": failed_checks,
        "stage_seconds": stage_seconds,
        "minutes": sum(stage_seconds.values()) / 60.0,
    }


def _ci(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "-"
    return f"{entry['mean']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def _dtype_line(choice: dict[str, Any] | None) -> list[str]:
    """The precision the times were measured in (the LLM stages run in it)."""
    if not choice:
        return []
    text = f"LLM stages in {choice.get('generation_dtype')} on {choice.get('device')}"
    if choice.get("cpu_probe_bf16_speedup") is not None:
        text += (
            f" (probe: bf16 {choice['cpu_probe_bf16_gflops']} GFLOP/s against fp32 "
            f"{choice['cpu_probe_fp32_gflops']}, {choice['cpu_probe_bf16_speedup']}x)"
        )
    return [text + ".", ""]


def render(study: dict[str, Any]) -> str:
    """The study table as markdown."""
    lines = [
        f"# Learning study: {study['partition']} (real TJH, ClinicRealm split)",
        "",
        "| model | test patients | AUROC mean [95 % CI] | AUPRC mean [95 % CI] | parse rate | "
        "Jaccard vs expert | val reward | val R_cls | val R_att | val R_format |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in study["models"].items():
        parts = study["val_reward_parts"].get(name, {})

        def fmt(value: Any) -> str:
            return "-" if value is None else f"{value:.3f}"

        lines.append(
            f"| {name} | {entry['n_patients']} | {_ci(entry['auroc'])} | {_ci(entry['auprc'])} | "
            f"{fmt(entry['parse_rate'])} | {fmt(entry['jaccard'])} | {fmt(parts.get('reward'))} "
            f"| {fmt(parts.get('r_cls'))} | {fmt(parts.get('r_att'))} | "
            f"{fmt(parts.get('r_format'))} |"
        )
    for key, label in (
        ("rl_minus_base_auroc", "RL − base test AUROC (paired bootstrap)"),
        ("sft_minus_base_auroc", "SFT − base test AUROC (paired bootstrap)"),
        ("rl_minus_sft_val_reward", "RL − SFT validation reward (paired bootstrap)"),
    ):
        d = study[key]
        lines.append(
            f"\n{label}: {d['observed']:+.3f}, 95 % interval [{d['ci_low']:+.3f}, "
            f"{d['ci_high']:+.3f}]"
        )
    lines += [
        "",
        f"Trajectories kept: {study['trajectories_kept']}; SFT held-out loss "
        f"{study['sft_eval_loss']:.3f} (base {study['sft_base_eval_loss']:.3f}); GRPO groups "
        f"with reward spread: {study['grpo_groups_with_reward_spread']} of "
        f"{study['grpo_groups']}.",
        "",
        "Failed checks (the study goes on past a failed gate and reports it): "
        + (
            "; ".join(f"{a}: {', '.join(c)}" for a, c in study["failed_checks"].items() if c)
            or "none"
        ),
        "",
        *_dtype_line(study.get("generation_dtype")),
        *(
            [f"Variant: the study configuration with {json.dumps(study['overrides'])}.", ""]
            if study.get("overrides")
            else []
        ),
        "| stage | wall s |",
        "|---|---:|",
        *(f"| {k} | {v:.1f} |" for k, v in study["stage_seconds"].items()),
        f"| total | {study['minutes'] * 60:.1f} ({study['minutes']:.1f} min) |",
        "",
        "GRPO train reward per step: "
        + ", ".join(f"{r:.3f}" for r in study["curves"]["grpo_train_reward"]),
        "",
        "SFT train loss per step: "
        + ", ".join(f"{r:.3f}" for r in study["curves"]["sft_train_loss"]),
    ]
    return "\n".join(lines) + "\n"


def summary_line(study: dict[str, Any]) -> str:
    auroc = {name: study["models"][name]["auroc"]["mean"] for name in MODELS}
    return (
        f"study: base_auroc={auroc['base']:.3f} sft_auroc={auroc['sft']:.3f} "
        f"rl_auroc={auroc['rl']:.3f} expert_auroc={auroc['expert']:.3f} "
        f"rl_minus_base_auroc_lo={study['rl_minus_base_auroc']['ci_low']:.3f} "
        f"rl_minus_sft_reward_lo={study['rl_minus_sft_val_reward']['ci_low']:.3f} "
        f"minutes={study['minutes']:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tjh", type=Path, default=TJH_FILE, help="the TJH xlsx or csv")
    parser.add_argument("--home", type=Path, default=None, help="EAGRL_HOME (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--until",
        choices=[asset for asset, _ in STAGES],
        default=None,
        help="stop after this stage (no table): for working on the early stages",
    )
    parser.add_argument(
        "--start-at",
        choices=[asset for asset, _ in STAGES],
        default=None,
        help="resume in --home at this stage: earlier stages keep the outputs and seconds of "
        "the run that wrote them (an interrupted study need not redo MCTS)",
    )
    parser.add_argument(
        "--override",
        type=json.loads,
        default={},
        help='JSON merged into the study configuration per asset, e.g. \'{"rl_checkpoint": '
        '{"learning_rate": 2e-4}}\': a variant to compare on validation (the results record it)',
    )
    args = parser.parse_args()
    for asset, values in args.override.items():
        if asset not in STUDY_CONFIG:
            sys.exit(f"[study] --override names {asset!r}; configurable: {sorted(STUDY_CONFIG)}")
        STUDY_CONFIG[asset] = {**STUDY_CONFIG[asset], **values}
    if not args.tjh.exists():
        sys.exit(
            f"[study] no TJH file at {args.tjh}; pass --tjh (the real file is not in the repo)"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    home = args.home or Path(tempfile.mkdtemp(prefix="eagrl-study-"))
    home.mkdir(parents=True, exist_ok=True)

    from dagster import DagsterInstance

    from definitions import build_resources
    from resources import EhrSources

    resources = build_resources(str(home))
    resources["sources"] = EhrSources(tjh_path=str(args.tjh))
    instance = DagsterInstance.ephemeral()
    print(f"[study] EAGRL_HOME={home}")
    seconds_file = home / "study_seconds.json"
    seconds: dict[str, float] = {}
    failed: dict[str, list[str]] = {}
    names = [asset for asset, _ in STAGES]
    if args.start_at:
        if not seconds_file.exists():
            sys.exit(f"[study] --start-at needs {seconds_file} from an earlier study in --home")
        earlier = json.loads(seconds_file.read_text())
        before = names[: names.index(args.start_at)]
        seconds = {a: earlier["seconds"][a] for a in before if a in earlier["seconds"]}
        failed = {a: earlier["failed_checks"].get(a, []) for a in seconds}
        missing = [a for a in before if a not in seconds]
        if missing:
            sys.exit(f"[study] --start-at {args.start_at}: {missing} never finished in {home}")
    for asset, partition in STAGES:
        if asset in seconds:
            continue
        seconds[asset], failed[asset] = _materialize(asset, partition, resources, instance)
        seconds_file.write_text(
            json.dumps({"seconds": seconds, "failed_checks": failed}, indent=2) + "\n"
        )
        if asset == args.until:
            print(f"[study] stopped after {asset} ({sum(seconds.values()) / 60:.1f} min)")
            return
    study = collect(home, seconds, failed)
    study["generation_dtype"] = resources["llm"].dtype_choice("cpu")
    study["overrides"] = args.override
    text = render(study)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learning.md").write_text(text)
    (args.out / "learning.json").write_text(json.dumps(study, indent=2, default=float) + "\n")
    if args.out == RESULTS_DIR:  # the latest study in full above; every study's line here
        record("learning_history", {"summary": summary_line(study), "overrides": args.override})
    print(text)
    print(summary_line(study))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
