"""Guided decoding: a random tiny model writes the tagged format because the tags are forced,
while the words inside them stay its own samples, within each tag's token cap."""

from __future__ import annotations

import re

import pytest

from eagrl_pipeline.llm.guided import CLOSE, OPEN, ResponseScaffold, ScaffoldConfig
from eagrl_pipeline.mcts.search import FINAL_PREFIX, NodeState, is_terminal, split_steps

ORDER = ("sub", "ans", "fsub", "feat", "final")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    from eagrl_pipeline.llm import build_tiny_qwen2, load_model

    return load_model(build_tiny_qwen2(tmp_path_factory.mktemp("tiny_guided")), "cpu", "fp32")


def _segments(text: str) -> list[tuple[str, str]]:
    """(segment, content) in the order the tags appear."""
    pattern = "|".join(re.escape(OPEN[s]) for s in ORDER)
    out = []
    for match in re.finditer(pattern, text):
        segment = next(s for s in ORDER if OPEN[s] == match.group(0))
        end = text.find(CLOSE[segment], match.end())
        assert end >= 0, f"{segment} never closed in {text!r}"
        out.append((segment, text[match.end() : end]))
    return out


@pytest.mark.parametrize("steps", [0, 2])
def test_answers_follow_the_format_within_caps(tiny, steps: int) -> None:
    from eagrl_pipeline.llm.generation import generate_batch

    model, tokenizer = tiny
    config = ScaffoldConfig(subquestion_tokens=5, answer_tokens=6, features_tokens=7)
    scaffold = ResponseScaffold(tokenizer, config)
    prompts = [f"Patient {i}: Lymphocyte count [0.{i}5, NaN]. Predict." for i in range(4)]
    results = generate_batch(
        model, tokenizer, prompts, max_new_tokens=200, do_sample=True, seed=3,
        batch_size=4, scaffold=scaffold, scaffold_steps=steps,
    )  # fmt: skip
    for result in results:
        text = result.text
        assert result.finished, f"row did not end after the final answer: {text!r}"
        assert text.endswith("</Final answer>")
        segments = _segments(text)
        assert [s for s, _ in segments] == ["sub", "ans"] * steps + ["fsub", "feat", "final"]
        assert len(split_steps(text)[0]) == steps
        assert all("<" not in content for _, content in segments), "a stray tag in a segment"
        final = segments[-1][1]
        assert re.fullmatch(r"[ 0-9.%]*", final), f"non-numeric final answer {final!r}"


def test_token_caps_close_long_segments(tiny) -> None:
    """Counted on token ids (the tiny tokenizer has each tag as one token): a segment holds at
    most its cap, plus the space token a forced closing tag may bring."""
    import torch
    from transformers import LogitsProcessorList

    from eagrl_pipeline.llm.guided import RowPlan

    model, tokenizer = tiny
    config = ScaffoldConfig(subquestion_tokens=3, answer_tokens=4, final_subquestion_tokens=5)
    scaffold = ResponseScaffold(tokenizer, config)
    ids = tokenizer(["Patient: predict."] * 3, return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(
        **ids, max_new_tokens=120, do_sample=True, pad_token_id=tokenizer.pad_token_id,
        logits_processor=LogitsProcessorList([scaffold.processor([RowPlan("answer", 1)] * 3)]),
    )  # fmt: skip
    tag_ids = {tokenizer.convert_tokens_to_ids(OPEN[s]): s for s in ORDER}
    close_ids = {tokenizer.convert_tokens_to_ids(CLOSE[s]) for s in ORDER}
    for row in out[:, ids["input_ids"].shape[1] :].tolist():
        segment, n = None, 0
        seen = []
        for token in row:
            if token in tag_ids:
                segment, n = tag_ids[token], 0
                seen.append(segment)
            elif token in close_ids:
                assert n <= config.cap(segment) + 1, (segment, n)
                segment = None
            elif segment is not None:
                n += 1
        assert seen == ["sub", "ans", "fsub", "feat", "final"]


def test_words_are_sampled_not_forced(tiny) -> None:
    """Different seeds give different contents: only the tags are fixed."""
    from eagrl_pipeline.llm.generation import generate_batch

    model, tokenizer = tiny
    scaffold = ResponseScaffold(tokenizer)
    texts = {
        generate_batch(
            model,
            tokenizer,
            ["Patient: predict."],
            max_new_tokens=200,
            do_sample=True,
            seed=seed,
            scaffold=scaffold,
        )[0].text
        for seed in range(4)
    }
    assert len(texts) > 1


def test_guided_proposer_expands_one_step_and_finishes(tiny) -> None:
    from eagrl_pipeline.mcts.hf_proposer import HFProposer, HFProposerConfig

    model, tokenizer = tiny
    proposer = HFProposer(model, tokenizer, HFProposerConfig(guided=True, step_max_new_tokens=200))
    prompt = "Patient 1: Lymphocyte count [0.5, NaN]. Predict."
    root = NodeState("p1", prompt, "")
    steps = proposer.expand([root], 3, rng_seed=0)[0]
    for step in steps:
        assert step.startswith(OPEN["sub"]) and step.endswith(CLOSE["ans"])
        assert len(split_steps(step)[0]) == 1 and not is_terminal(step)
    child = NodeState("p1", prompt, steps[0], force_final=True, depth=1)
    finals = proposer.expand([child], 2, rng_seed=1)[0]
    for final in finals:
        assert final.startswith(FINAL_PREFIX) and is_terminal(final)
        assert [s for s, _ in _segments(final)] == ["fsub", "feat", "final"]
    rollout = proposer.rollout([NodeState("p1", prompt, steps[0], depth=1)], rng_seed=2)[0]
    assert rollout.startswith("\n" + OPEN["fsub"]) and is_terminal(rollout)
