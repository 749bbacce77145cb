"""The warehouse benchmark's pandas baselines build the same marts, whichever style."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from benchmarks.pandas_cohorts import MAX_VISITS, build_cohorts_pandas
from eagrl_pipeline.data.synthetic_mimic_iv import write_synthetic_mimic_iv


@pytest.fixture(scope="module")
def mimic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mimic") / "mimic_iv"
    write_synthetic_mimic_iv(root, n_stays=60, seed=3)
    return root


def test_per_stay_style_matches_the_vectorised_marts(mimic_root: Path) -> None:
    vectorised = build_cohorts_pandas(mimic_root, style="vectorised")
    per_stay = build_cohorts_pandas(mimic_root, style="per_stay")
    marts = {"cohort_mimic_iv_mortality", "cohort_mimic_iv_readmission"}
    assert set(vectorised) == set(per_stay) == marts
    for name, frame in vectorised.items():
        assert len(frame) > 60 and frame["patient_id"].nunique() > 30
        assert frame.groupby("patient_id")["visit_index"].max().max() < MAX_VISITS
        assert frame["gcs_total"].notna().any()
        pd.testing.assert_frame_equal(per_stay[name], frame, check_exact=False, rtol=1e-9)


def test_unknown_style_is_refused(mimic_root: Path) -> None:
    with pytest.raises(ValueError, match="unknown pandas style 'loop'"):
        build_cohorts_pandas(mimic_root, style="loop")  # type: ignore[arg-type]
