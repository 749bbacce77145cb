"""The one training entry point: the accelerate command line, and a real two-process SFT under
``accelerate launch`` on the CPU (the path multi-GPU training takes), streamed and collected."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from eagrl_pipeline.training.launch import accelerate_command, launch, sft_spec
from eagrl_pipeline.training.sft import SFTSettings, split_by_patient


def test_accelerate_command_for_gpus_and_cpu(tmp_path: Path) -> None:
    spec, result = tmp_path / "spec.json", tmp_path / "result.json"
    gpus = accelerate_command("grpo", spec, result, 4)
    assert gpus[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert gpus[gpus.index("--num_processes") + 1] == "4" and "--multi_gpu" in gpus
    assert gpus[-5:] == ["-m", "eagrl_pipeline.training.launch", "grpo", str(spec), str(result)]
    cpu = accelerate_command("sft", spec, result, 2, cpu=True)
    assert "--cpu" in cpu and "--multi_gpu" not in cpu
    with pytest.raises(ValueError, match="num_processes"):
        accelerate_command("sft", spec, result, 0)


@pytest.mark.slow
def test_two_process_sft_under_accelerate(tmp_path: Path) -> None:
    from eagrl_pipeline.llm import build_tiny_qwen2

    model_dir = build_tiny_qwen2(tmp_path / "model")
    records = [
        {
            "patient_key": str(p),
            "system": "You are a clinical assistant.",
            "user": f"Patient {p}: Lymphocyte count [0.4{p}]. Predict.",
            "text": "<Subquestion> Low? </Subquestion> <Answer> Yes. </Answer>\n"
            "<Final subquestion> Risk? </Final subquestion>\n<Important Features> "
            f"Lymphocyte count </Important Features>\n<Final answer> 0.{p} </Final answer>",
        }
        for p in range(1, 7)
    ]
    train, held_out = split_by_patient(records, 0.25, seed=0)
    spec = sft_spec(
        model_dir, train, held_out, SFTSettings(max_steps=2), tmp_path / "out",
        device="cpu", precision="fp32", report_to=["none"],
    )  # fmt: skip
    lines: list[str] = []
    outcome = launch("sft", spec, tmp_path / "launch", 2, log=lines.append)
    assert outcome["global_step"] == 2
    assert Path(outcome["adapter_dir"], "adapter_config.json").exists()
    assert any("launching:" in line for line in lines) and len(lines) > 1
    with pytest.raises(RuntimeError, match="exited with"):
        launch("sft", {**spec, "model_dir": str(tmp_path / "absent")}, tmp_path / "bad", 2,
               log=lambda _line: None)  # fmt: skip
