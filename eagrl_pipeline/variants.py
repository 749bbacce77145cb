"""The method variants of the paper's tables: prompting baselines, each stage alone, EAG-RL, and
its ablations, each a named, documented and frozen set of settings.

A variant says which policy a cell of the experiment grid evaluates and, where it trains GRPO,
which of ``rl_checkpoint``'s settings it fixes. Everything a variant does not fix (steps, group
size, learning rate, scaffold caps) comes from the run's config, the same for every variant, so
two variants differ only where the table says they do. ``settings_hash`` identifies a variant's
fixed settings: MLflow runs are tagged with it, and a change to one variant's settings changes
only that variant's code version (its cells turn stale; the others do not).

To add a variant: add an entry to ``VARIANTS`` (a new name, a description a reader of the
comparison table understands, the policy and the settings it fixes) and a test of what it means;
the partitions, the grid and the comparison pick it up.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

Policy = Literal["base", "sft", "grpo"]


@dataclass(frozen=True)
class Variant:
    """One method of the grid.

    - ``policy``: ``base`` (the base model, prompted in ``prompting`` style), ``sft`` (the stage-1
      adapter), or ``grpo`` (a GRPO adapter trained in this variant's cell).
    - ``prompting``: ``tagged`` (the pipeline's question-decomposition format) or a prompting
      baseline of ``eagrl_pipeline.prompts.PROMPTING_BASELINES``.
    - ``grpo``: the ``rl_checkpoint`` settings the variant fixes (only for ``policy="grpo"``).
    """

    name: str
    description: str
    policy: Policy
    prompting: str = "tagged"
    grpo: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "grpo", MappingProxyType(dict(self.grpo)))
        if self.policy != "grpo" and self.grpo:
            raise ValueError(f"variant {self.name}: GRPO settings on a {self.policy} policy")
        if self.policy != "base" and self.prompting != "tagged":
            raise ValueError(f"variant {self.name}: trained policies answer in the tagged format")

    @property
    def trains_grpo(self) -> bool:
        return self.policy == "grpo"

    @property
    def starts_from(self) -> str | None:
        """The policy GRPO starts from (``sft`` or ``base``), None where no GRPO is trained."""
        return str(self.grpo.get("start_from", "sft")) if self.trains_grpo else None

    @property
    def report_row(self) -> str:
        """The name of the variant's own policy in its evaluation report."""
        if self.policy == "base":
            return "base" if self.prompting == "tagged" else f"base_{self.prompting}"
        return "sft" if self.policy == "sft" else "rl"

    def start_rows(self) -> tuple[str, ...]:
        """The policies the variant's own starts from, in order (its report's other rows)."""
        if self.policy == "sft":
            return ("base",)
        if self.policy == "grpo":
            return ("base",) if self.starts_from == "base" else ("base", "sft")
        return ()

    def settings(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "prompting": self.prompting,
            "grpo": dict(sorted(self.grpo.items())),
        }

    def mlflow_tags(self) -> dict[str, str]:
        """Tags of every MLflow run of the variant: MLflow's run comparison lines variants up."""
        return {"eagrl.variant": self.name, "eagrl.variant_hash": self.settings_hash()}

    def report_entry(self) -> dict[str, str]:
        """What a report records of the variant it scored."""
        return {"name": self.name, "row": self.report_row, "settings_hash": self.settings_hash()}

    def settings_hash(self) -> str:
        """Twelve hex digits of the fixed settings (not the description: rewording a variant's
        description does not make it another method)."""
        text = json.dumps(self.settings(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# DAPO's clip-higher (Yu et al. 2025): ε_low 0.2, ε_high 0.28, fixed.
DAPO_EPS_HIGH = 0.28
# A fixed ε_high in the middle of EAG-RL's adaptive range [0.2, 0.4]: only the adaptation differs.
FIXED_EPS_HIGH = 0.3

_VARIANTS: tuple[Variant, ...] = (
    Variant(
        "vanilla",
        "Base model, asked to answer directly with the probability (no reasoning, no features).",
        "base",
        prompting="vanilla",
    ),
    Variant(
        "think_answer",
        "Base model, asked to reason freely in one capped block, then answer.",
        "base",
        prompting="think_answer",
    ),
    Variant(
        "decomposition",
        "Base model in the pipeline's tagged question-decomposition format, untrained.",
        "base",
    ),
    Variant(
        "sft_only",
        "Stage 1 only: the LoRA adapter distilled from the expert-guided MCTS trajectories.",
        "sft",
    ),
    Variant(
        "grpo_only",
        "Stage 2 only: GRPO with EAG-RL's reward and adaptive clip on a fresh adapter on the "
        "base model (no Stage 1).",
        "grpo",
        grpo={"start_from": "base"},
    ),
    Variant(
        "eagrl",
        "EAG-RL: Stage 1 (SFT) then Stage 2 (GRPO, λ·R_cls + (1−λ)·R_att, entropy-aware "
        "adaptive clip).",
        "grpo",
        grpo={"start_from": "sft"},
    ),
    Variant(
        "eagrl_no_attention",
        "EAG-RL without the attention reward: λ = 1, R_att has no weight.",
        "grpo",
        grpo={"start_from": "sft", "lam": 1.0},
    ),
    Variant(
        "eagrl_fixed_clip",
        f"EAG-RL with ε_high fixed at {FIXED_EPS_HIGH} (no entropy adaptation).",
        "grpo",
        grpo={"start_from": "sft", "adaptive_clip": False, "eps_high_fixed": FIXED_EPS_HIGH},
    ),
    Variant(
        "grpo_dapo",
        f"Plain DAPO-style GRPO without the expert: from the base model, λ = 1 (no R_att), "
        f"clip-higher ε_high fixed at {DAPO_EPS_HIGH}.",
        "grpo",
        grpo={
            "start_from": "base",
            "lam": 1.0,
            "adaptive_clip": False,
            "eps_high_fixed": DAPO_EPS_HIGH,
        },
    ),
)

VARIANTS: Mapping[str, Variant] = MappingProxyType({v.name: v for v in _VARIANTS})
DEFAULT_VARIANT = "eagrl"


def get_variant(name: str) -> Variant:
    """The variant ``name``; an unknown name lists the known ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}: choose from {list(VARIANTS)}") from None


def apply_variant(
    variant: Variant, values: Mapping[str, Any], explicit: set[str]
) -> dict[str, Any]:
    """``values`` (rl_checkpoint's settings) with the variant's fixed settings applied. A setting
    the run config gave explicitly (``explicit``) that the variant fixes to another value is an
    error: the variant would silently be another method."""
    clashes = {
        key: (values[key], fixed)
        for key, fixed in variant.grpo.items()
        if key in explicit and values.get(key) != fixed
    }
    if clashes:
        detail = ", ".join(f"{k}={v!r} (the variant fixes {f!r})" for k, (v, f) in clashes.items())
        raise ValueError(
            f"variant {variant.name} fixes {sorted(clashes)}; the run config sets {detail}. Fix: "
            "drop those settings from rl_checkpoint's config, or add a variant to "
            "eagrl_pipeline/variants.py with the settings you want"
        )
    return {**values, **variant.grpo}
