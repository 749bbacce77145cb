"""What the stages after the cohort share (experts, reasoning, training, evaluation): the cohort
arrays, the feature dictionary and its matcher, seeded patient samples, each patient's attention
target, and the guided-decoding settings (one rule for every stage that generates: the same
tags, caps and steps)."""

from __future__ import annotations

import pandas as pd
from dagster import Config
from pydantic import Field

from eagrl_pipeline.data.cohort import CohortArrays
from eagrl_pipeline.expert_guidance import attention_targets
from eagrl_pipeline.llm.guided import ScaffoldConfig
from eagrl_pipeline.prompts import FeatureMatcher
from eagrl_pipeline.prompts.features import dictionary_aliases
from resources import EagrlHome, Warehouse


class ScaffoldCaps(Config):
    """Per-tag token caps of guided decoding (content tokens; the tags are forced on top). The
    same defaults in every stage, so the policy is trained and judged on one format; the
    learning study's caps (a CPU generates, and GRPO trains on, every one of these tokens)."""

    subquestion_tokens: int = Field(default=12, ge=1, description="Cap of a sub-question.")
    answer_tokens: int = Field(default=16, ge=1, description="Cap of a step's answer.")
    final_subquestion_tokens: int = Field(
        default=8, ge=1, description="Cap of the final sub-question."
    )
    features_tokens: int = Field(default=24, ge=1, description="Cap of the important features.")
    final_answer_tokens: int = Field(
        default=2, ge=1, description="Digits after the forced '0.' of the final answer."
    )
    max_listed_features: int = Field(
        default=3,
        ge=1,
        description="Names the important-features slot may list (only the prompt's features).",
    )
    reasoning_tokens: int = Field(
        default=48,
        ge=1,
        description="Cap of the think-then-answer baseline's free reasoning (about what the "
        "tagged format's steps and final block hold together).",
    )
    step_digits: bool = Field(
        default=True,
        description="Whether the text before the final answer may write digits. Off: the final "
        "answer is the only number a response states, so the probability is decided there, not "
        "copied from a step's greedy number or a value in (0, 1) the prompt lists.",
    )

    def scaffold(self) -> ScaffoldConfig:
        return ScaffoldConfig(
            subquestion_tokens=self.subquestion_tokens,
            answer_tokens=self.answer_tokens,
            final_subquestion_tokens=self.final_subquestion_tokens,
            features_tokens=self.features_tokens,
            final_answer_tokens=self.final_answer_tokens,
            max_listed_features=self.max_listed_features,
            reasoning_tokens=self.reasoning_tokens,
            step_digits=self.step_digits,
        )


def load_cohort(home: EagrlHome, partition: str) -> CohortArrays:
    path = home.artifact_dir("cohort_dataset", partition) / "arrays.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path}: materialize cohort_dataset[{partition}] first.")
    return CohortArrays.load(path)


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


def sample_patients(
    frame: pd.DataFrame, per_split: int | None, seed: int, *, balanced: bool = False
) -> pd.DataFrame:
    """A seeded sample per split that keeps both labels when it can (so AUROC is defined).

    Label-stratified by default (the split's class shares). ``balanced`` takes half of each
    class where the split holds enough (the rest from the other class): for a search whose
    selection keeps equal numbers per class, a proportional sample of a rare outcome spends
    most of the search on patients whose trajectories are then dropped.
    """
    if per_split is None:
        return frame
    parts = []
    for _, group in frame.groupby("split", sort=False):
        n = min(per_split, len(group))
        positives, negatives = group[group["label"] == 1], group[group["label"] != 1]
        wanted = n // 2 if balanced else round(n * len(positives) / len(group))
        n_pos = min(len(positives), max(1, wanted, n - len(negatives)))
        n_neg = min(n - n_pos, len(negatives))
        parts += [positives.sample(n_pos, random_state=seed)]
        parts += [negatives.sample(n_neg, random_state=seed)]
    return pd.concat(parts).sort_values("patient_id").reset_index(drop=True)


def read_ranking(home: EagrlHome, partition: str) -> pd.DataFrame:
    path = home.artifact_dir("expert_feature_ranking", partition) / "ranking.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: materialize expert_feature_ranking[{partition}] first.")
    return pd.read_parquet(path)


def expert_top_features(home: EagrlHome, partition: str) -> dict[int, list[str]]:
    """Each patient's attention target: the expert's top-k among the features their prompt
    shows (``eagrl_pipeline.expert_guidance``), k as expert_feature_ranking was configured."""
    ranking = read_ranking(home, partition)
    k = int(ranking.groupby("patient_id")["in_top_k"].sum().max())
    path = home.artifact_dir("llm_prompts", partition) / "prompts.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: materialize llm_prompts[{partition}] first.")
    prompts = pd.read_parquet(path)
    if "features_shown" not in prompts.columns:
        raise ValueError(
            f"{path} has no features_shown column (written by an older version); "
            f"materialize llm_prompts[{partition}] again."
        )
    shown = {
        pid: list(names)
        for pid, names in zip(prompts["patient_id"], prompts["features_shown"], strict=True)
    }
    return attention_targets(ranking, shown, k)
