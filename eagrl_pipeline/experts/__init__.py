"""Expert EHR models (ConCare, GRU, Transformer, AdaCare), training and feature ranking.

The experts' per-patient feature rankings are the target of EAG-RL's attention reward.
"""

from eagrl_pipeline.experts.config import ExpertConfig
from eagrl_pipeline.experts.importance import feature_importance, rank_features
from eagrl_pipeline.experts.models import MODELS, ExpertModel, build_expert
from eagrl_pipeline.experts.training import (
    TrainedExpert,
    evaluate_expert,
    load_expert,
    predict_proba,
    save_expert,
    train_expert,
)

MODEL_NAMES: tuple[str, ...] = tuple(MODELS)

__all__ = [
    "MODEL_NAMES",
    "ExpertConfig",
    "ExpertModel",
    "TrainedExpert",
    "build_expert",
    "evaluate_expert",
    "feature_importance",
    "load_expert",
    "predict_proba",
    "rank_features",
    "save_expert",
    "train_expert",
]
