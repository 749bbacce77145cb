"""The entropy-aware adaptive upper clip: trl's exact loss when disabled, per-completion clips
when enabled, min-maxed over the whole generation batch (not one micro-batch), a monotonic bounded
entropy-to-ε map, a span mask on real tokenizers, and real GRPO runs with gradient accumulation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import shuffle_sequence_dict, split_tensor_dict

from eagrl_pipeline.llm.guided import ScaffoldConfig
from eagrl_pipeline.llm.tiny_model import build_tiny_qwen2
from eagrl_pipeline.training.adaptive_clip import (
    EPS_HIGH_KEY,
    AdaptiveClipConfig,
    AdaptiveClipGRPOTrainer,
    clipped_surrogate,
    entropy_to_epsilon,
    eps_high_summary,
    generation_batch_eps_high,
    important_feature_token_mask,
    span_mean_entropy,
)
from eagrl_pipeline.training.grpo import GuidedGRPOTrainer

RATIO = 1.3  # every token's π/π_old: above 1 + 0.2, below 1 + 0.4
CONTENT = ("Lactate dehydrogenase, Lymphocyte count", "Albumin, Creatinine, Urea, D-D dimer")
COMPLETIONS = (
    f"<Important Features> {CONTENT[0]} </Important Features><Final answer>0.83</Final answer>",
    f"<Important Features> {CONTENT[1]} </Important Features><Final answer>0.07</Final answer>",
    "<Final answer>0.5</Final answer>",  # no span
)
ADVANTAGES = (1.0, 0.5, -0.5)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path) -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(tiny_dir)


def make_trainer(
    cls: type[GRPOTrainer],
    tiny_dir: Path,
    tokenizer: PreTrainedTokenizerFast,
    out: Path,
    **config: Any,
) -> GRPOTrainer:
    adaptive = config.pop("adaptive_clip", None)
    defaults = {"per_device_train_batch_size": 3, "num_generations": 3, "max_completion_length": 64}
    args = GRPOConfig(
        output_dir=str(out), report_to="none", use_cpu=True, bf16=False, **{**defaults, **config}
    )
    kwargs: dict[str, Any] = {} if adaptive is None else {"adaptive_clip": adaptive}
    return cls(
        model=str(tiny_dir),
        reward_funcs=lambda completions, **_: [0.0] * len(completions),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["a", "b", "c"]}),
        processing_class=tokenizer,
        **kwargs,
    )


def make_inputs(
    trainer: GRPOTrainer,
    tokenizer: PreTrainedTokenizerFast,
    completions: tuple[str, ...] = COMPLETIONS,
    advantages: tuple[float, ...] = ADVANTAGES,
) -> dict[str, Any]:
    """A hand-made batch as trl's ``_generate_and_score_completions`` returns it: left-padded
    prompts, right-padded completions ending in EOS, old log-probs set so every ratio is
    ``RATIO``."""

    def encode(texts: list[str], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            cols = slice(width - len(row), width) if left else slice(0, len(row))
            ids[i, cols], mask[i, cols] = torch.tensor(row), 1
        return ids, mask

    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Patient {i}: predict the risk."}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for i in range(len(completions))
    ]
    prompt_ids, prompt_mask = encode(prompts, left=True)
    completion_ids, completion_mask = encode([c + tokenizer.eos_token for c in completions], False)
    inputs: dict[str, Any] = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor(advantages),
        "num_items_in_batch": completion_mask.sum(),
    }
    logps, _ = policy_logps_and_entropies(trainer, inputs)
    inputs["old_per_token_logps"] = logps - math.log(RATIO)
    return inputs


def policy_logps_and_entropies(
    trainer: GRPOTrainer, inputs: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model,
            torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1),
            torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1),
            inputs["completion_ids"].size(1),
            compute_entropy=True,
        )
    return logps, entropies


def grpo_reduce(per_token_loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """trl's ``loss_type="grpo"`` reduction in eval mode: mean over completions of token means."""
    return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


def metrics(trainer: GRPOTrainer, mode: str = "eval") -> dict[str, list[float]]:
    return dict(trainer._metrics[mode])


@pytest.mark.parametrize(
    "config",
    [
        {"loss_type": "dapo"},
        {"loss_type": "grpo", "beta": 0.04},
        {"loss_type": "bnpo", "importance_sampling_level": "sequence"},
    ],
    ids=["dapo", "grpo-kl", "bnpo-sequence"],
)
def test_disabled_is_trls_loss(
    config: dict[str, Any], tiny_dir: Path, tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    trl_trainer = make_trainer(GRPOTrainer, tiny_dir, tokenizer, tmp_path / "trl", **config)
    ours = make_trainer(
        AdaptiveClipGRPOTrainer,
        tiny_dir,
        tokenizer,
        tmp_path / "ours",
        adaptive_clip=AdaptiveClipConfig(enabled=False),
        **config,
    )
    inputs = make_inputs(trl_trainer, tokenizer)
    if config.get("beta"):
        inputs["ref_per_token_logps"] = inputs["old_per_token_logps"] - 0.1
    expected = trl_trainer._compute_loss(trl_trainer.model, inputs)
    loss = ours._compute_loss(ours.model, inputs)
    assert torch.equal(loss, expected)
    expected.backward()
    loss.backward()
    for (name, p), (_, q) in zip(
        trl_trainer.model.named_parameters(), ours.model.named_parameters(), strict=True
    ):
        assert torch.equal(p.grad, q.grad), name
    assert metrics(ours) == metrics(trl_trainer)
    assert not any(key.startswith("adaptive_clip/") for key in metrics(ours))


def test_scalar_surrogate_is_trls_formula(
    tiny_dir: Path, tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    trainer = make_trainer(GRPOTrainer, tiny_dir, tokenizer, tmp_path, loss_type="grpo")
    trainer.epsilon_high = 0.28  # asymmetric, so both bounds are exercised
    inputs = make_inputs(trainer, tokenizer)
    inputs["old_per_token_logps"][0] += math.log(RATIO) - math.log(0.5)  # low ratio, A > 0
    inputs["old_per_token_logps"][2] += math.log(RATIO) - math.log(0.5)  # low-clipped, A < 0
    logps, _ = policy_logps_and_entropies(trainer, inputs)
    per_token = clipped_surrogate(
        logps, inputs["old_per_token_logps"], inputs["advantages"], 0.2, 0.28
    )
    expected = grpo_reduce(per_token, inputs["completion_mask"])
    with torch.no_grad():
        loss = trainer._compute_loss(trainer.model, inputs)
    assert torch.equal(loss, expected)  # same ops, same bits
    as_tensor = clipped_surrogate(
        logps,
        inputs["old_per_token_logps"],
        inputs["advantages"],
        0.2,
        torch.full((3, 1), 0.28),
    )
    assert torch.equal(as_tensor, per_token)


def test_enabled_clips_each_completion_at_its_own_bound(
    tiny_dir: Path, tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    static = make_trainer(GRPOTrainer, tiny_dir, tokenizer, tmp_path / "trl", loss_type="grpo")
    ours = make_trainer(
        AdaptiveClipGRPOTrainer, tiny_dir, tokenizer, tmp_path / "ours", loss_type="grpo"
    )
    inputs = make_inputs(ours, tokenizer)
    completion_mask = inputs["completion_mask"]

    logps, entropies = policy_logps_and_entropies(ours, inputs)
    span = important_feature_token_mask(
        inputs["completion_ids"], tokenizer, completion_mask=completion_mask
    )
    assert span.any(-1).tolist() == [True, True, False]
    span_entropy = span_mean_entropy(entropies, span)
    assert span_entropy[0] != span_entropy[1]
    eps = entropy_to_epsilon(span_entropy, span.any(-1), 0.2, 0.4)
    high, low = (0, 1) if span_entropy[0] > span_entropy[1] else (1, 0)
    torch.testing.assert_close(eps[[high, low, 2]], torch.tensor([0.4, 0.2, 0.2]))

    per_token = clipped_surrogate(
        logps, inputs["old_per_token_logps"], inputs["advantages"], 0.2, eps[:, None]
    )
    ratio_used = per_token / -inputs["advantages"][:, None]  # per-token min(r, clip(r)) for A > 0
    valid = completion_mask.bool()
    for row, bound in ((high, 1.3), (low, 1.2)):  # the high-ε completion is not clipped at 1.3
        used = ratio_used[row][valid[row]]
        torch.testing.assert_close(used, torch.full_like(used, bound))

    ours.model.train()
    ours.current_gradient_accumulation_steps = 1
    ours.add_eps_high(inputs)
    torch.testing.assert_close(inputs[EPS_HIGH_KEY], eps.float())
    logged = metrics(ours, "train")  # once per generation batch, before any loss call
    assert logged["adaptive_clip/eps_high_min"] == [pytest.approx(0.2)]
    assert logged["adaptive_clip/eps_high_max"] == [pytest.approx(0.4)]
    assert logged["adaptive_clip/eps_high_mean"] == [pytest.approx(0.8 / 3)]
    assert logged["adaptive_clip/eps_high_p10"] == [pytest.approx(0.2)]
    assert logged["adaptive_clip/eps_high_p50"] == [pytest.approx(0.2)]
    assert logged["adaptive_clip/eps_high_p90"] == [pytest.approx(0.36)]
    assert logged["adaptive_clip/span_fraction"] == [pytest.approx(2 / 3)]
    assert logged["adaptive_clip/span_entropy_mean"] == [pytest.approx(span_entropy[:2].mean())]

    loss = ours._compute_loss(ours.model, inputs)
    torch.testing.assert_close(loss, grpo_reduce(per_token, completion_mask))
    with torch.no_grad():
        trl_loss = static._compute_loss(static.model, inputs)
    assert not torch.allclose(loss, trl_loss)
    assert ours.epsilon_high == 0.2 and ours.epsilon_low == 0.2  # restored to trl's floats
    logged = metrics(ours, "train")
    # trl's own clip metrics now see the per-completion bound: only the low-ε completion clips.
    n_tokens = completion_mask.sum().item()
    high_clipped = completion_mask[low].sum().item() / n_tokens
    assert logged["clip_ratio/high_mean"] == [pytest.approx(high_clipped)]
    assert metrics(static)["clip_ratio/high_mean"] == [
        pytest.approx(completion_mask[:2].sum().item() / n_tokens)
    ]


def test_constant_bounds_reproduce_the_static_clip(
    tiny_dir: Path, tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    static = make_trainer(
        GRPOTrainer, tiny_dir, tokenizer, tmp_path / "trl", loss_type="dapo", epsilon_high=0.35
    )
    ours = make_trainer(
        AdaptiveClipGRPOTrainer,
        tiny_dir,
        tokenizer,
        tmp_path / "ours",
        loss_type="dapo",
        adaptive_clip=AdaptiveClipConfig(eps_high_min=0.35, eps_high_max=0.35),
    )
    inputs = make_inputs(static, tokenizer)
    with torch.no_grad():
        expected = static._compute_loss(static.model, inputs)
        loss = ours._compute_loss(ours.model, ours.add_eps_high(inputs))
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)  # 1 + ε rounds in float32
    for key in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
        assert metrics(ours)[key] == pytest.approx(metrics(static)[key])


# A generation batch of two groups of three: five spans of different content, one without.
BATCH_CONTENT = (
    "Lactate dehydrogenase, Lymphocyte count",
    "Albumin, Creatinine, Urea, D-D dimer",
    "Hemoglobin",
    "Heart Rate, Systolic blood pressure, Oxygen saturation",
    "pH, Sodium, Platelet count, Glucose, Temperature",
)
BATCH_COMPLETIONS = (
    *(f"<Important Features> {c} </Important Features><Final answer>0.5</Final answer>"
      for c in BATCH_CONTENT),
    "<Final answer>0.5</Final answer>",
)  # fmt: skip
BATCH_ADVANTAGES = (1.0, 0.5, 0.8, 0.3, 0.6, -0.5)  # A > 0 where there is a span: ε matters


def test_eps_is_min_maxed_over_the_generation_batch_not_the_micro_batch(
    tiny_dir: Path, tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    """One generation batch of 6, seen by the loss as one micro-batch of 6 or (gradient
    accumulation) two of 3 after trl's own shuffle and split: every completion keeps its ε, and
    the accumulated loss equals the single-batch loss."""
    whole_trainer = make_trainer(
        AdaptiveClipGRPOTrainer, tiny_dir, tokenizer, tmp_path / "one",
        loss_type="grpo", per_device_train_batch_size=6,
    )  # fmt: skip
    split_trainer = make_trainer(
        AdaptiveClipGRPOTrainer, tiny_dir, tokenizer, tmp_path / "two",
        loss_type="grpo", per_device_train_batch_size=3, gradient_accumulation_steps=2,
    )  # fmt: skip
    assert split_trainer.args.steps_per_generation == 2
    whole = make_inputs(whole_trainer, tokenizer, BATCH_COMPLETIONS, BATCH_ADVANTAGES)
    batch = {k: v.clone() for k, v in whole.items()}
    for trainer in (whole_trainer, split_trainer):
        trainer.model.train()
    whole_trainer.current_gradient_accumulation_steps = 1
    split_trainer.current_gradient_accumulation_steps = 2
    whole_trainer.add_eps_high(whole)
    split_trainer.add_eps_high(batch)  # its entropy forward runs in chunks of 3
    eps = whole[EPS_HIGH_KEY]
    torch.testing.assert_close(batch[EPS_HIGH_KEY], eps, rtol=0, atol=1e-6)
    assert eps[5] == pytest.approx(0.2)  # no span
    assert eps[:5].min() == pytest.approx(0.2) and eps[:5].max() == pytest.approx(0.4)
    assert len(torch.unique(eps)) > 2

    torch.manual_seed(0)
    micro_batches = split_tensor_dict(shuffle_sequence_dict(batch), 2)
    _, entropies = policy_logps_and_entropies(whole_trainer, whole)
    span = important_feature_token_mask(
        whole["completion_ids"], tokenizer, completion_mask=whole["completion_mask"]
    )
    rows_seen, per_micro_differs = [], []
    for micro in micro_batches:
        rows = [
            next(i for i in range(6) if torch.equal(whole["completion_ids"][i], ids))
            for ids in micro["completion_ids"]
        ]
        rows_seen += rows
        assert torch.equal(micro[EPS_HIGH_KEY], batch[EPS_HIGH_KEY][rows])  # aligned by trl
        # What a per-micro-batch min-max (the old hook) would have used instead:
        alone = generation_batch_eps_high(entropies[rows], span[rows], 0.2, 0.4)
        per_micro_differs.append(not torch.allclose(alone.float(), micro[EPS_HIGH_KEY]))
    assert sorted(rows_seen) == list(range(6))
    assert any(per_micro_differs), "the example cannot tell the two designs apart"

    expected = whole_trainer._compute_loss(whole_trainer.model, whole)
    accumulated = sum(split_trainer._compute_loss(split_trainer.model, m) for m in micro_batches)
    torch.testing.assert_close(accumulated, expected, rtol=1e-5, atol=1e-7)


def test_generation_batch_eps_does_not_depend_on_the_batch_order() -> None:
    rng = torch.Generator().manual_seed(0)
    entropies = torch.rand(8, 5, generator=rng) * 3
    span = torch.rand(8, 5, generator=rng) > 0.4
    span[6] = False  # one completion without a span
    eps = generation_batch_eps_high(entropies, span, 0.2, 0.4)
    order = torch.randperm(8, generator=rng)
    permuted = generation_batch_eps_high(entropies[order], span[order], 0.2, 0.4)
    assert torch.equal(permuted, eps[order])
    assert eps[6] == 0.2 and eps.min() == 0.2 and eps.max() == pytest.approx(0.4)
    stats = eps_high_summary(eps, span.any(-1), span_mean_entropy(entropies, span))
    assert stats["eps_high_min"] <= stats["eps_high_p10"] <= stats["eps_high_p50"]
    assert stats["eps_high_p50"] <= stats["eps_high_p90"] <= stats["eps_high_max"]
    assert stats["span_fraction"] == pytest.approx(7 / 8)


def test_loss_without_generation_batch_eps_is_refused(
    tiny_dir: Path, tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    ours = make_trainer(AdaptiveClipGRPOTrainer, tiny_dir, tokenizer, tmp_path, loss_type="grpo")
    with pytest.raises(KeyError, match="eps_high"):
        ours._compute_loss(ours.model, make_inputs(ours, tokenizer))


class RecordingTrainer(GuidedGRPOTrainer):
    """Records, per generation round, the ε trl's batch carries, the completions with a span and
    the policy forwards run, and, per loss call, the ε the micro-batch carries."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.rounds: list[dict[str, Any]] = []
        self.loss_eps: list[torch.Tensor] = []
        self.forwards = 0

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any) -> Any:
        self.forwards += 1
        return super()._get_per_token_logps_and_entropies(*args, **kwargs)

    def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
        before = self.forwards
        batch = super()._generate_and_score_completions(inputs)
        span = important_feature_token_mask(
            batch["completion_ids"], self.processing_class, completion_mask=batch["completion_mask"]
        )
        self.rounds.append(
            {
                "eps": batch[EPS_HIGH_KEY].clone(),
                "spans": int(span.any(-1).sum()),
                "forwards": self.forwards - before,
            }
        )
        return batch

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        self.loss_eps.append(inputs[EPS_HIGH_KEY].clone())
        return super()._compute_loss(model, inputs)


@pytest.mark.parametrize("num_iterations", [1, 2], ids=["own-forward", "trl-old-logps-forward"])
def test_grpo_with_gradient_accumulation_clips_over_the_generation_batch(
    num_iterations: int, tiny_dir: Path, tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    """A real run: 2 prompts x 4 completions per generation, micro-batches of 4 (accumulation 2),
    the tags forced so every completion has a feature span. With one iteration trl runs no
    old-log-prob forward and the trainer runs one; with two it reuses trl's."""
    args = GRPOConfig(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False,
        per_device_train_batch_size=4, gradient_accumulation_steps=2, num_generations=4,
        num_iterations=num_iterations, max_steps=2, max_completion_length=40,
        learning_rate=1e-3, loss_type="dapo", logging_steps=1, save_strategy="no", seed=0,
    )  # fmt: skip
    trainer = RecordingTrainer(
        model=str(tiny_dir),
        reward_funcs=lambda completions, **_: [float(len(c)) for c in completions],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": [f"Patient {i}: predict." for i in range(4)]}),
        processing_class=tokenizer,
        scaffold=ScaffoldConfig(final_subquestion_tokens=4, features_tokens=12),
        guided_steps=0,
    )
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 2
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[k], after[k]) for k in before), "training changed nothing"

    assert len(trainer.rounds) == 2 // num_iterations
    calls_per_round = args.gradient_accumulation_steps * num_iterations
    assert len(trainer.loss_eps) == calls_per_round * len(trainer.rounds)
    for r, round_ in enumerate(trainer.rounds):
        eps = round_["eps"]
        assert eps.shape == (8,)  # the whole generation batch, not one micro-batch of 4
        assert round_["forwards"] == 1  # one policy forward per generation, never two
        assert round_["spans"] > 2, "the scaffold forced too few spans: the test proves nothing"
        assert len(torch.unique(eps)) > 2
        assert eps.min() == pytest.approx(0.2) and eps.max() == pytest.approx(0.4)
        calls = trainer.loss_eps[r * calls_per_round : (r + 1) * calls_per_round]
        for k in range(num_iterations):  # every update on the batch sees each completion's ε
            window = calls[k * 2 : (k + 1) * 2]
            assert all(c.shape == (4,) for c in window)
            assert torch.equal(torch.sort(torch.cat(window)).values, torch.sort(eps).values)

    logged = [e for e in trainer.state.log_history if "adaptive_clip/eps_high_max" in e]
    assert len(logged) == len(trainer.rounds)
    for entry, round_ in zip(logged, trainer.rounds, strict=True):
        assert entry["adaptive_clip/eps_high_min"] == pytest.approx(0.2)
        assert entry["adaptive_clip/eps_high_max"] == pytest.approx(0.4)
        assert entry["adaptive_clip/eps_high_mean"] == pytest.approx(round_["eps"].mean().item())
        assert 0.2 <= entry["adaptive_clip/eps_high_p10"] <= entry["adaptive_clip/eps_high_p90"]
        assert entry["adaptive_clip/span_fraction"] == pytest.approx(round_["spans"] / 8)
    assert any("clip_ratio/high_mean" in e for e in trainer.state.log_history)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"loss_type": "sapo"}, "clipped loss type"),
        ({"epsilon": 0.1}, "must equal AdaptiveClipConfig.eps_low"),
    ],
)
def test_trainer_rejects_incompatible_settings(
    config: dict[str, Any],
    message: str,
    tiny_dir: Path,
    tokenizer: PreTrainedTokenizerFast,
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match=message):
        make_trainer(AdaptiveClipGRPOTrainer, tiny_dir, tokenizer, tmp_path, **config)


@settings(max_examples=200, deadline=None, database=None)  # no .hypothesis/ in the repo
@given(
    rows=st.lists(
        st.tuples(st.floats(0.0, 20.0, allow_nan=False), st.booleans()), min_size=1, max_size=12
    ),
    bounds=st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)).map(sorted),
)
def test_entropy_to_epsilon_is_monotonic_and_bounded(
    rows: list[tuple[float, bool]], bounds: list[float]
) -> None:
    eps_min, eps_max = bounds
    h = torch.tensor([r[0] for r in rows], dtype=torch.float64)
    valid = torch.tensor([r[1] for r in rows])
    eps = entropy_to_epsilon(h, valid, eps_min, eps_max)
    assert ((eps >= eps_min) & (eps <= eps_max)).all()
    assert (eps[~valid] == eps_min).all()
    hv, ev = h[valid], eps[valid]
    order = torch.argsort(hv)
    assert (torch.diff(ev[order]) >= 0).all()
    if hv.numel() and hv.max() - hv.min() > 1e-12:  # a spread above float noise: full range
        assert ev[hv.argmin()] == eps_min
        assert ev[hv.argmax()] == pytest.approx(eps_max)


def test_entropy_to_epsilon_fallbacks() -> None:
    h = torch.tensor([3.0, 1.0])
    none_valid = entropy_to_epsilon(h, torch.tensor([False, False]), 0.2, 0.4)
    single = entropy_to_epsilon(h, torch.tensor([True, False]), 0.2, 0.4)
    non_finite = entropy_to_epsilon(
        torch.tensor([math.nan, 1.0, 2.0]), torch.tensor([True, True, True]), 0.2, 0.4
    )
    assert none_valid.tolist() == pytest.approx([0.2, 0.2])
    assert single.tolist() == pytest.approx([0.2, 0.2])
    assert non_finite.tolist() == pytest.approx([0.2, 0.2, 0.4])
    with pytest.raises(ValueError, match="eps_min"):
        entropy_to_epsilon(torch.tensor([1.0]), torch.tensor([True]), 0.4, 0.2)


def test_span_mean_entropy_from_logits_or_entropies() -> None:
    logits = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(0))
    p = logits.softmax(-1)
    entropies = -(p * p.log()).sum(-1)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    from_logits = span_mean_entropy(logits, mask)
    torch.testing.assert_close(from_logits, span_mean_entropy(entropies, mask))
    torch.testing.assert_close(from_logits[0], (entropies[0, 0] + entropies[0, 2]) / 2)
    assert from_logits[1] == 0.0


def masked_text(tokenizer: Any, ids: list[int], mask: torch.Tensor) -> str:
    return tokenizer.decode([i for i, m in zip(ids, mask.tolist(), strict=True) if m])


def test_token_mask_marks_exactly_the_span_content(tokenizer: PreTrainedTokenizerFast) -> None:
    text = f"<Answer>Yes</Answer>{COMPLETIONS[0]}{tokenizer.eos_token}"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    mask = important_feature_token_mask(torch.tensor([ids]), tokenizer)[0]
    open_at = ids.index(tokenizer.convert_tokens_to_ids("<Important Features>"))
    close_at = ids.index(tokenizer.convert_tokens_to_ids("</Important Features>"))
    expected = [
        open_at < k < close_at and tokenizer.decode([ids[k]]).strip() != "" for k in range(len(ids))
    ]
    assert mask.tolist() == expected
    assert masked_text(tokenizer, ids, mask).strip() == CONTENT[0]


def test_token_mask_edge_cases(tokenizer: PreTrainedTokenizerFast) -> None:
    rows = [
        "<Important Features> Urea, Albumin",  # truncated: runs to the end of the completion
        "<Final answer>0.5</Final answer>",  # no span
        "<Important Features>Urea</Important Features><Important Features>Créatinine 日本, pH"
        "</Important Features>",  # repeated: the last one, multi-byte characters split in bytes
    ]
    encoded = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in rows]
    width = max(map(len, encoded)) + 2
    ids = torch.full((3, width), tokenizer.pad_token_id)
    completion_mask = torch.zeros((3, width), dtype=torch.long)
    for i, row in enumerate(encoded):
        row = [*row, tokenizer.eos_token_id]
        ids[i, : len(row)], completion_mask[i, : len(row)] = torch.tensor(row), 1
    mask = important_feature_token_mask(ids, tokenizer, completion_mask=completion_mask)
    assert masked_text(tokenizer, encoded[0], mask[0, : len(encoded[0])]).strip() == "Urea, Albumin"
    assert not mask[0, len(encoded[0]) :].any()  # neither EOS nor padding
    assert not mask[1].any()
    assert masked_text(tokenizer, encoded[2], mask[2, : len(encoded[2])]) == "Créatinine 日本, pH"


def test_token_mask_on_a_sentencepiece_style_tokenizer() -> None:
    """Tags split over several tokens and ``▁`` word boundaries, unlike the tiny model's."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    corpus = [COMPLETIONS[0], COMPLETIONS[1], "<Important Features> pH, Urea </Important Features>"]
    backend.train_from_iterator(
        corpus * 3,
        trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>"], show_progress=False),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    ids = tok(COMPLETIONS[1], add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<Important Features>") == tok.unk_token_id  # really split
    mask = important_feature_token_mask(torch.tensor([ids]), tok)[0]
    assert masked_text(tok, ids, mask).strip() == CONTENT[1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eps_high_min": 0.5, "eps_high_max": 0.3}, "must be <= eps_high_max"),
        ({"eps_low": -0.1}, "eps_low must be a finite number >= 0"),
        ({"eps_low": 1.0}, "must be < 1"),
        ({"eps_high_max": math.inf}, "eps_high_max must be a finite number"),
        ({"eps_high_min": "0.2"}, "eps_high_min must be a number"),
        ({"span_close": ""}, "non-empty"),
        ({"span_open": "<x>", "span_close": "<x>"}, "must differ"),
    ],
)
def test_config_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdaptiveClipConfig(**kwargs)
