"""Entropy-aware adaptive upper clip for GRPO (DESIGN §1).

Per completion, the mean token entropy over the content of its ``<Important Features>`` span is
min-max normalised within the generation batch (every completion of one generation round, over
all its micro-batches and processes) and mapped to that completion's upper clip ``ε_high`` in
``[eps_high_min, eps_high_max]`` (default ``[0.2, 0.4]``); the lower clip stays fixed. Informative,
uncertain trajectories thus get larger policy updates. The batch is the generation batch, not one
loss call's micro-batch, because a micro-batch of two completions would always map to exactly
{ε_min, ε_max} whatever their entropies. trl's ``epsilon_high`` is one float, so
:class:`AdaptiveClipGRPOTrainer` makes it a ``[B, 1]`` tensor for the duration of one loss call
and leaves the rest of trl's loss (loss-type normalisation, importance-sampling level, KL, masks,
metrics) untouched.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing

from eagrl_pipeline.training.shared_prompt import score_sharing_prompts, trainer_can_share

log = logging.getLogger(__name__)

# The generation-batch key that carries each completion's ε_high through trl's shuffle and split.
EPS_HIGH_KEY = "eps_high"
# Percentiles of the ε distribution logged per generation batch.
EPS_PERCENTILES = (10, 50, 90)

# trl loss types whose per-token objective is the PPO-style two-sided clip 1 ± ε; the others
# (cispo, sapo, vespo) use epsilon_high differently or not at all.
CLIPPED_LOSS_TYPES = frozenset({"grpo", "bnpo", "dr_grpo", "dapo", "luspo"})


@contextmanager
def completion_positions_only() -> Iterator[None]:
    """Make trl's fused LM head score only the completion positions on CPU too.

    trl 1.16 scores just the positions with a label on Triton devices; elsewhere it scores
    every position, prompt included, so that compilers (Neuron) see fixed tile shapes. Eager
    CPU gains nothing from fixed shapes, and there the prompt is most of the sequence: 8
    completions of ~100 tokens after ~760-token prompts took 30 s per GRPO backward, half of it
    in the vocabulary projection of the prompt's positions. The log-probs are the same either
    way (the test compares them); on GPUs nothing changes. Without the hook (another trl), a
    no-op.
    """
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        yield
        return
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


@dataclass(frozen=True)
class AdaptiveClipConfig:
    """Bounds of the adaptive clip and the tags that delimit the important-feature span.

    >>> AdaptiveClipConfig().eps_high_max
    0.4
    >>> AdaptiveClipConfig(eps_high_min=0.5, eps_high_max=0.3)
    Traceback (most recent call last):
    ...
    ValueError: eps_high_min (0.5) must be <= eps_high_max (0.3)
    """

    enabled: bool = True
    eps_low: float = 0.2
    eps_high_min: float = 0.2
    eps_high_max: float = 0.4
    span_open: str = "<Important Features>"
    span_close: str = "</Important Features>"

    def __post_init__(self) -> None:
        for name in ("eps_low", "eps_high_min", "eps_high_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.eps_low >= 1:
            raise ValueError(f"eps_low ({self.eps_low}) must be < 1: the lower clip is 1 - eps_low")
        if self.eps_high_min > self.eps_high_max:
            raise ValueError(
                f"eps_high_min ({self.eps_high_min}) must be <= eps_high_max ({self.eps_high_max})"
            )
        if not self.span_open or not self.span_close:
            raise ValueError("span_open and span_close must be non-empty strings")
        if self.span_open == self.span_close:
            raise ValueError(f"span_open and span_close must differ, both are {self.span_open!r}")


def entropy_to_epsilon(
    mean_entropy: torch.Tensor, valid: torch.Tensor, eps_min: float, eps_max: float
) -> torch.Tensor:
    """Map per-completion span entropies to upper clips, min-max within the batch.

    Only ``valid`` completions (those with a span and a finite entropy) take part in the min-max;
    the lowest gets ``eps_min``, the highest ``eps_max``. Completions without a span, and every
    completion of a batch whose valid entropies are all equal (up to float precision, relative to
    the largest), get ``eps_min``: with no span there is nothing informative to reward, and with
    no spread there is no evidence to rank on, so both fall back to the conservative static clip
    rather than enlarging an update blindly (the midpoint would do exactly that). The result is
    detached: the clip is a bound, not something to differentiate.

    >>> h = torch.tensor([0.5, 1.5, 1.0, 9.0])
    >>> entropy_to_epsilon(h, torch.tensor([True, True, True, False]), 0.2, 0.4)
    tensor([0.2000, 0.4000, 0.3000, 0.2000])
    >>> entropy_to_epsilon(torch.tensor([0.7, 0.7]), torch.tensor([True, True]), 0.2, 0.4)
    tensor([0.2000, 0.2000])
    """
    if eps_min > eps_max:
        raise ValueError(f"eps_min ({eps_min}) must be <= eps_max ({eps_max})")
    if mean_entropy.shape != valid.shape or mean_entropy.dim() != 1:
        raise ValueError(
            f"mean_entropy and valid must be 1-D of one shape, got {tuple(mean_entropy.shape)} "
            f"and {tuple(valid.shape)}"
        )
    h = mean_entropy.detach()
    if not h.is_floating_point():
        h = h.float()
    valid = valid.bool() & torch.isfinite(h)
    eps = torch.full_like(h, eps_min)
    if not valid.any():
        return eps
    lo, hi = h[valid].min(), h[valid].max()
    spread = hi - lo
    # Relative tolerance: entropies equal up to float noise count as equal (no evidence to rank).
    if spread <= torch.finfo(h.dtype).eps * torch.clamp(hi.abs(), min=1.0):
        return eps
    scaled = eps_min + (eps_max - eps_min) * (h - lo) / spread
    return torch.where(valid, scaled.clamp(eps_min, eps_max), eps)


def _token_char_spans(ids: Sequence[int], tokenizer: Any) -> tuple[str, list[tuple[int, int]]]:
    """Decode ``ids`` incrementally; return the text and each token's ``[start, end)`` in it.

    Uses the streaming detokenisation scheme of vLLM/TGI: each token is decoded together with the
    previous token(s), so SentencePiece's leading-space handling and byte-level BPE's multi-byte
    characters split across tokens come out right for any HF tokenizer. Tokens that complete no
    character yet share the range of the token that completes it.
    """
    text = ""
    spans = [(0, 0)] * len(ids)
    prefix_offset = read_offset = 0
    prefix_text = ""
    for i in range(len(ids)):
        new_text = tokenizer.decode(
            list(ids[prefix_offset : i + 1]),
            skip_special_tokens=False,
            clean_up_tokenization_spaces=False,
        )
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            start = len(text)
            text += new_text[len(prefix_text) :]
            for j in range(read_offset, i + 1):
                spans[j] = (start, len(text))
            prefix_offset, read_offset = read_offset, i + 1
            prefix_text = tokenizer.decode(
                list(ids[prefix_offset:read_offset]),
                skip_special_tokens=False,
                clean_up_tokenization_spaces=False,
            )
    for j in range(read_offset, len(ids)):  # a trailing incomplete character: no range
        spans[j] = (len(text), len(text))
    return text, spans


def important_feature_token_mask(
    completion_ids: torch.Tensor,
    tokenizer: Any,
    span_open: str = "<Important Features>",
    span_close: str = "</Important Features>",
    completion_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bool mask ``[B, T]`` of the completion tokens carrying the important-feature span's content.

    Character offsets come from decoding (see :func:`_token_char_spans`), never from re-encoding,
    because re-encoding generated text need not reproduce the generated ids. The span is the last
    ``span_open`` (the one the reward parser keeps) up to the next ``span_close``, or to the end
    of the completion when the close tag is missing (a truncated answer). Whitespace around the
    content is trimmed first, so tokens holding only a tag, a tag plus whitespace, or padding are
    never marked; a token that straddles the content boundary is marked. Special tokens (EOS after
    an unclosed span) are never marked. Positions where ``completion_mask`` is 0 are not decoded
    and stay False. A completion without ``span_open`` is all False.
    """
    if completion_ids.dim() != 2:
        raise ValueError(f"completion_ids must be [B, T], got {tuple(completion_ids.shape)}")
    if completion_mask is None:
        completion_mask = torch.ones_like(completion_ids, dtype=torch.bool)
    if completion_mask.shape != completion_ids.shape:
        raise ValueError(
            f"completion_mask {tuple(completion_mask.shape)} must match completion_ids "
            f"{tuple(completion_ids.shape)}"
        )
    out = torch.zeros(completion_ids.shape, dtype=torch.bool)
    special_ids = set(getattr(tokenizer, "all_special_ids", None) or ())
    ids_cpu, mask_cpu = completion_ids.detach().cpu(), completion_mask.detach().cpu().bool()
    for row in range(ids_cpu.size(0)):
        positions = torch.nonzero(mask_cpu[row], as_tuple=True)[0]
        ids = ids_cpu[row, positions].tolist()
        if not ids:
            continue
        quick = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if span_open not in quick:  # the common negative case without per-token decoding
            continue
        text, spans = _token_char_spans(ids, tokenizer)
        open_at = text.rfind(span_open)
        if open_at < 0:
            continue
        start = open_at + len(span_open)
        close_at = text.find(span_close, start)
        end = len(text) if close_at < 0 else close_at
        content = text[start:end]
        start, end = start + len(content) - len(content.lstrip()), start + len(content.rstrip())
        if start >= end:
            continue
        for k, (s, e) in enumerate(spans):
            if s < e and s < end and e > start and ids[k] not in special_ids:
                out[row, positions[k]] = True
    return out.to(completion_ids.device)


def span_mean_entropy(logits_or_entropies: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-completion mean token entropy over the masked tokens; 0 where a row has none.

    Takes per-token entropies ``[B, T]`` (what trl's ``_get_per_token_logps_and_entropies``
    returns, so the trainer needs no second forward pass) or logits ``[B, T, V]``. Callers tell
    "no span" from "zero entropy" with ``mask.any(-1)``.

    >>> logits = torch.zeros(1, 2, 4)  # uniform over 4 tokens: entropy ln 4
    >>> span_mean_entropy(logits, torch.tensor([[True, False]]))
    tensor([1.3863])
    """
    x = logits_or_entropies.detach()
    if x.dim() == 3:
        logp = torch.log_softmax(x.float(), dim=-1)
        x = -(logp.exp() * logp).sum(-1)
    elif x.dim() != 2:
        raise ValueError(f"expected entropies [B, T] or logits [B, T, V], got {tuple(x.shape)}")
    if mask.shape != x.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must match {tuple(x.shape)}")
    m = mask.to(device=x.device, dtype=torch.float32)
    return (x.float() * m).sum(-1) / m.sum(-1).clamp(min=1.0)


def clipped_surrogate(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float,
    eps_high: float | torch.Tensor,
) -> torch.Tensor:
    """Per-token clipped GRPO loss ``-min(r·A, clip(r, 1-ε_low, 1+ε_high)·A)``, token-level ratio.

    The same formula as trl 1.16's ``_compute_loss`` for the clipped loss types; with a float
    ``eps_high`` it is the same ops, so the same bits. ``eps_high`` may be a ``[B, 1]`` tensor
    (one upper clip per completion). ``advantages`` is ``[B]`` or ``[B, 1]``.

    >>> lp = torch.zeros(2, 1)
    >>> old = -torch.log(torch.full((2, 1), 1.3))  # ratio 1.3 for both completions
    >>> clipped_surrogate(lp, old, torch.ones(2), 0.2, torch.tensor([[0.2], [0.4]]))
    tensor([[-1.2000],
            [-1.3000]])
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    coef_1 = torch.exp(per_token_logps - old_per_token_logps)
    if isinstance(eps_high, torch.Tensor):
        upper = 1 + eps_high.to(device=coef_1.device, dtype=coef_1.dtype)
        coef_2 = torch.minimum(torch.clamp(coef_1, min=1 - eps_low), upper)
    else:
        coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    return -torch.min(coef_1 * advantages, coef_2 * advantages)


def generation_batch_eps_high(
    entropies: torch.Tensor, span_mask: torch.Tensor, eps_min: float, eps_max: float
) -> torch.Tensor:
    """ε_high of every completion of a generation batch, min-maxed over that whole batch.

    ``entropies`` and ``span_mask`` are ``[B, T]`` over all ``B`` completions of one generation
    round; a completion's ε does not depend on how the batch is later cut into micro-batches.
    Returns float64 ``[B]`` (so 0.2 logs as 0.2).

    >>> h = torch.tensor([[1.0, 9.0], [2.0, 9.0], [3.0, 9.0], [5.0, 9.0]])
    >>> span = torch.tensor([[True, False]] * 3 + [[False, False]])
    >>> generation_batch_eps_high(h, span, 0.2, 0.4)
    tensor([0.2000, 0.3000, 0.4000, 0.2000], dtype=torch.float64)
    """
    mean_entropy = span_mean_entropy(entropies, span_mask).double()
    return entropy_to_epsilon(mean_entropy, span_mask.any(-1), eps_min, eps_max)


def eps_high_summary(
    eps_high: torch.Tensor, has_span: torch.Tensor, span_entropy: torch.Tensor
) -> dict[str, float]:
    """What one generation batch's clips look like: ε mean, min, max and percentiles over all
    completions, the fraction with a span and their mean span entropy (NaN when none has one).

    >>> eps = torch.tensor([0.2, 0.3, 0.4, 0.2], dtype=torch.float64)
    >>> stats = eps_high_summary(eps, torch.tensor([True, True, True, False]), torch.ones(4))
    >>> stats["eps_high_p50"], stats["span_fraction"]
    (0.25, 0.75)
    """
    eps = eps_high.detach().double().flatten()
    has_span = has_span.detach().bool().flatten()
    q = torch.tensor([p / 100 for p in EPS_PERCENTILES], dtype=eps.dtype, device=eps.device)
    quantiles = torch.quantile(eps, q).tolist()
    entropy = span_entropy.detach().double().flatten()[has_span]
    return {
        "eps_high_mean": eps.mean().item(),
        "eps_high_min": eps.min().item(),
        "eps_high_max": eps.max().item(),
        **{f"eps_high_p{p}": v for p, v in zip(EPS_PERCENTILES, quantiles, strict=True)},
        "span_fraction": has_span.double().mean().item(),
        "span_entropy_mean": entropy.mean().item() if entropy.numel() else math.nan,
    }


class AdaptiveClipGRPOTrainer(GRPOTrainer):
    """trl's ``GRPOTrainer`` with one upper clip per completion from its span entropy.

    With ``adaptive_clip.enabled=False`` every call goes straight to trl, so the loss and the
    metrics are trl's own. Enabled:

    - ``_generate_and_score_completions`` (once per generation round) runs trl's, then
      :meth:`add_eps_high` computes the span entropies of the whole local generation batch under
      the generating policy, gathers them over processes, min-maxes them to ε and stores the
      local ε as a ``[B]`` tensor under :data:`EPS_HIGH_KEY`; trl's ``shuffle_sequence_dict`` and
      ``split_tensor_dict`` then carry each ε with its completion into the micro-batches, and
      every one of the ``num_iterations`` updates on that batch reuses it, as it reuses
      ``old_per_token_logps``. Where trl runs the old-log-prob forward anyway, its entropies are
      taken from that same call; otherwise one no-grad forward in chunks of the per-device batch.
    - ``_compute_loss`` sets ``self.epsilon_high`` to that ``[B, 1]`` tensor for one call; trl's
      own loss then clips, and reports ``clip_ratio/*``, per completion. ``self.epsilon_low``
      becomes a 0-dim float64 tensor of the same value only because ``torch.clamp`` refuses a
      float min with a tensor max. Both are restored afterwards.

    Logged once per generation batch under ``adaptive_clip/`` (see :func:`eps_high_summary`),
    into trl's ``_metrics``, so they reach every ``report_to`` backend (MLflow) with trl's own.
    """

    def __init__(
        self,
        *args: Any,
        adaptive_clip: AdaptiveClipConfig | None = None,
        share_prompts: bool = False,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.adaptive_clip = adaptive_clip if adaptive_clip is not None else AdaptiveClipConfig()
        # Score each distinct prompt of a micro-batch once (eagrl_pipeline.training.shared_prompt)
        # where that is exact (trainer_can_share).
        self.share_prompts = share_prompts and trainer_can_share(self)
        # Set during _generate_and_score_completions where trl will compute old log-probs: the
        # first policy forward there is that one, and records its entropies here.
        self._old_logps_capture: dict[str, torch.Tensor] | None = None
        if self.adaptive_clip.enabled:
            self._check_adaptive_clip_compatible()

    def _check_adaptive_clip_compatible(self) -> None:
        cfg = self.adaptive_clip
        if self.loss_type not in CLIPPED_LOSS_TYPES:
            raise ValueError(
                f"the adaptive clip needs a clipped loss type {sorted(CLIPPED_LOSS_TYPES)}, "
                f"got loss_type={self.loss_type!r}"
            )
        if not math.isclose(self.epsilon_low, cfg.eps_low, rel_tol=0.0, abs_tol=1e-12):
            raise ValueError(
                f"GRPOConfig.epsilon ({self.epsilon_low}) must equal AdaptiveClipConfig.eps_low "
                f"({cfg.eps_low}): the lower clip is fixed and has one source of truth"
            )
        if self.args.epsilon_high is not None:
            log.warning(
                "GRPOConfig.epsilon_high=%s is superseded by the adaptive clip in [%s, %s]",
                self.args.epsilon_high,
                cfg.eps_high_min,
                cfg.eps_high_max,
            )

    def _span_tokenizer(self) -> Any:
        return getattr(self.processing_class, "tokenizer", self.processing_class)

    def _trl_computes_old_logps(self) -> bool:
        """trl 1.16's condition for its old-log-prob forward in ``_generate_and_score_completions``
        (only an optimisation: :meth:`add_eps_high` checks the captured call is that one)."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        return self.args.gradient_accumulation_steps % generate_every != 0 or bool(
            self.use_vllm and self.vllm_importance_sampling_correction
        )

    def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
        if not self.adaptive_clip.enabled:
            return super()._generate_and_score_completions(inputs)
        capture: dict[str, torch.Tensor] = {}
        self._old_logps_capture = capture if self._trl_computes_old_logps() else None
        try:
            batch = super()._generate_and_score_completions(inputs)
        finally:
            self._old_logps_capture = None
        entropies = None
        if capture:
            if batch.get("old_per_token_logps") is capture["logps"]:
                entropies = capture["entropies"]
            else:
                log.warning(
                    "trl's first policy forward was not its old-log-prob one; the adaptive clip "
                    "runs its own entropy forward"
                )
        return self.add_eps_high(batch, entropies)

    def _get_per_token_logps_and_entropies(
        self, model: Any, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        capture = self._old_logps_capture if model is self.model else None
        if capture is not None:
            self._old_logps_capture = None  # the first policy forward only (a PEFT ref follows)
            kwargs["compute_entropy"] = True
        if self._scores_sharing_prompts(kwargs):
            logps, entropies, aux_loss = self._score_sharing_prompts(model, *args, **kwargs)
        else:
            with completion_positions_only():
                logps, entropies, aux_loss = super()._get_per_token_logps_and_entropies(
                    model, *args, **kwargs
                )
        if capture is not None:
            capture["logps"], capture["entropies"] = logps, entropies
        return logps, entropies, aux_loss

    def _scores_sharing_prompts(self, kwargs: dict[str, Any]) -> bool:
        """Text-only scoring without an auxiliary loss: what the shared-prompt path computes."""
        handled = {"batch_size", "compute_entropy", "compute_aux_loss"}
        extra = [k for k, v in kwargs.items() if k not in handled and v is not None]
        return self.share_prompts and not extra and not kwargs.get("compute_aux_loss")

    def _score_sharing_prompts(
        self,
        model: Any,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int,
        batch_size: int | None = None,
        compute_entropy: bool = False,
        **_: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None, None]:
        """trl's ``_get_per_token_logps_and_entropies`` in its chunks of ``batch_size`` rows,
        each chunk's distinct prompts run once (:func:`score_sharing_prompts`)."""
        batch_size = batch_size or input_ids.size(0)
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            rows = slice(start, start + batch_size)
            with self.accelerator.autocast():
                chunk_logps, chunk_entropies = score_sharing_prompts(
                    model,
                    input_ids[rows],
                    attention_mask[rows],
                    logits_to_keep,
                    temperature=self.temperature,
                    compute_entropy=compute_entropy,
                )
            logps.append(chunk_logps)
            if chunk_entropies is not None:
                entropies.append(chunk_entropies)
        return torch.cat(logps), torch.cat(entropies) if compute_entropy else None, None

    def _policy_entropies(self, batch: dict[str, Any]) -> torch.Tensor:
        """Per-token entropies ``[B, T]`` of the batch's completions under the current policy:
        one no-grad forward in chunks of the per-device batch, as trl's own scoring passes."""
        mode = "train" if self.model.training else "eval"
        chunk = (
            self.args.per_device_train_batch_size
            if mode == "train"
            else self.args.per_device_eval_batch_size
        )
        optional = (
            "pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask",
            "spatial_shapes", "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids",
            "image_position_ids",
        )  # fmt: skip
        extra = {key: batch[key] for key in optional if batch.get(key) is not None}
        with (
            torch.no_grad(),
            disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
        ):
            _, entropies, _ = self._get_per_token_logps_and_entropies(
                self.model,
                torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1),
                torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1),
                batch["completion_ids"].size(1),
                batch_size=chunk,
                compute_entropy=True,
                **extra,
            )
        return entropies

    def add_eps_high(
        self, batch: dict[str, Any], entropies: torch.Tensor | None = None
    ) -> dict[str, Any]:
        """Store each completion's ε_high in ``batch[EPS_HIGH_KEY]`` (``[B]``, float32) and log
        the generation batch's ε distribution; returns ``batch``.

        ``batch`` is one process's whole generation batch as trl's
        ``_generate_and_score_completions`` returns it; ``entropies`` are its per-token entropies
        under the generating policy (computed here when not given). The min-max runs over the
        completions of every process (``accelerator.gather``), so ε does not depend on how the
        batch is split into micro-batches, gradient-accumulation steps or processes.
        """
        cfg = self.adaptive_clip
        completion_mask = batch["completion_mask"]
        mask = completion_mask.bool()
        if batch.get("tool_mask") is not None:  # tool output is not the policy's text, as in trl
            mask = mask & batch["tool_mask"].bool()
        if entropies is None:
            entropies = self._policy_entropies(batch)
        span_mask = important_feature_token_mask(
            batch["completion_ids"],
            self._span_tokenizer(),
            cfg.span_open,
            cfg.span_close,
            completion_mask=completion_mask,
        ).to(entropies.device) & mask.to(entropies.device)
        local_entropy = span_mean_entropy(entropies, span_mask).double()
        local_valid = span_mask.any(-1)
        all_entropy = self.accelerator.gather(local_entropy)
        all_valid = self.accelerator.gather(local_valid.float()).bool()
        all_eps = entropy_to_epsilon(all_entropy, all_valid, cfg.eps_high_min, cfg.eps_high_max)
        mode = "train" if self.model.training else "eval"
        for name, value in eps_high_summary(all_eps, all_valid, all_entropy).items():
            self._metrics[mode][f"adaptive_clip/{name}"].append(value)
        n = local_entropy.size(0)
        start = self.accelerator.process_index * n
        batch[EPS_HIGH_KEY] = all_eps[start : start + n].float().to(completion_mask.device)
        return batch

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        if not self.adaptive_clip.enabled:
            return super()._compute_loss(model, inputs)
        eps_high = inputs.get(EPS_HIGH_KEY)
        if eps_high is None:
            raise KeyError(
                f"the micro-batch has no {EPS_HIGH_KEY!r}: it must come from this trainer's "
                "_generate_and_score_completions (or add_eps_high), which sets the clips of the "
                "whole generation batch"
            )
        eps_low_saved, eps_high_saved = self.epsilon_low, self.epsilon_high
        self.epsilon_high = eps_high.detach().float().unsqueeze(1)
        self.epsilon_low = torch.tensor(
            float(eps_low_saved), dtype=torch.float64, device=eps_high.device
        )
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self.epsilon_low, self.epsilon_high = eps_low_saved, eps_high_saved
