"""SFT and GRPO smoke trainings on a tiny random model: weights change, eval loss drops, an
interrupted run resumes, and bad settings fail before any model is loaded."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eagrl_pipeline.llm.guided import ScaffoldConfig
from eagrl_pipeline.prompts.features import FeatureMatcher
from eagrl_pipeline.training.grpo import (
    GRPOSettings,
    grpo_row,
    summarize_log_history,
    train_grpo,
)
from eagrl_pipeline.training.sft import (
    LoraSettings,
    SFTSettings,
    build_sft_config,
    run_fingerprint,
    split_by_patient,
    train_sft,
)

FEATURES = ["Lactate dehydrogenase", "Lymphocyte count", "Hemoglobin"]


def _records(n_patients: int = 6) -> list[dict]:
    rng = random.Random(0)
    out = []
    for p in range(n_patients):
        for _ in range(2):
            prob = rng.choice(["0.83", "0.07", "0.25"])
            text = (
                "<Subquestion> Is the lymphocyte count low? </Subquestion> "
                f"<Answer> Yes, 0.4{p} is low. </Answer>\n"
                "<Final subquestion> What is the risk? </Final subquestion>\n"
                "<Important Features> Lactate dehydrogenase, Lymphocyte count "
                f"</Important Features>\n<Final answer> {prob} </Final answer>"
            )
            out.append(
                {
                    "patient_key": str(p),
                    "system": "You are a clinical assistant.",
                    "user": f"Patient {p}: Lymphocyte count [0.4{p}]. Predict.",
                    "text": text,
                    "label": p % 2,
                }
            )
    return out


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from eagrl_pipeline.llm import build_tiny_qwen2

    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny_train"))


@pytest.fixture(scope="module")
def sft_run(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """An SFT long enough for the tiny model to write the format sometimes (GRPO needs reward
    variance within a group to move at all)."""
    train, held_out = split_by_patient(_records(), 0.25, seed=0)
    settings = SFTSettings(
        max_steps=150,
        learning_rate=3e-2,
        save_steps=1000,
        logging_steps=50,
        lora=LoraSettings(r=16, alpha=32, dropout=0.0),
    )
    return train_sft(tiny_dir, train, held_out, settings, tmp_path_factory.mktemp("sft"))


def _lora(adapter_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(adapter_dir / "adapter_model.safetensors")


def test_split_by_patient_keeps_patients_whole() -> None:
    train, held_out = split_by_patient(_records(), 0.25, seed=1)
    assert {r["patient_key"] for r in train}.isdisjoint({r["patient_key"] for r in held_out})
    assert len(train) + len(held_out) == 12 and held_out
    with pytest.raises(Exception, match="at least 2"):
        split_by_patient(_records(1), 0.25, seed=0)


def test_sft_config_sets_precision_explicitly(tmp_path: Path) -> None:
    args = build_sft_config(SFTSettings(), tmp_path, device="cpu", precision="fp32")
    assert args.bf16 is False and args.fp16 is False and args.use_cpu
    assert args.completion_only_loss is True
    with pytest.raises(ValueError, match="precision"):
        build_sft_config(SFTSettings(), tmp_path, device="cpu", precision="half")


def test_sft_two_steps_change_the_adapter(tiny_dir: Path, tmp_path: Path) -> None:
    train, held_out = split_by_patient(_records(), 0.25, seed=0)
    out = train_sft(tiny_dir, train, held_out, SFTSettings(max_steps=2), tmp_path)
    assert out.global_step == 2
    lora_b = {k: v for k, v in _lora(out.adapter_dir).items() if "lora_B" in k}
    assert lora_b, "no LoRA B matrices saved"
    # peft initialises B at zero, so any non-zero B was learned in the two steps.
    assert any(v.abs().max() > 0 for v in lora_b.values())
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_full_sft_trains_every_weight_and_writes_a_whole_model(
    tiny_dir: Path, tmp_path: Path
) -> None:
    """finetune='full': no adapter; the policy folder is a model that load_model reads in the
    base model's place, with the trained weights (fp32 master weights, so two small steps
    survive), and the base loss is measured on the same held-out tokens before training."""
    from eagrl_pipeline.llm.generation import load_model, policy_format

    train, held_out = split_by_patient(_records(), 0.25, seed=0)
    settings = SFTSettings(max_steps=2, learning_rate=1e-3, finetune="full")
    out = train_sft(tiny_dir, train, held_out, settings, tmp_path)
    assert out.global_step == 2 and policy_format(out.adapter_dir) == "full"
    assert not (out.adapter_dir / "adapter_config.json").exists()
    base, trained = (
        load_file(tiny_dir / "model.safetensors"),
        load_file(out.adapter_dir / "model.safetensors"),
    )
    changed = [k for k in base if not torch.equal(base[k].float(), trained[k].float())]
    assert len(changed) > len(base) // 2, f"a full fine-tune changed only {changed}"
    assert out.base_eval_loss > 0 and out.eval_loss != out.base_eval_loss
    model, _ = load_model(tiny_dir, "cpu", "fp32", adapter_dir=out.adapter_dir)
    key = next(k for k in changed if "mlp" in k)
    assert torch.equal(model.state_dict()[key], trained[key].float())
    with pytest.raises(ValueError, match="merge_adapter"):
        SFTSettings(finetune="full", merge_adapter=True)
    with pytest.raises(ValueError, match="finetune"):
        SFTSettings(finetune="partial")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="neither a LoRA adapter"):
        load_model(tiny_dir, "cpu", "fp32", adapter_dir=tmp_path / "empty")


def test_sft_lowers_the_held_out_loss(sft_run) -> None:
    assert sft_run.eval_loss < sft_run.base_eval_loss
    assert sft_run.n_eval > 0 and sft_run.train_loss is not None


def test_interrupted_sft_resumes_from_its_checkpoint(tiny_dir: Path, tmp_path: Path) -> None:
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise RuntimeError("simulated crash")

    train, held_out = split_by_patient(_records(), 0.25, seed=0)
    settings = SFTSettings(max_steps=4, save_steps=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_sft(tiny_dir, train, held_out, settings, tmp_path, callbacks=[Crash()])
    assert not (tmp_path / "adapter").exists(), "a crashed run must not leave an adapter"
    out = train_sft(tiny_dir, train, held_out, settings, tmp_path)
    assert out.resumed_from is not None and out.resumed_from.endswith("checkpoint-2")
    assert out.global_step == 4 and (out.adapter_dir / "adapter_config.json").exists()


def test_a_checkpoint_of_other_code_is_never_resumed(tiny_dir: Path, tmp_path: Path) -> None:
    """The asset passes its code version: after a code change the run starts afresh (a
    finished run of the old code would otherwise be "resumed" as done, training nothing)."""
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise RuntimeError("simulated crash")

    train, held_out = split_by_patient(_records(), 0.25, seed=0)
    old = SFTSettings(max_steps=4, save_steps=2, code_version="old")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_sft(tiny_dir, train, held_out, old, tmp_path, callbacks=[Crash()])
    new = dataclasses.replace(old, code_version="new")
    out = train_sft(tiny_dir, train, held_out, new, tmp_path)
    assert out.resumed_from is None and out.global_step == 4


def _rows() -> list[dict]:
    return [
        grpo_row(
            "You are a clinical assistant.",
            f"Patient {p}: Lymphocyte count [0.4{p}]. Predict.",
            p % 2,
            FEATURES[:2],
        )
        for p in range(4)
    ]


def test_grpo_two_steps_change_the_sft_adapter(tiny_dir: Path, sft_run, tmp_path: Path) -> None:
    """The defaults: guided groups of 4, 2 prompts per step; micro-batches of 4 with accumulation
    2 here, so ε is min-maxed over a generation batch the loss sees in two parts."""
    settings = GRPOSettings(
        max_steps=2, num_iterations=2, max_completion_length=64,
        per_device_train_batch_size=4, gradient_accumulation_steps=2,
    )  # fmt: skip
    assert settings.guided_generation and settings.groups_per_generation() == 2
    out = train_grpo(
        tiny_dir, sft_run.adapter_dir, _rows(), FeatureMatcher.build(FEATURES), settings, tmp_path
    )
    assert out.global_step == 2 and out.shared_prompts  # each group's prompt scored once
    before, after = _lora(sft_run.adapter_dir), _lora(out.adapter_dir)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before), "GRPO changed nothing"
    spread = out.metric_series("frac_reward_zero_std")  # reward_std > 0 can be float noise
    assert spread and min(spread) < 1.0, "no group had reward spread: the test proves nothing"
    assert out.metric_series("rewards/r_att/mean"), "reward parts not logged"
    for stat in ("mean", "min", "max", "p10", "p50", "p90"):
        assert out.metric_series(f"adaptive_clip/eps_high_{stat}"), f"ε {stat} not logged"
    assert out.metric_series("clip_ratio/high_mean"), "clip fractions not logged"
    summary = summarize_log_history(out.log_history, settings.groups_per_generation())
    assert summary["generation_batches"] == 1  # 2 steps, each batch used for 2 iterations
    assert summary["groups"] == 2
    frac = out.metric_series("frac_reward_zero_std")[0]
    assert summary["groups_with_reward_spread"] == round((1 - frac) * 2) >= 1
    assert 0.2 <= summary["eps_high_min"] <= summary["eps_high_mean"] <= summary["eps_high_max"]


def test_grpo_with_checkpointing_scores_as_trl_does(
    tiny_dir: Path, sft_run, tmp_path: Path
) -> None:
    """Activation checkpointing drops a layer's cache in a forward with gradient, so a shared
    prompt KV cannot be built there: with checkpointing on, GRPO trains on trl's scoring."""
    settings = GRPOSettings(
        max_steps=1, max_completion_length=32, gradient_checkpointing=True,
        per_device_train_batch_size=4, gradient_accumulation_steps=2,
    )  # fmt: skip
    out = train_grpo(
        tiny_dir, sft_run.adapter_dir, _rows(), FeatureMatcher.build(FEATURES), settings, tmp_path
    )
    assert out.global_step == 1 and not out.shared_prompts


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (GRPOSettings(per_device_train_batch_size=3, num_generations=4), "divisible"),
        (GRPOSettings(rewards=("r_cls", "r_length")), "unknown reward"),
        (GRPOSettings(num_generations=1, per_device_train_batch_size=1), "at least 2"),
        (GRPOSettings(eps_high_min=0.5, eps_high_max=0.3), "eps_high"),
        (GRPOSettings(start_from="scratch"), "start_from"),
        (GRPOSettings(start_from="base", lora_r=0), "lora_r"),
    ],
)
def test_bad_grpo_settings_fail_before_training(
    settings: GRPOSettings, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=message):
        matcher = FeatureMatcher.build(FEATURES)
        train_grpo(tmp_path / "no-model", tmp_path, _rows(), matcher, settings, tmp_path)


def test_grpo_reward_weights_follow_the_selected_rewards() -> None:
    settings = GRPOSettings(rewards=("r_att", "r_cls"), lam=0.7, format_weight=0.0)
    assert settings.trl_reward_weights() == pytest.approx([0.3, 0.7])
    settings.validate()


def _merged(tiny_dir: Path, adapter_dir: Path, target: Path) -> Path:
    """A model folder with the adapter merged in: a "base model" that writes the format."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True)
    PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().save_pretrained(target)
    AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True).save_pretrained(target)
    return target


def test_grpo_from_the_base_model_trains_a_fresh_adapter(
    tiny_dir: Path, sft_run, tmp_path: Path
) -> None:
    """GRPO without Stage 1: a new LoRA adapter (B starts at zero, so the start is the base
    model) of the configured rank, changed by two steps; an SFT adapter is refused then, and
    GRPO from SFT without one names both fixes. The base model here is the tiny model with the
    SFT adapter merged in: the random one never writes a parseable answer, so no group would
    have reward spread and nothing could move."""
    model_dir = _merged(tiny_dir, sft_run.adapter_dir, tmp_path / "merged")
    settings = GRPOSettings(
        start_from="base", lora_r=4, lora_alpha=8, max_steps=2, num_iterations=2,
        max_completion_length=64,
    )  # fmt: skip
    matcher = FeatureMatcher.build(FEATURES)
    out = train_grpo(model_dir, None, _rows(), matcher, settings, tmp_path / "base")
    assert out.global_step == 2
    spread = out.metric_series("frac_reward_zero_std")
    assert spread and min(spread) < 1.0, "no group had reward spread: the test proves nothing"
    after = _lora(out.adapter_dir)
    lora_b = [k for k in after if "lora_B" in k]
    assert lora_b and any(after[k].abs().max() > 0 for k in lora_b), "GRPO changed nothing"
    assert {after[k].shape[1] for k in lora_b} == {4}  # rank 4
    with pytest.raises(ValueError, match="pass no SFT adapter"):
        train_grpo(model_dir, sft_run.adapter_dir, _rows(), matcher, settings, tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="start_from='base'"):
        train_grpo(model_dir, None, _rows(), matcher, GRPOSettings(max_steps=1), tmp_path / "y")


def test_grpo_from_a_full_sft_model_writes_the_merged_model(
    tiny_dir: Path, sft_run, tmp_path: Path
) -> None:
    """GRPO from a fully fine-tuned SFT model: a fresh adapter on that model (not on the base
    model), merged in when saved, so the RL policy folder is a whole model that differs from
    the SFT model's weights. The SFT model is the tiny model with the fixture's adapter merged
    (it writes the format, so groups have reward spread)."""
    from eagrl_pipeline.llm.generation import policy_format

    sft_model = _merged(tiny_dir, sft_run.adapter_dir, tmp_path / "sft_full")
    assert policy_format(sft_model) == "full"
    settings = GRPOSettings(
        lora_r=4, lora_alpha=8, max_steps=2, num_iterations=2, max_completion_length=64,
        learning_rate=1e-2,
    )  # fmt: skip
    matcher = FeatureMatcher.build(FEATURES)
    out = train_grpo(tiny_dir, sft_model, _rows(), matcher, settings, tmp_path / "rl")
    assert policy_format(out.adapter_dir) == "full"
    spread = out.metric_series("frac_reward_zero_std")
    assert spread and min(spread) < 1.0, "no group had reward spread: the test proves nothing"
    before = load_file(sft_model / "model.safetensors")
    after = load_file(out.adapter_dir / "model.safetensors")
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all("proj" in k for k in changed), changed


def test_interrupted_grpo_resumes_from_its_checkpoint(
    tiny_dir: Path, sft_run, tmp_path: Path
) -> None:
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:  # after checkpoint-2, before checkpoint-3
                raise RuntimeError("simulated crash")

    settings = GRPOSettings(max_steps=3, num_iterations=1, max_completion_length=32, save_steps=1)
    matcher = FeatureMatcher.build(FEATURES)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_grpo(tiny_dir, sft_run.adapter_dir, _rows(), matcher, settings, tmp_path,
                   callbacks=[Crash()])  # fmt: skip
    assert not (tmp_path / "adapter").exists()
    out = train_grpo(tiny_dir, sft_run.adapter_dir, _rows(), matcher, settings, tmp_path)
    assert out.resumed_from is not None and out.resumed_from.endswith("checkpoint-2")
    assert out.global_step == 3


def test_guided_grpo_samples_complete_answers(tiny_dir: Path, tmp_path: Path) -> None:
    """A one-step SFT leaves the tiny model unable to write the format: sampled freely, its
    completions run into the length cap; with the tags forced (caps per tag, EOS after the final
    answer) every completion of every group ends on its own."""
    train, held_out = split_by_patient(_records(), 0.25, seed=0)
    weak = train_sft(tiny_dir, train, held_out, SFTSettings(max_steps=1), tmp_path / "sft")
    matcher = FeatureMatcher.build(FEATURES)
    common = {"max_steps": 2, "num_iterations": 1, "max_completion_length": 192}
    free = train_grpo(
        tiny_dir, weak.adapter_dir, _rows(), matcher,
        GRPOSettings(**common, guided_generation=False), tmp_path / "free",
    )  # fmt: skip
    guided = train_grpo(  # the default: guided, one step before the final block
        tiny_dir, weak.adapter_dir, _rows(), matcher, GRPOSettings(**common), tmp_path / "guided"
    )
    short = ScaffoldConfig(
        subquestion_tokens=2, answer_tokens=2, final_subquestion_tokens=2, features_tokens=2,
        final_answer_tokens=1,
    )  # fmt: skip
    capped = train_grpo(  # the configured caps reach the scaffold
        tiny_dir, weak.adapter_dir, _rows(), matcher,
        GRPOSettings(**common, scaffold=short), tmp_path / "capped",
    )  # fmt: skip
    assert max(free.metric_series("completions/clipped_ratio")) > 0.0
    assert set(guided.metric_series("completions/clipped_ratio")) == {0.0}
    assert min(guided.metric_series("completions/mean_terminated_length")) > 20
    assert set(capped.metric_series("completions/clipped_ratio")) == {0.0}
    assert max(capped.metric_series("completions/max_length")) < min(
        guided.metric_series("completions/mean_terminated_length")
    )
    with pytest.raises(ValueError, match="guided_steps"):
        GRPOSettings(guided_steps=-1).validate()


def test_scaffold_is_part_of_the_settings_and_the_fingerprint() -> None:
    settings = GRPOSettings(scaffold=ScaffoldConfig(features_tokens=8))
    raw = asdict(settings)
    assert raw["scaffold"]["features_tokens"] == 8
    assert GRPOSettings(**raw) == settings  # the JSON spec of accelerate launch round-trips
    assert run_fingerprint(raw) != run_fingerprint(asdict(GRPOSettings()))
    assert GRPOSettings().num_generations == 4 and GRPOSettings().per_device_train_batch_size == 8


def test_log_history_summary_counts_groups_with_reward_spread() -> None:
    history = [
        {"frac_reward_zero_std": 0.25, "adaptive_clip/eps_high_min": 0.2,
         "adaptive_clip/eps_high_max": 0.35, "adaptive_clip/eps_high_mean": 0.3,
         "clip_ratio/high_mean": 0.1},
        {"loss": 0.5, "clip_ratio/high_mean": 0.3},  # a step on the same generation batch
        {"frac_reward_zero_std": 1.0, "adaptive_clip/eps_high_min": 0.25,
         "adaptive_clip/eps_high_max": 0.4, "adaptive_clip/eps_high_mean": 0.2},
        {"train_runtime": 12.0},
    ]  # fmt: skip
    summary = summarize_log_history(history, groups_per_generation=4)
    assert summary["generation_batches"] == 2 and summary["groups"] == 8
    assert summary["groups_with_reward_spread"] == 3  # 0.75 x 4 + 0 x 4
    assert summary["groups_with_reward_spread_fraction"] == pytest.approx(3 / 8)
    assert summary["eps_high_min"] == 0.2 and summary["eps_high_max"] == 0.4
    assert summary["eps_high_mean"] == pytest.approx(0.25)
    assert summary["clip_ratio_high_mean"] == pytest.approx(0.2)
    empty = summarize_log_history([], groups_per_generation=2)
    assert empty["groups"] == 0 and empty["groups_with_reward_spread"] == 0
    with pytest.raises(ValueError, match="groups_per_generation"):
        summarize_log_history(history, groups_per_generation=0)


def test_answer_weighted_loss_weights_the_final_answer(tiny_dir: Path) -> None:
    """Weight 1 is the plain token mean over the completion; a larger weight moves the loss
    towards the answer tokens' mean, found between the last answer tags."""
    from types import SimpleNamespace

    from eagrl_pipeline.training.sft import AnswerWeightedLoss, load_tokenizer

    tokenizer = load_tokenizer(tiny_dir)
    text = "Patient. <Final answer> 0.83 </Final answer> end"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    labels = torch.tensor([[-100, *ids[1:]]])
    torch.manual_seed(0)
    logits = torch.randn(1, len(ids), len(tokenizer))
    plain = AnswerWeightedLoss(tokenizer, 1.0)
    heavy = AnswerWeightedLoss(tokenizer, 50.0)
    weights = heavy.weights(labels[:, 1:])
    answer = tokenizer(" 0.83 ", add_special_tokens=False)["input_ids"]
    assert int((weights == 50.0).sum()) == len(answer) and int((weights == 0).sum()) == 0
    target = labels[:, 1:]
    per_token = torch.nn.functional.cross_entropy(
        logits[0, :-1], target[0].clamp(min=0), reduction="none"
    )
    outputs = SimpleNamespace(logits=logits)
    assert plain(outputs, labels).item() == pytest.approx(per_token.mean().item(), rel=1e-5)
    w = weights[0]
    expected = (per_token * w).sum() / w.sum()
    assert heavy(outputs, labels).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="answer_loss_weight"):
        SFTSettings(answer_loss_weight=0.0)


def _right_padded(
    tokenizer, pairs: list[tuple[str, str]], prefix: str = ""
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SFT rows ``prefix + prompt + completion`` as trl's collator pads them (right), the loss
    on the completion only: ids, labels, attention mask."""
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    rows = []
    for prompt, completion in pairs:
        p, c = encode(prefix + prompt), encode(completion)
        rows.append((p + c, [-100] * len(p) + c))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    attention = (torch.arange(width)[None] < torch.tensor([[len(i)] for i, _ in rows])).long()
    return input_ids, labels, attention


def test_completion_window_loss_equals_the_full_logits_loss(tiny_dir: Path) -> None:
    """The weighted loss over logits of the completion window only is the loss over every
    position's logits (right-padded rows whose completions start at different places)."""
    from transformers import AutoModelForCausalLM

    from eagrl_pipeline.training.sft import AnswerWeightedLoss, completion_window, load_tokenizer

    tokenizer = load_tokenizer(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True).eval()
    input_ids, labels, attention = _right_padded(
        tokenizer,
        [
            (
                "A long patient prompt with many words in it.",
                " <Final answer> 0.83 </Final answer>",
            ),
            ("Short.", " Reasoning first. <Final answer> 0.2 </Final answer> end"),
        ],
    )
    width = input_ids.shape[1]
    keep = completion_window(labels)
    first = int(torch.nonzero((labels != -100).any(0))[0])
    assert keep == width - first + 1 < width
    loss = AnswerWeightedLoss(tokenizer, 30.0)
    with torch.no_grad():
        full = loss(model(input_ids=input_ids, attention_mask=attention), labels)
        window = model(input_ids=input_ids, attention_mask=attention, logits_to_keep=keep)
        assert window.logits.shape[1] == keep
        assert loss(window, labels[:, -keep:]).item() == pytest.approx(full.item(), rel=1e-5)
    assert completion_window(torch.full((2, 5), -100)) == 5


def test_weighted_sft_trains(tiny_dir: Path, tmp_path: Path) -> None:
    """Two weighted steps move the adapter; sharing the batch's prefix (on by default) trains
    the same adapter as running every row whole."""
    train, held_out = split_by_patient(_records(), 0.25, seed=0)
    settings = SFTSettings(
        max_steps=2, answer_loss_weight=10.0, lora=LoraSettings(dropout=0.0), logging_steps=1
    )
    out = train_sft(tiny_dir, train, held_out, settings, tmp_path / "shared")
    assert out.global_step == 2 and out.eval_loss > 0 and out.shared_prefix
    lora_b = [v for k, v in _lora(out.adapter_dir).items() if "lora_B" in k]
    assert any(v.abs().max() > 0 for v in lora_b)
    plain = train_sft(
        tiny_dir, train, held_out, dataclasses.replace(settings, share_prefix=False),
        tmp_path / "plain",
    )  # fmt: skip
    assert not plain.shared_prefix
    assert plain.eval_loss == pytest.approx(out.eval_loss, rel=1e-4)
    shared_weights, plain_weights = _lora(out.adapter_dir), _lora(plain.adapter_dir)
    assert shared_weights.keys() == plain_weights.keys()
    for name, weight in shared_weights.items():
        torch.testing.assert_close(weight, plain_weights[name], atol=1e-5, rtol=1e-3)


def test_grpo_config_runs_without_checkpointing_or_dropout(tmp_path: Path) -> None:
    """trl's GRPOConfig defaults to gradient checkpointing; ours does not, and GRPO drops the
    SFT adapter's LoRA dropout (the ratio compares the policy with itself); both stay knobs."""
    from eagrl_pipeline.training.grpo import build_grpo_config

    config = build_grpo_config(GRPOSettings(), tmp_path, device="cpu", precision="fp32")
    assert config.gradient_checkpointing is False and config.disable_dropout is True
    config = build_grpo_config(
        GRPOSettings(gradient_checkpointing=True, disable_dropout=False),
        tmp_path, device="cpu", precision="fp32",
    )  # fmt: skip
    assert config.gradient_checkpointing is True and config.disable_dropout is False


def test_fused_head_scores_only_completions_with_the_same_log_probs(tiny_dir: Path) -> None:
    """On CPU trl's fused LM head projects every position unless told otherwise; scoring only
    the labelled ones gives the same log-probs, entropies and gradients."""
    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from eagrl_pipeline.training.adaptive_clip import completion_positions_only

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    ids = torch.randint(3, model.config.vocab_size, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # a left-padded prompt
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :-5] = -100  # only the last 5 tokens are the completion

    def score() -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
        out.log_probs[:, -5:].sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return out.log_probs[:, -5:].detach(), out.entropy[:, -5:].detach(), grads

    original = trl_utils._use_triton
    every_position = score()
    with completion_positions_only():
        assert trl_utils._use_triton(torch.device("cpu")) is True
        completions_only = score()
    assert trl_utils._use_triton is original
    torch.testing.assert_close(completions_only[0], every_position[0])
    torch.testing.assert_close(completions_only[1], every_position[1])
    assert len(completions_only[2]) == len(every_position[2]) > 0
    for a, b in zip(completions_only[2], every_position[2], strict=True):
        torch.testing.assert_close(a, b)


def test_training_progress_draws_a_bar_over_the_optimizer_steps(monkeypatch, capfd):
    """SFT and GRPO show a bar on the process's stderr (the trainers' own tqdm is off)."""
    from types import SimpleNamespace

    from eagrl_pipeline.progress import training_progress

    monkeypatch.setenv("EAGRL_PROGRESS", "1")
    callback = training_progress("SFT")
    state = SimpleNamespace(is_world_process_zero=True, max_steps=5, global_step=0)
    callback.on_train_begin(None, state, None)
    for _ in range(5):
        callback.on_step_end(None, state, None)
    callback.on_train_end(None, state, None)
    err = capfd.readouterr().err
    assert "SFT:" in err and "/5 " in err and "step" in err
    monkeypatch.setenv("EAGRL_PROGRESS", "0")
    quiet = training_progress("GRPO")
    quiet.on_train_begin(None, state, None)
    quiet.on_train_end(None, state, None)
    assert "GRPO" not in capfd.readouterr().err


def test_shared_prompt_scoring_matches_trls_log_probs_entropies_and_gradients(
    tiny_dir: Path,
) -> None:
    """Two groups of three completions, prompts left-padded and completions right-padded: the
    log-probs, entropies and LoRA gradients with each distinct prompt run once are trl's
    (its fused head over every prompt + completion row), at a temperature other than 1."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from eagrl_pipeline.training.adaptive_clip import completion_positions_only
    from eagrl_pipeline.training.shared_prompt import (
        can_share_prompts,
        distinct_prompts,
        score_sharing_prompts,
    )

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    temperature = 0.7
    add_fused_lm_head(model, temperature=temperature, outputs=("log_probs", "entropy"))
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(model, config)
    assert can_share_prompts(model)
    vocab, n_prompt, n_completion = model.config.vocab_size, 7, 5
    prompts = torch.randint(3, vocab, (2, n_prompt))
    prompt_mask = torch.ones_like(prompts)
    prompt_mask[1, :3] = 0  # the second group's prompt is left-padded
    prompt_ids = prompts.repeat_interleave(3, dim=0)[[0, 3, 1, 4, 2, 5]]  # groups interleaved
    prompt_mask = prompt_mask.repeat_interleave(3, dim=0)[[0, 3, 1, 4, 2, 5]]
    completion_ids = torch.randint(3, vocab, (6, n_completion))
    completion_mask = torch.ones_like(completion_ids)
    completion_mask[2, 3:] = 0  # a completion that stopped early
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    mask = torch.cat([prompt_mask, completion_mask], dim=1)
    unique, _, inverse = distinct_prompts(prompt_ids, prompt_mask)
    assert unique.shape[0] == 2
    assert inverse[0] == inverse[2] == inverse[4] != inverse[1] == inverse[3] == inverse[5]

    def grads() -> list[torch.Tensor]:
        out = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad()
        return out

    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :-n_completion] = -100
    with completion_positions_only():
        out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    trl_logps, trl_entropy = out.log_probs[:, -n_completion:], out.entropy[:, -n_completion:]
    (trl_logps * completion_mask).sum().backward()
    trl_grads = grads()
    logps, entropy = score_sharing_prompts(
        model, ids, mask, n_completion, temperature=temperature, compute_entropy=True
    )
    (logps * completion_mask).sum().backward()
    shared_grads = grads()
    torch.testing.assert_close(logps, trl_logps, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(entropy, trl_entropy, atol=1e-5, rtol=1e-4)
    assert float(logps[2, 3:].detach().abs().sum()) == 0.0
    assert len(shared_grads) == len(trl_grads) > 0
    for a, b in zip(shared_grads, trl_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3)


def test_group_prompt_cache_generates_what_per_row_prefill_generates(tiny_dir: Path) -> None:
    """Greedy generation from a cache with each distinct (left-padded) prompt prefilled once is
    the generation with every row prefilled on its own; prompts that never repeat get None."""
    from transformers import AutoModelForCausalLM

    from eagrl_pipeline.training.shared_prompt import group_prompt_cache

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    prompts = torch.randint(3, model.config.vocab_size, (2, 9))
    masks = torch.ones_like(prompts)
    masks[0, :4] = 0
    prompts[0, :4] = model.config.pad_token_id or 0
    ids, mask = prompts.repeat_interleave(3, dim=0), masks.repeat_interleave(3, dim=0)
    settings = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        plain = model.generate(input_ids=ids, attention_mask=mask, **settings)
        cache = group_prompt_cache(model, ids, mask)
        assert cache is not None and cache.get_seq_length() == ids.shape[1] - 1
        shared = model.generate(input_ids=ids, attention_mask=mask, cache=cache, **settings)
    assert torch.equal(shared, plain)
    assert group_prompt_cache(model, prompts, masks) is None


def test_common_prefix_length_stops_at_the_first_difference_or_padding() -> None:
    from eagrl_pipeline.training.shared_prompt import common_prefix_length

    ids = torch.tensor([[5, 6, 7, 8, 0], [5, 6, 7, 9, 4], [5, 6, 7, 8, 4]])
    mask = torch.ones_like(ids)
    assert common_prefix_length(ids, mask) == 3
    same = torch.tensor([[5, 6, 7, 0], [5, 6, 7, 7]])
    assert common_prefix_length(same, torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])) == 3
    assert common_prefix_length(same[:, :3], torch.ones(2, 3, dtype=torch.long)) == 3


def test_sft_loss_sharing_the_prefix_equals_the_plain_loss_and_gradients(tiny_dir: Path) -> None:
    """Right-padded SFT rows that start with the same system tokens: the weighted loss over the
    completion window with the prefix run once (its KV expanded to the rows) has the plain
    forward's value and gradients, for a full fine-tune and a LoRA adapter alike."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from eagrl_pipeline.training.sft import AnswerWeightedLoss, completion_window, load_tokenizer
    from eagrl_pipeline.training.shared_prompt import forward_sharing_prefix

    tokenizer = load_tokenizer(tiny_dir)
    input_ids, labels, attention = _right_padded(
        tokenizer,
        [
            (" Patient: LDH 400.", " <Final answer> 0.83 </Final answer>"),
            (
                " Patient: albumin 40, age 30, more words.",
                " Low. <Final answer> 0.2 </Final answer>",
            ),
            (" Patient: LDH 150.", " <Final answer> 0.1 </Final answer> end"),
        ],
        prefix="You are a doctor. Read the labs and answer in the tagged format.",
    )
    width = input_ids.shape[1]
    keep = completion_window(labels)
    loss = AnswerWeightedLoss(tokenizer, 30.0)
    torch.manual_seed(0)
    full_model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    lora_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32), config
    )

    def step(model: torch.nn.Module, shared: bool) -> tuple[float, list[torch.Tensor]]:
        if shared:
            out = forward_sharing_prefix(model, input_ids, attention, keep)
            assert out is not None and out.logits.shape[1] == keep
        else:
            out = model(input_ids=input_ids, attention_mask=attention, logits_to_keep=keep)
        value = loss(out, labels[:, -keep:])
        value.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad()
        return value.item(), grads

    for model in (full_model, lora_model):
        model.train()
        plain_loss, plain_grads = step(model, shared=False)
        shared_loss, shared_grads = step(model, shared=True)
        assert shared_loss == pytest.approx(plain_loss, rel=1e-5)
        assert len(shared_grads) == len(plain_grads) > 0
        for a, b in zip(shared_grads, plain_grads, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3)
    assert forward_sharing_prefix(full_model, input_ids[:1], attention[:1], keep) is None
    assert forward_sharing_prefix(full_model, input_ids, attention, keep, min_prefix=width) is None
