"""MCTS on a deterministic fake proposer (best path, depth, budget, lockstep, resume) and the
Hugging Face proposer on a tiny random model (batched expand, stop strings, KV prefix reuse)."""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from eagrl_pipeline.mcts import (
    FINAL_PREFIX,
    MCTSConfig,
    NodeState,
    PatientTask,
    ScoredResponse,
    SearchResult,
    Trajectory,
    TreeStats,
    compare_with_sampling,
    has_right_answer,
    load_checkpoint,
    pool_results,
    random_rollouts,
    run_search,
    run_search_resumable,
    select_trajectories,
    split_steps,
)

# ---- a fake policy whose best answer is known: steps A, B, then features "f1, f2" ----------


def step(label: str) -> str:
    return f"<Subquestion>{label}?</Subquestion><Answer>{label.lower()}</Answer>"


def final(features: str, p: float = 0.5) -> str:
    return (
        f"{FINAL_PREFIX}risk?</Final subquestion>"
        f"<Important Features>{features}</Important Features><Final answer>{p}</Final answer>"
    )


class FakeProposer:
    """Candidates are labelled steps; randomness depends only on (seed, patient, node)."""

    def __init__(self, fail_on: set[str] | None = None):
        self.expand_calls: list[list[NodeState]] = []
        self.rollout_calls: list[list[NodeState]] = []
        self.fail_on = fail_on or set()

    def _check(self, states: list[NodeState]) -> None:
        if any(s.patient_key in self.fail_on for s in states):
            raise RuntimeError("simulated crash")

    def expand(self, states: list[NodeState], k: int, rng_seed: int) -> list[list[str]]:
        self._check(states)
        self.expand_calls.append(states)
        out = []
        for s in states:
            if s.force_final:
                out.append([final(f) for f in ["f3", "f1, f2", "f4", "f5"][:k]])
            else:  # k-1 steps and one (poor) early final block
                out.append([step(c) for c in "ABCDE"[: k - 1]] + [final("f9")])
        return out

    def rollout(self, states: list[NodeState], rng_seed: int) -> list[str]:
        self._check(states)
        self.rollout_calls.append(states)
        out = []
        for s in states:
            rng = random.Random(f"{rng_seed}|{s.patient_key}|{s.steps_text}")
            p = round(rng.random(), 2)
            out.append(final("f3", p) if s.force_final else step("Z") + final("f3", p))
        return out

    def seen_keys(self) -> set[str]:
        return {s.patient_key for call in self.expand_calls + self.rollout_calls for s in call}


class FakeScorer:
    def __init__(self) -> None:
        self.calls = 0

    def score(self, patient_key: str, full_response_text: str) -> ScoredResponse:
        self.calls += 1
        labels = re.findall(r"<Subquestion>(\w+)\?", full_response_text)
        feats = re.search(r"<Important Features>(.*?)</Important Features>", full_response_text)
        prob = re.search(r"<Final answer>([\d.]+)</Final answer>", full_response_text)
        parts = {
            "first_a": 0.2 * (labels[:1] == ["A"]),
            "then_b": 0.2 * (labels[:2] == ["A", "B"]),
            "features": 0.5 * (labels == ["A", "B"] and bool(feats) and feats[1] == "f1, f2"),
            "noise": 0.01 * float(prob[1]) if prob else 0.0,
        }
        probability = float(prob[1]) if prob else None
        return ScoredResponse(sum(parts.values()), parts, prob is not None, probability)


BEST = step("A") + step("B") + final("f1, f2")
PATIENTS = [PatientTask(f"p{i}", f"prompt {i}") for i in range(6)]


def test_split_steps() -> None:
    steps, fin = split_steps(" " + step("A") + "\n" + step("B") + final("x"))
    assert steps == [step("A"), step("B")] and fin == final("x")
    assert split_steps(step("A")) == ([step("A")], "")


def test_finds_known_best_path_and_respects_depth_and_budget() -> None:
    config = MCTSConfig(n_simulations=30, branching=3, max_depth=2)
    proposer, scorer = FakeProposer(), FakeScorer()
    [result] = run_search(PATIENTS[:1], proposer, scorer, config)
    best = result.trajectories[0]
    assert best.text == BEST and best.steps == [step("A"), step("B")] and best.depth == 2
    assert result.best_reward == pytest.approx(0.905) and best.parts["features"] == 0.5
    assert all(t.depth <= config.max_depth for t in result.trajectories)
    stats = result.stats
    assert stats.simulations == config.n_simulations
    assert stats.max_depth_reached <= config.max_depth
    assert scorer.calls == stats.scorer_calls <= config.n_simulations * config.rollouts_per_leaf
    assert stats.rollout_requests == sum(len(c) for c in proposer.rollout_calls)
    assert stats.expand_requests == sum(len(c) for c in proposer.expand_calls)
    assert stats.expand_requests + stats.rollout_requests <= 2 * config.n_simulations
    assert all(s.depth <= config.max_depth for c in proposer.expand_calls for s in c)
    assert all(
        s.force_final == (s.depth == config.max_depth) for c in proposer.expand_calls for s in c
    )


def test_too_few_simulations_cannot_reach_depth() -> None:
    config = MCTSConfig(n_simulations=2, branching=3, max_depth=2, rollouts_per_leaf=2)
    [result] = run_search(PATIENTS[:1], FakeProposer(), FakeScorer(), config)
    assert result.stats.max_depth_reached <= 1 and result.best_reward < 0.9
    assert result.stats.rollout_requests <= 2 * 2


@pytest.mark.parametrize("siblings", [False, True])
def test_lockstep_one_call_per_wave_and_determinism(siblings: bool) -> None:
    config = MCTSConfig(n_simulations=12, branching=3, max_depth=2, seed=3,
                        simulate_siblings=siblings)  # fmt: skip
    proposer = FakeProposer()
    results = run_search(PATIENTS[:4], proposer, FakeScorer(), config)
    assert len(proposer.expand_calls) <= config.n_simulations
    assert len(proposer.rollout_calls) <= config.n_simulations
    assert max(len(c) for c in proposer.expand_calls) == 4  # all trees share a wave's call
    # one rollout per tree and wave, or a fresh expansion's k - 1 unfinished steps at once
    assert max(len(c) for c in proposer.rollout_calls) == (8 if siblings else 4)
    assert all(r.stats.simulations == 12 for r in results)
    assert [r.patient_key for r in results] == ["p0", "p1", "p2", "p3"]
    again = run_search(PATIENTS[:4], FakeProposer(), FakeScorer(), config)
    assert [r.to_dict() for r in again] == [r.to_dict() for r in results]
    other = run_search(PATIENTS[:4], FakeProposer(), FakeScorer(),
                       MCTSConfig(12, 3, 2, seed=4, simulate_siblings=siblings))  # fmt: skip
    assert [r.to_dict() for r in other] != [r.to_dict() for r in results]


def test_siblings_are_simulated_in_one_wave_within_the_budget() -> None:
    """A fresh expansion's children are all simulated in its wave, but never past the budget;
    on a one-level tree this is the same search as one child per wave, in fewer waves."""
    config = MCTSConfig(n_simulations=2, branching=3, max_depth=1)
    proposer = FakeProposer()
    [capped] = run_search(PATIENTS[:1], proposer, FakeScorer(), config)
    assert capped.stats.simulations == 2 and len(proposer.expand_calls) == 1
    assert [len(c) for c in proposer.rollout_calls] == [2]  # children A and B, not the final
    config = MCTSConfig(n_simulations=3, branching=3, max_depth=1)
    one_by_one = FakeProposer()
    [plain] = run_search(PATIENTS[:1], one_by_one, FakeScorer(),
                         replace(config, simulate_siblings=False))  # fmt: skip
    together = FakeProposer()
    [batched] = run_search(PATIENTS[:1], together, FakeScorer(), config)
    assert len(together.rollout_calls) == 1 < len(one_by_one.rollout_calls) == 2
    # the same nodes simulated (a rollout's sampled probability depends on its wave's seed)
    visited = {(t.source, tuple(t.steps)) for t in batched.trajectories}
    assert visited == {(t.source, tuple(t.steps)) for t in plain.trajectories}
    assert len(visited) == 3
    assert batched.stats.simulations == plain.stats.simulations == 3


def test_resume_skips_finished_patients_and_matches_uninterrupted(tmp_path: Path) -> None:
    config = MCTSConfig(n_simulations=8, branching=3, max_depth=2)
    reference = run_search_resumable(
        PATIENTS,
        FakeProposer(),
        FakeScorer(),
        config,
        checkpoint_path=tmp_path / "ref.jsonl",
        batch_patients=2,
    )
    path = tmp_path / "run.jsonl"
    with pytest.raises(RuntimeError, match="simulated crash"):  # dies in the third chunk
        run_search_resumable(
            PATIENTS,
            FakeProposer(fail_on={"p4"}),
            FakeScorer(),
            config,
            checkpoint_path=path,
            batch_patients=2,
        )
    assert sorted(load_checkpoint(path)) == ["p0", "p1", "p2", "p3"]
    proposer = FakeProposer()
    resumed = run_search_resumable(
        PATIENTS, proposer, FakeScorer(), config, checkpoint_path=path, batch_patients=2
    )
    assert proposer.seen_keys() == {"p4", "p5"}
    assert [r.to_dict() for r in resumed] == [r.to_dict() for r in reference]
    lines = path.read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(line) for line in lines)


def test_truncated_last_line_is_ignored(tmp_path: Path) -> None:
    config = MCTSConfig(n_simulations=4, branching=2, max_depth=1)
    path = tmp_path / "ckpt.jsonl"
    run_search_resumable(PATIENTS[:2], FakeProposer(), FakeScorer(), config, checkpoint_path=path)
    whole = path.read_bytes()
    path.write_bytes(whole + whole.splitlines(keepends=True)[0][:40])  # a crash mid-write
    assert sorted(load_checkpoint(path)) == ["p0", "p1"]
    proposer = FakeProposer()
    results = run_search_resumable(
        PATIENTS[:3], proposer, FakeScorer(), config, checkpoint_path=path
    )
    assert proposer.seen_keys() == {"p2"} and len(results) == 3
    assert [json.loads(x)["patient_key"] for x in path.read_text().splitlines()] == [
        "p0",
        "p1",
        "p2",
    ]


def _result(
    key: str, rewards: list[float], valid: bool = True, probability: float | None = None
) -> SearchResult:
    """Trajectories with these rewards; their answer is ``probability`` (default: right for the
    key's class, 0.8 for "pos", 0.2 for "neg")."""
    p = probability if probability is not None else (0.8 if key.startswith("pos") else 0.2)
    trajs = [Trajectory(f"{key}-{r}", [], "", r, {"r": r}, valid, 1, "rollout", p) for r in rewards]
    stats = TreeStats(1, 1, 1, 1, 1, 1, len(trajs), None, None)
    return SearchResult(key, trajs, max(rewards, default=None), stats)


def test_select_trajectories_top_k_threshold_and_balance() -> None:
    results = [
        _result("pos1", [0.9, 0.8, 0.1]),
        _result("pos2", [0.7, 0.6]),
        _result("pos3", [0.95], valid=False),
        _result("neg1", [0.5, 0.4]),
        _result("neg2", [0.05]),
    ]
    labels = {"pos1": 1, "pos2": 1, "pos3": 1, "neg1": 0, "neg2": 0}
    records = select_trajectories(results, labels, top_k=2, min_reward=0.3)
    assert [(r["patient_key"], r["reward"]) for r in records] == [
        ("pos1", 0.9),
        ("pos2", 0.7),
        ("neg1", 0.5),
        ("neg1", 0.4),
    ]  # positives capped at 2 by rank: each patient's best first
    assert json.loads(json.dumps(records)) == records
    capped = select_trajectories(results, labels, top_k=2, min_reward=0.3, target_per_class=3)
    assert sum(r["label"] for r in capped) == 3 and len(capped) == 5


@pytest.mark.parametrize("margin", [0.0, 0.1])
def test_a_wrong_side_trajectory_is_never_kept(margin: float) -> None:
    """Parseable, high-reward, but on the wrong side of 0.5 (or inside the margin): dropped,
    whatever its reward; a lower-reward right answer of the same patient is kept instead."""
    wrong_pos = _result("pos1", [5.0], probability=0.3)
    right_pos = _result("pos1", [0.2], probability=0.9)
    both = SearchResult("pos1", wrong_pos.trajectories + right_pos.trajectories, 5.0,
                        wrong_pos.stats)  # fmt: skip
    near_neg = _result("neg1", [4.0], probability=0.45)
    far_neg = _result("neg2", [0.1], probability=0.1)
    exactly_half = _result("neg3", [3.0], probability=0.5)
    unreadable = _result("pos2", [3.0], probability=None)
    unreadable = replace(
        unreadable, trajectories=[replace(t, probability=None) for t in unreadable.trajectories]
    )
    labels = {"pos1": 1, "pos2": 1, "neg1": 0, "neg2": 0, "neg3": 0}
    records = select_trajectories(
        [both, near_neg, far_neg, exactly_half, unreadable], labels, top_k=1,
        min_reward=-10.0, target_per_class=10, margin=margin,
    )  # fmt: skip
    kept = {(r["patient_key"], r["probability"]) for r in records}
    expected = {("pos1", 0.9), ("neg2", 0.1)} | ({("neg1", 0.45)} if margin == 0.0 else set())
    assert kept == expected
    for r in records:
        assert (
            (r["probability"] > 0.5 + margin) if r["label"] else (r["probability"] < 0.5 - margin)
        )


def test_a_second_search_is_pooled_with_the_first() -> None:
    """A patient searched again: both searches' trajectories, in order, the better best
    reward, statistics added (simulation-weighted means); a right answer found only by the
    second search makes the pooled patient keepable."""
    wrong = _result("pos1", [0.4, 0.3], probability=0.2)
    wrong = replace(wrong, stats=replace(wrong.stats, simulations=2, mean_rollout_reward=0.0))
    right = _result("pos1", [0.1], probability=0.9)
    right = replace(right, stats=replace(right.stats, simulations=6, mean_rollout_reward=1.0))
    assert not has_right_answer(wrong, 1) and has_right_answer(right, 1)
    assert not has_right_answer(right, 1, margin=0.45)
    pooled = pool_results(wrong, right)
    assert [t.reward for t in pooled.trajectories] == [0.4, 0.3, 0.1]
    assert pooled.best_reward == 0.4 and pooled.stats.simulations == 8
    assert pooled.stats.complete_responses == 3
    assert pooled.stats.mean_rollout_reward == pytest.approx(0.75)
    assert has_right_answer(pooled, 1)
    records = select_trajectories([pooled], {"pos1": 1}, top_k=1, min_reward=-1.0,
                                  target_per_class=1)  # fmt: skip
    assert [(r["reward"], r["probability"]) for r in records] == [(0.1, 0.9)]
    with pytest.raises(ValueError, match="pooling"):
        pool_results(wrong, _result("pos2", [0.1]))


def test_search_beats_best_of_n_sampling_at_equal_budget() -> None:
    """Sampling gets as many rollouts per patient as the search scored trajectories; the known
    best path (steps A, B) is out of reach of plain rollouts, so the search wins in each class."""
    config = MCTSConfig(n_simulations=20, branching=3, max_depth=2)
    results = run_search(PATIENTS[:4], FakeProposer(), FakeScorer(), config)
    budget = {r.patient_key: r.stats.complete_responses for r in results}
    proposer = FakeProposer()
    sampled = random_rollouts(PATIENTS[:4], proposer, FakeScorer(), budget, seed=0, max_depth=2)
    assert {k: len(v) for k, v in sampled.items()} == budget
    assert all(s.max_depth == 2 for call in proposer.rollout_calls for s in call)
    labels = {"p0": 1, "p1": 0, "p2": 1, "p3": 0}
    comparison = compare_with_sampling(results, sampled, labels)
    assert set(comparison) == {0, 1}
    for row in comparison.values():
        assert row.patients == 2
        assert row.search_mean_best_reward > row.sampling_mean_best_reward
        assert row.search_wins


def test_guided_rollouts_never_write_past_the_tree_depth() -> None:
    assert NodeState("p", "q", "", depth=1, max_depth=3).steps_left == 2
    assert NodeState("p", "q", "", depth=3, max_depth=3).steps_left == 0
    assert NodeState("p", "q", "").steps_left is None


# ---- the Hugging Face proposer on a tiny random model --------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    from eagrl_pipeline.llm import build_tiny_qwen2, load_model

    path = build_tiny_qwen2(tmp_path_factory.mktemp("tiny_mcts"))
    return load_model(path, device="cpu", dtype="fp32")


def _prompt(i: int) -> str:
    return f"Patient {i}: " + " ".join(
        f"- Lymphocyte count (Unit: 10^9/L. Reference range: 1.1-3.2): [0.{i}{j}, NaN]"
        for j in range(4 + i)
    )


def _proposer(tiny, **kwargs):
    from eagrl_pipeline.mcts.hf_proposer import HFProposer, HFProposerConfig

    model, tokenizer = tiny
    return HFProposer(model, tokenizer, HFProposerConfig(**kwargs))


@pytest.fixture
def answer_bias(tiny):
    """Make the random model emit ``</Answer>`` often, so stop strings actually fire."""
    model, tokenizer = tiny
    bias = torch.zeros(model.config.vocab_size)
    bias[tokenizer.convert_tokens_to_ids("</Answer>")] = 4.0
    handle = model.lm_head.register_forward_hook(lambda _m, _i, out: out + bias)
    yield
    handle.remove()


def test_hf_expand_batches_cuts_at_stop_and_forces_final(tiny, answer_bias) -> None:
    proposer = _proposer(tiny, step_max_new_tokens=24, max_batch_rows=64)
    states = [
        NodeState("a", _prompt(1), ""),
        NodeState("b", _prompt(2), step("A")),
        NodeState("c", _prompt(3), step("A"), force_final=True, depth=1),
    ]
    out = proposer.expand(states, 4, rng_seed=0)
    assert proposer.counters.generate_calls == 1 and [len(c) for c in out] == [4, 4, 4]
    free = [c for cands in out[:2] for c in cands]
    assert all(c.endswith("</Answer>") == ("</Answer>" in c) for c in free)  # cut at the stop
    assert any(c.endswith("</Answer>") for c in free)
    assert all(c.startswith(FINAL_PREFIX) for c in out[2])
    assert any("</Answer>" in c and not c.endswith("</Answer>") for c in out[2])  # not cut there


def test_hf_prefix_cache_matches_plain_generation(tiny) -> None:
    states = [NodeState(k, _prompt(i), "") for i, k in enumerate("abc")]
    forced = [NodeState("a", _prompt(0), step("A"), force_final=True, depth=1)]
    outputs = {}
    for mode in ("off", "prompt", "nodes"):
        proposer = _proposer(
            tiny, prefix_cache=mode, rollout_do_sample=False, rollout_max_new_tokens=12,
            step_max_new_tokens=8,
        )  # fmt: skip
        outputs[mode] = (
            proposer.rollout(states, 0),
            proposer.rollout(forced, 0),
            proposer.expand(states, 2, 5),
        )
        assert proposer.reuse_blocked is None
    assert outputs["off"] == outputs["prompt"] == outputs["nodes"]
    assert all(t.startswith(FINAL_PREFIX) for t in outputs["off"][1])


SYSTEM = "You are a careful doctor. " + " ".join(f"Rule {i}: read every value." for i in range(12))


def test_hf_shared_system_prefix_is_read_once_and_changes_nothing(tiny) -> None:
    """Rows sharing a long system message attend to its KV once (cascade); same text."""
    system = {"role": "system", "content": SYSTEM}
    states = [
        NodeState(k, [system, {"role": "user", "content": _prompt(i)}], "")
        for i, k in enumerate("abc")
    ]
    outputs, counters = {}, {}
    for name, kwargs in (
        ("plain", {"prefix_cache": "off"}),
        ("cached", {"shared_prefix_attention": False}),
        ("cascade", {"min_shared_tokens": 8}),
    ):
        proposer = _proposer(
            tiny, rollout_do_sample=False, rollout_max_new_tokens=12, step_max_new_tokens=8,
            **kwargs,
        )  # fmt: skip
        first = proposer.expand(states, 2, 5)
        children = [
            NodeState(s.patient_key, s.prompt, cands[0], depth=1)
            for s, cands in zip(states, first, strict=True)
        ]
        outputs[name] = (first, proposer.rollout(children, 1), proposer.rollout(states, 2))
        counters[name] = proposer.counters
    assert outputs["cached"] == outputs["cascade"]
    # plain generation re-tokenizes a child's text, which for this random model's byte soup
    # need not give back the sampled tokens: compare it where no generated text is re-read
    assert outputs["plain"][::2] == outputs["cached"][::2]
    assert counters["cached"].shared_prefix_calls == 0
    assert counters["cascade"].shared_prefix_calls == 3
    assert counters["cascade"].prefill_tokens == counters["cached"].prefill_tokens


def test_hf_node_cache_holds_the_right_kv(tiny) -> None:
    model, _ = tiny
    proposer = _proposer(tiny, step_max_new_tokens=12, rollout_max_new_tokens=4)
    root = NodeState("a", _prompt(2), "")
    [cands] = proposer.expand([root], 3, rng_seed=1)
    entries = proposer._node_entries["a"]
    assert entries and all(cands[i].startswith(e.response_prefix) for i, e in enumerate(entries))
    for entry in entries:
        fresh = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([entry.tokens]), cache=fresh, use_cache=True)
        got = [
            (torch.zeros_like(layer.keys), torch.zeros_like(layer.values)) for layer in fresh.layers
        ]
        entry.write_into(got, 0, 0, len(entry.tokens))
        for (k, v), layer in zip(got, fresh.layers, strict=True):
            torch.testing.assert_close(k, layer.keys, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(v, layer.values, atol=1e-4, rtol=1e-4)
    child = NodeState("a", root.prompt, cands[0], depth=1)
    before = proposer.counters.prefill_tokens
    proposer.rollout([child], 0)
    # only the uncached tail is read: the last token, or a few where a token straddled the cut
    assert proposer.counters.prefill_tokens - before <= 4


def test_hf_search_prefill_per_unique_prompt_token(tiny) -> None:
    proposer = _proposer(tiny, step_max_new_tokens=10, rollout_max_new_tokens=16)
    patients = [PatientTask(f"p{i}", _prompt(i)) for i in range(3)]
    config = MCTSConfig(n_simulations=4, branching=2, max_depth=2)
    results = run_search(patients, proposer, FakeScorer(), config)
    c = proposer.counters
    assert len(results) == 3 and all(r.stats.simulations == 4 for r in results)
    assert c.generate_calls <= 2 * config.n_simulations
    assert c.prefill_per_unique_prompt_token <= 1.5, c
    assert not proposer._node_entries and not proposer._prompt_entries  # released at the end
    plain = _proposer(tiny, prefix_cache="off", step_max_new_tokens=10, rollout_max_new_tokens=16)
    run_search(patients, plain, FakeScorer(), config)
    assert plain.counters.prefill_per_unique_prompt_token > 3 * c.prefill_per_unique_prompt_token


def test_the_search_shows_a_progress_bar_over_patients_unless_turned_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """On the process's own stderr (fd 2): Dagster captures a step's sys.stderr."""
    config = MCTSConfig(n_simulations=2, branching=2, max_depth=1)
    monkeypatch.setenv("EAGRL_PROGRESS", "1")
    run_search_resumable(
        PATIENTS, FakeProposer(), FakeScorer(), config, checkpoint_path=tmp_path / "a.jsonl"
    )
    err = capfd.readouterr().err
    assert "MCTS:" in err and "/6 " in err and "patient" in err
    monkeypatch.setenv("EAGRL_PROGRESS", "0")
    run_search_resumable(
        PATIENTS, FakeProposer(), FakeScorer(), config, checkpoint_path=tmp_path / "b.jsonl"
    )
    assert "MCTS" not in capfd.readouterr().err
