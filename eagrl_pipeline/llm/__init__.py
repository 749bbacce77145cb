"""The language model: the validated base model folder and one batched generation helper.

Every LLM stage (zero-shot predictions, MCTS, SFT/GRPO evaluation) loads models and generates
through this package, so padding, dtype and seeding behave the same everywhere.
"""

from eagrl_pipeline.llm.base_model import (
    DEFAULT_MODEL_NAME,
    LanguageModelError,
    ModelInfo,
    convert_gguf_to_hf,
    ensure_default_model,
    smollm2_gguf_path,
    validate_model_dir,
)
from eagrl_pipeline.llm.generation import (
    GenerationResult,
    generate_batch,
    load_model,
    render_prompts,
    resolve_device,
    resolve_dtype,
)
from eagrl_pipeline.llm.tiny_model import build_tiny_qwen2

__all__ = [
    "DEFAULT_MODEL_NAME",
    "GenerationResult",
    "LanguageModelError",
    "ModelInfo",
    "build_tiny_qwen2",
    "convert_gguf_to_hf",
    "ensure_default_model",
    "generate_batch",
    "load_model",
    "render_prompts",
    "resolve_device",
    "resolve_dtype",
    "smollm2_gguf_path",
    "validate_model_dir",
]
