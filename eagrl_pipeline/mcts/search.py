"""Expert-guided Monte Carlo Tree Search over tagged reasoning steps (EAG-RL stage 1).

A node is a patient prompt plus the sub-question/answer steps so far; an action appends one
step sampled from the policy; a terminal node holds the final block (important features and the
probability). The algorithm never touches a model: a batched :class:`Proposer` supplies steps
and completions, a :class:`Scorer` supplies rewards. All patients' trees advance in lockstep so
one ``expand`` and one ``rollout`` call serve a whole wave; that is what makes an LLM search
affordable (cost is per call far more than per row).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from eagrl_pipeline.progress import progress_bar

log = logging.getLogger(__name__)

Conversation = list[dict[str, str]]
FINAL_PREFIX = "<Final subquestion>"
FINAL_TAG = re.compile(r"<\s{0,4}final\s{0,4}answer\s{0,4}>", re.IGNORECASE)
_FINAL_START = re.compile(
    r"<\s{0,4}(?:final\s{0,4}sub\s{0,4}question|important\s{0,4}features?|final\s{0,4}answer)"
    r"\s{0,4}>",
    re.IGNORECASE,
)
_STEP_END = re.compile(r"<\s{0,4}/\s{0,4}answer\s{0,4}>", re.IGNORECASE)


@dataclass(frozen=True)
class PatientTask:
    """One tree: ``prompt`` is the user content (or a chat conversation) for the proposer."""

    key: str
    prompt: str | Conversation


@dataclass(frozen=True)
class NodeState:
    """What a proposer sees: the prompt, the response so far, and whether to finish now."""

    patient_key: str
    prompt: str | Conversation
    steps_text: str
    force_final: bool = False
    depth: int = 0
    max_depth: int | None = None  # steps a finished response may hold (None: no limit)

    @property
    def steps_left(self) -> int | None:
        """Steps a rollout from here may still write before its final block."""
        return None if self.max_depth is None else max(0, self.max_depth - self.depth)


@dataclass(frozen=True)
class ScoredResponse:
    """A complete response's reward; ``probability`` is its final answer (None: unreadable)."""

    reward: float
    parts: dict[str, float] = field(default_factory=dict)
    valid: bool = True
    probability: float | None = None


@runtime_checkable
class Proposer(Protocol):
    """Batched policy: one call serves every tree in a wave.

    ``expand`` returns ``k`` candidate next steps per state (a candidate containing
    ``<Final answer>`` is a terminal block; with ``force_final`` every candidate must be one);
    ``rollout`` returns the rest of a full response for each state. A proposer may also define
    ``release(patient_keys)`` to free per-patient caches once their trees are done.
    """

    def expand(self, states: list[NodeState], k: int, rng_seed: int) -> list[list[str]]: ...

    def rollout(self, states: list[NodeState], rng_seed: int) -> list[str]: ...


class Scorer(Protocol):
    def score(self, patient_key: str, full_response_text: str) -> ScoredResponse: ...


@dataclass(frozen=True)
class MCTSConfig:
    """Search knobs; ``max_depth`` is the number of steps after which a final block is forced.

    ``n_simulations`` is each tree's budget. With ``simulate_siblings`` a wave that reaches an
    unvisited node (every child of a fresh expansion is one) also simulates its unvisited
    siblings, up to the budget, in the same batched call: UCT visits an unvisited child before
    comparing any, so those simulations would come next anyway when the node is reselected;
    batching them fills the wave's ``generate`` call and takes fewer waves.
    """

    n_simulations: int = 16
    branching: int = 3
    max_depth: int = 3
    uct_c: float = math.sqrt(2)
    rollouts_per_leaf: int = 1
    seed: int = 0
    simulate_siblings: bool = True

    def __post_init__(self) -> None:
        if self.n_simulations < 1 or self.branching < 1 or self.rollouts_per_leaf < 1:
            raise ValueError("n_simulations, branching and rollouts_per_leaf must be >= 1")
        if self.max_depth < 0 or self.uct_c < 0:
            raise ValueError("max_depth >= 0 and uct_c >= 0 required")


@dataclass(frozen=True)
class Trajectory:
    """A complete response: ``depth`` counts its sub-question/answer steps."""

    text: str
    steps: list[str]
    final: str
    reward: float
    parts: dict[str, float]
    valid: bool
    depth: int
    source: str  # "terminal" (a tree node) or "rollout"
    probability: float | None = None


@dataclass(frozen=True)
class TreeStats:
    nodes: int
    max_depth_reached: int
    simulations: int
    expand_requests: int
    rollout_requests: int
    scorer_calls: int
    complete_responses: int
    mean_rollout_reward: float | None
    mean_simulation_reward: float | None


@dataclass(frozen=True)
class SearchResult:
    patient_key: str
    trajectories: list[Trajectory]
    best_reward: float | None
    stats: TreeStats

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchResult:
        return cls(
            patient_key=data["patient_key"],
            trajectories=[Trajectory(**t) for t in data["trajectories"]],
            best_reward=data["best_reward"],
            stats=TreeStats(**data["stats"]),
        )


def is_terminal(text: str) -> bool:
    """A candidate is a terminal block when it carries the final answer tag."""
    return FINAL_TAG.search(text) is not None


def split_steps(text: str) -> tuple[list[str], str]:
    """Split a response into its sub-question/answer steps and its final block.

    >>> split_steps("<Subquestion>a</Subquestion><Answer>b</Answer> <Final subquestion>c"
    ...             "</Final subquestion><Final answer>0.2</Final answer>")[0]
    ['<Subquestion>a</Subquestion><Answer>b</Answer>']
    """
    start = _FINAL_START.search(text)
    head, final = (text[: start.start()], text[start.start() :]) if start else (text, "")
    steps, pos = [], 0
    for match in _STEP_END.finditer(head):
        steps.append(head[pos : match.end()].strip())
        pos = match.end()
    if head[pos:].strip():
        steps.append(head[pos:].strip())
    return [s for s in steps if s], final.strip()


@dataclass(eq=False)
class _Node:
    steps_text: str
    depth: int
    parent: _Node | None
    terminal: bool
    children: list[_Node] = field(default_factory=list)
    expanded: bool = False
    visits: int = 0
    value_sum: float = 0.0
    reward: float | None = None  # a terminal node's own score


@dataclass(eq=False)
class _Tree:
    task: PatientTask
    root: _Node
    nodes: int = 1
    simulations: int = 0
    expand_requests: int = 0
    rollout_requests: int = 0
    scorer_calls: int = 0
    scores: dict[str, ScoredResponse] = field(default_factory=dict)
    complete: dict[str, Trajectory] = field(default_factory=dict)
    rollout_rewards: list[float] = field(default_factory=list)
    simulation_rewards: list[float] = field(default_factory=list)

    def state(self, node: _Node, max_depth: int) -> NodeState:
        return NodeState(
            self.task.key,
            self.task.prompt,
            node.steps_text,
            node.depth >= max_depth,
            node.depth,
            max_depth,
        )

    def score(self, scorer: Scorer, text: str, source: str) -> ScoredResponse:
        """Score a complete response once and record it as a trajectory."""
        if text not in self.scores:
            self.scorer_calls += 1
            self.scores[text] = scorer.score(self.task.key, text)
        scored = self.scores[text]
        if text not in self.complete:
            steps, final = split_steps(text)
            self.complete[text] = Trajectory(
                text=text,
                steps=steps,
                final=final,
                reward=float(scored.reward),
                parts={k: float(v) for k, v in scored.parts.items()},
                valid=bool(scored.valid),
                depth=len(steps),
                source=source,
                probability=scored.probability,
            )
        return scored


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _wave_seed(seed: int, wave: int, kind: int) -> int:
    return (seed * 1_000_003 + wave * 7 + kind) % (2**31 - 1)


def _select(tree: _Tree, c: float) -> _Node:
    """Descend by UCT; an unvisited child is always taken first (in proposal order)."""
    node = tree.root
    while node.children:
        unvisited = next((ch for ch in node.children if ch.visits == 0), None)
        if unvisited is not None:
            return unvisited
        log_n = math.log(node.visits)
        node = max(
            node.children,
            key=lambda ch: ch.value_sum / ch.visits + c * math.sqrt(log_n / ch.visits),
        )
    return node


def _backprop(node: _Node | None, values: Sequence[float]) -> None:
    while node is not None:
        node.visits += len(values)
        node.value_sum += sum(values)
        node = node.parent


def _add_children(tree: _Tree, node: _Node, candidates: Sequence[str], forced: bool) -> None:
    seen: set[str] = set()
    for cand in candidates:
        if not cand.strip() or cand in seen:  # sampled duplicates would split one action's stats
            continue
        seen.add(cand)
        terminal = forced or is_terminal(cand)
        node.children.append(
            _Node(node.steps_text + cand, node.depth + (0 if terminal else 1), node, terminal)
        )
    node.expanded = True
    tree.nodes += len(node.children)


def _result(tree: _Tree, config: MCTSConfig) -> SearchResult:
    eligible = [t for t in tree.complete.values() if t.depth <= config.max_depth]
    ranked = sorted(eligible, key=lambda t: -t.reward)  # stable: ties keep discovery order
    max_depth = 0
    stack = [tree.root]
    while stack:
        node = stack.pop()
        max_depth = max(max_depth, node.depth)
        stack.extend(node.children)
    stats = TreeStats(
        nodes=tree.nodes,
        max_depth_reached=max_depth,
        simulations=tree.simulations,
        expand_requests=tree.expand_requests,
        rollout_requests=tree.rollout_requests,
        scorer_calls=tree.scorer_calls,
        complete_responses=len(tree.complete),
        mean_rollout_reward=_mean(tree.rollout_rewards),
        mean_simulation_reward=_mean(tree.simulation_rewards),
    )
    return SearchResult(
        patient_key=tree.task.key,
        trajectories=ranked,
        best_reward=ranked[0].reward if ranked else None,
        stats=stats,
    )


def _run_wave(
    trees: list[_Tree], proposer: Proposer, scorer: Scorer, config: MCTSConfig, wave: int
) -> None:
    """A simulation per tree (or a leaf and its unvisited siblings): select, one batched
    expand, one batched rollout, backprop."""
    sims: list[tuple[_Tree, _Node]] = []
    to_expand: list[tuple[_Tree, _Node]] = []

    def simulate(tree: _Tree, node: _Node) -> None:
        """``node`` and, with ``simulate_siblings``, its next unvisited siblings."""
        budget = config.n_simulations - tree.simulations if config.simulate_siblings else 1
        siblings = node.parent.children if node.parent is not None else [node]
        start = siblings.index(node)
        batch = [node] + [s for s in siblings[start + 1 :] if s.visits == 0]
        sims.extend((tree, s) for s in batch[: max(budget, 1)])

    for tree in trees:
        leaf = _select(tree, config.uct_c)
        needs_children = not leaf.expanded and (leaf is tree.root or leaf.visits > 0)
        if not leaf.terminal and needs_children:
            to_expand.append((tree, leaf))
        else:
            simulate(tree, leaf)
    if to_expand:
        states = [tree.state(node, config.max_depth) for tree, node in to_expand]
        proposals = proposer.expand(states, config.branching, _wave_seed(config.seed, wave, 1))
        if len(proposals) != len(states):
            raise ValueError("proposer.expand must return one candidate list per state")
        for (tree, node), state, cands in zip(to_expand, states, proposals, strict=True):
            tree.expand_requests += 1
            _add_children(tree, node, cands, state.force_final)
            simulate(tree, node.children[0] if node.children else node)
    to_roll = [(tree, node) for tree, node in sims if not node.terminal]
    roll_states = [
        tree.state(node, config.max_depth)
        for tree, node in to_roll
        for _ in range(config.rollouts_per_leaf)
    ]
    texts = proposer.rollout(roll_states, _wave_seed(config.seed, wave, 2)) if to_roll else []
    if len(texts) != len(roll_states):
        raise ValueError("proposer.rollout must return one text per state")
    values: dict[int, list[float]] = {}
    r = config.rollouts_per_leaf
    for i, (tree, node) in enumerate(to_roll):
        tree.rollout_requests += r
        rewards = []
        for text in texts[i * r : (i + 1) * r]:
            reward = tree.score(scorer, node.steps_text + text, "rollout").reward
            tree.rollout_rewards.append(reward)
            rewards.append(reward)
        values[id(node)] = rewards
    for tree, node in sims:
        if node.terminal:
            if node.reward is None:
                node.reward = tree.score(scorer, node.steps_text, "terminal").reward
            node_values = [node.reward]
        else:
            node_values = values[id(node)]
        tree.simulations += 1
        tree.simulation_rewards.extend(node_values)
        _backprop(node, node_values)


def run_search(
    patients: Sequence[PatientTask],
    proposer: Proposer,
    scorer: Scorer,
    config: MCTSConfig,
    *,
    on_patient_done: Callable[[SearchResult], None] | None = None,
) -> list[SearchResult]:
    """Search every patient's tree in lockstep; one result per patient, in input order.

    Each wave does one selection per tree, then ONE batched ``expand`` call for all leaves that
    need children and ONE batched ``rollout`` call for all simulations, then scoring and
    backpropagation; waves run until every tree has spent its ``n_simulations``.
    Deterministic for a seed and a given patient batch.
    """
    keys = [p.key for p in patients]
    if len(set(keys)) != len(keys):
        raise ValueError("patient keys must be unique")
    trees = [_Tree(p, _Node("", 0, None, terminal=False)) for p in patients]
    try:
        wave = 0
        while active := [t for t in trees if t.simulations < config.n_simulations]:
            _run_wave(active, proposer, scorer, config, wave)
            wave += 1
    finally:  # free proposer caches even when a wave fails
        release = getattr(proposer, "release", None)
        if callable(release):
            release(keys)
    results = [_result(tree, config) for tree in trees]
    if on_patient_done is not None:
        for result in results:
            on_patient_done(result)
    return results


def is_correct_side(probability: float | None, label: int, margin: float = 0.0) -> bool:
    """Whether an answer is on the label's side of 0.5, by more than ``margin``.

    >>> is_correct_side(0.7, 1), is_correct_side(0.7, 0), is_correct_side(0.55, 1, margin=0.1)
    (True, False, False)
    >>> is_correct_side(None, 1)
    False
    """
    if probability is None or not math.isfinite(probability):
        return False
    return probability > 0.5 + margin if label == 1 else probability < 0.5 - margin


@dataclass(frozen=True)
class SampledResponse:
    """One plain rollout from the root: the sampling baseline's unit."""

    reward: float
    valid: bool
    probability: float | None


def random_rollouts(
    patients: Sequence[PatientTask],
    proposer: Proposer,
    scorer: Scorer,
    n_per_patient: int | Mapping[str, int],
    seed: int,
    max_depth: int | None = None,
) -> dict[str, list[SampledResponse]]:
    """Plain rollouts from each patient's root (best-of-N sampling, no tree): the baseline the
    search must beat. ``n_per_patient`` may differ per patient, so each patient gets as many
    samples as its search produced trajectories (equal budget); ``max_depth`` bounds their
    steps as the search's."""
    counts = {
        p.key: n_per_patient if isinstance(n_per_patient, int) else int(n_per_patient[p.key])
        for p in patients
    }
    states = [
        NodeState(p.key, p.prompt, "", max_depth=max_depth)
        for p in patients
        for _ in range(counts[p.key])
    ]
    texts = proposer.rollout(states, seed) if states else []
    if len(texts) != len(states):
        raise ValueError("proposer.rollout must return one text per state")
    out: dict[str, list[SampledResponse]] = {p.key: [] for p in patients}
    for state, text in zip(states, texts, strict=True):
        scored = scorer.score(state.patient_key, text)
        out[state.patient_key].append(
            SampledResponse(float(scored.reward), bool(scored.valid), scored.probability)
        )
    release = getattr(proposer, "release", None)
    if callable(release):
        release([p.key for p in patients])
    return out


def has_right_answer(result: SearchResult, label: int, margin: float = 0.0) -> bool:
    """Whether any parseable trajectory of the search answers on the label's side of 0.5."""
    return any(
        t.valid and is_correct_side(t.probability, label, margin) for t in result.trajectories
    )


def pool_results(first: SearchResult, second: SearchResult) -> SearchResult:
    """One patient's two searches as one: trajectories of both (first search first), the best
    reward of either, the tree statistics added up (depth: the deeper; means: weighted by
    simulations). Used where a patient without a right answer is searched again."""
    if first.patient_key != second.patient_key:
        raise ValueError(f"pooling {first.patient_key!r} with {second.patient_key!r}")
    a, b = first.stats, second.stats

    def mean(x: float | None, y: float | None) -> float | None:
        parts = [(v, n) for v, n in ((x, a.simulations), (y, b.simulations)) if v is not None]
        total = sum(n for _, n in parts)
        return sum(v * n for v, n in parts) / total if parts and total else None

    rewards = [r for r in (first.best_reward, second.best_reward) if r is not None]
    stats = TreeStats(
        nodes=a.nodes + b.nodes,
        max_depth_reached=max(a.max_depth_reached, b.max_depth_reached),
        simulations=a.simulations + b.simulations,
        expand_requests=a.expand_requests + b.expand_requests,
        rollout_requests=a.rollout_requests + b.rollout_requests,
        scorer_calls=a.scorer_calls + b.scorer_calls,
        complete_responses=a.complete_responses + b.complete_responses,
        mean_rollout_reward=mean(a.mean_rollout_reward, b.mean_rollout_reward),
        mean_simulation_reward=mean(a.mean_simulation_reward, b.mean_simulation_reward),
    )
    return SearchResult(
        patient_key=first.patient_key,
        trajectories=[*first.trajectories, *second.trajectories],
        best_reward=max(rewards) if rewards else None,
        stats=stats,
    )


def select_trajectories(
    results: Iterable[SearchResult],
    labels: Mapping[str, int],
    *,
    top_k: int,
    min_reward: float,
    target_per_class: int | None = None,
    margin: float = 0.0,
) -> list[dict[str, Any]]:
    """The SFT set: each patient's best ``top_k`` trajectories that are *right*, class-balanced.

    A trajectory is kept only when it parses, its final answer is on the correct side of 0.5
    by more than ``margin`` (``is_correct_side``: a parseable wrong answer is never a
    distillation target), and its reward is at least ``min_reward``. Both classes are capped at
    the smaller class's count, or at ``target_per_class`` when given (a class with fewer records
    keeps all of them). Capping drops by rank round-robin (every patient's best first), so it
    removes second-best trajectories before whole patients.
    """
    by_class: dict[int, list[tuple[int, float, dict[str, Any]]]] = {0: [], 1: []}
    for result in results:
        label = int(labels[result.patient_key])
        if label not in by_class:
            raise ValueError(f"labels must be 0 or 1, got {label} for {result.patient_key}")
        kept = [
            t
            for t in result.trajectories
            if t.valid and t.reward >= min_reward and is_correct_side(t.probability, label, margin)
        ]
        for rank, traj in enumerate(sorted(kept, key=lambda t: -t.reward)[:top_k]):
            record = {
                "patient_key": result.patient_key,
                "label": label,
                "rank": rank,
                "text": traj.text,
                "steps": list(traj.steps),
                "final": traj.final,
                "reward": traj.reward,
                "probability": traj.probability,
                "parts": dict(traj.parts),
                "depth": traj.depth,
                "source": traj.source,
                "tree": asdict(result.stats),
            }
            by_class[label].append((rank, -traj.reward, record))
    cap = min(len(by_class[0]), len(by_class[1]))
    if target_per_class is not None:
        cap = target_per_class
    selected = []
    for label in (1, 0):
        ordered = sorted(by_class[label], key=lambda item: (item[0], item[1]))
        selected.extend(record for _, _, record in ordered[:cap])
    return selected


@dataclass(frozen=True)
class ClassComparison:
    """Search against best-of-N sampling for one class, at the same number of trajectories."""

    patients: int
    search_mean_best_reward: float | None
    sampling_mean_best_reward: float | None
    search_correct_rate: float  # patients with a right, valid trajectory
    sampling_correct_rate: float

    @property
    def search_wins(self) -> bool:
        """The search's best is at least sampling's, in reward and in patients answered right,
        and it answered some patient right (a tie at nothing shows nothing)."""
        if self.search_mean_best_reward is None or self.sampling_mean_best_reward is None:
            return False
        return (
            self.search_correct_rate > 0
            and self.search_mean_best_reward >= self.sampling_mean_best_reward
            and self.search_correct_rate >= self.sampling_correct_rate
        )


def compare_with_sampling(
    results: Sequence[SearchResult],
    sampled: Mapping[str, Sequence[SampledResponse]],
    labels: Mapping[str, int],
    margin: float = 0.0,
) -> dict[int, ClassComparison]:
    """Per class: the mean over patients of the best reward, and the share of patients with a
    right (``is_correct_side``) valid answer, for the search and for sampling."""
    out: dict[int, ClassComparison] = {}
    for label in (0, 1):
        mine = [r for r in results if int(labels[r.patient_key]) == label]
        if not mine:
            continue
        search_best = [r.best_reward for r in mine if r.best_reward is not None]
        sample_best = [
            max(s.reward for s in sampled[r.patient_key])
            for r in mine
            if sampled.get(r.patient_key)
        ]
        search_right = [has_right_answer(r, label, margin) for r in mine]
        sample_right = [
            any(
                s.valid and is_correct_side(s.probability, label, margin)
                for s in sampled.get(r.patient_key, ())
            )
            for r in mine
        ]
        out[label] = ClassComparison(
            patients=len(mine),
            search_mean_best_reward=_mean(search_best),
            sampling_mean_best_reward=_mean(sample_best),
            search_correct_rate=sum(search_right) / len(mine),
            sampling_correct_rate=sum(sample_right) / len(mine),
        )
    return out


def _read_checkpoint(path: Path) -> dict[str, SearchResult]:
    """Results already on disk; a trailing partial line (a crash mid-write) is cut off."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        log.warning("ignoring a partial last line in %s", path)
        with path.open("r+b") as fh:  # so the next append starts on a fresh line
            fh.truncate(end)
    done: dict[str, SearchResult] = {}
    for n, line in enumerate(data[:end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            result = SearchResult.from_dict(json.loads(line))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable line %d in %s", n, path)
            continue
        done[result.patient_key] = result
    return done


def load_checkpoint(path: str | Path) -> dict[str, SearchResult]:
    """Finished patients in a checkpoint file, by patient key."""
    return _read_checkpoint(Path(path))


def _append_line(path: Path, result: SearchResult) -> None:
    line = (json.dumps(result.to_dict(), separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, line)  # one call: a crash leaves a whole line or a partial tail
        if written != len(line):
            raise OSError(f"short write to {path}: {written} of {len(line)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


def run_search_resumable(
    patients: Sequence[PatientTask],
    proposer: Proposer,
    scorer: Scorer,
    config: MCTSConfig,
    *,
    checkpoint_path: str | Path,
    batch_patients: int = 8,
    on_patient_done: Callable[[SearchResult], None] | None = None,
) -> list[SearchResult]:
    """:func:`run_search` in chunks of ``batch_patients``, each result appended as a JSON line.

    A rerun skips patients already in the file, so an interrupted run loses at most the chunk
    in flight. Results come back in input order.
    """
    if batch_patients < 1:
        raise ValueError("batch_patients must be >= 1")
    path = Path(checkpoint_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = _read_checkpoint(path)
    pending = [p for p in patients if p.key not in done]
    if done:
        log.info(
            "resuming: %d of %d patients already searched",
            len(patients) - len(pending),
            len(patients),
        )

    bar = progress_bar(len(pending), "MCTS", "patient")

    def record(result: SearchResult) -> None:
        _append_line(path, result)
        done[result.patient_key] = result
        bar.update(1)
        if on_patient_done is not None:
            on_patient_done(result)

    with bar:
        for start in range(0, len(pending), batch_patients):
            run_search(
                pending[start : start + batch_patients],
                proposer,
                scorer,
                config,
                on_patient_done=record,
            )
    return [done[p.key] for p in patients]
