"""A tiny random Qwen2 chat model built locally in seconds, so tests never touch the hub.

The tokenizer is a byte-level BPE trained on a small in-code corpus: byte-level means any text
(EHR prompts, model output) encodes without unknown tokens, and the EAG-RL tags are single
tokens so parsing tests see realistic token boundaries.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
BOS, EOS, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
EAGRL_TAGS = (
    "<Subquestion>",
    "</Subquestion>",
    "<Answer>",
    "</Answer>",
    "<Final subquestion>",
    "</Final subquestion>",
    "<Important Features>",
    "</Important Features>",
    "<Final answer>",
    "</Final answer>",
)
_CORPUS = [
    "You are a clinical assistant. Predict the patient's risk of in-hospital mortality.",
    "Patient: male, age 67, 3 visits. Task: predict the outcome. Answer with a probability.",
    "- Hemoglobin (Unit: g/L. Reference range: 130-175): [128.0, 131.5, NaN]",
    "- Lymphocyte count (Unit: 10^9/L. Reference range: 1.1-3.2): [0.52, 0.61, 0.48]",
    "- Lactate dehydrogenase (Unit: U/L. Reference range: 120-250): [412, 530, 611]",
    "- High sensitivity C-reactive protein (Unit: mg/L. Reference range: 0-1): [88.2, 102.4]",
    "- Heart Rate, Systolic blood pressure, Oxygen saturation, Glucose, Temperature, pH",
    "- Albumin, Creatinine, Urea, D-D dimer, Neutrophils(%), Platelet count, Sodium",
    "<Subquestion>Is the lymphocyte count low?</Subquestion><Answer>Yes, 0.48 is low.</Answer>",
    "<Final subquestion>What is the risk?</Final subquestion>",
    "<Important Features>Lactate dehydrogenase, Lymphocyte count</Important Features>",
    "<Final answer>0.83</Final answer> <Final answer>0.07</Final answer>",
    "0 1 2 3 4 5 6 7 8 9 10 12.5 37.2 98.6 100 0.25 0.5 0.75 0.99 0.01",
    "high low normal increased decreased stable risk survival death readmission",
]


def _train_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in EAGRL_TAGS])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=2048,
    )
    wrapped.chat_template = CHATML_TEMPLATE
    return wrapped


def build_tiny_qwen2(
    out_dir: str | Path,
    *,
    vocab_size: int = 512,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    seed: int = 0,
) -> Path:
    """Save a random ``Qwen2ForCausalLM`` and its ChatML tokenizer to ``out_dir``."""
    out_dir = Path(out_dir)
    tokenizer = _train_tokenizer(vocab_size)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=tokenizer.model_max_length,
        tie_word_embeddings=True,
        # Large random weights make greedy output depend on the prompt (the default 0.02
        # gives near-uniform logits and the same token for every prompt).
        initializer_range=0.5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching global state
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
