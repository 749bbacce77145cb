"""Run profiles (profiles/*.yaml): each is valid run config for every job whose assets it
configures, its resources resolve, and `make run PROFILE=gpu` refuses clearly without a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster import validate_run_config

import run_lineage
from run_lineage import PROFILES_DIR, ProfileError, check_device, load_profile, run_config_for

PROFILES = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
ROOT = Path(__file__).resolve().parents[1]


def test_the_cpu_default_and_the_gpu_profile_ship():
    assert {"cpu", "gpu"} <= set(PROFILES)


@pytest.mark.parametrize("name", PROFILES)
def test_profile_is_valid_config_for_every_job_it_configures(name):
    from definitions import defs
    from staleness import job_asset_keys

    profile = load_profile(name)
    configured = set(profile.get("ops") or {})
    covered: set[str] = set()
    for job in ("shared_inputs", "partition_lineage", "experiment_grid", "cross_dataset_report"):
        keys = job_asset_keys(defs, job)
        config = run_config_for(profile, keys)
        result = validate_run_config(defs.resolve_job_def(job), config)
        assert result is not None
        covered |= set(config.get("ops") or {})
    assert covered == configured, f"{name}: ops no job runs: {sorted(configured - covered)}"


@pytest.mark.parametrize("name", PROFILES)
def test_profile_resources_and_asset_configs_resolve(name, tmp_path):
    """Every ops entry builds its asset's Config class (so a value out of range fails here, not
    an hour into a run) and the planner resolves the profile's resources."""
    from definitions import defs
    from staleness import planned_fingerprints

    profile = load_profile(name)
    planned = planned_fingerprints(defs, profile, tmp_path)
    assert {k.to_user_string() for k in planned} >= set(profile.get("ops") or {})


def test_the_gpu_profile_changes_what_the_planner_expects():
    from dagster import AssetKey

    from definitions import defs
    from staleness import planned_fingerprints

    home = Path("/nonexistent-eagrl-home")
    cpu = planned_fingerprints(defs, load_profile("cpu"), home)
    gpu = planned_fingerprints(defs, load_profile("gpu"), home)
    changed = ("mcts_trajectories", "rl_checkpoint", "evaluation_report", "base_language_model")
    # The experts train on the profile's CUDA device: another device, another expert.
    for name in (*changed, "expert_model", "expert_feature_ranking"):
        assert cpu[AssetKey(name)] != gpu[AssetKey(name)], name
    assert cpu[AssetKey("cohort_dataset")] == gpu[AssetKey("cohort_dataset")]


def test_gpu_profile_refuses_without_a_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ProfileError, match=r"torch sees no CUDA GPU.*PROFILE=cpu"):
        check_device(load_profile("gpu"), "gpu")
    check_device(load_profile("cpu"), "cpu")


def test_make_run_with_the_gpu_profile_exits_with_the_reason_on_a_cpu_machine(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusal is for machines without one")
    env = {"PATH": "/usr/bin:/bin", "PROFILE": "gpu", "EAGRL_HOME": str(tmp_path / "home")}
    env["DAGSTER_HOME"] = str(tmp_path / "dagster")
    (tmp_path / "dagster").mkdir()
    done = subprocess.run(
        [sys.executable, "run_lineage.py"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "torch sees no CUDA GPU" in done.stderr and "gpu.yaml" in done.stderr
    assert not (tmp_path / "home" / "artifacts").exists()


def test_unknown_or_malformed_profiles_are_named_with_the_fix(tmp_path, monkeypatch):
    with pytest.raises(ProfileError, match=r"no such run profile.*use one of \['cpu', 'gpu'"):
        load_profile("gpuu")
    monkeypatch.setattr(run_lineage, "PROFILES_DIR", tmp_path)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"opts": {}}))
    with pytest.raises(ProfileError, match=r"bad.yaml: a profile holds only 'ops' and 'resources'"):
        load_profile("bad")
    (tmp_path / "broken.yaml").write_text("ops: [\n")
    with pytest.raises(ProfileError, match=r"broken.yaml: not valid YAML"):
        load_profile("broken")


@pytest.mark.slow
def test_make_run_console_shows_one_line_per_step_and_the_file_keeps_every_event(tmp_path):
    """The raw step of `make run` (a subprocess with its own EAGRL_HOME): the console gets the
    step lines and no DEBUG event; the event log file under EAGRL_HOME gets them all."""
    home = tmp_path / "home"
    script = (
        "from dagster import DagsterInstance\n"
        "import run_lineage as r\n"
        "record = r.Pass(r.load_profile('cpu'))\n"
        "instance = DagsterInstance.ephemeral()\n"
        "ok = r.execute(instance, r.defs, r.EAGRL_HOME, 'shared_inputs', r.RAW, None, 'raw', "
        "record)\n"
        "assert ok, record.failed\n"
    )
    env = {"PATH": "/usr/bin:/bin", "EAGRL_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env["DAGSTER_HOME"] = str(tmp_path / "dagster")
    (tmp_path / "dagster").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    console = done.stdout + done.stderr
    steps = [line for line in console.splitlines() if line.startswith("[step]")]
    assert any("raw_tjh" in line and " ok " in line for line in steps), console[-2000:]
    assert any("raw_mimic_iv" in line for line in steps)
    assert " - DEBUG - " not in console and "STEP_START" not in console
    log = (home / "logs" / "dagster_events.log").read_text()
    assert "STEP_START" in log and "raw_tjh" in log and "DEBUG" in log
    assert (home / "logs" / "step_output.log").exists()


def test_a_profile_can_be_a_users_own_file(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text(yaml.safe_dump({"ops": {"evaluation_report": {"config": {"batch_size": 8}}}}))
    assert load_profile(str(own))["ops"]["evaluation_report"]["config"]["batch_size"] == 8
    with pytest.raises(ProfileError, match=r"missing.yaml: no such run profile"):
        load_profile(str(tmp_path / "missing.yaml"))


def test_make_plan_says_what_would_run_and_runs_nothing(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "EAGRL_HOME": str(tmp_path / "home"), "PROFILE": "cpu"}
    env["DAGSTER_HOME"] = str(tmp_path / "dagster")
    (tmp_path / "dagster").mkdir()
    done = subprocess.run(
        [sys.executable, "run_lineage.py", "--plan"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    plan = [line for line in done.stdout.splitlines() if line.startswith("[plan]")]
    assert any("tjh-mortality: missing:" in line and "sft_checkpoint" in line for line in plan)
    # the default variant's grid cell, planned after its dataset-task's shared stages
    assert any("tjh-mortality|eagrl: missing:" in line and "rl_checkpoint" in line for line in plan)
    cross = [line for line in plan if line.startswith("[plan] cross-dataset: missing:")]
    assert len(cross) == 1 and "generalization_report" in cross[0]
    assert "comparison_report" in cross[0]
    assert not (tmp_path / "home" / "artifacts").exists()
