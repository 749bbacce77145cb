"""The answer-only fine-tuning probe (benchmarks/label_finetune.py) on a tiny model: the split
never touches the test patients, and a short run prints and returns a whole curve."""

from __future__ import annotations

from benchmarks.label_finetune import held_out_split, main


def test_the_probe_fits_train_patients_and_reads_out_the_others_never_test(probe_prompts):
    prompts = probe_prompts
    fit, held = held_out_split(prompts, n_fit=10, seed=0)
    assert set(fit["split"]) == {"train"} and len(fit) == 10
    assert set(held["split"]) == {"train", "val"}
    assert not set(fit["patient_id"]) & set(held["patient_id"])
    assert len(fit) + len(held) == (prompts["split"] != "test").sum()


def test_a_short_run_prints_a_curve_per_epoch(tmp_path, capsys, probe_prompts):
    from eagrl_pipeline.llm import build_tiny_qwen2

    folder = tmp_path / "home" / "artifacts" / "llm_prompts" / "tjh-mortality"
    folder.mkdir(parents=True)
    probe_prompts.to_parquet(folder / "prompts.parquet")
    model = build_tiny_qwen2(tmp_path / "tiny")
    argv = ["--home", str(tmp_path / "home"), "--model", str(model), "--fit", "10"]
    assert main([*argv, "--epochs", "2", "--threads", "1", "--no-record"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("label_finetune: epoch0=")
    values = [float(part.split("=")[1]) for part in line.split()[1:]]
    assert len(values) == 3 and all(0.0 <= v <= 1.0 for v in values)
