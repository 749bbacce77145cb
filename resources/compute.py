"""Where training runs: the device, the dtype and the number of processes, decided once."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field


class Compute(ConfigurableResource):
    device: str = Field(
        default="auto", description="'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1'."
    )
    precision: str = Field(
        default="auto",
        description="'auto' (bf16 on a GPU that supports it, else fp32), 'bf16', 'fp16', 'fp32'.",
    )
    num_processes: int = Field(
        default=1, description="Processes for training (>1 launches under accelerate)."
    )
    cpu_threads: int = Field(
        default=1,
        description="torch threads on the CPU. Small expert models run fastest on one thread "
        "(measured 5-15x faster than two on a busy 2-core machine); raise it for big models.",
    )

    llm_cpu_threads: int = Field(
        default=0,
        description="torch threads on the CPU for language-model stages (generation, SFT, "
        "GRPO), whose large matmuls do scale with threads; 0 = every core.",
    )

    def configure_torch(self, *, llm: bool = False) -> str:
        """Apply the thread setting (the LLM one for ``llm=True``) and return the device."""
        import os

        import torch

        device = self.resolved_device()
        threads = (self.llm_cpu_threads or os.cpu_count() or 1) if llm else self.cpu_threads
        if device == "cpu" and threads > 0:
            torch.set_num_threads(threads)
        return device

    def expert_version_settings(self) -> dict[str, str]:
        """What of the compute settings an expert's content depends on: the device it trains on
        (CUDA kernels round differently); threads and the LLM precision do not reach it. A
        declared device is taken as written, so a GPU profile plans on a CPU machine."""
        return {"device": self.resolved_device() if self.device == "auto" else self.device}

    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(
                f"compute.device={self.device!r} but no CUDA device is visible. Fix: set "
                "compute.device to 'auto' or 'cpu', or run on a GPU machine."
            )
        return self.device

    def resolved_precision(self) -> str:
        import torch

        if self.precision != "auto":
            return self.precision
        device = self.resolved_device()
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return "bf16"
        from eagrl_pipeline.llm.generation import cpu_native_bf16

        # A CPU with native bf16 dot products trains in bf16 too: a LoRA step of SmolLM2 on
        # 4 x 480 tokens took 8.3 s against 12.5 s in fp32 (AVX-512 BF16, 2 threads).
        return "bf16" if device == "cpu" and cpu_native_bf16() else "fp32"
