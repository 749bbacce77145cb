"""Expert hyperparameters: one dataclass, CPU-friendly defaults, per-dataset presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class ExpertConfig:
    """Architecture and training knobs shared by all four experts.

    Every field is a plain JSON value so the config can be logged to MLflow and saved next to the
    weights; models ignore the fields that do not concern them.
    """

    hidden_dim: int = 64  # GRU / Transformer / AdaCare hidden size
    concare_hidden_dim: int = 32  # per-feature GRU size in ConCare (73 features x this)
    heads: int = 4
    transformer_layers: int = 1
    adacare_kernels: int = 32  # channels per dilated causal convolution (three scales)
    dropout: float = 0.2
    use_observed: bool = True  # feed the measured-that-day mask next to the values
    decov_weight: float = 1e-3  # ConCare's DeCov regulariser; 0 turns it off
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    max_epochs: int = 50
    patience: int = 8  # epochs without a better validation AUROC before stopping
    grad_clip: float = 1.0
    balance_classes: bool = False  # BCE pos_weight = negatives / positives on the train split
    seed: int = 42

    @classmethod
    def for_dataset(cls, dataset: str, **overrides: Any) -> ExpertConfig:
        """Defaults per dataset ("tjh", "mimic_iv"; a "dataset-task" partition key also works).

        TJH has 140 training patients and 73 labs: small models, strong dropout and weight
        decay, and a longer patience because a 21-patient validation AUROC is coarse. MIMIC-IV
        has thousands of stays with rare positives: wider models, bigger batches, and class
        balancing for the ~10 % mortality rate.
        """
        key = dataset.split("-")[0].lower()
        presets: dict[str, dict[str, Any]] = {
            "tjh": {
                "hidden_dim": 32,
                "concare_hidden_dim": 16,
                "adacare_kernels": 16,
                "dropout": 0.3,
                "weight_decay": 1e-2,
                "lr": 1e-3,
                "batch_size": 32,
                "max_epochs": 100,
                "patience": 15,
            },
            "mimic_iv": {
                "hidden_dim": 64,
                "concare_hidden_dim": 32,
                "dropout": 0.2,
                "batch_size": 256,
                "max_epochs": 50,
                "patience": 8,
                "balance_classes": True,
            },
        }
        if key not in presets:
            raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(presets)}")
        return replace(cls(**presets[key]), **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExpertConfig:
        """Tolerates unknown keys so a config saved by a newer version still loads."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
