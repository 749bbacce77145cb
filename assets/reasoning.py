"""Reasoning stage 1 data: the base language model, the patient prompts, the base model's
zero-shot predictions (the "base" row of the reports) and the MCTS trajectory sets."""

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

from assets.partitions import cohort_partitions, split_partition
from assets.tags import GPU_OP_TAGS
from eagrl_pipeline.evaluation.metrics import bootstrap_metrics
from eagrl_pipeline.llm.base_model import validate_model_dir
from eagrl_pipeline.paths import atomic_path
from eagrl_pipeline.prompts import FeatureMatcher, PromptConfig, build_prompts, parse_response
from eagrl_pipeline.prompts.features import dictionary_aliases
from eagrl_pipeline.rewards import RewardWeights
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


def feature_matcher(warehouse: Warehouse, dataset: str) -> FeatureMatcher:
    """Matches the feature names a model writes to the dataset's dictionary (with aliases)."""
    dictionary = feature_dictionary(warehouse, dataset)
    return FeatureMatcher.build(
        dictionary["feature_name"].tolist(), dictionary_aliases(dictionary, dataset)
    )


class PromptsConfig(Config):
    max_visits: int | None = Field(default=None, description="Show each patient's last N visits.")
    feature_filter: str = Field(
        default="measured", description="'all', or 'measured': drop never-measured features."
    )
    max_tokens: int | None = Field(
        default=768,
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
        default=4,
        description="A seeded, label-stratified sample per split (empty: every patient). The "
        "CPU default keeps `make run` short; use all patients on a GPU.",
    )
    max_new_tokens: int = Field(default=128, description="Generated tokens per answer.")
    batch_size: int = Field(default=8, description="Prompts per generate call.")
    seed: int = Field(default=0, description="Seed of the sample and of generation.")
    bootstrap_resamples: int = Field(default=200, description="Bootstrap resamples for AUROC.")
    guided: bool = Field(
        default=True,
        description="Force the response tags (the words stay the model's; see "
        "eagrl_pipeline.llm.guided). Off measures the model's unaided format-following.",
    )
    guided_steps: int = Field(default=1, ge=0, description="Guided: steps before the final block.")


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
    op_tags=GPU_OP_TAGS,
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
    from eagrl_pipeline.evaluation.predictions import (
        GenerationSettings,
        PromptSet,
        llm_predictions,
    )

    partition = context.partition_key
    dataset, _ = split_partition(partition)
    prompts = pd.read_parquet(home.artifact_dir("llm_prompts", partition) / "prompts.parquet")
    prompts = sample_patients(
        prompts[prompts["split"].isin(config.splits)], config.max_patients_per_split, config.seed
    )
    device = compute.configure_torch(llm=True)
    model, tokenizer = llm.load(home.root, device)
    answers = llm_predictions(
        "base",
        model,
        tokenizer,
        {split: PromptSet.from_frame(group) for split, group in prompts.groupby("split")},
        feature_matcher(warehouse, dataset),
        expert_top_features(home, partition),
        GenerationSettings(
            max_new_tokens=config.max_new_tokens,
            batch_size=config.batch_size,
            seed=config.seed,
            guided=config.guided,
            guided_steps=config.guided_steps,
        ),
    )
    predictions = pd.concat(
        [answer.records.assign(split=split) for split, answer in answers.items()],
        ignore_index=True,
    )
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
        "guided": config.guided,
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


class TrajectoriesConfig(Config):
    max_patients: int | None = Field(
        default=4,
        description="Train patients searched (a seeded, label-stratified sample; empty: all). "
        "CPU default; on a GPU search the whole train split.",
    )
    n_simulations: int = Field(default=3, description="MCTS simulations per patient.")
    branching: int = Field(default=2, description="Candidate next steps per expansion (k).")
    max_depth: int = Field(default=1, description="Steps before the final block is forced.")
    uct_c: float = Field(default=1.414, description="UCT exploration constant.")
    simulate_siblings: bool = Field(
        default=True,
        description="Simulate a fresh expansion's children in the same batched wave (within "
        "the budget) rather than one per wave.",
    )
    top_k_trajectories: int = Field(default=2, description="Trajectories kept per patient.")
    min_reward: float | None = Field(
        default=None,
        description="Quality threshold on the reward; empty: any parseable answer (above the "
        "minimum reward of an unparseable one).",
    )
    target_per_class: int | None = Field(
        default=None, description="Kept trajectories per class (empty: the smaller class's)."
    )
    batch_patients: int = Field(
        default=4, description="Trees searched in lockstep; progress is saved per batch."
    )
    step_max_new_tokens: int = Field(default=80, description="Token cap of one step.")
    rollout_max_new_tokens: int = Field(default=96, description="Token cap of a rollout.")
    temperature: float = Field(default=0.8, description="Sampling temperature.")
    top_p: float = Field(default=0.95, description="Nucleus sampling.")
    random_rollouts_per_patient: int = Field(
        default=1, description="Plain rollouts per patient: the baseline the search must beat."
    )
    lam: float = Field(default=0.6, description="λ: weight of R_cls against R_att.")
    beta: float = Field(default=0.5, description="β: margin bonus of R_cls.")
    format_weight: float = Field(default=0.1, description="Weight of the format term.")
    max_label_imbalance: float = Field(
        default=0.2, description="Gate: |positives − negatives| / kept must not exceed this."
    )
    seed: int = Field(default=0, description="Seed of the sample, the search and sampling.")
    guided: bool = Field(
        default=True,
        description="Force the response tags in expansions and rollouts (the words stay the "
        "model's). Needed for small base models that do not follow the format unaided.",
    )
    rollout_steps: int = Field(
        default=0, ge=0, description="Guided rollouts: steps written before the final block."
    )


@asset(
    partitions_def=cohort_partitions,
    group_name="reasoning",
    code_version="1",
    kinds={"huggingface", "jsonl"},
    deps=["llm_prompts", "expert_feature_ranking", "base_language_model"],
    pool="gpu",
    op_tags=GPU_OP_TAGS,
    check_specs=[
        AssetCheckSpec(
            "trajectories_parse",
            asset="mcts_trajectories",
            blocking=True,
            description="Every kept trajectory parses, and at least one was kept.",
        ),
        AssetCheckSpec(
            "trajectories_balanced",
            asset="mcts_trajectories",
            blocking=True,
            description="Positive and negative patients' trajectories within the allowed ratio.",
        ),
        AssetCheckSpec(
            "search_beats_random_rollouts",
            asset="mcts_trajectories",
            description="Mean best reward of the search exceeds the mean of random rollouts.",
        ),
    ],
)
def mcts_trajectories(
    context: AssetExecutionContext,
    config: TrajectoriesConfig,
    home: EagrlHome,
    llm: LanguageModel,
    compute: Compute,
    warehouse: Warehouse,
):
    """Expert-guided MCTS over train patients: the best complete trajectories per patient,
    scored with the EAG-RL reward against the expert's ranking, balanced by label (JSONL)."""
    import hashlib
    import json

    from eagrl_pipeline.mcts import (
        MCTSConfig,
        PatientTask,
        random_rollouts,
        run_search_resumable,
        select_trajectories,
    )
    from eagrl_pipeline.mcts.hf_proposer import HFProposer, HFProposerConfig
    from eagrl_pipeline.mcts.scoring import EagrlScorer

    partition = context.partition_key
    dataset, _ = split_partition(partition)
    prompts = pd.read_parquet(home.artifact_dir("llm_prompts", partition) / "prompts.parquet")
    train = sample_patients(prompts[prompts["split"] == "train"], config.max_patients, config.seed)
    patients = [
        PatientTask(
            str(row.patient_id),
            [{"role": "system", "content": row.system}, {"role": "user", "content": row.user}],
        )
        for row in train.itertuples()
    ]
    labels = {str(p): int(y) for p, y in zip(train["patient_id"], train["label"], strict=True)}
    scorer = EagrlScorer(
        feature_matcher(warehouse, dataset),
        labels,
        {str(k): v for k, v in expert_top_features(home, partition).items()},
        RewardWeights(lam=config.lam, beta=config.beta, format_weight=config.format_weight),
    )
    device = compute.configure_torch(llm=True)
    model, tokenizer = llm.load(home.root, device)
    proposer = HFProposer(
        model,
        tokenizer,
        HFProposerConfig(
            step_max_new_tokens=config.step_max_new_tokens,
            rollout_max_new_tokens=config.rollout_max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            guided=config.guided,
            rollout_steps=config.rollout_steps,
        ),
    )
    search = MCTSConfig(
        n_simulations=config.n_simulations,
        branching=config.branching,
        max_depth=config.max_depth,
        uct_c=config.uct_c,
        simulate_siblings=config.simulate_siblings,
        top_k_trajectories=config.top_k_trajectories,
        seed=config.seed,
    )
    out_dir = home.artifact_dir("mcts_trajectories", partition)
    # The checkpoint is keyed by the search settings, so a resumed run never mixes settings.
    settings = json.dumps({**config.model_dump(), "model": str(llm.model_dir(home.root))})
    checkpoint = out_dir / f"search-{hashlib.sha256(settings.encode()).hexdigest()[:12]}.jsonl"
    results = run_search_resumable(
        patients, proposer, scorer, search, checkpoint_path=checkpoint,
        batch_patients=config.batch_patients,
    )  # fmt: skip
    baseline = random_rollouts(
        patients, proposer, scorer, config.random_rollouts_per_patient, config.seed + 1
    )
    floor = scorer.weights.min_reward + 1e-9 if config.min_reward is None else config.min_reward
    kept = select_trajectories(
        results,
        labels,
        top_k=config.top_k_trajectories,
        min_reward=floor,
        target_per_class=config.target_per_class,
    )
    messages = {task.key: task.prompt for task in patients}
    for record in kept:
        system, user = messages[record["patient_key"]]
        record["system"], record["user"] = system["content"], user["content"]
    target = out_dir / "trajectories.jsonl"
    with atomic_path(target) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))

    best = [r.best_reward for r in results if r.best_reward is not None]
    search_mean = float(np.mean(best)) if best else float("nan")
    random_mean = float(np.mean(baseline)) if baseline else float("nan")
    positives = sum(r["label"] for r in kept)
    negatives = len(kept) - positives
    imbalance = abs(positives - negatives) / len(kept) if kept else 1.0
    unparsed = [
        r["patient_key"] for r in kept if not parse_response(r["text"], scorer.matcher).is_valid
    ]
    counters = proposer.counters
    yield MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(target)),
            "patients_searched": len(results),
            "trajectories_kept": len(kept),
            "kept_positive": positives,
            "kept_negative": negatives,
            "search_mean_best_reward": search_mean,
            "random_rollout_mean_reward": random_mean,
            "valid_complete_responses": sum(sum(t.valid for t in r.trajectories) for r in results),
            "tree_nodes_mean": float(np.mean([r.stats.nodes for r in results])),
            "prefill_per_unique_prompt_token": counters.prefill_per_unique_prompt_token,
            "generated_tokens": counters.generated_tokens,
            "prefix_reuse": proposer.mode,
            "guided": config.guided,
            "device": device,
        }
    )
    yield AssetCheckResult(
        check_name="trajectories_parse",
        passed=bool(kept) and not unparsed,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "kept": len(kept),
            "unparsed": len(unparsed),
            "note": ""
            if kept
            else "no trajectory reached the quality threshold: the model "
            "writes no parseable answer; use a larger base model (LanguageModel.path)",
        },
    )
    yield AssetCheckResult(
        check_name="trajectories_balanced",
        passed=bool(kept) and imbalance <= config.max_label_imbalance,
        severity=AssetCheckSeverity.ERROR,
        metadata={"positives": positives, "negatives": negatives, "imbalance": imbalance},
    )
    yield AssetCheckResult(
        check_name="search_beats_random_rollouts",
        passed=bool(best) and search_mean > random_mean,
        severity=AssetCheckSeverity.WARN,
        metadata={"search_mean_best_reward": search_mean, "random_mean_reward": random_mean},
    )
