"""Expert EHR models per cohort partition, tracked in MLflow, and their per-patient feature
rankings: the target of EAG-RL's attention-alignment reward."""

import json

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field, field_validator

from assets.gates import require_passing_upstream_checks
from assets.llm_inputs import load_cohort
from assets.partitions import cohort_partitions, split_partition
from assets.tags import GPU_OP_TAGS
from assets.versioning import versioned
from eagrl_pipeline.evaluation.metrics import bootstrap_metrics, brier_score
from eagrl_pipeline.experts import (
    MODEL_NAMES,
    ExpertConfig,
    feature_importance,
    load_expert,
    predict_proba,
    save_expert,
    train_expert,
)
from eagrl_pipeline.paths import atomic_path
from resources import Compute, EagrlHome, MlflowTracking, Warehouse


class ExpertModelConfig(Config):
    models: list[str] = Field(
        default=["concare"],
        description="Experts to train; the first is the primary one whose ranking guides the "
        "LLM. Several enable multi-expert rank aggregation in expert_feature_ranking.",
    )
    seed: int = Field(default=42, description="Seed of initialisation, dropout and batches.")
    max_epochs: int | None = Field(default=None, description="Empty: the dataset default.")
    hidden_dim: int | None = Field(default=None, description="Empty: the dataset default.")
    lr: float | None = Field(default=None, description="AdamW learning rate; empty: default.")
    patience: int | None = Field(default=None, description="Early-stopping patience (epochs).")
    bootstrap_resamples: int = Field(default=1000, description="Bootstrap resamples of test.")
    bootstrap_seed: int = Field(default=42, description="Seed of the bootstrap.")
    val_auroc_floor: float = Field(
        default=0.6, description="Quality gate: the primary expert's validation AUROC floor."
    )
    register_model: bool = Field(
        default=True, description="Register the primary expert in the MLflow model registry."
    )

    @field_validator("models")
    @classmethod
    def _known_models(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in MODEL_NAMES]
        if not value or unknown:
            raise ValueError(f"models {value}: choose one or more of {list(MODEL_NAMES)}")
        return value

    def expert_config(self, dataset: str) -> ExpertConfig:
        overrides = {
            key: getattr(self, key)
            for key in ("max_epochs", "hidden_dim", "lr", "patience")
            if getattr(self, key) is not None
        }
        return ExpertConfig.for_dataset(dataset, seed=self.seed, **overrides)


@asset(
    partitions_def=cohort_partitions,
    group_name="experts",
    kinds={"pytorch", "mlflow"},
    deps=["cohort_dataset"],
    pool="gpu",
    op_tags=GPU_OP_TAGS,
    check_specs=[
        AssetCheckSpec(
            "validation_auroc_floor",
            asset="expert_model",
            blocking=True,
            description="The primary expert's validation AUROC is above the configured floor.",
        )
    ],
)
def expert_model(
    context: AssetExecutionContext,
    config: ExpertModelConfig,
    home: EagrlHome,
    compute: Compute,
    mlflow_tracking: MlflowTracking,
):
    """Train the configured experts, evaluate on the test split (bootstrap AUROC/AUPRC, Brier),
    log everything to one MLflow run and register the primary expert."""
    require_passing_upstream_checks(context)
    import mlflow
    import mlflow.pytorch
    import torch

    partition = context.partition_key
    dataset, _ = split_partition(partition)
    arrays = load_cohort(home, partition)
    device = compute.configure_torch()
    expert_config = config.expert_config(dataset)
    out_dir = home.artifact_dir("expert_model", partition)
    test_idx = np.flatnonzero(arrays.split == "test")
    results: dict[str, dict[str, object]] = {}
    with mlflow_tracking.run(
        context, experiment=f"experts/{partition}", run_name=f"{config.models[0]}-{partition}"
    ) as parent:
        mlflow.log_params({"models": ",".join(config.models), "device": device})
        mlflow.log_params({f"expert.{k}": v for k, v in expert_config.to_dict().items()})
        for name in config.models:
            with mlflow.start_run(
                run_name=name, nested=True, experiment_id=parent.info.experiment_id
            ):

                def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
                    mlflow.log_metrics(metrics, step=epoch)

                trained = train_expert(
                    arrays, name, expert_config, device=device, on_epoch=log_epoch
                )
                probs = predict_proba(trained, arrays, test_idx, device=device)
                estimates = bootstrap_metrics(
                    arrays.y[test_idx],
                    probs,
                    n_resamples=config.bootstrap_resamples,
                    seed=config.bootstrap_seed,
                )
                best = next(
                    (h for h in trained.history if int(h["epoch"]) == trained.best_epoch), {}
                )
                summary = {
                    "test_auroc": estimates["auroc"].as_dict(),
                    "test_auprc": estimates["auprc"].as_dict(),
                    "test_brier": brier_score(arrays.y[test_idx], probs),
                    "val_auroc": float(best.get("val_auroc", float("nan"))),
                    "best_epoch": trained.best_epoch,
                    "n_parameters": trained.n_parameters,
                    "train_seconds": trained.train_seconds,
                }
                mlflow.log_metrics(
                    {
                        "test_auroc_mean": summary["test_auroc"]["mean"],
                        "test_auroc_std": summary["test_auroc"]["std"],
                        "test_auprc_mean": summary["test_auprc"]["mean"],
                        "test_auprc_std": summary["test_auprc"]["std"],
                        "test_brier": summary["test_brier"],
                        "best_val_auroc": summary["val_auroc"],
                    }
                )
                save_expert(trained, out_dir / name)
                mlflow.log_artifacts(str(out_dir / name), artifact_path="expert")
                results[name] = summary
                if name == config.models[0]:
                    primary = trained
        primary_name = config.models[0]
        head = results[primary_name]
        mlflow.log_metrics(
            {
                "test_auroc_mean": head["test_auroc"]["mean"],
                "test_auprc_mean": head["test_auprc"]["mean"],
                "best_val_auroc": head["val_auroc"],
            }
        )
        version = None
        if config.register_model:
            info = mlflow.pytorch.log_model(
                primary.model,
                name="model",
                registered_model_name=f"eagrl-expert-{partition}",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                serialization_format="pickle",
            )
            version = getattr(info, "registered_model_version", None)
        run_id = parent.info.run_id
    manifest = {"primary": primary_name, "models": results, "mlflow_run_id": run_id}
    with atomic_path(out_dir / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))

    auroc, auprc = head["test_auroc"], head["test_auprc"]
    table = "\n".join(
        [
            "| model | test AUROC | test AUPRC | Brier | val AUROC | epochs |",
            "|---|---|---|---|---|---|",
        ]
        + [
            f"| {m} | {r['test_auroc']['mean']:.4f} ± {r['test_auroc']['std']:.4f} | "
            f"{r['test_auprc']['mean']:.4f} ± {r['test_auprc']['std']:.4f} | "
            f"{r['test_brier']:.4f} | {r['val_auroc']:.4f} | {r['best_epoch']} |"
            for m, r in results.items()
        ]
    )
    yield versioned(
        context,
        MaterializeResult(
            metadata={
                "primary": primary_name,
                "test_auroc_mean": auroc["mean"],
                "test_auroc_std": auroc["std"],
                "test_auprc_mean": auprc["mean"],
                "test_auprc_std": auprc["std"],
                "test_brier": head["test_brier"],
                "val_auroc": head["val_auroc"],
                "results": MetadataValue.md(table),
                "mlflow_run_id": run_id,
                "registered_version": str(version) if version is not None else "",
                "device": device,
                "path": MetadataValue.path(str(out_dir)),
            }
        ),
        config,
        compute=compute.expert_version_settings(),
    )
    yield AssetCheckResult(
        check_name="validation_auroc_floor",
        passed=bool(head["val_auroc"] >= config.val_auroc_floor),
        severity=AssetCheckSeverity.ERROR,
        metadata={"val_auroc": head["val_auroc"], "floor": config.val_auroc_floor},
    )


class FeatureRankingConfig(Config):
    top_k: int = Field(default=5, description="Features per patient the rewards compare with.")
    aggregation: str = Field(
        default="primary",
        description="'primary': the primary expert's scores; 'mean_rank': the mean rank over "
        "every trained expert (multi-expert guidance, future work in the paper).",
    )

    @field_validator("aggregation")
    @classmethod
    def _known_aggregation(cls, value: str) -> str:
        if value not in ("primary", "mean_rank"):
            raise ValueError(f"aggregation {value!r}: use 'primary' or 'mean_rank'")
        return value


def aggregate_scores(score_sets: list[np.ndarray]) -> np.ndarray:
    """Mean rank over experts, mapped back to normalised scores (rank 1 scores highest)."""
    n_features = score_sets[0].shape[1]
    ranks = np.mean(
        [np.argsort(np.argsort(-s, axis=1, kind="stable"), axis=1) for s in score_sets], axis=0
    )
    strength = n_features - ranks
    return strength / strength.sum(axis=1, keepdims=True)


@asset(
    partitions_def=cohort_partitions,
    group_name="experts",
    kinds={"pytorch", "parquet"},
    deps=["expert_model"],
    check_specs=[
        AssetCheckSpec(
            "ranking_valid",
            asset="expert_feature_ranking",
            blocking=True,
            description="Every patient ranked, only dictionary features, finite scores summing "
            "to 1, ranks a permutation.",
        )
    ],
)
def expert_feature_ranking(
    context: AssetExecutionContext,
    config: FeatureRankingConfig,
    home: EagrlHome,
    compute: Compute,
    warehouse: Warehouse,
):
    """For every patient of every split, the ranked features with their scores (parquet)."""
    require_passing_upstream_checks(context)
    partition = context.partition_key
    dataset, _ = split_partition(partition)
    arrays = load_cohort(home, partition)
    expert_dir = home.artifact_dir("expert_model", partition)
    manifest = json.loads((expert_dir / "manifest.json").read_text())
    names = [manifest["primary"]] + [m for m in manifest["models"] if m != manifest["primary"]]
    if config.aggregation == "primary":
        names = names[:1]
    device = compute.configure_torch()
    score_sets, methods = [], []
    for name in names:
        model, _ = load_expert(expert_dir / name)
        scores, method = feature_importance(model, arrays, device=device)
        score_sets.append(scores)
        methods.append(f"{name}:{method}")
    scores = score_sets[0] if len(score_sets) == 1 else aggregate_scores(score_sets)

    dictionary = warehouse.query(
        "SELECT feature_id, feature_name FROM feature_dictionary WHERE dataset = ?", [dataset]
    )
    names_by_id = dict(zip(dictionary["feature_id"], dictionary["feature_name"], strict=True))
    n_patients, n_features = scores.shape
    order = np.argsort(-scores, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(1, n_features + 1)[None, :], axis=1)
    feature_ids = np.asarray(arrays.feature_ids)
    table = pd.DataFrame(
        {
            "patient_id": np.repeat(arrays.patient_ids, n_features),
            "split": np.repeat(arrays.split, n_features),
            "label": np.repeat(arrays.y, n_features),
            "feature_id": np.tile(feature_ids, n_patients),
            "feature_name": [names_by_id.get(f) for f in np.tile(feature_ids, n_patients)],
            "score": scores.ravel(),
            "rank": rank.ravel(),
        }
    )
    table["in_top_k"] = table["rank"] <= config.top_k
    target = home.artifact_dir("expert_feature_ranking", partition) / "ranking.parquet"
    with atomic_path(target) as tmp:
        table.to_parquet(tmp, index=False)

    sums = table.groupby("patient_id")["score"].sum()
    problems = []
    if set(table["patient_id"]) != set(arrays.patient_ids.tolist()):
        problems.append("not every cohort patient is ranked")
    unknown = sorted(set(table["feature_id"]) - set(names_by_id))
    if unknown:
        problems.append(f"features outside the dictionary: {unknown[:5]}")
    if not np.isfinite(table["score"]).all() or (table["score"] < 0).any():
        problems.append("non-finite or negative scores")
    if not np.allclose(sums.to_numpy(), 1.0, atol=1e-6):
        problems.append(f"scores do not sum to 1 for {(~np.isclose(sums, 1.0)).sum()} patients")
    ranks_ok = table.groupby("patient_id")["rank"].agg(
        lambda r: sorted(r) == list(range(1, n_features + 1))
    )
    if not ranks_ok.all():
        problems.append("ranks are not a permutation")
    top = table[table["in_top_k"]].groupby("feature_id").size().sort_values(ascending=False)
    yield versioned(
        context,
        MaterializeResult(
            metadata={
                "path": MetadataValue.path(str(target)),
                "patients": n_patients,
                "features": n_features,
                "top_k": config.top_k,
                "method": ", ".join(methods),
                "aggregation": config.aggregation,
                "most_often_in_top_k": MetadataValue.json(
                    {names_by_id.get(k, k): int(v) for k, v in top.head(10).items()}
                ),
            }
        ),
        config,
        compute=compute.expert_version_settings(),
    )
    yield AssetCheckResult(
        check_name="ranking_valid",
        passed=not problems,
        severity=AssetCheckSeverity.ERROR,
        metadata={"problems": "; ".join(problems) or "none", "patients": n_patients},
    )
