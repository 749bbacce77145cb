"""The method variants (eagrl_pipeline/variants.py): what each one fixes, its settings hash, the
refusal of run config that would make a variant another method, the fixed clip reaching trl,
and the per-cell versioning that lets one variant's change leave the others fresh."""

from __future__ import annotations

import dataclasses

import pytest

from eagrl_pipeline.training.grpo import GRPOSettings, build_grpo_config
from eagrl_pipeline.variants import (
    DAPO_EPS_HIGH,
    DEFAULT_VARIANT,
    VARIANTS,
    Variant,
    apply_variant,
    get_variant,
)


def test_the_grid_holds_the_papers_methods():
    assert list(VARIANTS) == [
        "vanilla",
        "think_answer",
        "decomposition",
        "sft_only",
        "grpo_only",
        "eagrl",
        "eagrl_no_attention",
        "eagrl_fixed_clip",
        "grpo_dapo",
    ]
    assert DEFAULT_VARIANT == "eagrl"
    rows = {name: v.report_row for name, v in VARIANTS.items()}
    assert rows["vanilla"] == "base_vanilla" and rows["decomposition"] == "base"
    assert rows["sft_only"] == "sft" and rows["eagrl"] == rows["grpo_dapo"] == "rl"
    assert VARIANTS["eagrl"].start_rows() == ("base", "sft")
    assert VARIANTS["grpo_only"].start_rows() == ("base",)
    assert VARIANTS["vanilla"].start_rows() == ()
    assert VARIANTS["eagrl_no_attention"].grpo["lam"] == 1.0
    dapo = VARIANTS["grpo_dapo"].grpo
    assert dapo["start_from"] == "base" and dapo["lam"] == 1.0
    assert dapo["adaptive_clip"] is False and dapo["eps_high_fixed"] == DAPO_EPS_HIGH
    assert len({v.settings_hash() for v in VARIANTS.values()}) == len(VARIANTS)
    with pytest.raises(ValueError, match="unknown variant 'few_shot'"):
        get_variant("few_shot")


def test_settings_hash_follows_the_settings_not_the_wording():
    eagrl = VARIANTS["eagrl"]
    reworded = dataclasses.replace(eagrl, description="EAG-RL, described otherwise.")
    assert reworded.settings_hash() == eagrl.settings_hash()
    changed = dataclasses.replace(eagrl, grpo={"start_from": "sft", "lam": 0.5})
    assert changed.settings_hash() != eagrl.settings_hash()
    with pytest.raises(TypeError):
        eagrl.grpo["lam"] = 0.1  # frozen: a variant cannot be edited in place
    with pytest.raises(ValueError, match="GRPO settings on a base policy"):
        Variant("x", "d", "base", grpo={"lam": 1.0})


def test_run_config_that_clashes_with_a_variant_is_refused():
    values = {"start_from": "sft", "lam": 0.6, "max_steps": 2}
    applied = apply_variant(VARIANTS["eagrl_no_attention"], values, explicit={"max_steps"})
    assert applied == {"start_from": "sft", "lam": 1.0, "max_steps": 2}
    # Setting what the variant fixes to the same value is fine; another value is refused.
    apply_variant(VARIANTS["eagrl_no_attention"], {**values, "lam": 1.0}, explicit={"lam"})
    with pytest.raises(ValueError, match=r"variant eagrl_no_attention fixes \['lam'\]"):
        apply_variant(VARIANTS["eagrl_no_attention"], values, explicit={"lam"})


def test_fixed_clip_variants_reach_trl_and_the_adaptive_clip_keeps_its_own(tmp_path):
    from assets.training import RLCheckpointConfig, rl_config_for_variant

    def trl_config(variant: str):
        config = rl_config_for_variant(RLCheckpointConfig(), VARIANTS[variant], set())
        return build_grpo_config(config.settings(), tmp_path, device="cpu", precision="fp32")

    dapo = trl_config("grpo_dapo")
    assert (dapo.epsilon, dapo.epsilon_high) == (0.2, DAPO_EPS_HIGH)
    assert trl_config("eagrl_fixed_clip").epsilon_high == 0.3
    assert trl_config("eagrl").epsilon_high is None  # the adaptive clip sets it per token
    assert rl_config_for_variant(RLCheckpointConfig(), VARIANTS["sft_only"], set()) is None
    with pytest.raises(ValueError, match="set adaptive_clip to false"):
        GRPOSettings(eps_high_fixed=0.28).validate()
    with pytest.raises(ValueError, match="below eps_low"):
        GRPOSettings(adaptive_clip=False, eps_high_fixed=0.1).validate()


def test_one_variants_settings_change_only_that_variants_cell_fingerprints(monkeypatch):
    """The code version leaves the registry's table out (each cell records its own variant's
    settings in its fingerprint), so a change to one variant moves only its cells."""
    import eagrl_pipeline.variants as variants
    from assets.partitions import COHORTS
    from assets.versioning import _module_source
    from definitions import defs
    from staleness import planned_fingerprints

    hashed = _module_source("eagrl_pipeline.variants")
    assert "def apply_variant" in hashed and "class Variant" in hashed  # the logic is versioned
    assert "EAG-RL without the attention reward" not in hashed  # the table is per cell

    before = planned_fingerprints(defs, None, "/tmp/unused-home")
    changed = dataclasses.replace(
        VARIANTS["eagrl_no_attention"], grpo={"start_from": "sft", "lam": 0.9}
    )
    monkeypatch.setattr(variants, "VARIANTS", {**VARIANTS, "eagrl_no_attention": changed})
    after = planned_fingerprints(defs, None, "/tmp/unused-home")
    for asset in ("rl_checkpoint", "evaluation_report"):
        key = next(k for k in before if k.to_user_string() == asset)
        moved = {cell for cell in before[key] if before[key][cell] != after[key][cell]}
        assert moved == {f"{p}|eagrl_no_attention" for p in COHORTS}
    transfer = next(k for k in before if k.to_user_string() == "generalization_report")
    moved = {v for v in before[transfer] if before[transfer][v] != after[transfer][v]}
    assert moved == {"eagrl_no_attention"}  # the variant's generalization report alone
    unchanged = [k for k in before if isinstance(before[k], str)]
    assert all(before[k] == after[k] for k in unchanged)


def test_changing_one_variant_replans_that_variants_cell_only(tmp_path, monkeypatch):
    """Two materialized cells (prompting variants: nothing to train) record their fingerprints;
    one variant's settings change; the planner's expectation moves for that cell only, so
    `make run`/`make grid` call it "config changed" and leave the other."""
    from dagster import AssetKey, AssetSelection, DagsterInstance, materialize

    import eagrl_pipeline.variants as variants
    from definitions import all_assets, build_resources, defs
    from staleness import planned_fingerprints, recorded_fingerprint

    resources = build_resources(str(tmp_path))
    rl = AssetKey("rl_checkpoint")
    cells = ("tjh-mortality|vanilla", "tjh-mortality|decomposition")
    with DagsterInstance.ephemeral() as instance:
        for cell in cells:
            result = materialize(
                all_assets,
                selection=AssetSelection.assets("rl_checkpoint"),
                partition_key=cell,
                resources=resources,
                instance=instance,
            )
            assert result.success

        def changed() -> list[str]:
            planned = planned_fingerprints(defs, None, tmp_path)[rl]
            return [c for c in cells if recorded_fingerprint(instance, rl, c) != planned[c]]

        assert changed() == []
        vanilla = dataclasses.replace(VARIANTS["vanilla"], prompting="think_answer")
        monkeypatch.setattr(variants, "VARIANTS", {**VARIANTS, "vanilla": vanilla})
        assert changed() == ["tjh-mortality|vanilla"]
