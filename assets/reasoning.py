"""Reasoning stage 1 data: the base language model, the patient prompts, the base model's
zero-shot predictions (the "base" row of the reports) and the MCTS trajectory sets."""

import dataclasses
import math
from dataclasses import asdict

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
from assets.llm_inputs import (
    ScaffoldCaps,
    expert_top_features,
    feature_dictionary,
    feature_matcher,
    read_ranking,
    sample_patients,
)
from assets.partitions import cohort_partitions, split_partition
from assets.tags import GPU_OP_TAGS
from assets.versioning import versioned
from eagrl_pipeline.evaluation.metrics import bootstrap_metrics
from eagrl_pipeline.expert_guidance import feature_discrimination, feature_priority
from eagrl_pipeline.llm.base_model import validate_model_dir
from eagrl_pipeline.paths import atomic_path
from eagrl_pipeline.prompts import PromptConfig, build_prompts, feature_specs, parse_response
from eagrl_pipeline.prompts.serialize import minimum_budget
from eagrl_pipeline.rewards import RewardWeights
from resources import Compute, EagrlHome, LanguageModel, Warehouse


@asset(group_name="reasoning", kinds={"huggingface"})
def base_language_model(
    context: AssetExecutionContext, home: EagrlHome, llm: LanguageModel, compute: Compute
):
    """The local model folder every LLM stage loads, validated offline (weights, tokenizer,
    chat template). By default SmolLM2-135M-Instruct, converted once from its GGUF package.
    The metadata says which dtype generation runs in here, and why (on a CPU: its native bf16
    flag and a measured bf16/fp32 matmul probe). Its data version covers the folder's
    fingerprint and the llm and compute settings, so another model (EAGRL_MODEL_PATH) or
    another precision marks every LLM stage below it stale."""
    path = llm.model_dir(home.root)
    info = validate_model_dir(path)
    settings = llm.version_settings(path, compute)
    dtype = llm.dtype_choice(compute.configure_torch(llm=True))
    context.log.info(
        f"base model {info.architecture} at {path}: {info.n_parameters:,} params; generation in "
        f"{dtype['generation_dtype']}"
    )
    return versioned(
        context,
        MaterializeResult(
            metadata={
                **info.as_metadata(),
                **dtype,
                "path": MetadataValue.path(str(path)),
                "model_fingerprint": settings["model"],
                "chat_sample": MetadataValue.md(f"```\n{info.chat_sample}\n```"),
            }
        ),
        None,
        **settings,
    )


ORDERS = ("train_discrimination", "train_importance", "dictionary")


class PromptsConfig(Config):
    max_visits: int | None = Field(
        default=3,
        description="Show at most the patient's last N visits that hold a measurement of a shown "
        "feature (empty: every such visit the budget allows).",
    )
    max_features: int | None = Field(
        default=6,
        description="Show at most N features per patient: the measured ones the expert ranks "
        "highest on average over the training split (empty: every feature the budget allows).",
    )
    min_features: int = Field(
        default=3,
        ge=1,
        description="Features a prompt must have room for: a max_tokens that cannot fit this "
        "many at one visit is refused before any work, with the budget it needs.",
    )
    feature_order: str = Field(
        default="train_discrimination",
        description="'train_discrimination': features by how well their last measured value "
        "separates the training split's outcomes (univariate AUROC, weighted by coverage); "
        "'train_importance': by the expert's mean importance over the training split "
        "(expert_feature_ranking); 'dictionary': the dictionary's order. Never a patient's "
        "own expert output.",
    )
    feature_filter: str = Field(
        default="measured", description="'all', or 'measured': drop never-measured features."
    )
    visit_selection: str = Field(
        default="measured",
        description="'measured': the most recent visits holding a shown feature's value; "
        "'last': the most recent visits, whatever they hold.",
    )
    max_tokens: int | None = Field(
        default=512,
        description="Token budget per prompt (the model's tokenizer counts); over it, the "
        "oldest visits and then the lowest-ranked features are dropped and reported. CPU "
        "default; raise it (e.g. 4096) for a 7B model on a GPU.",
    )
    include_example: bool = Field(
        default=False,
        description="Add the worked response example (placeholder features). Off by default: "
        "the response format and the guided scaffold already fix the tags, and with it on "
        "every greedy answer of the 135M default (base, SFT and RL) copied the example's "
        "sub-questions word for word; it also costs about 150 tokens per prompt.",
    )

    flag_abnormal: bool = Field(
        default=False,
        description="Write each shown value's place against the feature's reference range "
        "after it ('480 (high)'): dictionary knowledge, the same for every patient.",
    )

    @field_validator("feature_filter")
    @classmethod
    def _known_filter(cls, value: str) -> str:
        if value not in ("all", "measured"):
            raise ValueError(f"feature_filter {value!r}: use 'all' or 'measured'")
        return value

    @field_validator("visit_selection")
    @classmethod
    def _known_selection(cls, value: str) -> str:
        if value not in ("measured", "last"):
            raise ValueError(f"visit_selection {value!r}: use 'measured' or 'last'")
        return value

    @field_validator("feature_order")
    @classmethod
    def _known_order(cls, value: str) -> str:
        if value not in ORDERS:
            raise ValueError(f"feature_order {value!r}: use one of {ORDERS}")
        return value

    def prompt_config(self, priority: tuple[str, ...] | None) -> PromptConfig:
        return PromptConfig(
            max_visits=self.max_visits,
            feature_filter=self.feature_filter,  # type: ignore[arg-type]
            max_tokens=self.max_tokens,
            include_example=self.include_example,
            feature_priority=priority,
            max_features=self.max_features,
            min_features=self.min_features,
            visit_selection=self.visit_selection,  # type: ignore[arg-type]
            flag_abnormal=self.flag_abnormal,
        )


def _distribution(values: pd.Series) -> dict[str, float]:
    return {
        "min": float(values.min()),
        "median": float(values.median()),
        "mean": round(float(values.mean()), 3),
        "max": float(values.max()),
    }


@asset(
    partitions_def=cohort_partitions,
    group_name="reasoning",
    kinds={"python", "parquet"},
    deps=["cohort_dataset", "expert_feature_ranking", "base_language_model"],
    check_specs=[
        AssetCheckSpec(
            "prompts_show_features",
            asset="llm_prompts",
            blocking=True,
            description="Every prompt shows at least one feature value and fits the budget.",
        )
    ],
)
def llm_prompts(
    context: AssetExecutionContext,
    config: PromptsConfig,
    home: EagrlHome,
    llm: LanguageModel,
    warehouse: Warehouse,
):
    """One prompt per patient of every split, with token counts from the model's tokenizer.
    Features are chosen in an order fitted on the training split (how well each separates its
    outcomes, or the expert's mean importance; never a patient's own expert output or label),
    visits by whether they hold those features."""
    require_passing_upstream_checks(context)
    from transformers import AutoTokenizer

    partition = context.partition_key
    dataset, task = split_partition(partition)
    visits = pd.read_parquet(home.artifact_dir("cohort_dataset", partition) / "visits.parquet")
    dictionary = feature_dictionary(warehouse, dataset)
    tokenizer = AutoTokenizer.from_pretrained(llm.model_dir(home.root), local_files_only=True)

    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    specs = feature_specs(dictionary, dataset, list(visits.columns))
    priority = None
    if config.feature_order == "train_importance":
        priority = feature_priority(read_ranking(home, partition), split="train")
    elif config.feature_order == "train_discrimination":
        priority = feature_discrimination(visits, [s.feature_id for s in specs], split="train")
    prompt_config = config.prompt_config(priority)
    if config.max_tokens is not None:
        needed = minimum_budget(specs, dataset, task, prompt_config, count_tokens)
        if needed > config.max_tokens:
            raise ValueError(
                f"llm_prompts config: max_tokens={config.max_tokens} cannot show "
                f"min_features={config.min_features} features of {partition} at one visit; "
                f"that needs {needed} tokens (the fixed instructions included). Fix: set "
                f"max_tokens to at least {needed}, or lower min_features."
            )
    prompts = build_prompts(visits, dictionary, dataset, task, prompt_config, count_tokens)
    target = home.artifact_dir("llm_prompts", partition) / "prompts.parquet"
    with atomic_path(target) as tmp:
        prompts.to_parquet(tmp, index=False)
    tokens, shown = prompts["n_tokens"], prompts["n_features_shown"]
    empty = prompts.loc[shown == 0, "patient_id"].tolist()
    visit_counts = prompts["visits_shown"].value_counts().sort_index()
    over = prompts.loc[~prompts["fits_budget"], "patient_id"].tolist()
    yield versioned(
        context,
        MaterializeResult(
            metadata={
                "path": MetadataValue.path(str(target)),
                "prompts": len(prompts),
                **{f"prompts_{s}": int(n) for s, n in prompts["split"].value_counts().items()},
                "tokens_mean": float(tokens.mean()),
                "tokens_max": int(tokens.max()),
                "features_shown": MetadataValue.json(_distribution(shown)),
                "visits_shown": MetadataValue.json(_distribution(prompts["visits_shown"])),
                "visits_shown_counts": MetadataValue.json(
                    {str(k): int(v) for k, v in visit_counts.items()}
                ),
                "prompts_without_features": len(empty),
                "prompts_below_min_features": int((shown < config.min_features).sum()),
                "feature_priority_top10": MetadataValue.json(
                    list(priority[:10]) if priority else "dictionary order"
                ),
                "truncated": int(prompts["truncated"].sum()),
                "over_budget": len(over),
                "example": MetadataValue.md(f"```\n{prompts['prompt'].iloc[0]}\n```"),
            }
        ),
        config,
    )
    yield AssetCheckResult(
        check_name="prompts_show_features",
        passed=not empty and not over,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "prompts_without_features": len(empty),
            "patients_without_features": MetadataValue.json([str(p) for p in empty[:20]]),
            "over_budget": len(over),
        },
    )


class BasePredictionsConfig(Config):
    splits: list[str] = Field(default=["val", "test"], description="Splits to predict.")
    max_patients_per_split: int | None = Field(
        default=4,
        description="A seeded, label-stratified sample per split (empty: every patient). The "
        "CPU default keeps `make run` short; use all patients on a GPU.",
    )
    max_new_tokens: int = Field(default=160, description="Generated tokens per answer.")
    batch_size: int = Field(default=8, description="Prompts per generate call.")
    seed: int = Field(default=0, description="Seed of the sample and of generation.")
    bootstrap_resamples: int = Field(default=200, description="Bootstrap resamples for AUROC.")
    guided: bool = Field(
        default=True,
        description="Force the response tags (the words stay the model's; see "
        "eagrl_pipeline.llm.guided). Off measures the model's unaided format-following.",
    )
    guided_steps: int = Field(default=1, ge=0, description="Guided: steps before the final block.")
    scaffold: ScaffoldCaps = Field(
        default_factory=ScaffoldCaps, description="Guided: per-tag token caps."
    )
    readout: str = Field(
        default="expected",
        description="'expected': an answer's probability is the expectation under the model's "
        "distribution at its first digit (guided only); 'text': the number written.",
    )

    @field_validator("readout")
    @classmethod
    def _known_readout(cls, value: str) -> str:
        if value not in ("expected", "text"):
            raise ValueError(f"readout {value!r}: use 'expected' or 'text'")
        return value


@asset(
    partitions_def=cohort_partitions,
    group_name="reasoning",
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
    require_passing_upstream_checks(context)
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
            scaffold=config.scaffold.scaffold(),
            readout=config.readout,  # type: ignore[arg-type]
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
        "readout": config.readout,
        **llm.dtype_choice(device),
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
    return versioned(context, MaterializeResult(metadata=metadata), config)


class TrajectoriesConfig(Config):
    max_patients: int | None = Field(
        default=16,
        description="Train patients searched (a seeded sample; empty: all). CPU default; on a "
        "GPU search the whole train split.",
    )
    balanced_sample: bool = Field(
        default=True,
        description="Sample max_patients with equal numbers per class (where the split has "
        "them) rather than in the split's class shares: selection keeps equal numbers per "
        "class, so with a rare outcome (MIMIC-IV mortality, ~12 %) a proportional sample of 16 "
        "holds 2 positives and keeps at most 2 trajectories.",
    )
    n_simulations: int = Field(default=4, description="MCTS simulations per patient.")
    retry_simulations: int = Field(
        default=0,
        ge=0,
        description="A patient whose search found no right answer is searched once more with "
        "this many simulations (a fresh tree with its own seed), and the two searches' "
        "trajectories are pooled (0: off). The patients the model gets wrong are the ones SFT "
        "most needs, and class balancing drops as many of the other class. The best-of-N "
        "comparison stays on the first search (equal budget).",
    )
    branching: int = Field(default=2, description="Candidate next steps per expansion (k).")
    max_depth: int = Field(
        default=2, ge=0, description="Reasoning steps before the final block is forced."
    )
    uct_c: float = Field(default=1.414, description="UCT exploration constant.")
    simulate_siblings: bool = Field(
        default=True,
        description="Simulate a fresh expansion's children in the same batched wave (within "
        "the budget) rather than one per wave.",
    )
    top_k_trajectories: int = Field(
        default=1, ge=1, description="Right trajectories kept per patient, best reward first."
    )
    answer_margin: float = Field(
        default=0.0,
        ge=0.0,
        lt=0.5,
        description="A kept trajectory's final answer is on its label's side of 0.5 by more "
        "than this (a parseable wrong answer is never an SFT target).",
    )
    min_reward: float | None = Field(
        default=None,
        description="Quality threshold on the reward on top of being right; empty: none.",
    )
    target_per_class: int | None = Field(
        default=None, description="Kept trajectories per class (empty: the smaller class's)."
    )
    min_kept: int = Field(
        default=2,
        ge=2,
        description="Gate: at least this many trajectories kept (SFT holds out whole patients "
        "for its eval loss, so it needs two at least).",
    )
    batch_patients: int = Field(
        default=16, description="Trees searched in lockstep; progress is saved per batch."
    )
    step_max_new_tokens: int = Field(default=64, description="Token cap of one step.")
    rollout_max_new_tokens: int = Field(default=160, description="Token cap of a rollout.")
    temperature: float = Field(default=1.0, description="Sampling temperature.")
    top_p: float = Field(default=0.95, description="Nucleus sampling.")
    compare_with_sampling: bool = Field(
        default=True,
        description="Also sample each patient as many plain rollouts as the search produced "
        "trajectories (best-of-N at equal budget): the baseline the search must beat.",
    )
    sampling_patients: int | None = Field(
        default=8,
        ge=2,
        description="Searched patients the comparison also samples: a seeded subset, half per "
        "class where the sample has them (empty: all searched). Sampling costs about as many "
        "tokens as the search, so the CPU default compares on half its 16 patients; the study "
        "and the GPU profile compare on all.",
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
        default=1,
        ge=0,
        description="Guided rollouts: steps written before the final block (never past max_depth).",
    )
    scaffold: ScaffoldCaps = Field(
        default_factory=ScaffoldCaps, description="Guided: per-tag token caps."
    )


@asset(
    partitions_def=cohort_partitions,
    group_name="reasoning",
    kinds={"huggingface", "jsonl"},
    deps=["llm_prompts", "expert_feature_ranking", "base_language_model"],
    pool="gpu",
    op_tags=GPU_OP_TAGS,
    check_specs=[
        AssetCheckSpec(
            "trajectories_parse",
            asset="mcts_trajectories",
            blocking=True,
            description="Every kept trajectory parses and answers on its label's side of 0.5.",
        ),
        AssetCheckSpec(
            "trajectories_kept_minimum",
            asset="mcts_trajectories",
            blocking=True,
            description="At least min_kept trajectories were kept (SFT needs them).",
        ),
        AssetCheckSpec(
            "trajectories_balanced",
            asset="mcts_trajectories",
            blocking=True,
            description="Positive and negative patients' trajectories within the allowed ratio.",
        ),
        AssetCheckSpec(
            "search_beats_sampling",
            asset="mcts_trajectories",
            description="In each class, the search's mean best reward and share of patients "
            "answered right are at least best-of-N sampling's at the same number of "
            "trajectories.",
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
    """Expert-guided MCTS over train patients: each patient's best *right* trajectories (final
    answer on the label's side of 0.5), scored with the EAG-RL reward against the expert's top-k
    among the features the prompt shows, balanced by label (JSONL); compared with best-of-N
    sampling at the same budget."""
    require_passing_upstream_checks(context)
    import hashlib
    import json

    from eagrl_pipeline.mcts import (
        MCTSConfig,
        PatientTask,
        compare_with_sampling,
        has_right_answer,
        is_correct_side,
        pool_results,
        random_rollouts,
        run_search_resumable,
        select_trajectories,
    )
    from eagrl_pipeline.mcts.hf_proposer import HFProposer, HFProposerConfig
    from eagrl_pipeline.mcts.scoring import EagrlScorer

    partition = context.partition_key
    dataset, _ = split_partition(partition)
    prompts = pd.read_parquet(home.artifact_dir("llm_prompts", partition) / "prompts.parquet")
    train = sample_patients(
        prompts[prompts["split"] == "train"],
        config.max_patients,
        config.seed,
        balanced=config.balanced_sample,
    )
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
            scaffold=config.scaffold.scaffold(),
        ),
    )
    search = MCTSConfig(
        n_simulations=config.n_simulations,
        branching=config.branching,
        max_depth=config.max_depth,
        uct_c=config.uct_c,
        simulate_siblings=config.simulate_siblings,
        seed=config.seed,
    )
    out_dir = home.artifact_dir("mcts_trajectories", partition)
    # The checkpoint is keyed by the search settings and the code version, so a resumed run
    # never mixes settings, or results of other code.
    code_version = context.assets_def.code_versions_by_key.get(context.asset_key) or ""
    settings = {
        **config.model_dump(exclude={"retry_simulations"}),
        "model": str(llm.model_dir(home.root)),
        "code": code_version,
    }
    key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:12]
    checkpoint = out_dir / f"search-{key}.jsonl"
    results = run_search_resumable(
        patients, proposer, scorer, search, checkpoint_path=checkpoint,
        batch_patients=config.batch_patients,
    )  # fmt: skip
    search_tokens = proposer.counters.generated_tokens
    comparison, sampling_tokens, compared = {}, 0, set()
    if config.compare_with_sampling:
        compared = set(
            sample_patients(train, config.sampling_patients, config.seed, balanced=True)[
                "patient_id"
            ].astype(str)
        )
        budget = {r.patient_key: max(1, r.stats.complete_responses) for r in results}
        sampled = random_rollouts(
            [p for p in patients if p.key in compared],
            proposer,
            scorer,
            budget,
            config.seed + 1,
            max_depth=config.max_depth,
        )
        sampling_tokens = proposer.counters.generated_tokens - search_tokens
        comparison = compare_with_sampling(
            [r for r in results if r.patient_key in compared], sampled, labels, config.answer_margin
        )
    missed = [
        p
        for p, r in zip(patients, results, strict=True)
        if not has_right_answer(r, labels[p.key], config.answer_margin)
    ]
    retried: dict[str, int] = {"0": 0, "1": 0}
    if config.retry_simulations and missed:
        for p in missed:
            retried[str(labels[p.key])] += 1
        retry = run_search_resumable(
            missed,
            proposer,
            scorer,
            # seed + 2: the first search has seed, the best-of-N sampling seed + 1
            dataclasses.replace(
                search, n_simulations=config.retry_simulations, seed=config.seed + 2
            ),
            checkpoint_path=out_dir / f"retry-{key}-{config.retry_simulations}.jsonl",
            batch_patients=config.batch_patients,
        )
        second = {r.patient_key: r for r in retry}
        results = [
            pool_results(r, second[r.patient_key]) if r.patient_key in second else r
            for r in results
        ]
    kept = select_trajectories(
        results,
        labels,
        top_k=config.top_k_trajectories,
        min_reward=-math.inf if config.min_reward is None else config.min_reward,
        target_per_class=config.target_per_class,
        margin=config.answer_margin,
    )
    messages = {task.key: task.prompt for task in patients}
    for record in kept:
        system, user = messages[record["patient_key"]]
        record["system"], record["user"] = system["content"], user["content"]
    target = out_dir / "trajectories.jsonl"
    with atomic_path(target) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))

    positives = sum(r["label"] for r in kept)
    negatives = len(kept) - positives
    imbalance = abs(positives - negatives) / len(kept) if kept else 1.0
    bad = [
        r["patient_key"]
        for r in kept
        if not parse_response(r["text"], scorer.matcher).is_valid
        or not is_correct_side(r["probability"], r["label"], config.answer_margin)
    ]
    right_patients = {
        label: sum(
            1
            for r in results
            if labels[r.patient_key] == label and has_right_answer(r, label, config.answer_margin)
        )
        for label in (0, 1)
    }
    searched = {
        label: sum(1 for r in results if labels[r.patient_key] == label) for label in (0, 1)
    }
    counters = proposer.counters
    depths = [t.depth for r in results for t in r.trajectories]
    yield versioned(
        context,
        MaterializeResult(
            metadata={
                "path": MetadataValue.path(str(target)),
                "patients_searched": len(results),
                "patients_searched_by_class": MetadataValue.json(
                    {str(k): v for k, v in searched.items()}
                ),
                "patients_retried_by_class": MetadataValue.json(retried),
                "patients_with_right_answer_by_class": MetadataValue.json(
                    {str(k): v for k, v in right_patients.items()}
                ),
                "kept_rate_by_class": MetadataValue.json(
                    {
                        str(k): (right_patients[k] / searched[k] if searched[k] else None)
                        for k in (0, 1)
                    }
                ),
                "trajectories_kept": len(kept),
                "kept_positive": positives,
                "kept_negative": negatives,
                "kept_depths": MetadataValue.json(
                    {
                        str(d): sum(r["depth"] == d for r in kept)
                        for d in sorted({r["depth"] for r in kept})
                    }
                ),
                "trajectory_depth_max": max(depths, default=0),
                "valid_complete_responses": sum(
                    sum(t.valid for t in r.trajectories) for r in results
                ),
                "tree_nodes_mean": float(np.mean([r.stats.nodes for r in results])),
                "search_generated_tokens": search_tokens,
                "sampling_generated_tokens": sampling_tokens,
                "search_vs_sampling": MetadataValue.json(
                    {str(k): asdict(v) for k, v in comparison.items()}
                ),
                "prefill_per_unique_prompt_token": counters.prefill_per_unique_prompt_token,
                "generated_tokens": counters.generated_tokens,
                "prefix_reuse": proposer.mode,
                "guided": config.guided,
                "device": device,
            }
        ),
        config,
    )
    yield AssetCheckResult(
        check_name="trajectories_parse",
        passed=not bad,
        severity=AssetCheckSeverity.ERROR,
        metadata={"kept": len(kept), "unparsed_or_wrong": len(bad)},
    )
    yield AssetCheckResult(
        check_name="trajectories_kept_minimum",
        passed=len(kept) >= config.min_kept,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "kept": len(kept),
            "min_kept": config.min_kept,
            "note": ""
            if len(kept) >= config.min_kept
            else "too few patients got a right, parseable answer: search more patients "
            "(max_patients), simulate more (n_simulations), or use a larger base model",
        },
    )
    yield AssetCheckResult(
        check_name="trajectories_balanced",
        passed=bool(kept) and imbalance <= config.max_label_imbalance,
        severity=AssetCheckSeverity.ERROR,
        metadata={"positives": positives, "negatives": negatives, "imbalance": imbalance},
    )
    wins = {str(k): v.search_wins for k, v in comparison.items()}
    yield AssetCheckResult(
        check_name="search_beats_sampling",
        passed=bool(comparison) and all(wins.values()),
        severity=AssetCheckSeverity.WARN,
        metadata={
            "search_wins_by_class": MetadataValue.json(wins),
            "by_class": MetadataValue.json({str(k): asdict(v) for k, v in comparison.items()}),
            "search_generated_tokens": search_tokens,
            "sampling_generated_tokens": sampling_tokens,
            "compared_patients": len(compared),
            "searched_patients": len(results),
        },
    )
