"""Reasoning stage 1 data: the base language model, the patient prompts, the base model's
zero-shot predictions (the "base" row of the reports) and, later, the MCTS trajectory sets."""

import pandas as pd
from dagster import (
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field, field_validator

from assets.partitions import cohort_partitions, split_partition
from eagrl_pipeline.evaluation.metrics import bootstrap_metrics
from eagrl_pipeline.llm.base_model import validate_model_dir
from eagrl_pipeline.paths import atomic_path
from eagrl_pipeline.prompts import FeatureMatcher, PromptConfig, build_prompts, parse_response
from eagrl_pipeline.prompts.features import dictionary_aliases
from eagrl_pipeline.rewards import RewardWeights, reward_parts
from resources import Compute, EagrlHome, LanguageModel, Warehouse


@asset(group_name="reasoning", code_version="1", kinds={"huggingface"})
def base_language_model(context: AssetExecutionContext, home: EagrlHome, llm: LanguageModel):
    """The local model folder every LLM stage loads, validated offline (weights, tokenizer,
    chat template). By default SmolLM2-135M-Instruct, converted once from its GGUF package."""
    path = llm.model_dir(home.root)
    info = validate_model_dir(path)
    context.log.info(f"base model {info.architecture} at {path}: {info.n_parameters:,} params")
    return MaterializeResult(
        metadata={
            **info.as_metadata(),
            "path": MetadataValue.path(str(path)),
            "chat_sample": MetadataValue.md(f"```\n{info.chat_sample}\n```"),
        }
    )


def feature_dictionary(warehouse: Warehouse, dataset: str) -> pd.DataFrame:
    return warehouse.query(
        "SELECT * FROM feature_dictionary WHERE dataset = ? ORDER BY rowid", [dataset]
    )


class PromptsConfig(Config):
    max_visits: int | None = Field(default=None, description="Show each patient's last N visits.")
    feature_filter: str = Field(
        default="measured", description="'all', or 'measured': drop never-measured features."
    )
    max_tokens: int | None = Field(
        default=1024,
        description="Token budget per prompt (the model's tokenizer counts); over it, the "
        "oldest visits and then the least-measured features are dropped and reported. CPU "
        "default; raise it (e.g. 4096) for a 7B model on a GPU.",
    )
    include_example: bool = Field(default=True, description="Add the worked response example.")

    @field_validator("feature_filter")
    @classmethod
    def _known_filter(cls, value: str) -> str:
        if value not in ("all", "measured"):
            raise ValueError(f"feature_filter {value!r}: use 'all' or 'measured'")
        return value


@asset(
    partitions_def=cohort_partitions,
    group_name="reasoning",
    code_version="1",
    kinds={"python", "parquet"},
    deps=["cohort_dataset", "base_language_model"],
)
def llm_prompts(
    context: AssetExecutionContext,
    config: PromptsConfig,
    home: EagrlHome,
    llm: LanguageModel,
    warehouse: Warehouse,
):
    """One prompt per patient of every split, with token counts from the model's tokenizer."""
    from transformers import AutoTokenizer

    partition = context.partition_key
    dataset, task = split_partition(partition)
    visits = pd.read_parquet(home.artifact_dir("cohort_dataset", partition) / "visits.parquet")
    tokenizer = AutoTokenizer.from_pretrained(llm.model_dir(home.root), local_files_only=True)
    prompts = build_prompts(
        visits,
        feature_dictionary(warehouse, dataset),
        dataset,
        task,
        PromptConfig(
            max_visits=config.max_visits,
            feature_filter=config.feature_filter,
            max_tokens=config.max_tokens,
            include_example=config.include_example,
        ),
        count_tokens=lambda text: len(tokenizer.encode(text, add_special_tokens=False)),
    )
    target = home.artifact_dir("llm_prompts", partition) / "prompts.parquet"
    with atomic_path(target) as tmp:
        prompts.to_parquet(tmp, index=False)
    tokens = prompts["n_tokens"]
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(target)),
            "prompts": len(prompts),
            **{f"prompts_{s}": int(n) for s, n in prompts["split"].value_counts().items()},
            "tokens_mean": float(tokens.mean()),
            "tokens_max": int(tokens.max()),
            "truncated": int(prompts["truncated"].sum()),
            "over_budget": int((~prompts["fits_budget"]).sum()),
            "example": MetadataValue.md(f"```\n{prompts['prompt'].iloc[0]}\n```"),
        }
    )


class BasePredictionsConfig(Config):
    splits: list[str] = Field(default=["val", "test"], description="Splits to predict.")
    max_patients_per_split: int | None = Field(
        default=8,
        description="A seeded, label-stratified sample per split (empty: every patient). The "
        "CPU default keeps `make run` short; use all patients on a GPU.",
    )
    max_new_tokens: int = Field(default=160, description="Generated tokens per answer.")
    batch_size: int = Field(default=8, description="Prompts per generate call.")
    seed: int = Field(default=0, description="Seed of the sample and of generation.")
    bootstrap_resamples: int = Field(default=200, description="Bootstrap resamples for AUROC.")


def sample_patients(frame: pd.DataFrame, per_split: int | None, seed: int) -> pd.DataFrame:
    """A seeded sample per split that keeps both labels when it can (so AUROC is defined)."""
    if per_split is None:
        return frame
    parts = []
    for _, group in frame.groupby("split", sort=False):
        n = min(per_split, len(group))
        positives, negatives = group[group["label"] == 1], group[group["label"] != 1]
        n_pos = min(len(positives), max(1, round(n * len(positives) / len(group))))
        n_neg = min(n - n_pos, len(negatives))
        parts += [positives.sample(n_pos, random_state=seed)]
        parts += [negatives.sample(n_neg, random_state=seed)]
    return pd.concat(parts).sort_values("patient_id").reset_index(drop=True)


def expert_top_features(home: EagrlHome, partition: str) -> dict[int, list[str]]:
    """Each patient's expert top-k feature names (the R_att target)."""
    ranking = pd.read_parquet(
        home.artifact_dir("expert_feature_ranking", partition) / "ranking.parquet",
        columns=["patient_id", "feature_name", "rank", "in_top_k"],
    )
    top = ranking[ranking["in_top_k"]].sort_values(["patient_id", "rank"])
    return top.groupby("patient_id")["feature_name"].agg(list).to_dict()


@asset(
    partitions_def=cohort_partitions,
    group_name="reasoning",
    code_version="1",
    kinds={"huggingface", "parquet"},
    deps=["llm_prompts", "expert_feature_ranking"],
    pool="gpu",
)
def base_llm_predictions(
    context: AssetExecutionContext,
    config: BasePredictionsConfig,
    home: EagrlHome,
    llm: LanguageModel,
    compute: Compute,
    warehouse: Warehouse,
):
    """Zero-shot answers of the base model on validation and test prompts (batched greedy
    generation), parsed and scored with the EAG-RL reward parts."""
    from eagrl_pipeline.llm.generation import generate_batch, load_model

    partition = context.partition_key
    dataset, _ = split_partition(partition)
    prompts = pd.read_parquet(home.artifact_dir("llm_prompts", partition) / "prompts.parquet")
    prompts = sample_patients(
        prompts[prompts["split"].isin(config.splits)], config.max_patients_per_split, config.seed
    )
    device = compute.configure_torch()
    model, tokenizer = load_model(
        llm.model_dir(home.root), device, llm.dtype, llm.attn_implementation
    )
    messages = [
        [{"role": "system", "content": s}, {"role": "user", "content": u}]
        for s, u in zip(prompts["system"], prompts["user"], strict=True)
    ]
    results = generate_batch(
        model,
        tokenizer,
        messages,
        max_new_tokens=config.max_new_tokens,
        do_sample=False,
        seed=config.seed,
        batch_size=config.batch_size,
    )
    dictionary = feature_dictionary(warehouse, dataset)
    matcher = FeatureMatcher.build(
        dictionary["feature_name"].tolist(), dictionary_aliases(dictionary, dataset)
    )
    expert_top = expert_top_features(home, partition)
    weights = RewardWeights()
    rows = []
    for row, result in zip(prompts.itertuples(), results, strict=True):
        parsed = parse_response(result.text, matcher)
        parts = reward_parts(parsed, row.label, expert_top.get(row.patient_id, []), weights)
        rows.append(
            {
                "patient_id": row.patient_id,
                "split": row.split,
                "label": row.label,
                "completion": result.text,
                "n_new_tokens": result.n_new_tokens,
                "probability": parsed.probability,
                "valid": parsed.is_valid,
                "errors": "; ".join(parsed.errors),
                "important_features": list(parsed.important_features),
                "r_cls": parts.r_cls,
                "r_att": parts.r_att,
                "r_format": parts.r_format,
                "reward": parts.total,
            }
        )
    predictions = pd.DataFrame(rows)
    target = home.artifact_dir("base_llm_predictions", partition) / "predictions.parquet"
    with atomic_path(target) as tmp:
        predictions.to_parquet(tmp, index=False)

    metadata: dict[str, object] = {
        "path": MetadataValue.path(str(target)),
        "patients": len(predictions),
        "parse_failure_rate": float(1.0 - predictions["valid"].mean()),
        "mean_reward": float(predictions["reward"].mean()),
        "mean_jaccard_vs_expert": float(predictions["r_att"].mean()),
        "new_tokens_mean": float(predictions["n_new_tokens"].mean()),
        "device": device,
    }
    test = predictions[(predictions["split"] == "test") & predictions["valid"]]
    if test["label"].nunique() == 2:
        est = bootstrap_metrics(
            test["label"], test["probability"], n_resamples=config.bootstrap_resamples, seed=42
        )
        metadata["test_auroc_parsed"] = est["auroc"].mean
        metadata["test_auroc_parsed_std"] = est["auroc"].std
    first = predictions["completion"].iloc[0] if len(predictions) else ""
    metadata["example_completion"] = MetadataValue.md(f"```\n{first}\n```")
    context.log.info(
        f"base predictions {partition}: {len(predictions)} patients, parse failures "
        f"{metadata['parse_failure_rate']:.0%}, mean reward {metadata['mean_reward']:.3f}"
    )
    return MaterializeResult(metadata=metadata)
