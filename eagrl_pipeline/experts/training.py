"""Train, predict, evaluate, save and load experts on a ``CohortArrays``."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import Tensor, nn

from eagrl_pipeline.data.cohort import CohortArrays
from eagrl_pipeline.experts.config import ExpertConfig
from eagrl_pipeline.experts.models import ExpertModel, build_expert
from eagrl_pipeline.paths import atomic_path

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainedExpert:
    """A trained expert (model on CPU, best validation state loaded) and how it got there."""

    model: ExpertModel
    name: str
    config: ExpertConfig
    feature_ids: list[str]
    n_static: int
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    n_parameters: int = 0
    train_seconds: float = 0.0

    @property
    def n_features(self) -> int:
        return len(self.feature_ids)


def as_model(model: ExpertModel | TrainedExpert) -> ExpertModel:
    return model.model if isinstance(model, TrainedExpert) else model


def to_tensors(
    arrays: CohortArrays, indices: np.ndarray, device: str | torch.device
) -> dict[str, Tensor]:
    """The model inputs and labels of ``indices`` as tensors on ``device``."""
    return {
        "x": torch.as_tensor(arrays.x[indices], dtype=torch.float32, device=device),
        "static": torch.as_tensor(arrays.static[indices], dtype=torch.float32, device=device),
        "visit_mask": torch.as_tensor(arrays.visit_mask[indices], device=device),
        "observed": torch.as_tensor(arrays.observed[indices], device=device),
        "y": torch.as_tensor(arrays.y[indices], dtype=torch.float32, device=device),
    }


def _autocast(device: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA where supported; full precision elsewhere."""
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _logits(model: ExpertModel, batch: dict[str, Tensor], device: str | None = None) -> Tensor:
    """Logits in float32; bf16 autocast only when a device is given (training steps)."""
    with _autocast(device) if device else contextlib.nullcontext():
        out = model(batch["x"], batch["static"], batch["visit_mask"], batch["observed"])
    return out.float()


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """Deterministic kernels for the duration of training, then the caller's setting back."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def _batches(tensors: dict[str, Tensor], size: int) -> Iterator[dict[str, Tensor]]:
    n = next(iter(tensors.values())).size(0)
    for start in range(0, n, size):
        yield {k: v[start : start + size] for k, v in tensors.items()}


def binary_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """AUROC and AUPRC; NaN where the labels hold one class only."""
    if len(np.unique(y)) < 2:
        return {"auroc": math.nan, "auprc": math.nan}
    return {
        "auroc": float(roc_auc_score(y, proba)),
        "auprc": float(average_precision_score(y, proba)),
    }


def _split_indices(arrays: CohortArrays, split: str) -> np.ndarray:
    return np.flatnonzero(np.asarray(arrays.split) == split)


def train_expert(
    arrays: CohortArrays,
    name: str,
    config: ExpertConfig,
    *,
    device: str = "cpu",
    on_epoch: EpochCallback | None = None,
) -> TrainedExpert:
    """AdamW + BCE-with-logits on the train split, early stopping on validation AUROC.

    Ties in validation AUROC (frequent on TJH's 21 validation patients) go to the lower
    validation loss (plain BCE; the train loss carries ``pos_weight`` when classes are
    balanced). Seeded end to end (init, dropout, shuffling), so two CPU runs with the same config
    give the same history. The best state is loaded and the model returned on CPU.
    """
    train_idx, val_idx = _split_indices(arrays, "train"), _split_indices(arrays, "val")
    if train_idx.size == 0 or val_idx.size == 0:
        raise ValueError(
            f"need train and val patients, got {train_idx.size} train / {val_idx.size} val"
        )
    with _deterministic():
        torch.manual_seed(config.seed)
        model = build_expert(name, arrays.x.shape[2], arrays.static.shape[1], config).to(device)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        train, val = to_tensors(arrays, train_idx, device), to_tensors(arrays, val_idx, device)
        y_train = arrays.y[train_idx]
        pos_weight = None
        if config.balance_classes and 0 < y_train.sum() < y_train.size:
            ratio = (y_train.size - y_train.sum()) / y_train.sum()
            pos_weight = torch.tensor(float(ratio), device=device)
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        generator = torch.Generator().manual_seed(config.seed)

        history: list[dict[str, float]] = []
        best_key, best_state, best_epoch, stale = (-math.inf, -math.inf), None, 0, 0
        start = time.perf_counter()
        for epoch in range(1, config.max_epochs + 1):
            model.train()
            perm = torch.randperm(train_idx.size, generator=generator).to(device)
            shuffled = {k: v[perm] for k, v in train.items()}
            total = torch.zeros((), device=device)  # summed on device: no sync per batch
            for batch in _batches(shuffled, config.batch_size):
                optimizer.zero_grad(set_to_none=True)
                model.aux_loss = None
                loss = loss_fn(_logits(model, batch, device), batch["y"])
                total += loss.detach() * batch["y"].size(0)
                if model.aux_loss is not None and config.decov_weight > 0:
                    loss = loss + config.decov_weight * model.aux_loss
                loss.backward()
                if config.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
            model.aux_loss = None

            val_logits = _predict_logits(model, val, 1024)
            val_loss = float(nn.functional.binary_cross_entropy_with_logits(val_logits, val["y"]))
            metrics = binary_metrics(arrays.y[val_idx], torch.sigmoid(val_logits).cpu().numpy())
            row = {
                "train_loss": float(total) / train_idx.size,
                "val_loss": val_loss,
                "val_auroc": metrics["auroc"],
                "val_auprc": metrics["auprc"],
            }
            history.append({"epoch": float(epoch), **row})
            if on_epoch is not None:
                on_epoch(epoch, row)
            auroc = -math.inf if math.isnan(row["val_auroc"]) else row["val_auroc"]
            key = (round(auroc, 6), -val_loss)
            if key > best_key:
                best_key, best_epoch, stale = key, epoch, 0
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if stale >= config.patience:
                    break
        seconds = time.perf_counter() - start

    model = model.cpu()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainedExpert(
        model=model,
        name=name,
        config=config,
        feature_ids=list(arrays.feature_ids),
        n_static=int(arrays.static.shape[1]),
        history=history,
        best_epoch=best_epoch,
        n_parameters=sum(p.numel() for p in model.parameters()),
        train_seconds=seconds,
    )


@torch.no_grad()
def _predict_logits(model: ExpertModel, tensors: dict[str, Tensor], batch_size: int) -> Tensor:
    """Eval-mode logits in full precision: cheap, and metrics and rankings stay exact."""
    model.eval()
    return torch.cat([_logits(model, b) for b in _batches(tensors, batch_size)])


def predict_proba(
    model: ExpertModel | TrainedExpert,
    arrays: CohortArrays,
    indices: np.ndarray | None = None,
    device: str = "cpu",
    batch_size: int = 256,
) -> np.ndarray:
    """Outcome probabilities for ``indices`` (default: every patient), in that order.

    The model is moved to ``device`` and left there.
    """
    net = as_model(model).to(device)
    idx = np.arange(len(arrays.y)) if indices is None else np.asarray(indices)
    logits = _predict_logits(net, to_tensors(arrays, idx, device), batch_size)
    return torch.sigmoid(logits).cpu().numpy().astype("float64")


def evaluate_expert(
    model: ExpertModel | TrainedExpert, arrays: CohortArrays, split: str = "test", **kwargs: Any
) -> dict[str, float]:
    """AUROC / AUPRC (sklearn) of the expert on one split."""
    idx = _split_indices(arrays, split)
    return binary_metrics(arrays.y[idx], predict_proba(model, arrays, idx, **kwargs))


WEIGHTS_FILE, META_FILE = "model.pt", "expert.json"


def save_expert(trained: TrainedExpert, path: str | Path) -> Path:
    """Write ``path/`` with the state dict and a JSON of everything needed to rebuild it.

    Atomic: the folder appears complete or the previous one stays.
    """
    meta = {
        "name": trained.name,
        "config": trained.config.to_dict(),
        "n_features": trained.n_features,
        "n_static": trained.n_static,
        "feature_ids": trained.feature_ids,
        "best_epoch": trained.best_epoch,
        "n_parameters": trained.n_parameters,
        "train_seconds": trained.train_seconds,
        "history": trained.history,
    }
    path = Path(path)
    state = copy.deepcopy(trained.model.cpu().state_dict())
    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        torch.save(state, tmp / WEIGHTS_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, allow_nan=True))
    return path


def load_expert(path: str | Path) -> tuple[ExpertModel, dict[str, Any]]:
    """Rebuild the model from ``path/`` (eval mode, CPU) and return it with its metadata."""
    path = Path(path)
    meta = json.loads((path / META_FILE).read_text())
    config = ExpertConfig.from_dict(meta["config"])
    model = build_expert(meta["name"], meta["n_features"], meta["n_static"], config)
    model.load_state_dict(torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    model.eval()
    return model, meta
