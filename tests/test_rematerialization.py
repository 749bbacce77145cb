"""What changed gets recomputed, and only that (``make run``'s planner, ``staleness.py``): a
stage's launchpad config, the model folder or its settings, a stage's source, a raw file; nothing
when nothing changed."""

from __future__ import annotations

import copy
import shutil
import sys

import pytest
from dagster import AssetKey, AssetMaterialization, DagsterInstance, materialize
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from assets import versioning
from assets.versioning import config_fingerprint, source_version

pytestmark = pytest.mark.slow

PARTITION = "mimic_iv-mortality"
MODEL, COHORT = AssetKey("base_language_model"), AssetKey("cohort_dataset")
EXPERT, RANKING = AssetKey("expert_model"), AssetKey("expert_feature_ranking")


@pytest.fixture(scope="module")
def materialized(lineage_home, tmp_path_factory):
    """A copy of the session's home (warehouse and cohorts), its own instance, and in it: the
    cohort, the experts and the base model (a tiny local one), so no other test's runs can
    change what these tests plan."""
    from conftest import EXPERTS_RUN_CONFIG

    from definitions import all_assets, build_resources, defs
    from eagrl_pipeline.llm.tiny_model import build_tiny_qwen2
    from resources import LanguageModel

    home = tmp_path_factory.mktemp("remat") / "home"
    shutil.copytree(lineage_home["home"], home)
    model_dir = build_tiny_qwen2(tmp_path_factory.mktemp("tiny") / "qwen2", seed=0)
    resources = {
        **build_resources(str(home)),
        "sources": lineage_home["resources"]["sources"],
        "llm": LanguageModel(path=str(model_dir)),
    }
    instance = DagsterInstance.ephemeral()
    # The shared stages (raw, dbt) as the session materialized them: their events, tags
    # (code and data versions, provenance) included, so the copy's lineage is up to date.
    source = lineage_home["instance"]
    for key in defs.resolve_asset_graph().get_all_asset_keys():
        event = source.get_latest_materialization_event(key)
        if event is not None and event.asset_materialization.partition is None:
            instance.report_runless_asset_event(event.asset_materialization)
    for selection, partition, config in (
        ([COHORT, EXPERT, RANKING], PARTITION, EXPERTS_RUN_CONFIG),
        ([MODEL], None, None),
    ):
        result = materialize(
            all_assets,
            selection=selection,
            partition_key=partition,
            resources=resources,
            instance=instance,
            run_config=config,
        )
        assert result.success
    lineage = {"home": home, "instance": instance}
    return lineage, resources, tmp_path_factory


def _plan(lineage, resources, run_config, defs=None):
    from definitions import defs as default_defs
    from staleness import cohort_relevance, planned_fingerprints, stale_or_missing

    defs = defs or default_defs
    planned = planned_fingerprints(defs, run_config, lineage["home"], resources)
    keys = [MODEL, COHORT, EXPERT, RANKING]
    todo = stale_or_missing(
        lineage["instance"], defs, keys, PARTITION, cohort_relevance, planned=planned
    )
    return {key.to_user_string(): why for key, why in todo.items()}


def test_nothing_changed_plans_nothing(materialized):
    from conftest import EXPERTS_RUN_CONFIG

    lineage, resources, _ = materialized
    assert _plan(lineage, resources, EXPERTS_RUN_CONFIG) == {}


def test_a_stage_config_change_reruns_that_stage_and_what_follows(materialized):
    from conftest import EXPERTS_RUN_CONFIG

    lineage, resources, _ = materialized
    changed = copy.deepcopy(EXPERTS_RUN_CONFIG)
    changed["ops"]["expert_model"]["config"]["max_epochs"] = 3
    assert _plan(lineage, resources, changed) == {
        "expert_model": "config or training device changed",
        "expert_feature_ranking": "upstream re-materialized: expert_model",
    }
    ranking_only = copy.deepcopy(EXPERTS_RUN_CONFIG)
    ranking_only["ops"]["expert_feature_ranking"]["config"]["top_k"] = 4
    assert _plan(lineage, resources, ranking_only) == {
        "expert_feature_ranking": "config or training device changed"
    }


def test_another_training_device_reruns_the_experts(materialized, monkeypatch):
    """The experts' data versions cover the device they train on; the rest do not depend on it
    (the language model's covers every compute field already)."""
    from conftest import EXPERTS_RUN_CONFIG

    from resources.compute import Compute

    lineage, resources, _ = materialized
    monkeypatch.setattr(Compute, "expert_version_settings", lambda self: {"device": "cuda"})
    assert _plan(lineage, resources, EXPERTS_RUN_CONFIG) == {
        "expert_model": "config or training device changed",
        "expert_feature_ranking": "upstream re-materialized: expert_model",
    }
    # A declared device is planned as written: no CUDA needed to plan a GPU profile.
    monkeypatch.undo()
    assert Compute(device="cuda").expert_version_settings() == {"device": "cuda"}


def test_another_model_or_model_setting_reruns_the_language_model_only(materialized):
    from conftest import EXPERTS_RUN_CONFIG

    from eagrl_pipeline.llm.tiny_model import build_tiny_qwen2
    from resources import LanguageModel

    lineage, resources, factory = materialized
    other = build_tiny_qwen2(factory.mktemp("tiny_other") / "qwen2", seed=1)
    swapped = {**resources, "llm": LanguageModel(path=str(other))}
    assert _plan(lineage, swapped, EXPERTS_RUN_CONFIG) == {
        "base_language_model": "model or settings changed"
    }
    hotter = {"resources": {"llm": {"config": {"temperature": 0.9}}}, **EXPERTS_RUN_CONFIG}
    assert _plan(lineage, resources, hotter) == {"base_language_model": "model or settings changed"}
    # The LLM stages below it are stale through it: its data version covers the model.
    from staleness import planned_fingerprints

    planned = planned_fingerprints(
        __import__("definitions").defs, EXPERTS_RUN_CONFIG, lineage["home"], swapped
    )
    assert (
        planned[MODEL]
        != planned_fingerprints(
            __import__("definitions").defs, EXPERTS_RUN_CONFIG, lineage["home"], resources
        )[MODEL]
    )


def test_a_stage_source_change_reruns_that_stage_and_what_follows(materialized):
    """A new code version (what an edit to the stage's source gives, see the next test) on
    expert_model: it and the ranking below it are planned, the cohort and the model are not."""
    from conftest import EXPERTS_RUN_CONFIG
    from dagster import Definitions

    from definitions import defs

    lineage, resources, _ = materialized
    edited = [
        d.map_asset_specs(lambda s: s.replace_attributes(code_version="edited"))
        if EXPERT in getattr(d, "keys", ())
        else d
        for d in defs.assets
    ]
    edited_defs = Definitions(assets=edited, resources=defs.resources)
    plan = _plan(lineage, resources, EXPERTS_RUN_CONFIG, edited_defs)
    assert set(plan) == {"expert_model", "expert_feature_ranking"}
    assert "code version" in plan["expert_model"].lower()


def test_make_runs_own_pass_plans_exactly_what_changed(materialized):
    """``run_lineage.lineage_pass``, the pass `make run` runs, over the copy (``dry``: it plans
    and runs nothing): with nothing changed it plans only what was never materialized; a stage's
    config or source adds that stage and what follows in its partition; another model adds the
    model; a new raw TJH file adds the TJH warehouse models, not MIMIC-IV's partitions."""
    import copy

    from conftest import EXPERTS_RUN_CONFIG
    from dagster import Definitions

    import run_lineage
    from definitions import defs
    from eagrl_pipeline.llm.tiny_model import build_tiny_qwen2
    from resources import LanguageModel
    from staleness import job_asset_keys

    lineage, resources, factory = materialized

    def plan(profile, res=resources, assets=defs.assets) -> dict[str, dict[str, str]]:
        located = Definitions(assets=assets, jobs=defs.jobs, resources=res)
        record = run_lineage.lineage_pass(
            lineage["instance"], profile, dry=True, lineage=located, home=lineage["home"]
        )
        assert not record.materialized and not record.failed  # dry: nothing ran
        return record.planned

    def added(after: dict, before: dict) -> dict[str, dict[str, str]]:
        return {
            label: {k: why for k, why in todo.items() if before[label].get(k) != why}
            for label, todo in after.items()
        }

    before = plan(EXPERTS_RUN_CONFIG)
    cells = {f"{p}|eagrl" for p in run_lineage.COHORTS}  # each partition's default grid cell
    assert set(before) == {"shared", *run_lineage.COHORTS, *cells, "cross-dataset"}
    for cell in cells:
        assert before[cell] == {"evaluation_report": "missing", "rl_checkpoint": "missing"}
    assert before["shared"] == {}  # raw, warehouse and model as the fixture materialized them
    partition_assets = {k.to_user_string() for k in job_asset_keys(defs, "partition_lineage")}
    done = {"cohort_dataset", "expert_model", "expert_feature_ranking"}
    assert before[PARTITION] == dict.fromkeys(sorted(partition_assets - done), "missing")
    assert set(before["tjh-mortality"]) == partition_assets  # never materialized there

    slower = copy.deepcopy(EXPERTS_RUN_CONFIG)
    slower["ops"]["expert_model"]["config"]["max_epochs"] = 3
    after = plan(slower)
    expected: dict[str, dict[str, str]] = {label: {} for label in before}
    expected[PARTITION] = {
        "expert_model": "config or training device changed",
        "expert_feature_ranking": "upstream re-materialized: expert_model",
    }
    assert added(after, before) == expected
    assert all(set(before[label]) <= set(after[label]) for label in before)

    other = build_tiny_qwen2(factory.mktemp("tiny_pass") / "qwen2", seed=2)
    swapped = plan(EXPERTS_RUN_CONFIG, {**resources, "llm": LanguageModel(path=str(other))})
    expected: dict[str, dict[str, str]] = {label: {} for label in before}
    expected["shared"] = {"base_language_model": "model or settings changed"}
    assert added(swapped, before) == expected
    edited = [  # what an edit to expert_model's source gives it (see the next test)
        d.map_asset_specs(lambda s: s.replace_attributes(code_version="edited"))
        if EXPERT in getattr(d, "keys", ())
        else d
        for d in defs.assets
    ]
    recoded = added(plan(EXPERTS_RUN_CONFIG, assets=edited), before)
    assert set(recoded.pop(PARTITION)) == {"expert_model", "expert_feature_ranking"}
    assert all(todo == {} for todo in recoded.values())
    raw = AssetKey("raw_tjh")  # a new TJH file: what the raw step reports for it
    instance = lineage["instance"]
    original = instance.get_latest_materialization_event(raw).asset_materialization
    try:
        instance.report_runless_asset_event(
            AssetMaterialization(raw, tags={DATA_VERSION_TAG: "a-new-tjh-file"})
        )
        new_file = added(plan(EXPERTS_RUN_CONFIG), before)
    finally:
        instance.report_runless_asset_event(original)
    shared = new_file.pop("shared")
    assert "cohort_tjh_mortality" in shared and "stg_tjh__lab_results" in shared
    assert all("tjh" in name for name in shared)  # the dbt models that read it, nothing else
    assert all(todo == {} for todo in new_file.values())  # MIMIC-IV's partitions: untouched
    assert plan(EXPERTS_RUN_CONFIG) == before  # planning changed nothing


def test_source_version_follows_what_the_stage_runs(tmp_path, monkeypatch):
    """The code version hashes the stage, the helpers it reaches and the project modules they
    import; an edit elsewhere in its module leaves it alone."""
    package = tmp_path / "vprobe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    method = package / "method.py"
    method.write_text("def score(x):\n    return x + 1\n")
    stage = package / "stage.py"
    source = (
        "from vprobe.method import score\n\nLIMIT = 3\n\n\n"
        "def _helper(x):\n    return score(x) * LIMIT\n\n\n"
        "def other(x):\n    return x\n\n\n"
        "def stage(x):\n    return _helper(x)\n"
    )
    stage.write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(versioning, "PROJECT_PACKAGES", (*versioning.PROJECT_PACKAGES, "vprobe"))
    import vprobe.stage

    def version() -> str:
        versioning._parsed.cache_clear()
        source_version.cache_clear()
        return source_version(vprobe.stage.stage)

    try:
        original = version()
        assert version() == original
        stage.write_text(source.replace("return x\n", "return -x\n"))
        assert version() == original  # `other` is not reached by the stage
        stage.write_text(source.replace("LIMIT = 3", "LIMIT = 4"))
        assert version() != original
        stage.write_text(source)
        assert version() == original
        method.write_text("def score(x):\n    return x + 2\n")
        assert version() != original
    finally:
        sys.modules.pop("vprobe.stage", None)
        sys.modules.pop("vprobe.method", None)
        sys.modules.pop("vprobe", None)
        versioning._parsed.cache_clear()
        source_version.cache_clear()


def test_config_fingerprint_is_stable_and_resolves_defaults():
    from assets.experts import ExpertModelConfig

    assert config_fingerprint(ExpertModelConfig()) == config_fingerprint(
        ExpertModelConfig(seed=ExpertModelConfig().seed)
    )
    assert config_fingerprint(ExpertModelConfig()) != config_fingerprint(ExpertModelConfig(seed=1))
    assert config_fingerprint(None, a=1) != config_fingerprint(None, a=2)


def test_a_cohort_macro_change_reaches_the_code_version_of_the_models_that_call_it():
    """dagster-dbt hashes a model's own SQL only; a shared macro is part of what it runs."""
    import json

    from dagster_dbt import DagsterDbtTranslatorSettings

    from assets.warehouse import WarehouseTranslator, project_macros
    from resources import DBT_PROJECT

    manifest = json.loads(DBT_PROJECT.manifest_path.read_text())
    translator = WarehouseTranslator(settings=DagsterDbtTranslatorSettings())
    models = ("model.eagrl.cohort_tjh_mortality", "model.eagrl.cohort_mimic_iv_mortality")
    plain = "model.eagrl.int_tjh_visits_daily"

    def versions(m: dict) -> dict[str, str | None]:
        return {
            u: translator.get_asset_spec(m, u, DBT_PROJECT).code_version for u in (*models, plain)
        }

    assert project_macros(manifest, manifest["nodes"][models[0]]) == [
        "macro.eagrl.cohort_feature_ids",
        "macro.eagrl.pivot_features",
    ]
    before = versions(manifest)
    edited = copy.deepcopy(manifest)
    edited["macros"]["macro.eagrl.pivot_features"]["macro_sql"] += "\n-- edited"
    after = versions(edited)
    assert after[models[0]] != before[models[0]]  # calls pivot_features
    assert after[models[1]] == before[models[1]]  # calls mimic_iv_cohort only
    assert after[plain] == before[plain] is not None  # no project macro: dagster-dbt's own
    assert versions(copy.deepcopy(manifest)) == before  # stable across loads
