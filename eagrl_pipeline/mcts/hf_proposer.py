"""The MCTS proposer over a Hugging Face causal LM, with batched generation and KV prefix reuse.

Why prefix reuse: on long EHR prompts the prefill dominates, and every expansion and rollout
below a patient's root re-reads the same prompt. Here each prompt is prefilled once per search,
and (``prefix_cache="nodes"``) each expanded step keeps the KV of its own tokens as a delta on
its parent, so a later expansion or rollout from that node feeds only the tokens the cache
lacks (usually one). Rows of different patients are batched by left-padding the cached prefix
and middle-padding the uncached tail; positions come from the attention mask, so a padded row
computes what it would alone.

Decoding is bound by reading KV from memory on CPU, so a call's cache is laid out to read
little: the tokens every row starts with (the partition's system message: ~80 % of a prompt)
are held once and attended to by all rows together (``eagrl_pipeline.llm.cascade``), each row
keeps only its own tokens, and those are written straight into a ``KVArena`` that is reused
from call to call (fresh memory costs page faults at first touch).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import (
    DynamicCache,
    GenerationConfig,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
)

from eagrl_pipeline.llm.cascade import cascade_supported, shared_prefix_attention
from eagrl_pipeline.llm.generation import render_prompts, reuse_blocker, shared_prefix_length
from eagrl_pipeline.llm.guided import ResponseScaffold, ScaffoldConfig
from eagrl_pipeline.llm.kv_cache import KVArena, extend_cache, shared_prefix_cache
from eagrl_pipeline.llm.sampling import TopKTopPSampler
from eagrl_pipeline.mcts.search import FINAL_PREFIX, NodeState, is_terminal

STEP_STOPS = ("</Answer>",)
FINAL_STOPS = ("</Final answer>", "</Final Answer>")
PrefixCache = Literal["off", "prompt", "nodes"]
KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [kv_heads, tokens, dim]


@dataclass(frozen=True)
class HFProposerConfig:
    """Sampling and batching knobs; ``step_max_new_tokens`` caps one step or one final block."""

    step_max_new_tokens: int = 96
    rollout_max_new_tokens: int = 384
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 0
    rollout_do_sample: bool = True
    prefix_cache: PrefixCache = "nodes"
    max_cache_bytes: int = 2 * 2**30  # KV of node deltas kept at once (prompts always kept)
    max_batch_rows: int = 64
    shared_prefix_attention: bool = True  # CPU: rows read a batch-wide prompt prefix once
    min_shared_tokens: int = 32
    prefill_batch_size: int = 8
    use_chat_template: bool = True
    guided: bool = False  # force the response tags (see eagrl_pipeline.llm.guided)
    rollout_steps: int = 0  # guided rollouts: steps written before the final block
    scaffold: ScaffoldConfig = field(default_factory=ScaffoldConfig)


@dataclass
class ProposerCounters:
    """Work done, so benchmarks can report prefill tokens per unique prompt token."""

    generate_calls: int = 0
    forward_calls: int = 0
    prefill_tokens: int = 0  # input tokens run through the model (prompts, tails, re-reads)
    unique_prompt_tokens: int = 0  # each patient's prompt counted once per search
    reused_tokens: int = 0  # tokens served from cache instead of being recomputed
    generated_tokens: int = 0  # kept new tokens (up to the stop string or EOS)
    shared_prefix_calls: int = 0  # generate calls whose rows read one batch-wide prefix

    @property
    def prefill_per_unique_prompt_token(self) -> float:
        return self.prefill_tokens / max(self.unique_prompt_tokens, 1)


@dataclass(eq=False)
class _Entry:
    """Cached KV for ``tokens``: the first ``parent_len`` from ``parent``, the rest in ``delta``."""

    parent: _Entry | None
    parent_len: int
    delta: KV
    tokens: list[int]
    response_prefix: str  # the part of the response text these tokens cover

    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.delta)

    def write_into(self, layers: KV, row: int, start: int, stop: int, skip: int = 0) -> None:
        """Copy the KV of this entry's tokens ``skip .. stop-1`` into ``layers`` (per layer:
        keys, values ``[rows, kv_heads, positions, dim]``) at ``row``, from position ``start``."""
        inherited = min(stop, self.parent_len) if self.parent is not None else 0
        if inherited > skip:
            self.parent.write_into(layers, row, start, inherited, skip)
        first = max(skip, inherited)
        if stop > first:
            at = slice(start + first - skip, start + stop - skip)
            own = slice(first - self.parent_len, stop - self.parent_len)
            for (k, v), (dk, dv) in zip(layers, self.delta, strict=True):
                k[row, :, at] = dk[:, own]
                v[row, :, at] = dv[:, own]


def _spread_rows(buffer: torch.Tensor, n_states: int, n: int, length: int) -> None:
    """Copy row ``i`` of ``buffer`` (first ``length`` positions) to rows ``i*n .. i*n+n-1``,
    in place: from the last state down, so no source row is overwritten before it is read."""
    for i in range(n_states - 1, -1, -1):
        lo = i * n + (1 if i == 0 else 0)  # row 0 is its own first copy
        buffer[lo : (i + 1) * n, :, :length] = buffer[i : i + 1, :, :length]


class _RowStops(StoppingCriteria):
    """Per-row stop strings: step rows stop at ``</Answer>`` or a final block, final rows only
    at the final block."""

    def __init__(
        self, step: StopStringCriteria, final: StopStringCriteria, final_rows: torch.Tensor
    ):
        self.step, self.final, self.final_rows = step, final, final_rows

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        done = self.final(input_ids, scores)
        return done | (self.step(input_ids, scores) & ~self.final_rows.to(done.device))


class HFProposer:
    """Batched ``expand``/``rollout`` over a causal LM; see the module docstring for the cache."""

    def __init__(self, model: Any, tokenizer: Any, config: HFProposerConfig | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.config = config or HFProposerConfig()
        self.counters = ProposerCounters()
        self.reuse_blocked = reuse_blocker(model) if self.config.prefix_cache != "off" else None
        self.mode: PrefixCache = "off" if self.reuse_blocked else self.config.prefix_cache
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        eos = model.generation_config.eos_token_id
        self.eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        if tokenizer.eos_token_id is not None:
            self.eos_ids.add(tokenizer.eos_token_id)
        self._end_ids = self.eos_ids | {self.pad_id}
        self._step_stop = StopStringCriteria(tokenizer, list(STEP_STOPS + FINAL_STOPS))
        self._final_stop = StopStringCriteria(tokenizer, list(FINAL_STOPS))
        self.scaffold = (
            ResponseScaffold(tokenizer, self.config.scaffold) if self.config.guided else None
        )
        self._rendered: dict[str, tuple[Any, str]] = {}
        self._seen_prompts: set[str] = set()
        self._prompt_entries: dict[str, _Entry] = {}
        self._node_entries: dict[str, list[_Entry]] = {}
        self._cached_bytes = 0
        self.arena = KVArena()
        self.cascade = self.config.shared_prefix_attention and cascade_supported(model)

    # ---- public protocol ------------------------------------------------------------------

    def expand(self, states: list[NodeState], k: int, rng_seed: int) -> list[list[str]]:
        """``k`` sampled next steps per state; all rows in one ``generate`` call per batch."""
        c = self.config
        rows = self._generate(
            states, k, c.step_max_new_tokens, True, rng_seed, harvest=self.mode == "nodes"
        )
        return [rows[i * k : (i + 1) * k] for i in range(len(states))]

    def rollout(self, states: list[NodeState], rng_seed: int) -> list[str]:
        """The rest of a full response per state (ends at ``</Final answer>`` or the token cap)."""
        c = self.config
        return self._generate(
            states, 1, c.rollout_max_new_tokens, c.rollout_do_sample, rng_seed, rollout=True
        )

    def release(self, patient_keys: Sequence[str]) -> None:
        """Free the KV kept for finished patients; their prompts count as unique again later."""
        for key in patient_keys:
            for entry in self._node_entries.pop(key, []):
                self._cached_bytes -= entry.nbytes()
            self._prompt_entries.pop(key, None)
            self._rendered.pop(key, None)
            self._seen_prompts.discard(key)

    # ---- text and tokens ------------------------------------------------------------------

    def _prompt_text(self, state: NodeState) -> str:
        cached = self._rendered.get(state.patient_key)
        if cached is None or cached[0] != state.prompt:
            text = render_prompts(self.tokenizer, [state.prompt], self.config.use_chat_template)[0]
            cached = (state.prompt, text)
            self._rendered[state.patient_key] = cached
            self._prompt_entries.pop(state.patient_key, None)  # a new prompt: old KV is stale
            for entry in self._node_entries.pop(state.patient_key, []):
                self._cached_bytes -= entry.nbytes()
        return cached[1]

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(
            list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    @staticmethod
    def _response(state: NodeState) -> str:
        return state.steps_text + (FINAL_PREFIX if state.force_final else "")

    def _count_prompt(self, state: NodeState, n_tokens: int) -> None:
        if state.patient_key not in self._seen_prompts:
            self._seen_prompts.add(state.patient_key)
            self.counters.unique_prompt_tokens += n_tokens

    # ---- generation -----------------------------------------------------------------------

    def _generate(
        self,
        states: Sequence[NodeState],
        n: int,
        max_new_tokens: int,
        do_sample: bool,
        seed: int,
        *,
        rollout: bool = False,
        harvest: bool = False,
    ) -> list[str]:
        """``n`` completions per state, flat in state order, in as few generate calls as fit."""
        out: list[str] = []
        per_call = max(1, self.config.max_batch_rows // n)
        for b, start in enumerate(range(0, len(states), per_call)):
            group = list(states[start : start + per_call])
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(seed + b)
                if self.mode == "off":
                    out.extend(self._plain(group, n, max_new_tokens, do_sample, rollout))
                else:
                    out.extend(self._cached(group, n, max_new_tokens, do_sample, rollout, harvest))
        return out

    def _gen_config(self, max_new_tokens: int) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,  # a sampled draw is TopKTopPSampler's (_processors)
            temperature=1.0,
            top_p=1.0,
            top_k=50,  # unused when greedy
            repetition_penalty=1.0,
            num_beams=1,
            use_cache=True,
            eos_token_id=sorted(self.eos_ids),
            pad_token_id=self.pad_id,
        )

    def _processors(
        self, states: Sequence[NodeState], n: int, rollout: bool, do_sample: bool
    ) -> LogitsProcessorList:
        """The scaffold (if guided), then the sampler (if sampling): it must come last."""
        processors = self._guide(states, n, rollout)
        if do_sample:
            c = self.config
            processors.append(TopKTopPSampler(c.temperature, c.top_p, c.top_k))
        return processors

    def _guide(self, states: Sequence[NodeState], n: int, rollout: bool) -> LogitsProcessorList:
        """The scaffold's per-row plans: one step per expansion, a finished answer per rollout."""
        if self.scaffold is None:
            return LogitsProcessorList()
        plans = []
        for s in states:
            if s.force_final:
                plan = self.scaffold.plan("finish", 0, False, s.prompt)
            elif rollout:
                steps = self.config.rollout_steps
                if s.steps_left is not None:  # a rollout never writes past the tree's depth
                    steps = min(steps, s.steps_left)
                plan = self.scaffold.plan("answer", steps, bool(s.steps_text), s.prompt)
            else:
                plan = self.scaffold.plan("step", 0, bool(s.steps_text), s.prompt)
            plans += [plan] * n
        return LogitsProcessorList([self.scaffold.processor(plans)])

    def _stops(self, states: Sequence[NodeState], n: int, rollout: bool) -> StoppingCriteriaList:
        final_rows = torch.tensor([rollout or s.force_final for s in states for _ in range(n)])
        return StoppingCriteriaList([_RowStops(self._step_stop, self._final_stop, final_rows)])

    @torch.inference_mode()
    def _plain(
        self, states: list[NodeState], n: int, max_new: int, do_sample: bool, rollout: bool
    ) -> list[str]:
        """Plain batched generate: every row re-reads its whole prompt."""
        encoded = []
        for s in states:
            prompt = self._prompt_text(s)
            if s.patient_key not in self._seen_prompts:
                self._count_prompt(s, len(self._encode(prompt)))
            encoded.append(self._encode(prompt + self._response(s)))
        rows = [ids for ids in encoded for _ in range(n)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        self.counters.prefill_tokens += sum(len(r) for r in rows)
        output = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            generation_config=self._gen_config(max_new),
            stopping_criteria=self._stops(states, n, rollout),
            logits_processor=self._processors(states, n, rollout, do_sample),
        )
        self.counters.generate_calls += 1
        texts = []
        for i, row in enumerate(output[:, width:].tolist()):
            state = states[i // n]
            text, _, _ = self._cut(row, rollout or state.force_final)
            texts.append(self._with_prefix(state, text))
        return texts

    @staticmethod
    def _with_prefix(state: NodeState, text: str) -> str:
        return (FINAL_PREFIX + text) if state.force_final else text

    def _cut(self, tokens: list[int], final_only: bool) -> tuple[str, int, list[int]]:
        """Text up to the first stop string, the kept token count, and the new tokens."""
        end = next((i for i, t in enumerate(tokens) if t in self._end_ids), len(tokens))
        tokens = tokens[:end]
        text = self._decode(tokens)
        stops = FINAL_STOPS if final_only else STEP_STOPS + FINAL_STOPS
        hits = [(text.find(s), s) for s in stops if s in text]
        if not hits:
            self.counters.generated_tokens += len(tokens)
            return text, len(tokens), tokens
        pos, stop = min(hits)
        text = text[: pos + len(stop)]
        lo, hi = 1, len(tokens)  # smallest prefix whose text holds the stop string
        while lo < hi:
            mid = (lo + hi) // 2
            if stop in self._decode(tokens[:mid]):
                hi = mid
            else:
                lo = mid + 1
        self.counters.generated_tokens += lo
        return text, lo, tokens

    @torch.inference_mode()
    def _prefill_prompts(self, states: Sequence[NodeState]) -> None:
        """Prefill each new patient's prompt once, a few prompts per forward pass."""
        new: dict[str, list[int]] = {}
        for s in states:
            prompt = self._prompt_text(s)
            if s.patient_key not in self._prompt_entries and s.patient_key not in new:
                new[s.patient_key] = self._encode(prompt)
                self._count_prompt(s, len(new[s.patient_key]))
        order = sorted(new, key=lambda key: len(new[key]))
        size = self.config.prefill_batch_size
        for start in range(0, len(order), size):
            keys = order[start : start + size]
            width = max(len(new[key]) for key in keys)
            ids = torch.full((len(keys), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(keys), width), dtype=torch.long)
            for i, key in enumerate(keys):
                ids[i, width - len(new[key]) :] = torch.tensor(new[key])
                mask[i, width - len(new[key]) :] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            cache = DynamicCache(config=self.model.config)
            self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            self.counters.forward_calls += 1
            self.counters.prefill_tokens += int(mask.sum())
            for i, key in enumerate(keys):
                lo = width - len(new[key])
                delta = [
                    (layer.keys[i, :, lo:].clone(), layer.values[i, :, lo:].clone())
                    for layer in cache.layers
                ]
                self._prompt_entries[key] = _Entry(None, 0, delta, new[key], "")

    def _shared_length(self, bases: Sequence[tuple[_Entry, int]]) -> int:
        """Cached tokens every row starts with, for cascade attention (0: not worth it). Each
        row keeps at least one cached token of its own, so no query sees only padding."""
        if not self.cascade:
            return 0
        n = shared_prefix_length([entry.tokens[:used] for entry, used in bases])
        return n if n >= self.config.min_shared_tokens else 0

    def _lookup(self, state: NodeState, response: str) -> _Entry:
        """The cached entry covering the longest prefix of this state's response."""
        best = self._prompt_entries[state.patient_key]
        for entry in self._node_entries.get(state.patient_key, []):
            longer = len(entry.response_prefix) > len(best.response_prefix)
            if longer and response.startswith(entry.response_prefix):
                best = entry
        return best

    @torch.inference_mode()
    def _cached(
        self,
        states: list[NodeState],
        n: int,
        max_new: int,
        do_sample: bool,
        rollout: bool,
        harvest: bool,
    ) -> list[str]:
        """Generate from cached prefixes: feed only each state's uncached tail."""
        self._prefill_prompts(states)
        bases: list[tuple[_Entry, int]] = []  # the entry, and how many of its tokens are used
        tails: list[list[int]] = []
        for s in states:
            response = self._response(s)
            entry = self._lookup(s, response) if self.mode == "nodes" else None
            entry = entry or self._prompt_entries[s.patient_key]
            tail = self._encode(response[len(entry.response_prefix) :])
            used = len(entry.tokens)
            if not tail:  # the last token must be fed to get the next-token logits
                used -= 1
                tail = entry.tokens[used:]
            bases.append((entry, used))
            tails.append(tail)
            self.counters.reused_tokens += used * n
        n_states, rows = len(states), len(states) * n
        shared = self._shared_length(bases)
        own_c = max(used for _, used in bases) - shared  # cached positions per row after it
        width_t = max(len(t) for t in tails)
        width = own_c + width_t  # a row's own positions: cached (left-padded), tail
        total = shared + width
        first = bases[0][0]
        ids = torch.full((n_states, total), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n_states, total), dtype=torch.long)
        ids[:, :shared] = torch.tensor(first.tokens[:shared], dtype=torch.long)
        mask[:, :shared] = 1
        for i, ((entry, used), tail) in enumerate(zip(bases, tails, strict=True)):
            lo = total - width_t - (used - shared)
            ids[i, lo : total - width_t] = torch.tensor(entry.tokens[shared:used])
            mask[i, lo : total - width_t] = 1
            ids[i, total - len(tail) :] = torch.tensor(tail, dtype=torch.long)
            mask[i, total - len(tail) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        # The shared prefix's KV is held once (cascade attention); each row's own KV lives in
        # the arena with room for the new tokens: the states' KV goes in the first n_states
        # rows (left-padded with zeros), their tails are run in place, then each state's row
        # is copied to its n rows.
        like = first.delta[0][0]
        heads, dim = like.shape[0], like.shape[2]
        prefix: KV = []
        if shared:
            prefix = [
                (like.new_empty(1, heads, shared, dim), like.new_empty(1, heads, shared, dim))
                for _ in first.delta
            ]
            first.write_into(prefix, 0, 0, shared)
            prefix = [(k[0], v[0]) for k, v in prefix]
        layers: KV = [
            self.arena.buffers(layer, (rows, heads, width + max_new, dim), like)
            for layer in range(len(first.delta))
        ]
        for i, (entry, used) in enumerate(bases):
            pad = own_c - (used - shared)
            for k, v in layers:
                k[i, :, :pad] = 0
                v[i, :, :pad] = 0
            entry.write_into(layers, i, pad, used, skip=shared)
        states_rows = [(k[:n_states], v[:n_states]) for k, v in layers]
        cache = shared_prefix_cache(self.model.config, states_rows, own_c, shared)
        attention = shared_prefix_attention(self.model, prefix) if shared else nullcontext()
        self.counters.shared_prefix_calls += bool(shared)
        with attention:
            if width_t > 1:  # the tails but their last token, once per state
                extend_cache(self.model, ids, mask, shared + own_c, cache)
                self.counters.forward_calls += 1
                self.counters.prefill_tokens += sum(len(t) - 1 for t in tails)
            if n > 1:
                for k, v in layers:
                    _spread_rows(k, n_states, n, width - 1)
                    _spread_rows(v, n_states, n, width - 1)
                ids, mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
            for layer, (k, v) in zip(cache.layers, layers, strict=True):
                layer.adopt(k, v, width - 1)
            self.counters.prefill_tokens += rows  # each row's last tail token
            output = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                cache=cache,
                generation_config=self._gen_config(max_new),
                stopping_criteria=self._stops(states, n, rollout),
                logits_processor=self._processors(states, n, rollout, do_sample),
            )
        self.counters.generate_calls += 1
        fed = cache.get_seq_length() - total  # generated tokens whose KV is in the cache
        texts = []
        for r, row in enumerate(output[:, total:].tolist()):
            state = states[r // n]
            text, kept, tokens = self._cut(row, rollout or state.force_final)
            texts.append(self._with_prefix(state, text))
            if harvest and not state.force_final and not is_terminal(text):
                entry, used = bases[r // n]
                self._store(
                    state,
                    entry,
                    used,
                    tails[r // n],
                    tokens[: min(kept, fed)],
                    text,
                    cache,
                    r,
                    width,
                )
        return texts

    def _store(
        self,
        state: NodeState,
        entry: _Entry,
        used: int,
        tail: list[int],
        new_tokens: list[int],
        text: str,
        cache: DynamicCache,
        row: int,
        width: int,
    ) -> None:
        """Keep a new step's KV (tail + its tokens) as a delta on the entry it grew from;
        ``width`` is where the row's generated tokens start in the cache's own positions."""
        m = len(new_tokens)
        while m > 0 and not text.startswith(self._decode(new_tokens[:m])):
            m -= 1  # the last token may run past the stop string; keep only covered ones
        n_delta = len(tail) + m
        per_token = sum(2 * layer.keys[row, :, 0].nbytes for layer in cache.layers)
        if m == 0 or self._cached_bytes + n_delta * per_token > self.config.max_cache_bytes:
            return
        lo = width - len(tail)
        delta = [
            (
                layer.keys[row, :, lo : lo + n_delta].clone(),
                layer.values[row, :, lo : lo + n_delta].clone(),
            )
            for layer in cache.layers
        ]
        response = self._response(state) + self._decode(new_tokens[:m])
        child = _Entry(entry, used, delta, entry.tokens[:used] + tail + new_tokens[:m], response)
        self._node_entries.setdefault(state.patient_key, []).append(child)
        self._cached_bytes += child.nbytes()
