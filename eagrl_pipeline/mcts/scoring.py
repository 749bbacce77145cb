"""The search's scorer: EAG-RL's reward of a complete response, against the patient's label and
the expert's top-k features (the expert guidance of the search)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from eagrl_pipeline.mcts.search import ScoredResponse
from eagrl_pipeline.prompts import FeatureMatcher, parse_response
from eagrl_pipeline.rewards import RewardWeights, reward_parts


@dataclass
class EagrlScorer:
    """Scores ``patient_key -> text`` with λ·R_cls + (1−λ)·R_att + w_fmt·R_format.

    >>> scorer = EagrlScorer(FeatureMatcher.build(["LDH", "CRP"]), {"p1": 1}, {"p1": ["LDH"]})
    >>> text = ("<Subquestion> q </Subquestion><Answer> a </Answer>"
    ...         "<Final subquestion> f </Final subquestion>"
    ...         "<Important Features> LDH </Important Features><Final answer> 0.9 </Final answer>")
    >>> scored = scorer.score("p1", text)
    >>> scored.valid, round(scored.parts["r_att"], 2)
    (True, 1.0)
    """

    matcher: FeatureMatcher
    labels: Mapping[str, int]
    expert_top_k: Mapping[str, Sequence[str]]
    weights: RewardWeights = field(default_factory=RewardWeights)

    def score(self, patient_key: str, full_response_text: str) -> ScoredResponse:
        parsed = parse_response(full_response_text, self.matcher)
        parts = reward_parts(
            parsed,
            self.labels[patient_key],
            self.expert_top_k.get(patient_key, ()),
            self.weights,
        )
        return ScoredResponse(
            reward=parts.total,
            parts={"r_cls": parts.r_cls, "r_att": parts.r_att, "r_format": parts.r_format},
            valid=parsed.is_valid,
            probability=parsed.probability,
        )
