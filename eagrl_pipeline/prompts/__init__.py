"""Patient record -> prompt, the tagged response format, and its tolerant parser."""

from eagrl_pipeline.prompts.features import (
    CURATED_ALIASES,
    FeatureMatcher,
    dictionary_aliases,
    normalize_name,
)
from eagrl_pipeline.prompts.parser import (
    WORD_PROBABILITIES,
    ParsedResponse,
    completion_text,
    parse_probability,
    parse_response,
)
from eagrl_pipeline.prompts.serialize import (
    PROMPTING_BASELINES,
    FeatureSpec,
    PromptConfig,
    SerializedPrompt,
    as_messages,
    baseline_prompt,
    build_prompts,
    feature_specs,
    heuristic_token_count,
    serialize_patient,
)

__all__ = [
    "CURATED_ALIASES",
    "PROMPTING_BASELINES",
    "WORD_PROBABILITIES",
    "FeatureMatcher",
    "FeatureSpec",
    "ParsedResponse",
    "PromptConfig",
    "SerializedPrompt",
    "as_messages",
    "baseline_prompt",
    "build_prompts",
    "completion_text",
    "dictionary_aliases",
    "feature_specs",
    "heuristic_token_count",
    "normalize_name",
    "parse_probability",
    "parse_response",
    "serialize_patient",
]
