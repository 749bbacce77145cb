"""Evaluation (DESIGN §1 "Evaluation"): each grid cell's policy (and those it starts from) and the
expert on the dataset-task's test patients, with feature-order robustness; per variant, the
cross-dataset generalization report (MIMIC-IV mortality <-> TJH mortality); the comparison of
every method across the grid."""

import dataclasses
import gc
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    Config,
    MaterializeResult,
    MetadataValue,
    SpecificPartitionsPartitionMapping,
    asset,
)
from pydantic import Field, field_validator, model_validator

from assets.gates import require_passing_upstream_checks
from assets.llm_inputs import (
    ScaffoldCaps,
    expert_top_features,
    feature_dictionary,
    feature_matcher,
    load_cohort,
    sample_patients,
)
from assets.partitions import (
    COHORTS,
    GENERALIZATION_PARTITIONS,
    SHARED_STAGE,
    VARIANT_CELLS,
    cell_key,
    cell_partitions,
    split_cell,
    split_partition,
    variant_partitions,
)
from assets.tags import GPU_OP_TAGS
from assets.versioning import latest_metadata, versioned
from eagrl_pipeline.evaluation.case_studies import (
    CaseStudy,
    build_case_studies,
    case_studies_json,
    render_case_studies,
)
from eagrl_pipeline.evaluation.comparison import (
    GRID_METHODS,
    PartitionResults,
    build_comparison,
    render_comparison,
    scored_methods,
    variant_generalization,
    variant_rows,
)
from eagrl_pipeline.evaluation.predictions import (
    GenerationSettings,
    LLMAnswers,
    PromptSet,
    ReportSection,
    expert_predictions,
    expert_robustness,
    expert_transfer,
    llm_predictions,
    shared_features,
    write_combined_report,
)
from eagrl_pipeline.evaluation.report import (
    ModelPredictions,
    build_report,
    write_report,
    write_texts,
)
from eagrl_pipeline.evaluation.robustness import PERMUTATION_LEVELS
from eagrl_pipeline.experts import load_expert
from eagrl_pipeline.llm.generation import policy_format
from eagrl_pipeline.paths import atomic_path
from eagrl_pipeline.progress import progress_bar
from eagrl_pipeline.prompts import PROMPTING_BASELINES, FeatureMatcher, baseline_prompt
from eagrl_pipeline.variants import DEFAULT_VARIANT, VARIANTS, Variant, get_variant
from resources import Compute, EagrlHome, LanguageModel, MlflowTracking, Warehouse

# Report name -> the training asset whose adapter/ folder holds that policy.
POLICY_ASSETS: dict[str, str] = {"sft": "sft_checkpoint", "rl": "rl_checkpoint"}


class LLMEvaluationConfig(Config):
    max_test_patients: int | None = Field(
        default=24,
        ge=1,
        description="Test patients the LLMs answer: a seeded, label-stratified sample (empty: "
        "the whole test split). CPU default, since generation is slow there; use all on a GPU.",
    )
    sample_seed: int = Field(default=0, description="Seed of the test-patient sample.")
    max_new_tokens: int = Field(default=160, description="Generated tokens per answer.")
    batch_size: int = Field(
        default=64,
        description="Prompts per generate call: a model's CPU-default prompts (24 patients, "
        "unpermuted and permuted) in one call (64 default TJH answers: 53 s in one call, 58 s "
        "in two calls of 32).",
    )
    guided: bool = Field(
        default=True,
        description="Force the response tags, as base_llm_predictions does (the words stay the "
        "model's; see eagrl_pipeline.llm.guided). Off measures unaided format-following.",
    )
    guided_steps: int = Field(default=1, ge=0, description="Guided: steps before the final block.")
    scaffold: ScaffoldCaps = Field(
        default_factory=ScaffoldCaps, description="Guided: per-tag token caps."
    )
    readout: str = Field(
        default="expected",
        description="'expected': an answer's probability is the expectation under the model's "
        "distribution at its first digit (guided only; the greedy text is that distribution's "
        "mode); 'text': the number written. Both are kept in llm_predictions.parquet.",
    )
    permutation_levels: list[float] = Field(
        default=list(PERMUTATION_LEVELS),
        description="Shares of features whose order is permuted for the robustness curves.",
    )
    permutation_seed: int = Field(
        default=42,
        description="Seed of the permutations: per patient for prompts, per level for the "
        "expert's columns.",
    )
    bootstrap_resamples: int = Field(default=1000, ge=0, description="Bootstrap resamples.")
    robustness_resamples: int = Field(
        default=1000, ge=0, description="Bootstrap resamples of each permuted level."
    )
    bootstrap_seed: int = Field(default=42, description="Seed of the bootstrap.")
    fallback_probability: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Probability an unparsed answer is scored at."
    )

    @field_validator("readout")
    @classmethod
    def _known_readout(cls, value: str) -> str:
        if value not in ("expected", "text"):
            raise ValueError(f"readout {value!r}: use 'expected' or 'text'")
        return value

    @field_validator("permutation_levels")
    @classmethod
    def _levels_in_range(cls, value: list[float]) -> list[float]:
        if any(not 0.0 < level <= 1.0 for level in value) or len(set(value)) != len(value):
            raise ValueError(f"permutation_levels {value}: distinct shares in (0, 1]")
        return sorted(value)

    def generation(self) -> GenerationSettings:
        return GenerationSettings(
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            seed=self.sample_seed,
            guided=self.guided,
            guided_steps=self.guided_steps,
            scaffold=self.scaffold.scaffold(),
            readout=self.readout,  # type: ignore[arg-type]
        )

    def decoding_note(self) -> str:
        guided = (
            f"on: the response tags are forced and the words are the model's own "
            f"({self.guided_steps} step(s) before the final block)"
            if self.guided
            else "off: unaided format-following"
        )
        readout = (
            "the expectation of the probability it writes, under its own distribution at the "
            "answer's first digit (the greedy text is that distribution's mode)"
            if self.readout == "expected" and self.guided
            else "the number it writes"
        )
        return (
            f"LLM decoding: greedy, at most {self.max_new_tokens} new tokens; guided decoding "
            f"{guided}. An answer's probability is {readout}."
        )


CPU_PERMUTATION_LEVELS: tuple[float, ...] = (1.0,)


class EvaluationConfig(LLMEvaluationConfig):
    """The per-partition report's knobs (the LLM ones are shared with generalization)."""

    score_start_policies: bool = Field(
        default=True,
        description="Also score the policies the cell's variant starts from (base, and SFT where "
        "GRPO follows it), so a cell's report shows what each stage added. The experiment grid "
        "turns it off: there each of those policies is a cell of its own (decomposition, "
        "sft_only), scored once.",
    )

    permutation_levels: list[float] = Field(
        default=list(CPU_PERMUTATION_LEVELS),
        description="Shares of features whose order is permuted for the robustness curves. CPU "
        "default: the paper's strongest level only, since each level is one more answer per "
        "patient and model (about 40 s per partition on 2 cores); the paper's 0.2/0.4/0.6/1.0 "
        "on a GPU.",
    )


class GeneralizationConfig(LLMEvaluationConfig):
    score_start_policies: bool = Field(
        default=True,
        description="Also transfer the policies the variant starts from (base, and SFT where "
        "GRPO follows it), as the evaluation report does; the experiment grid turns it off, "
        "since those are variants of their own (decomposition, sft_only).",
    )
    max_test_patients: int | None = Field(
        default=12,
        ge=1,
        description="Test patients of each dataset the transferred policies answer (a seeded, "
        "label-stratified sample; empty: all). CPU default: the per-partition reports carry "
        "the larger samples; use all on a GPU.",
    )
    permutation_levels: list[float] = Field(
        default=[],
        description="Robustness levels on the other dataset's prompts; empty by default (the "
        "per-partition reports hold the robustness curves), which halves the generation.",
    )


def cell_policies(
    home: EagrlHome, dataset_task: str, variant: Variant, with_start: bool
) -> dict[str, Path | None]:
    """Report row -> adapter (None: the base model) of the policies a cell scores: the variant's
    own, and with ``with_start`` those it starts from. A missing adapter is named with the asset
    to materialize."""
    rows = [*(variant.start_rows() if with_start else ()), variant.report_row]
    adapters: dict[str, Path | None] = {}
    for row in rows:
        if row not in POLICY_ASSETS:
            adapters[row] = None
            continue
        partition = dataset_task if row == "sft" else str(cell_key(dataset_task, variant.name))
        path = home.artifact_path(POLICY_ASSETS[row], partition) / "adapter"
        if policy_format(path) is None:
            raise FileNotFoundError(
                f"no trained policy at {path} (neither adapter_config.json nor config.json): "
                "materialize "
                f"{POLICY_ASSETS[row]}[{partition}] first."
            )
        adapters[row] = path
    return adapters


def _required(path: Path, asset_name: str, partition: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path}: materialize {asset_name}[{partition}] first.")
    return path


def load_test_prompts(home: EagrlHome, partition: str) -> pd.DataFrame:
    """The test split's prompts of ``llm_prompts``."""
    path = _required(
        home.artifacts / "llm_prompts" / partition / "prompts.parquet", "llm_prompts", partition
    )
    prompts = pd.read_parquet(path, columns=["patient_id", "split", "label", "system", "user"])
    test = prompts[prompts["split"] == "test"].reset_index(drop=True)
    if test.empty:
        raise ValueError(f"{path}: no test-split prompts")
    return test


def ranked_top_features(home: EagrlHome, partition: str) -> dict[int, list[str]]:
    _required(
        home.artifacts / "expert_feature_ranking" / partition / "ranking.parquet",
        "expert_feature_ranking",
        partition,
    )
    return expert_top_features(home, partition)


@dataclass(frozen=True)
class _Job:
    """One model's answers to one dataset's prompt sets (keyed by permutation level)."""

    name: str
    target: str
    prompts: Mapping[float, PromptSet]
    matcher: FeatureMatcher
    expert_top_k: Mapping[int, list[str]]
    settings: GenerationSettings | None = None  # the call's settings when None


def _release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def answer_prompts(
    context: AssetExecutionContext,
    llm: LanguageModel,
    home: EagrlHome,
    device: str,
    settings: GenerationSettings,
    loads: Sequence[tuple[Path | None, Sequence[_Job]]],
) -> dict[tuple[str, str], dict[float, LLMAnswers]]:
    """Load each policy once (the base model, merged with its adapter when one is given), answer
    its jobs, and free it before the next, so only one model is ever in memory."""
    out: dict[tuple[str, str], dict[float, LLMAnswers]] = {}
    total = sum(len(p) for _, jobs in loads for job in jobs for p in job.prompts.values())
    with progress_bar(total, "answers", "answer") as bar:
        for adapter, jobs in loads:
            started = time.monotonic()
            model, tokenizer = llm.load(home.root, device, adapter_dir=adapter)
            for job in jobs:
                out[(job.target, job.name)] = llm_predictions(
                    job.name, model, tokenizer, job.prompts, job.matcher, job.expert_top_k,
                    job.settings or settings,
                )  # fmt: skip
                bar.update(sum(len(p) for p in job.prompts.values()))
            del model, tokenizer
            _release_memory()
            n = sum(len(p) for job in jobs for p in job.prompts.values())
            context.log.info(
                f"{', '.join(sorted({j.name for j in jobs}))} (adapter {adapter or 'none'}): "
                f"{n} answers in {time.monotonic() - started:.1f}s"
            )
    return out


def _training_note(home: EagrlHome, cell: str) -> list[str]:
    """What GRPO had to learn from and what its gate measured (the cell's rl_checkpoint
    manifest)."""
    path = home.artifact_path("rl_checkpoint", cell) / "manifest.json"
    if not path.exists():
        return []
    rl = json.loads(path.read_text())
    if "groups" not in rl:
        return []
    start = "base" if rl.get("start_from") == "base" else "SFT"
    return [
        f"GRPO (from {'the base model' if start == 'base' else 'the SFT adapter'}): "
        f"{rl['groups_with_reward_spread']:g} of {rl['groups']:g} groups had reward "
        f"spread (a group whose completions all score alike gives no update); RL − {start} "
        f"validation reward {rl['val_reward_gain']:+.3f}, 95 % paired bootstrap interval "
        f"[{rl['val_reward_gain_lo']:+.3f}, {rl['val_reward_gain_hi']:+.3f}] over "
        f"{rl['val_patients']} patients."
    ]


def _unpermutable_note(sets: Mapping[float, PromptSet]) -> list[str]:
    """A report note naming the patients whose prompts had no feature order to permute."""
    stuck = sorted({str(p) for s in sets.values() for p in s.unpermutable})
    if not stuck:
        return []
    return [
        f"Robustness: {len(stuck)} patient(s) show fewer than two feature lines, so their "
        "prompts have no order to permute; they are scored on their unchanged prompts at every "
        f"level (unpermutable: {', '.join(stuck[:20])}{' ...' if len(stuck) > 20 else ''})."
    ]


def _prompt_sets(prompts: PromptSet, config: LLMEvaluationConfig) -> dict[float, PromptSet]:
    """Level 0 is the unperturbed prompts; each level permutes each patient's feature lines."""
    sets = {0.0: prompts}
    for level in config.permutation_levels:
        sets[level] = prompts.permuted(level, config.permutation_seed)
    return sets


def _records(answers: Mapping[tuple[str, str], Mapping[float, LLMAnswers]]) -> pd.DataFrame:
    frames = [
        a.records.assign(model=name, target=target, level=level)
        for (target, name), by_level in answers.items()
        for level, a in by_level.items()
    ]
    return pd.concat(frames, ignore_index=True)


def _expert_records(
    models: Sequence[ModelPredictions], robustness: Mapping[str, Mapping[float, ModelPredictions]]
) -> pd.DataFrame:
    rows = [
        {
            "model": m.name,
            "level": level,
            "patient_id": pid,
            "label": int(y),
            "probability": float(p),
        }
        for m in models
        for level, pred in {0.0: m, **robustness.get(m.name, {})}.items()
        for pid, y, p in zip(pred.patient_ids, pred.y_true, pred.y_prob, strict=True)
    ]
    return pd.DataFrame(rows)


def _write_parquet(frame: pd.DataFrame, target: Path) -> Path:
    with atomic_path(target) as tmp:
        frame.to_parquet(tmp, index=False)
    return target


def report_metrics(report: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The headline numbers of a report as flat MLflow metrics (unavailable ones left out)."""
    metrics: dict[str, float] = {}
    for name, result in report["models"].items():
        for metric in ("auroc", "auprc"):
            if result[metric] is not None:
                metrics[f"{prefix}{name}.{metric}_mean"] = result[metric]["mean"]
                metrics[f"{prefix}{name}.{metric}_std"] = result[metric]["std"]
        for key in ("brier", "ece", "parse_failure_rate"):
            if result[key] is not None:
                metrics[f"{prefix}{name}.{key}"] = result[key]
        if result["jaccard"] is not None:
            metrics[f"{prefix}{name}.jaccard_mean"] = result["jaccard"]["mean"]
    robust = report["robustness"] or {"models": {}}
    for name, entry in robust["models"].items():
        for row in entry["levels"]:
            for metric in ("auroc", "auprc"):
                if row["level"] > 0 and row[metric] is not None:
                    level = round(row["level"] * 100)
                    metrics[f"{prefix}{name}.{metric}_perm{level}"] = row[metric]["mean"]
    if report["headline"]["average_pct"] is not None:
        metrics[f"{prefix}rl_vs_base_pct"] = report["headline"]["average_pct"]
    return metrics


def _log_mlflow(
    context: AssetExecutionContext,
    tracking: MlflowTracking,
    experiment: str,
    run_name: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    artifacts: Sequence[Path],
    tags: dict[str, str] | None = None,
) -> str:
    import mlflow

    with tracking.run(context, experiment=experiment, run_name=run_name, tags=tags) as run:
        mlflow.log_params({k: str(v) for k, v in params.items()})
        mlflow.log_metrics(dict(metrics))
        for path in artifacts:
            mlflow.log_artifact(str(path), artifact_path="report")
        return run.info.run_id


def _styled(prompts: PromptSet, dataset_task: str, style: str) -> PromptSet:
    """The same patients' prompts asked in a prompting baseline's style."""
    dataset, task = split_partition(dataset_task)
    restyled = [baseline_prompt(u, dataset, task, style) for u in prompts.user]
    return dataclasses.replace(
        prompts, system=tuple(s for s, _ in restyled), user=tuple(u for _, u in restyled)
    )


def _row_generation(config: LLMEvaluationConfig, row: str) -> GenerationSettings | None:
    """A prompting baseline answers in its own guided shape; None: the report's settings. A
    reasoning block that may fill max_new_tokens would leave no room for the answer."""
    if not row.startswith("base_"):
        return None
    style = row.removeprefix("base_")
    needed = config.scaffold.reasoning_tokens + config.scaffold.final_answer_tokens + 16
    if PROMPTING_BASELINES[style].plan == "think" and config.max_new_tokens < needed:
        raise ValueError(
            f"max_new_tokens={config.max_new_tokens} cannot hold the {style} baseline's "
            f"reasoning (scaffold.reasoning_tokens={config.scaffold.reasoning_tokens}) and its "
            f"answer: raise evaluation_report's max_new_tokens to at least {needed} or lower "
            "scaffold.reasoning_tokens"
        )
    return dataclasses.replace(config.generation(), plan=PROMPTING_BASELINES[style].plan)


def _variant_note(variant: Variant, rows: Sequence[str], dataset_task: str) -> list[str]:
    own = variant.report_row
    lines = [
        f"Variant `{variant.name}` (settings {variant.settings_hash()}): {variant.description} "
        f"Its policy is the row `{own}`"
        + (
            f"; {', '.join(f'`{r}`' for r in rows if r != own)} are the policies it starts from."
            if len(rows) > 1
            else "."
        )
    ]
    if own.startswith("base_"):
        lines.append(
            f"Prompting baseline `{own}`: the base model on the same patients and data, asked "
            "another way; it lists no important features, so its Jaccard is 0 by construction."
        )
    if "sft" in rows:
        lines.append(f"sft: the LoRA adapter of sft_checkpoint[{dataset_task}] merged.")
    if "rl" in rows:
        lines.append(
            f"rl: the LoRA adapter of rl_checkpoint[{cell_key(dataset_task, variant.name)}] merged."
        )
    return lines


def _variant_metadata(variant: Variant) -> dict[str, str]:
    """The Dagster metadata naming the variant a report scored."""
    return {
        "variant": variant.name,
        "variant_hash": variant.settings_hash(),
        "variant_row": variant.report_row,
    }


def _auroc(report: Mapping[str, Any], name: str) -> float | None:
    result = report["models"][name]["auroc"]
    return None if result is None else result["mean"]


def _paths_metadata(paths: Mapping[str, Path]) -> dict[str, MetadataValue]:
    return {f"report_{key}": MetadataValue.path(str(path)) for key, path in paths.items()}


@asset(
    partitions_def=cell_partitions,
    group_name="evaluation",
    kinds={"huggingface", "pytorch", "mlflow"},
    deps=[
        *(
            AssetDep(name, partition_mapping=SHARED_STAGE)
            for name in ("llm_prompts", "expert_model", "expert_feature_ranking", "sft_checkpoint")
        ),
        "rl_checkpoint",
    ],
    pool="gpu",
    op_tags=GPU_OP_TAGS,
)
def evaluation_report(
    context: AssetExecutionContext,
    config: EvaluationConfig,
    home: EagrlHome,
    llm: LanguageModel,
    compute: Compute,
    warehouse: Warehouse,
    mlflow_tracking: MlflowTracking,
):
    """A grid cell's policy (and, by default, the policies it starts from) and the expert on the
    dataset-task's test split: bootstrap AUROC/AUPRC, calibration, parse failures, Jaccard with
    the expert, RL's improvement over the base model where the cell trains RL, and AUROC/AUPRC
    with feature order permuted. report.json/.md/.html, logged to MLflow (one experiment per
    dataset-task, a run per variant)."""
    require_passing_upstream_checks(context)
    cell = str(context.partition_key)
    partition, variant_name = split_cell(cell)
    variant = get_variant(variant_name)
    dataset, _ = split_partition(partition)
    adapters = cell_policies(home, partition, variant, config.score_start_policies)
    generation = {row: _row_generation(config, row) for row in adapters}
    test = load_test_prompts(home, partition)
    sample = sample_patients(test, config.max_test_patients, config.sample_seed)
    prompts = PromptSet.from_frame(sample)
    top_k = ranked_top_features(home, partition)
    expert_dir = home.artifact_path("expert_model", partition)
    manifest = json.loads(
        _required(expert_dir / "manifest.json", "expert_model", partition).read_text()
    )
    arrays = load_cohort(home, partition)
    expert, meta = load_expert(expert_dir / manifest["primary"])
    if list(meta["feature_ids"]) != list(arrays.feature_ids):
        raise ValueError(
            f"{expert_dir}: the expert was trained on other features than cohort_dataset"
            f"[{partition}] now holds; materialize expert_model[{partition}] again."
        )

    device = compute.configure_torch(llm=True)
    matcher = feature_matcher(warehouse, dataset)
    sets = _prompt_sets(prompts, config)

    def job(row: str) -> _Job:
        shown = prompts if not row.startswith("base_") else _styled(prompts, partition, row[5:])
        row_sets = sets if shown is prompts else _prompt_sets(shown, config)
        return _Job(row, partition, row_sets, matcher, top_k, generation[row])

    by_adapter: dict[Path | None, list[_Job]] = {}
    for row, adapter in adapters.items():
        by_adapter.setdefault(adapter, []).append(job(row))
    answers = answer_prompts(
        context, llm, home, device, config.generation(), list(by_adapter.items())
    )
    llm_models = list(adapters)

    position = {pid: i for i, pid in enumerate(arrays.patient_ids.tolist())}
    expert_sets = {
        "expert": np.array([position[pid] for pid in prompts.patient_ids]),
        "expert_all_test": np.flatnonzero(arrays.split == "test"),
    }
    models = [answers[(partition, name)][0.0].predictions for name in llm_models]
    robustness: dict[str, dict[float, ModelPredictions]] = {
        name: {lv: answers[(partition, name)][lv].predictions for lv in config.permutation_levels}
        for name in llm_models
    }
    for name, idx in expert_sets.items():
        models.append(expert_predictions(name, expert, arrays, idx, device))
        robustness[name] = expert_robustness(
            name, expert, arrays, idx, config.permutation_levels, config.permutation_seed, device
        )
    if not config.permutation_levels:
        robustness = {}

    n_test, n_llm = len(test), len(prompts)
    k = max((len(v) for v in top_k.values()), default=0)
    notes = [
        f"Test patients: {', '.join(llm_models)} and `expert` are scored on the same seeded, "
        f"label-stratified sample of {n_llm} of the {n_test} test patients (seed "
        f"{config.sample_seed}); `expert_all_test` is the expert on all {n_test}.",
        *_variant_note(variant, llm_models, partition),
        f"Expert: {manifest['primary']}, the primary model of expert_model[{partition}]. "
        f"Jaccard compares each LLM's <Important Features> with the expert's top-{k} features "
        "per patient among the features the patient's prompt shows (expert_feature_ranking, "
        "llm_prompts).",
        f"Base model: {llm.model_dir(home.root)}; a trained policy is it with its LoRA adapter "
        "merged.",
        config.decoding_note(),
        f"Feature-order permutation seed {config.permutation_seed}: each LLM patient's prompt "
        "gets its own permutation; the expert's columns get one permutation per level.",
        *_unpermutable_note(sets),
        *(_training_note(home, cell) if variant.trains_grpo else []),
    ]
    report = build_report(
        f"EAG-RL evaluation: {partition}, variant {variant.name}",
        models,
        robustness,
        notes,
        n_resamples=config.bootstrap_resamples,
        seed=config.bootstrap_seed,
        fallback_probability=config.fallback_probability,
        robustness_resamples=config.robustness_resamples,
    )
    report = {**report, "variant": variant.report_entry()}
    out_dir = home.artifact_dir("evaluation_report", cell)
    paths = write_report(out_dir, report, models, robustness)
    predictions_paths = [
        _write_parquet(_records(answers), out_dir / "llm_predictions.parquet"),
        _write_parquet(
            _expert_records(models[len(llm_models) :], robustness),
            out_dir / "expert_predictions.parquet",
        ),
    ]

    run_id = _log_mlflow(
        context,
        mlflow_tracking,
        f"evaluation/{partition}",
        cell,
        {
            **config.model_dump(),
            "partition": partition,
            "variant": variant.name,
            "device": device,
            "base_model": llm.model_dir(home.root),
            "expert": manifest["primary"],
            **{f"adapter_{name}": path for name, path in adapters.items() if path},
        },
        report_metrics(report),
        [*paths.values(), *predictions_paths],
        tags=variant.mlflow_tags(),
    )
    headline = report["headline"]["average_pct"]
    if headline is not None:
        context.log.info(f"evaluation {cell}: RL vs base {headline} % (average AUROC/AUPRC)")
    return versioned(
        context,
        MaterializeResult(
            metadata={
                "report": MetadataValue.md(paths["md"].read_text(encoding="utf-8")),
                **_paths_metadata(paths),
                **{p.stem: MetadataValue.path(str(p)) for p in predictions_paths},
                **_variant_metadata(variant),
                "headline_rl_vs_base_pct": headline,
                **{f"test_auroc_{m.name}": _auroc(report, m.name) for m in models},
                "test_patients_llm": n_llm,
                "test_patients_all": n_test,
                "guided": config.guided,
                "device": device,
                "mlflow_run_id": run_id,
            }
        ),
        config,
        variant=variant.settings(),
    )


def _cohort_feature_ids(home: EagrlHome, partition: str) -> list[str]:
    path = home.artifacts / "cohort_dataset" / partition / "manifest.json"
    return list(json.loads(_required(path, "cohort_dataset", partition).read_text())["feature_ids"])


def _shared_features_line(transfer: Mapping[str, Any]) -> str:
    def pair(f: Mapping[str, Any]) -> str:
        same = f["source_name"] == f["target_name"]
        text = f["source_name"] if same else f"{f['source_name']} = {f['target_name']}"
        units = f"{f['source_unit'] or '-'} vs {f['target_unit'] or '-'}"
        return text if f["same_unit"] else f"{text} ({units})"

    pairs = ", ".join(pair(f) for f in transfer["shared_features"])
    return (
        f"Features both cohorts hold ({transfer['source']} = {transfer['target']}, matched by "
        f"name; unit labels shown where they differ): {pairs or 'none'}; plus sex and age."
    )


_pair = SpecificPartitionsPartitionMapping(list(GENERALIZATION_PARTITIONS))


@asset(
    partitions_def=variant_partitions,
    group_name="evaluation",
    kinds={"huggingface", "pytorch", "mlflow"},
    deps=[
        *(
            AssetDep(key, partition_mapping=_pair)
            for key in ("cohort_dataset", "llm_prompts", "expert_feature_ranking", "sft_checkpoint")
        ),
        AssetDep("rl_checkpoint", partition_mapping=VARIANT_CELLS),
    ],
    pool="gpu",
    op_tags=GPU_OP_TAGS,
)
def generalization_report(
    context: AssetExecutionContext,
    config: GeneralizationConfig,
    home: EagrlHome,
    llm: LanguageModel,
    compute: Compute,
    warehouse: Warehouse,
    mlflow_tracking: MlflowTracking,
):
    """Zero-shot transfer of one method variant: its policy trained on MIMIC-IV mortality answers
    TJH's test prompts as they are, and the other way round (a prompting baseline, trained on
    nothing, answers each dataset's prompts in its style), by default next to the policies it
    starts from. The expert cannot read the other dataset's inputs: marked not applicable, with
    the shared features."""
    variant = get_variant(str(context.partition_key))
    a, b = GENERALIZATION_PARTITIONS
    cells = {p: str(cell_key(p, variant.name)) for p in GENERALIZATION_PARTITIONS}
    require_passing_upstream_checks(context, partitions=[a, b, *cells.values()])
    adapters = {
        p: cell_policies(home, p, variant, config.score_start_policies)
        for p in GENERALIZATION_PARTITIONS
    }
    rows = list(adapters[a])
    generation = {row: _row_generation(config, row) for row in rows}
    datasets = {p: split_partition(p)[0] for p in GENERALIZATION_PARTITIONS}
    tests = {p: load_test_prompts(home, p) for p in GENERALIZATION_PARTITIONS}
    samples = {
        p: sample_patients(t, config.max_test_patients, config.sample_seed)
        for p, t in tests.items()
    }
    top_k = {p: ranked_top_features(home, p) for p in GENERALIZATION_PARTITIONS}
    feature_ids = {p: _cohort_feature_ids(home, p) for p in GENERALIZATION_PARTITIONS}
    dictionaries = {
        p: feature_dictionary(warehouse, datasets[p]) for p in GENERALIZATION_PARTITIONS
    }
    matchers = {p: feature_matcher(warehouse, datasets[p]) for p in GENERALIZATION_PARTITIONS}
    prompts = {p: PromptSet.from_frame(s) for p, s in samples.items()}
    sets = {p: _prompt_sets(prompts[p], config) for p in GENERALIZATION_PARTITIONS}

    def job(row: str, target: str) -> _Job:
        shown = sets[target]
        if row.startswith("base_"):  # a prompting baseline asks the same patients its way
            shown = _prompt_sets(_styled(prompts[target], target, row[5:]), config)
        return _Job(row, target, shown, matchers[target], top_k[target], generation[row])

    directions = [(a, b), (b, a)]
    untrained = [row for row in rows if adapters[a][row] is None]  # the base model, any style
    loads: list[tuple[Path | None, list[_Job]]] = []
    if untrained:
        loads.append((None, [job(row, target) for row in untrained for target in (b, a)]))
    for source, target in directions:
        loads += [
            (adapters[source][row], [job(row, target)]) for row in rows if row not in untrained
        ]
    device = compute.configure_torch(llm=True)
    answers = answer_prompts(context, llm, home, device, config.generation(), loads)

    transfers = {
        f"{s}_to_{t}": expert_transfer(
            s,
            t,
            shared_features(dictionaries[s], feature_ids[s], dictionaries[t], feature_ids[t]),
            len(feature_ids[s]),
            len(feature_ids[t]),
        )
        for s, t in directions
    }
    transfer_ab = transfers[f"{a}_to_{b}"]
    preface = [
        _variant_note(variant, rows, a)[0],
        f"Policies trained on one partition answer the other's test prompts unchanged; base is "
        f"{llm.model_dir(home.root)} zero-shot on the same prompts (a prompting baseline: the "
        "same model asked its way, trained on neither dataset).",
        f"Expert: {transfer_ab['reason']}",
        _shared_features_line(transfer_ab),
    ]
    sections: dict[str, ReportSection] = {}
    metrics: dict[str, float] = {}
    for source, target in directions:
        key = f"{source}_to_{target}"
        models = [answers[(target, row)][0.0].predictions for row in rows]
        robustness = {
            row: {lv: answers[(target, row)][lv].predictions for lv in config.permutation_levels}
            for row in rows
            if config.permutation_levels
        }
        trained = [
            f"{row}: the LoRA adapter of {POLICY_ASSETS[row]}"
            f"[{source if row == 'sft' else cells[source]}] merged into the base model"
            for row in rows
            if row not in untrained
        ]
        notes = [
            f"Test patients: a seeded, label-stratified sample of {len(samples[target])} of the "
            f"{len(tests[target])} {target} test patients (seed {config.sample_seed}).",
            *([f"{'; '.join(trained)}."] if trained else []),
            f"Answers parsed with {datasets[target]}'s feature dictionary; Jaccard against "
            f"expert_feature_ranking[{target}]'s top-k among the features each prompt shows.",
            config.decoding_note(),
            f"Expert trained on {source}: not applicable on {target} (see the top of the report).",
            *_unpermutable_note(sets[target]),
        ]
        report = build_report(
            f"Trained on {source}, tested zero-shot on {target} (variant {variant.name})",
            models,
            robustness or None,
            notes,
            n_resamples=config.bootstrap_resamples,
            seed=config.bootstrap_seed,
            fallback_probability=config.fallback_probability,
            robustness_resamples=config.robustness_resamples,
        )
        sections[key] = ReportSection(report, models, robustness or None)
        metrics.update(report_metrics(report, f"{datasets[source]}_to_{datasets[target]}."))

    out_dir = home.artifact_dir("generalization_report", variant.name)
    paths = write_combined_report(
        out_dir,
        f"EAG-RL generalization: {a} <-> {b}, variant {variant.name}",
        preface,
        sections,
        {"variant": variant.report_entry(), "expert": transfers},
    )
    predictions_path = _write_parquet(_records(answers), out_dir / "llm_predictions.parquet")
    run_id = _log_mlflow(
        context,
        mlflow_tracking,
        "evaluation/generalization",
        f"generalization-{datasets[a]}-{datasets[b]}-{variant.name}",
        {
            **config.model_dump(),
            "partitions": ",".join(GENERALIZATION_PARTITIONS),
            "variant": variant.name,
            "device": device,
            "base_model": llm.model_dir(home.root),
            "shared_features": len(transfer_ab["shared_features"]),
        },
        metrics,
        [*paths.values(), predictions_path],
        tags=variant.mlflow_tags(),
    )
    metadata: dict[str, Any] = {
        "report": MetadataValue.md(paths["md"].read_text(encoding="utf-8")),
        **_paths_metadata(paths),
        "llm_predictions": MetadataValue.path(str(predictions_path)),
        **_variant_metadata(variant),
        "shared_features": len(transfer_ab["shared_features"]),
        "expert": "not applicable (see report)",
        "guided": config.guided,
        "device": device,
        "mlflow_run_id": run_id,
    }
    for key, section in sections.items():
        metadata[f"{key}_rl_vs_base_pct"] = section.report["headline"]["average_pct"]
        for row in rows:
            metadata[f"{key}_test_auroc_{row}"] = _auroc(section.report, row)
    return versioned(
        context, MaterializeResult(metadata=metadata), config, variant=variant.settings()
    )


class ComparisonConfig(Config):
    methods: list[str] = Field(
        default_factory=list,
        description="Rows of the comparison, in order: variants (eagrl_pipeline/variants.py) "
        "and 'expert'; empty: every variant any cell evaluated, at least "
        f"{list(GRID_METHODS)}. A row whose cell was not materialized reads 'not materialized'.",
    )
    reference: str = Field(
        default=DEFAULT_VARIANT,
        description="The row every other is compared with (paired bootstrap on the same test "
        "patients): eagrl, EAG-RL's policy.",
    )
    bootstrap_resamples: int = Field(default=1000, ge=0, description="Paired resamples.")
    bootstrap_seed: int = Field(default=42, description="Seed of the paired bootstrap.")
    case_patients_per_class: int = Field(
        default=1, ge=0, description="Case studies: seeded test patients of each label."
    )
    case_disagreements: int = Field(
        default=2, ge=0, description="Case studies: the patients the methods disagree on most."
    )
    case_seed: int = Field(default=0, description="Seed of the case studies' draw.")

    @model_validator(mode="after")
    def _known_rows(self) -> "ComparisonConfig":
        unknown = [m for m in [*self.methods, self.reference] if m not in (*VARIANTS, "expert")]
        if unknown:
            raise ValueError(
                f"comparison rows {unknown} are not variants: choose from {[*VARIANTS, 'expert']}"
            )
        if self.methods and self.reference not in self.methods:
            raise ValueError(
                f"reference {self.reference!r} is not among methods {self.methods}: add it to "
                "methods or choose one of them"
            )
        return self


EVALUATION_FILES = ("report.json", "llm_predictions.parquet", "expert_predictions.parquet")


def _evaluation_results(home: EagrlHome, cell: str) -> PartitionResults | None:
    """A grid cell's evaluation outputs, or None where they were never written."""
    folder = home.artifact_path("evaluation_report", cell)
    files = [folder / name for name in EVALUATION_FILES]
    if not all(path.exists() for path in files):
        return None
    report = json.loads(files[0].read_text())
    predictions = pd.concat([pd.read_parquet(path) for path in files[1:]], ignore_index=True)
    return PartitionResults(report, predictions)


def _case_studies(
    home: EagrlHome,
    partitions: Mapping[str, PartitionResults | None],
    methods: Sequence[str],
    config: ComparisonConfig,
) -> list[CaseStudy]:
    """A few test patients per evaluated dataset-task, every method's answer side by side."""
    cases: list[CaseStudy] = []
    for dataset_task, results in partitions.items():
        prompts = home.artifact_path("llm_prompts", dataset_task) / "prompts.parquet"
        if results is None or not prompts.exists():
            continue
        cases += build_case_studies(
            dataset_task,
            results.predictions,
            pd.read_parquet(prompts, columns=["patient_id", "user"]),
            methods,
            per_class=config.case_patients_per_class,
            disagreements=config.case_disagreements,
            seed=config.case_seed,
        )
    return cases


def _provenance(
    context: AssetExecutionContext, partition: str, asset_name: str = "evaluation_report"
) -> dict[str, str | None]:
    """The partition (a grid cell, or a variant's generalization), Dagster run and MLflow run
    behind a comparison row."""
    run_id, mlflow_run_id = latest_metadata(
        context.instance, AssetKey(asset_name), partition, "mlflow_run_id"
    )
    return {
        "asset": asset_name,
        "partition": partition,
        "dagster_run_id": run_id,
        "mlflow_run_id": mlflow_run_id,
    }


@asset(
    group_name="evaluation",
    kinds={"mlflow"},
    deps=["evaluation_report", "generalization_report"],
)
def comparison_report(
    context: AssetExecutionContext,
    config: ComparisonConfig,
    home: EagrlHome,
    mlflow_tracking: MlflowTracking,
):
    """Methods (the grid's variants and the expert) x dataset-tasks from whatever grid cells
    were evaluated: AUROC/AUPRC (bootstrap mean ± std), each row's paired bootstrap difference
    from the reference row (eagrl) on the same test patients, robustness per permutation level,
    parse rate and Jaccard, the generalization directions; a cell never materialized says so.
    Markdown, JSON and a self-contained HTML page with a plot per metric; every cell names the
    grid cell, Dagster run and MLflow run it was read from. Beside it, case studies
    (case_studies.md/.html/.json): a few seeded test patients per dataset-task and those the
    methods disagree on most, with the features shown, each method's steps, its important
    features against the expert's top-k and its probability."""
    partitions: dict[str, PartitionResults | None] = {}
    sources: dict[str, dict[str, str]] = {}
    for dataset_task in COHORTS:
        cells = {v: _evaluation_results(home, str(cell_key(dataset_task, v))) for v in VARIANTS}
        partitions[dataset_task], sources[dataset_task] = variant_rows(cells)
    methods = config.methods or None
    if methods is None:
        found = scored_methods(partitions)
        methods = [*found, *(m for m in GRID_METHODS if m not in found)]
        methods = [m for m in (*VARIANTS, "expert") if m in methods]
    transfer_paths = {
        v: home.artifact_path("generalization_report", v) / "report.json" for v in VARIANTS
    }
    generalization, transfer_sources = variant_generalization(
        {v: json.loads(path.read_text()) if path.exists() else None
         for v, path in transfer_paths.items()}
    )  # fmt: skip
    comparison = build_comparison(
        partitions,
        methods=methods,
        reference=config.reference,
        generalization=generalization,
        n_resamples=config.bootstrap_resamples,
        seed=config.bootstrap_seed,
    )
    comparison["provenance"] = {
        dataset_task: {
            row: _provenance(context, str(cell_key(dataset_task, variant)))
            for row, variant in rows.items()
        }
        for dataset_task, rows in sources.items()
        if rows
    }
    if transfer_sources:
        comparison["provenance"]["generalization"] = {
            row: _provenance(context, variant, "generalization_report")
            for row, variant in transfer_sources.items()
        }
    texts = {
        "json": json.dumps(comparison, indent=2, allow_nan=False) + "\n",
        **render_comparison(comparison),
    }
    cases = _case_studies(home, partitions, methods, config)
    out_dir = home.artifact_dir("comparison_report")
    paths = write_texts(out_dir, texts)
    case_paths = write_texts(
        out_dir,
        {
            "json": json.dumps(case_studies_json(cases), indent=2, default=str) + "\n",
            **render_case_studies(cases, "EAG-RL case studies: methods side by side per patient"),
        },
        stem="case_studies",
    )
    cells = [c for row in comparison["cells"].values() for c in row.values()]
    materialized = sum(c["status"] == "ok" for c in cells)
    run_id = _log_mlflow(
        context,
        mlflow_tracking,
        "comparison",
        "comparison",
        config.model_dump(),
        {"cells_materialized": materialized, "cells_missing": len(cells) - materialized},
        [*paths.values(), *case_paths.values()],
    )
    return versioned(
        context,
        MaterializeResult(
            metadata={
                "report": MetadataValue.md(paths["md"].read_text(encoding="utf-8")),
                **_paths_metadata(paths),
                "case_studies": MetadataValue.path(str(case_paths["html"])),
                "case_study_patients": len(cases),
                "cells_materialized": materialized,
                "cells_missing": len(cells) - materialized,
                "rows": ", ".join(methods),
                "partitions": ", ".join(p for p, r in partitions.items() if r is not None),
                "mlflow_run_id": run_id,
            }
        ),
        config,
    )
