"""One training entry point for in-process runs and ``accelerate launch`` subprocesses.

A run is described by a JSON spec (model, data, settings, output folder). In process, the asset
calls ``run_spec`` directly; with several processes it writes the spec and starts
``accelerate launch -m eagrl_pipeline.training.launch <kind> spec.json result.json``, so
multi-GPU training needs no other code. The main process writes the outcome as JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from eagrl_pipeline.paths import atomic_path

Kind = Literal["sft", "grpo"]


def sft_spec(
    model_dir: str | Path,
    train_records: Sequence[dict[str, Any]],
    eval_records: Sequence[dict[str, Any]],
    settings: Any,
    output_dir: str | Path,
    *,
    device: str,
    precision: str,
    report_to: Sequence[str],
) -> dict[str, Any]:
    return {
        "model_dir": str(model_dir),
        "train_records": list(train_records),
        "eval_records": list(eval_records),
        "settings": asdict(settings),
        "output_dir": str(output_dir),
        "device": device,
        "precision": precision,
        "report_to": list(report_to),
    }


def grpo_spec(
    model_dir: str | Path,
    sft_adapter_dir: str | Path | None,
    rows: Sequence[dict[str, Any]],
    feature_names: Sequence[str],
    aliases: dict[str, str],
    settings: Any,
    output_dir: str | Path,
    *,
    device: str,
    precision: str,
    num_processes: int,
    report_to: Sequence[str],
) -> dict[str, Any]:
    return {
        "model_dir": str(model_dir),
        "sft_adapter_dir": None if sft_adapter_dir is None else str(sft_adapter_dir),
        "rows": list(rows),
        "feature_names": list(feature_names),
        "aliases": dict(aliases),
        "settings": asdict(settings),
        "output_dir": str(output_dir),
        "device": device,
        "precision": precision,
        "num_processes": num_processes,
        "report_to": list(report_to),
    }


def run_spec(kind: Kind, spec: dict[str, Any], callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train what the spec describes; the outcome as a JSON-ready dict."""
    if kind == "sft":
        from eagrl_pipeline.training.sft import LoraSettings, SFTSettings, train_sft

        raw = dict(spec["settings"])
        lora = raw.pop("lora")
        lora["target_modules"] = (
            lora["target_modules"]
            if isinstance(lora["target_modules"], str)
            else tuple(lora["target_modules"])
        )
        settings = SFTSettings(**raw, lora=LoraSettings(**lora))
        outcome = train_sft(
            spec["model_dir"],
            spec["train_records"],
            spec["eval_records"],
            settings,
            spec["output_dir"],
            device=spec["device"],
            precision=spec["precision"],
            report_to=spec["report_to"],
            callbacks=callbacks,
        )
        return outcome.as_dict()
    if kind == "grpo":
        from eagrl_pipeline.prompts.features import FeatureMatcher
        from eagrl_pipeline.training.grpo import GRPOSettings, train_grpo

        raw = dict(spec["settings"])
        raw["rewards"] = tuple(raw["rewards"])
        grpo = train_grpo(
            spec["model_dir"],
            spec["sft_adapter_dir"],
            spec["rows"],
            FeatureMatcher.build(spec["feature_names"], spec["aliases"]),
            GRPOSettings(**raw),
            spec["output_dir"],
            device=spec["device"],
            precision=spec["precision"],
            num_processes=spec["num_processes"],
            report_to=spec["report_to"],
            callbacks=callbacks,
        )
        return grpo.as_dict()
    raise ValueError(f"unknown training kind {kind!r}: 'sft' or 'grpo'")


def accelerate_command(
    kind: Kind, spec_path: Path, result_path: Path, num_processes: int, *, cpu: bool = False
) -> list[str]:
    """The ``accelerate launch`` command line for a spec (multi-GPU, or CPU processes)."""
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    command += ["--num_processes", str(num_processes), "--num_machines", "1"]
    command += ["--cpu"] if cpu else (["--multi_gpu"] if num_processes > 1 else [])
    command += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["-m", "eagrl_pipeline.training.launch", kind, str(spec_path), str(result_path)]
    return command


def launch(
    kind: Kind,
    spec: dict[str, Any],
    work_dir: Path,
    num_processes: int,
    *,
    log: Callable[[str], None] = print,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run a spec under ``accelerate launch`` and stream its output lines to ``log``."""
    work_dir.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = work_dir / f"{kind}-spec.json", work_dir / f"{kind}-result.json"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    command = accelerate_command(
        kind, spec_path, result_path, num_processes, cpu=spec["device"] == "cpu"
    )
    log("launching: " + " ".join(command))
    tail: deque[str] = deque(maxlen=40)
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            tail.append(line.rstrip())
            log(line.rstrip())
        code = process.wait()
    if code != 0 or not result_path.exists():
        raise RuntimeError(
            f"{kind} training under accelerate exited with {code}; last lines:\n" + "\n".join(tail)
        )
    return json.loads(result_path.read_text())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["sft", "grpo"])
    parser.add_argument("spec", type=Path)
    parser.add_argument("result", type=Path)
    args = parser.parse_args(argv)
    outcome = run_spec(args.kind, json.loads(args.spec.read_text()))
    from accelerate import PartialState

    if PartialState().is_main_process:
        with atomic_path(args.result) as tmp:
            tmp.write_text(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
