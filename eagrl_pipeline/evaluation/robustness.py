"""Robustness to feature order (DESIGN §1 "Evaluation"): permute 20/40/60/100 % of features.

The perturbation moves *exactly* ``round(fraction * n)`` features (rounding half up), so a level
means what its name says: a random shuffle of the chosen subset could leave some of them in place.
The chosen positions, in random order, are cyclically shifted by a random non-zero offset, which
is a derangement of them: every chosen feature lands somewhere else, every other one stays.

For the LLM the feature lines of the prompt are reordered; they keep their names, so this tests
sensitivity to order. For the expert, whose inputs are positional, the comparable perturbation is
permuting the input columns; the model then reads one feature's values in another's slot, which
is a harsher test than the LLM's, and reports must say so.
"""

from __future__ import annotations

import hashlib
import math
import re

import numpy as np

PERMUTATION_LEVELS: tuple[float, ...] = (0.2, 0.4, 0.6, 1.0)

# ``serialize.feature_line``: "- Name (Unit: U. Reference range: R): [v1, v2]". Demographic lines
# ("- Sex: male", "- Age: 63 years") have no bracketed value list and so never match.
FEATURE_LINE = re.compile(r"^- \S.*: \[[^\[\]\n]*\]$")


def n_moved(n_features: int, fraction: float) -> int:
    """How many features a level moves: ``fraction * n_features`` rounded half up.

    >>> [n_moved(73, f) for f in PERMUTATION_LEVELS]
    [15, 29, 44, 73]
    """
    if n_features < 0:
        raise ValueError(f"n_features must be >= 0, got {n_features}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"permutation fraction must be in [0, 1], got {fraction}")
    return min(n_features, math.floor(fraction * n_features + 0.5))


def patient_seed(seed: int, patient_id: object) -> int:
    """A per-patient seed that is stable across processes (unlike ``hash``), so each patient gets
    its own permutation and a re-run gets the same ones.

    >>> patient_seed(42, "p1") == patient_seed(42, "p1") != patient_seed(42, "p2")
    True
    """
    digest = hashlib.blake2b(f"{seed}:{patient_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def permuted_positions(n_features: int, fraction: float, seed: int) -> np.ndarray:
    """Index permutation ``perm`` (new position i shows old feature ``perm[i]``) that moves
    exactly ``n_moved(n_features, fraction)`` features.

    With fewer than 2 features chosen (e.g. 20 % of 2 features) nothing can move, and the
    identity is returned.

    >>> perm = permuted_positions(10, 0.4, seed=0)
    >>> int((perm != np.arange(10)).sum()), sorted(perm.tolist()) == list(range(10))
    (4, True)
    """
    k = n_moved(n_features, fraction)
    perm = np.arange(n_features)
    if k < 2:
        return perm
    rng = np.random.default_rng(seed)
    chosen = rng.choice(n_features, size=k, replace=False)
    shift = int(rng.integers(1, k))
    perm[chosen] = np.roll(chosen, -shift)
    return perm


def count_feature_lines(prompt_text: str) -> int:
    r"""How many feature lines (``FEATURE_LINE``) a prompt holds.

    >>> count_feature_lines("- Sex: male\n- LDH (Unit: U/L): [310, NaN]\n- pH: [7.4]")
    2
    """
    return sum(1 for line in prompt_text.split("\n") if FEATURE_LINE.match(line.rstrip("\r")))


def permute_prompt_features(prompt_text: str, fraction: float, seed: int) -> str:
    """The prompt with its feature lines reordered by ``permuted_positions``; every other line
    (demographics, visit dates, task, format, example) and every line ending stays byte-identical.

    Pass ``patient_seed(seed, patient_id)`` to give each patient its own permutation.
    """
    lines = prompt_text.split("\n")
    ends = ["\r" if line.endswith("\r") else "" for line in lines]
    bodies = [line[: len(line) - len(end)] for line, end in zip(lines, ends, strict=True)]
    where = [i for i, body in enumerate(bodies) if FEATURE_LINE.match(body)]
    if not where:
        raise ValueError(
            "prompt has no feature lines ('- <Feature> (...): [v1, v2, ...]') to permute; "
            "pass the user prompt built by eagrl_pipeline.prompts.serialize"
        )
    perm = permuted_positions(len(where), fraction, seed)
    out = list(lines)
    for new, old in enumerate(perm.tolist()):
        out[where[new]] = bodies[where[old]] + ends[where[new]]
    return "\n".join(out)


def permute_feature_columns(
    x: np.ndarray, fraction: float, seed: int, feature_axis: int = -1
) -> np.ndarray:
    """A copy of the expert's input (e.g. patients × visits × features) with the same
    ``permuted_positions`` applied to the feature axis for every patient.

    Apply it with the same seed to companion arrays (missing masks) to keep them aligned.

    >>> permute_feature_columns(np.arange(4).reshape(1, 1, 4), 1.0, seed=0).shape
    (1, 1, 4)
    """
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError("permute_feature_columns needs an array with a feature axis")
    perm = permuted_positions(x.shape[feature_axis], fraction, seed)
    return np.take(x, perm, axis=feature_axis)
