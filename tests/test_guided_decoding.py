"""Guided decoding: a random tiny model writes the tagged format because the tags are forced,
while the words inside them stay its own samples, within each tag's token cap."""

from __future__ import annotations

import re
from dataclasses import replace

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
        # After the forced "0." only digits: a '%' made "0.9%" read 0.009 (real TJH answers).
        assert re.fullmatch(r" 0\.[ 0-9]*", final), f"not a decimal probability {final!r}"


@pytest.mark.parametrize(("plan", "shape"), [("direct", ["final"]), ("think", ["think", "final"])])
def test_prompting_baselines_answer_in_their_own_shape(tiny, plan: str, shape: list[str]) -> None:
    """The baselines: only the final answer (vanilla), or one free reasoning block within its
    cap and then the answer (think-then-answer); the answer's distribution is read as for the
    tagged format."""
    from eagrl_pipeline.llm.generation import generate_batch

    model, tokenizer = tiny
    scaffold = ResponseScaffold(tokenizer, ScaffoldConfig(reasoning_tokens=3))
    prompts = [f"Patient {i}: Lymphocyte count [0.{i}5, NaN]. Predict." for i in range(3)]
    results = generate_batch(
        model, tokenizer, prompts, max_new_tokens=80, do_sample=True, seed=5,
        batch_size=3, scaffold=scaffold, scaffold_plan=plan,
    )  # fmt: skip
    for result in results:
        text = result.text
        assert result.finished and text.endswith("</Final answer>"), text
        order = ("think", *ORDER)
        pattern = "|".join(re.escape(OPEN[s]) for s in order)
        found = [next(s for s in order if OPEN[s] == m) for m in re.findall(pattern, text)]
        assert found == shape, text
        assert re.search(r"<Final answer> 0\.[ 0-9]*</Final answer>$", text), text
        assert result.answer_expectation is not None and 0 < result.answer_expectation < 1
        if plan == "think":
            inside = text[text.index(OPEN["think"]) + len(OPEN["think"]) : text.index("</Reas")]
            assert "<" not in inside
            # 3 tokens and a forced close; decoded bytes may re-tokenize into a few more, but
            # far fewer than the 80 new tokens the row could have spent reasoning.
            assert len(tokenizer(inside, add_special_tokens=False)["input_ids"]) <= 3 + 4


def test_final_answer_slot_bans_percent_and_a_second_point_after_the_forced_decimal(tiny) -> None:
    _, tokenizer = tiny
    token = {t: tokenizer.convert_tokens_to_ids(t) for t in ("%", ".", "9")}
    decimal = ResponseScaffold(tokenizer).banned["final"]
    assert decimal[token["%"]] and decimal[token["."]] and not decimal[token["9"]]
    free = ResponseScaffold(tokenizer, ScaffoldConfig(answer_prefix="")).banned["final"]
    assert not free[token["%"]] and not free[token["."]] and not free[token["9"]]
    # A newline is no digit ("$" in the token patterns once let "0.6\n64" through).
    scaffold = ResponseScaffold(tokenizer)
    newlines = [i for i, t in enumerate(scaffold.token_text) if t.endswith("\n")]
    assert newlines and all(decimal[i] and free[i] for i in newlines)
    assert not set(newlines) & set(scaffold.digit_ids.tolist())


def test_step_digits_off_leaves_the_final_answer_the_only_number(tiny) -> None:
    """With ``step_digits`` off no step writes a digit (a greedy step probability, or a value in
    (0, 1) copied from the prompt, can no longer be the answer the final one copies), while the
    final answer still does; on, the same seeds write digits in the steps."""
    from eagrl_pipeline.llm.generation import generate_batch

    model, tokenizer = tiny
    prompts = [f"Patient {i}: INR [0.9{i}], D-dimer [1{i}.5]. Predict." for i in range(6)]

    def step_text(step_digits: bool) -> list[tuple[str, str]]:
        config = ScaffoldConfig(subquestion_tokens=12, answer_tokens=12, step_digits=step_digits)
        results = generate_batch(
            model, tokenizer, prompts, max_new_tokens=200, do_sample=True, seed=5,
            batch_size=6, scaffold=ResponseScaffold(tokenizer, config), scaffold_steps=2,
        )  # fmt: skip
        return [seg for result in results for seg in _segments(result.text)]

    free = step_text(True)
    assert any(re.search(r"[0-9]", c) for s, c in free if s in ("sub", "ans")), "nothing to ban"
    banned = step_text(False)
    assert [s for s, _ in banned].count("ans") == 12
    for segment, content in banned:
        if segment == "final":
            assert re.fullmatch(r" 0\.[ 0-9]*[0-9][ 0-9]*", content), content
        elif segment != "feat":  # feature names may hold digits ("Interleukin 2 receptor")
            assert not re.search(r"[0-9]", content), (segment, content)
    scaffold = ResponseScaffold(tokenizer, ScaffoldConfig(step_digits=False))
    nine = tokenizer.convert_tokens_to_ids("9")
    assert all(scaffold.banned[s][nine] for s in ("sub", "ans", "fsub", "think"))
    assert not scaffold.banned["final"][nine]
    assert not ResponseScaffold(tokenizer).banned["ans"][nine]


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
    prefix_ids = tokenizer(" " + config.answer_prefix, add_special_tokens=False)["input_ids"]
    close_ids = {tokenizer.convert_tokens_to_ids(CLOSE[s]) for s in ORDER}
    for row in out[:, ids["input_ids"].shape[1] :].tolist():
        segment, n = None, 0
        seen = []
        for token in row:
            if token in tag_ids:
                segment, n = tag_ids[token], 0
                seen.append(segment)
            elif token in close_ids:
                forced = len(prefix_ids) if segment == "final" else 0  # the forced " 0."
                assert n <= config.cap(segment) + 1 + forced, (segment, n)
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


def test_answer_expectation_is_the_digit_distributions_mean(tiny) -> None:
    """After the forced "0.", the processor records sum_d P(d) * (d + 0.5) / 10 over the digit
    tokens: checked against the model's own logits at that position, recomputed."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    from eagrl_pipeline.llm.generation import generate_batch
    from eagrl_pipeline.llm.guided import RowPlan

    model, tokenizer = tiny
    scaffold = ResponseScaffold(tokenizer, ScaffoldConfig(answer_tokens=3, features_tokens=3))
    processor = scaffold.processor([RowPlan("answer", 1)])
    seen: list[torch.Tensor] = []

    class Watch(LogitsProcessor):
        """Keeps the input ids of the step where the expectation was read."""

        def __call__(self, input_ids, scores):
            if processor.answer_expectations[0] is not None and not seen:
                seen.append(input_ids[0].clone())
            return scores

    ids = tokenizer(["Patient 2: LDH [300]. Predict."], return_tensors="pt")
    model.generate(
        **ids, max_new_tokens=80, do_sample=False, pad_token_id=tokenizer.pad_token_id,
        logits_processor=LogitsProcessorList([processor, Watch()]),
    )  # fmt: skip
    (context,) = seen
    assert tokenizer.decode(context).endswith("<Final answer> 0.")
    with torch.no_grad():
        logits = model(context[None]).logits[0, -1].double()
    # Every all-digit token counts, at the midpoint of what the answer can still become.
    texts = [scaffold.token_text[i] for i in scaffold.digit_ids.tolist()]
    assert set(map(str, range(10))) <= set(texts)
    values = dict(zip(texts, scaffold.digit_values.tolist(), strict=True))
    assert values["8"] == pytest.approx(0.85) and values["0"] == pytest.approx(0.05)
    assert all(v == pytest.approx((int(t) + 0.5) / 10 ** len(t)) for t, v in values.items())
    probs = torch.softmax(logits, -1)[scaffold.digit_ids]
    expected = float((probs * scaffold.digit_values).sum() / probs.sum())
    assert processor.answer_expectations[0] == pytest.approx(expected, abs=1e-5)  # KV vs full

    batched = generate_batch(model, tokenizer, ["Patient 1: predict."] * 2, max_new_tokens=80,
                             scaffold=scaffold, scaffold_steps=1)  # fmt: skip
    assert all(0.0 < r.answer_expectation < 1.0 for r in batched)
    assert all(re.search(r"<Final answer> 0\.\d", r.text) for r in batched)
    unguided = generate_batch(model, tokenizer, ["Patient 1: predict."], max_new_tokens=5)
    assert unguided[0].answer_expectation is None


def test_features_slot_lists_only_names_the_prompt_shows(tiny) -> None:
    """With features_from_prompt, the random model can only list the prompt's feature names,
    each at most once and at most max_listed_features of them; which ones is its own sample."""
    from eagrl_pipeline.llm.generation import generate_batch
    from eagrl_pipeline.llm.guided import prompt_feature_names

    model, tokenizer = tiny
    names = ["Lymphocytes (%)", "Lactate dehydrogenase", "pH value", "Heart rate"]
    prompt = "Patient:\n- Sex: male\n" + "\n".join(
        f"- {n} (Unit: U. Reference range: 1-2): [0.5, NaN]" if i % 2 else f"- {n}: [7]"
        for i, n in enumerate(names)
    )
    assert prompt_feature_names(prompt) == tuple(names)
    config = ScaffoldConfig(max_listed_features=2, answer_tokens=3, subquestion_tokens=3)
    scaffold = ResponseScaffold(tokenizer, config)
    seen: set[tuple[str, ...]] = set()
    for seed in range(6):
        (result,) = generate_batch(model, tokenizer, [prompt], max_new_tokens=120,
                                   do_sample=True, seed=seed, scaffold=scaffold)  # fmt: skip
        listed = dict(_segments(result.text))["feat"]
        items = tuple(item.strip() for item in listed.split(","))
        assert set(items) <= set(names) and len(set(items)) == len(items) <= 2, listed
        seen.add(items)
    assert len(seen) > 1  # sampled, not forced
    free = ResponseScaffold(tokenizer, replace(config, features_from_prompt=False))
    texts = [
        dict(_segments(generate_batch(model, tokenizer, [prompt], max_new_tokens=120,
                                      do_sample=True, seed=s, scaffold=free)[0].text))["feat"]
        for s in range(3)
    ]  # fmt: skip
    assert any(not {i.strip() for i in t.split(",")} <= set(names) for t in texts)
