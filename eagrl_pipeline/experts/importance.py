"""Per-patient feature importance: the expert's ranking that EAG-RL's attention reward targets.

ConCare and AdaCare expose their own weights (final attention, input recalibration); GRU and
Transformer have none, so they get occlusion: each feature set to its train mean (0 in z-space)
and marked unmeasured in every visit, scored by the absolute change in the logit.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from eagrl_pipeline.data.cohort import CohortArrays
from eagrl_pipeline.experts.models import AdaCareExpert, ConCareExpert, ExpertModel
from eagrl_pipeline.experts.training import TrainedExpert, as_model, to_tensors


def _occlusion(model: ExpertModel, batch: dict[str, Tensor]) -> Tensor:
    """|Δ logit| per feature: one forward pass per feature for the whole batch."""
    base = model(batch["x"], batch["static"], batch["visit_mask"], batch["observed"]).float()
    scores = []
    for f in range(batch["x"].size(2)):
        x, observed = batch["x"].clone(), batch["observed"].clone()
        x[:, :, f] = 0.0
        observed[:, :, f] = False
        logits = model(x, batch["static"], batch["visit_mask"], observed).float()
        scores.append((logits - base).abs())
    return torch.stack(scores, dim=1)


def method_for(model: ExpertModel) -> str:
    if isinstance(model, ConCareExpert):
        return "concare_attention"
    if isinstance(model, AdaCareExpert):
        return "adacare_recalibration"
    return "occlusion"


@torch.no_grad()
def feature_importance(
    trained_or_model: ExpertModel | TrainedExpert,
    arrays: CohortArrays,
    indices: np.ndarray | None = None,
    device: str = "cpu",
    batch_size: int = 256,
) -> tuple[np.ndarray, str]:
    """Scores (patients, features), non-negative, rows summing to 1, and the method's name.

    Runs in full precision (no autocast) so small occlusion differences are not rounded away.
    A row with no signal at all (every score 0) becomes uniform rather than NaN. The model is
    moved to ``device`` and left there.
    """
    model = as_model(trained_or_model).to(device).eval()
    method = method_for(model)
    idx = np.arange(len(arrays.y)) if indices is None else np.asarray(indices)
    tensors = to_tensors(arrays, idx, device)
    parts = []
    for start in range(0, idx.size, batch_size):
        batch = {k: v[start : start + batch_size] for k, v in tensors.items()}
        if method == "occlusion":
            scores = _occlusion(model, batch)
        else:
            args = (batch["x"], batch["static"], batch["visit_mask"], batch["observed"])
            scores = model.feature_weights(*args)  # type: ignore[operator]
        parts.append(scores.float().cpu().numpy().astype("float64"))
    n_features = arrays.x.shape[2]
    scores = np.concatenate(parts) if parts else np.zeros((0, n_features))
    scores = np.clip(np.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0), 0.0, None)
    totals = scores.sum(axis=1, keepdims=True)
    uniform = np.full_like(scores, 1.0 / max(n_features, 1))
    scores = np.where(totals > 0, scores / np.where(totals > 0, totals, 1.0), uniform)
    return scores, method


def rank_features(
    scores: np.ndarray, feature_ids: list[str], top_k: int | None = None
) -> list[list[tuple[str, float]]]:
    """Each patient's (feature, score) pairs by score descending (ties: feature order)."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    return [
        [(feature_ids[j], float(row[j])) for j in o] for row, o in zip(scores, order, strict=True)
    ]
