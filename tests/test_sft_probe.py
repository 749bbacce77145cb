"""The SFT probe (benchmarks/sft_probe.py) on a tiny model: it reads out validation and unkept
train patients, never test or the patients it trains on, and a short run prints a curve."""

from __future__ import annotations

import json

from benchmarks.sft_probe import held_out, main


def _trajectory(row) -> dict:
    answer = "0.8" if row.label else "0.2"
    return {
        "patient_key": str(row.patient_id),
        "label": int(row.label),
        "system": row.system,
        "user": row.user,
        "text": "<Subquestion> LDH? </Subquestion> <Answer> high </Answer>\n"
        "<Final subquestion> Risk? </Final subquestion>\n"
        "<Important Features> Lactate dehydrogenase </Important Features>\n"
        f"<Final answer> {answer} </Final answer>",
    }


def test_the_probe_reads_out_validation_and_unkept_train_patients_never_test(probe_prompts):
    prompts = probe_prompts
    held = held_out(prompts, kept_keys={"0", "1", "2", "3"})
    assert set(held["split"]) == {"train", "val"}
    assert not {0, 1, 2, 3} & set(held["patient_id"])
    assert len(held) == 4 + (16 - 4)


def test_a_short_run_prints_a_curve_per_epoch(tmp_path, capsys, probe_prompts):
    from eagrl_pipeline.llm import build_tiny_qwen2

    home = tmp_path / "home"
    prompts = probe_prompts
    folder = home / "artifacts" / "llm_prompts" / "tjh-mortality"
    folder.mkdir(parents=True)
    prompts.to_parquet(folder / "prompts.parquet")
    search = home / "artifacts" / "mcts_trajectories" / "tjh-mortality"
    search.mkdir(parents=True)
    kept = prompts[prompts["split"] == "train"].head(8)
    lines = "".join(json.dumps(_trajectory(r)) + "\n" for r in kept.itertuples())
    (search / "trajectories.jsonl").write_text(lines)
    build_tiny_qwen2(home / "models" / "tiny")
    argv = ["--home", str(home), "--epochs", "1", "--finetune", "full", "--lr", "1e-3"]
    assert main([*argv, "--no-record"]) == 0
    out = capsys.readouterr().out.splitlines()
    curve = [json.loads(line) for line in out if line.startswith('{"epoch"')]
    assert [entry["epoch"] for entry in curve] == [0, 1]
    for entry in curve:
        assert 0.0 <= entry["parse"] <= 1.0
        for key in ("auroc", "val_auroc", "unkept_auroc"):
            assert 0.0 <= entry[key] <= 1.0, (key, entry)
