"""base_language_model, llm_prompts and base_llm_predictions through dagster.materialize with a
tiny random Qwen2 model built at test time (never the hub)."""

from __future__ import annotations

import pandas as pd
import pytest
from dagster import AssetSelection, materialize

pytestmark = pytest.mark.slow

PARTITION = "mimic_iv-mortality"  # the partition the experts_run fixture ranks


@pytest.fixture(scope="module")
def reasoning_run(experts_run, tmp_path_factory):
    from definitions import all_assets
    from eagrl_pipeline.llm.tiny_model import build_tiny_qwen2
    from resources import LanguageModel

    _, lineage = experts_run
    model_dir = build_tiny_qwen2(tmp_path_factory.mktemp("tiny") / "qwen2", seed=0)
    resources = {**lineage["resources"], "llm": LanguageModel(path=str(model_dir))}
    shared = materialize(
        all_assets,
        selection=AssetSelection.assets("base_language_model"),
        resources=resources,
        instance=lineage["instance"],
    )
    result = materialize(
        all_assets,
        selection=AssetSelection.assets("llm_prompts", "base_llm_predictions"),
        partition_key=PARTITION,
        resources=resources,
        instance=lineage["instance"],
        run_config={
            "ops": {
                "llm_prompts": {"config": {"max_tokens": 1300, "max_features": None}},
                "base_llm_predictions": {
                    "config": {"max_patients_per_split": 4, "max_new_tokens": 12}
                },
            }
        },
    )
    return shared, result, lineage["home"], resources


def test_base_language_model_is_validated(reasoning_run):
    shared, *_ = reasoning_run
    meta = shared.asset_materializations_for_node("base_language_model")[0].metadata
    assert meta["architecture"].value == "Qwen2ForCausalLM"
    assert meta["n_parameters"].value > 0
    assert "<|im_start|>" in meta["chat_sample"].value


def test_prompts_cover_every_patient_within_budget(reasoning_run):
    _, result, home, _ = reasoning_run
    prompts = pd.read_parquet(home / "artifacts" / "llm_prompts" / PARTITION / "prompts.parquet")
    visits = pd.read_parquet(home / "artifacts" / "cohort_dataset" / PARTITION / "visits.parquet")
    assert set(prompts["patient_id"]) == set(visits["patient_id"])
    assert set(prompts["split"]) == {"train", "val", "test"}
    assert (prompts["n_tokens"] <= 1300).all() and prompts["fits_budget"].all()
    assert prompts["truncated"].any()  # the tiny tokenizer makes the budget bite
    assert prompts["user"].str.contains("Heart rate").any()
    meta = result.asset_materializations_for_node("llm_prompts")[0].metadata
    assert meta["tokens_max"].value <= 1300
    assert (prompts["n_features_shown"] >= 1).all()
    assert prompts["features_shown"].map(len).equals(prompts["n_features_shown"])
    assert meta["prompts_without_features"].value == 0
    assert meta["features_shown"].value["max"] == prompts["n_features_shown"].max()
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["prompts_show_features"].passed


def test_prompts_refuse_a_budget_below_min_features(reasoning_run, experts_run):
    from definitions import all_assets

    _, lineage = experts_run
    *_, resources = reasoning_run
    result = materialize(
        all_assets,
        selection=AssetSelection.assets("llm_prompts"),
        partition_key=PARTITION,
        resources=resources,
        instance=lineage["instance"],
        run_config={"ops": {"llm_prompts": {"config": {"max_tokens": 100, "min_features": 3}}}},
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = str(failure.step_failure_data.error)
    assert "max_tokens=100" in message and "set max_tokens to at least" in message


def test_base_predictions_are_parsed_and_scored(reasoning_run):
    _, result, home, _ = reasoning_run
    predictions = pd.read_parquet(
        home / "artifacts" / "base_llm_predictions" / PARTITION / "predictions.parquet"
    )
    assert len(predictions) == 8 and set(predictions["split"]) == {"val", "test"}
    assert (predictions["n_new_tokens"] <= 12).all()
    # A random tiny model writes no parseable answer: the minimum reward, counted as failures.
    meta = result.asset_materializations_for_node("base_llm_predictions")[0].metadata
    assert meta["parse_failure_rate"].value == pytest.approx(1 - predictions["valid"].mean())
    invalid = predictions[~predictions["valid"]]
    assert (invalid["reward"] == invalid["reward"].min()).all()
    assert (invalid["errors"].str.len() > 0).all()


def test_mcts_trajectories_search_gate_and_resume(reasoning_run, experts_run):
    from definitions import all_assets

    _, lineage = experts_run
    *_, home, resources = reasoning_run
    config = {
        "max_patients": 4,
        "n_simulations": 2,
        "branching": 2,
        "max_depth": 1,
        "step_max_new_tokens": 6,
        "rollout_max_new_tokens": 10,
        "batch_patients": 2,
        "sampling_patients": 2,  # best-of-N sampling on a seeded half of the searched patients
        "guided": False,  # unguided, the random model writes nothing parseable: the gate's case
    }

    def run():
        return materialize(
            all_assets,
            selection=AssetSelection.assets("mcts_trajectories"),
            partition_key=PARTITION,
            resources=resources,
            instance=lineage["instance"],
            run_config={"ops": {"mcts_trajectories": {"config": config}}},
            raise_on_error=False,
        )

    first = run()
    meta = first.asset_materializations_for_node("mcts_trajectories")[0].metadata
    assert meta["patients_searched"].value == 4
    assert meta["tree_nodes_mean"].value > 1
    checks = {c.check_name: c for c in first.get_asset_check_evaluations()}
    assert set(checks) == {
        "trajectories_parse",
        "trajectories_kept_minimum",
        "trajectories_balanced",
        "search_beats_sampling",
    }
    # A random tiny model writes nothing parseable: the gate must say so, blocking SFT.
    assert meta["trajectories_kept"].value == 0
    assert not checks["trajectories_kept_minimum"].passed
    assert "larger base model" in checks["trajectories_kept_minimum"].metadata["note"].value
    assert not checks["search_beats_sampling"].passed  # nothing right on either side
    assert meta["sampling_generated_tokens"].value > 0
    compared = checks["search_beats_sampling"].metadata
    assert compared["compared_patients"].value == 2 and compared["searched_patients"].value == 4
    out = home / "artifacts" / "mcts_trajectories" / PARTITION
    (checkpoint,) = out.glob("search-*.jsonl")
    lines = checkpoint.read_text().splitlines()
    assert len(lines) == 4

    second = run()  # resumes: every patient is in the checkpoint, nothing is searched again
    assert checkpoint.read_text().splitlines() == lines
    assert (
        second.asset_materializations_for_node("mcts_trajectories")[0]
        .metadata["patients_searched"]
        .value
        == 4
    )

    # A second search for the patients without a right answer (all four here): its own
    # checkpoint; the first search is reused, not redone (its key leaves the retry out).
    config["retry_simulations"] = 1
    third = run()
    meta = third.asset_materializations_for_node("mcts_trajectories")[0].metadata
    retried = meta["patients_retried_by_class"].value
    assert sum(retried.values()) == 4 and retried == meta["patients_searched_by_class"].value
    assert list(out.glob("search-*.jsonl")) == [checkpoint]
    assert checkpoint.read_text().splitlines() == lines
    (retry,) = out.glob("retry-*.jsonl")
    assert len(retry.read_text().splitlines()) == 4
    assert meta["valid_complete_responses"].value == 0  # the random model, still unparseable
