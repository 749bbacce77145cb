"""Where the raw EHR data comes from: a user's files, or the seeded synthetic default."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field, field_validator

from resources.dbt import check_lab_feature_ids


class EhrSources(ConfigurableResource):
    tjh_path: str | None = Field(
        default=None,
        description="TJH time_series_375_prerpocess_en.xlsx (or its CSV). Empty: synthetic.",
    )
    mimic_iv_root: str | None = Field(
        default=None,
        description="MIMIC-IV folder holding hosp/ and icu/ (v2.2 or v3.1). Empty: synthetic.",
    )
    mimic_iv_feature_set: str = Field(
        default="vitals_labs",
        description="'vitals' (17 chart variables, needs no labevents) or 'vitals_labs'.",
    )
    mimic_iv_lab_feature_ids: list[str] = Field(
        default_factory=list,
        description="Lab panel as feature ids (e.g. lab_sodium); empty: the dictionary's "
        "default panel.",
    )
    synthetic_seed: int = Field(default=0, description="Seed of the synthetic raw data.")
    synthetic_tjh_patients: int = Field(default=375, description="Synthetic TJH patients.")
    synthetic_mimic_iv_stays: int = Field(
        default=2000, description="Synthetic MIMIC-IV ICU stays (benchmarks go to 100,000)."
    )

    @field_validator("mimic_iv_lab_feature_ids")
    @classmethod
    def _known_lab_ids(cls, value: list[str]) -> list[str]:
        return check_lab_feature_ids(value)
