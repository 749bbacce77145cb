"""Patient-level splits: ClinicRealm's published TJH split, stratification, groups, bad config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eagrl_pipeline.data.splits import assign_splits, clinicrealm_split, stratified_split
from eagrl_pipeline.data.tjh import read_tjh
from eagrl_pipeline.errors import InputDataError

TJH_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "tjh"
TJH_CSV = TJH_DIR / "csv" / "time_series_375_prerpocess_en.csv"
TJH_XLSX = TJH_DIR / "time_series_375_prerpocess_en.xlsx"
TJH_SPLITS = TJH_DIR / "splits" / "tjh_splits.csv"


@pytest.fixture(scope="module")
def tjh_patients() -> pd.Series:
    """First outcome per patient with at least one dated row (361 patients)."""
    source = TJH_CSV if TJH_CSV.is_file() else TJH_XLSX
    if not source.is_file() or not TJH_SPLITS.is_file():
        pytest.skip(f"real TJH data absent: need {source} and {TJH_SPLITS}")
    table = read_tjh(source).dropna(subset=["re_date"])
    return table.groupby("patient_id")["outcome"].first()


@pytest.mark.realdata
def test_clinicrealm_split_reproduces_published_tjh_split(tjh_patients: pd.Series) -> None:
    published = pd.read_csv(TJH_SPLITS).set_index("PATIENT_ID")["clinicrealm_split"]
    assert len(tjh_patients) == 361
    mapping = clinicrealm_split(tjh_patients.index.tolist(), tjh_patients.tolist(), seed=42)
    ours = pd.Series(mapping).sort_index()
    assert ours.index.tolist() == sorted(published.index)
    mismatched = (ours != published.sort_index()).sum()
    assert mismatched == 0
    assert ours.value_counts().to_dict() == {"train": 140, "val": 21, "test": 200}


@pytest.mark.realdata
def test_clinicrealm_split_ignores_input_order(tjh_patients: pd.Series) -> None:
    ids = tjh_patients.index.to_numpy()
    labels = tjh_patients.to_numpy()
    order = np.random.default_rng(0).permutation(len(ids))
    assert clinicrealm_split(ids[order], labels[order], seed=42) == clinicrealm_split(
        ids, labels, seed=42
    )


# --------------------------------------------------------------------------- synthetic

N = 1000
IDS = np.arange(100, 100 + N)
LABELS = (np.random.default_rng(7).random(N) < 0.3).astype(int)


@pytest.mark.parametrize("fractions", [(0.7, 0.1, 0.2), (0.6, 0.2, 0.2), (0.8, 0.1, 0.1)])
def test_stratified_split_proportions_and_prevalence(fractions: tuple[float, ...]) -> None:
    mapping = stratified_split(IDS, LABELS, seed=42, fractions=fractions)
    assert set(mapping) == set(IDS.tolist())
    split = pd.Series(mapping)
    label = pd.Series(LABELS, index=IDS)
    overall = LABELS.mean()
    for name, fraction in zip(("train", "val", "test"), fractions, strict=True):
        members = split.index[split == name]
        assert abs(len(members) - fraction * N) <= 1, (name, len(members))
        assert abs(label[members].mean() - overall) <= 0.05, name


def test_stratified_split_deterministic_per_seed() -> None:
    first = stratified_split(IDS, LABELS, seed=3)
    assert stratified_split(IDS, LABELS, seed=3) == first
    other = stratified_split(IDS, LABELS, seed=4)
    assert other != first
    assert sum(first[i] != other[i] for i in first) > 100


def test_clinicrealm_split_deterministic_and_sizes() -> None:
    first = clinicrealm_split(IDS, LABELS, seed=1, test_size=200)
    assert first == clinicrealm_split(IDS, LABELS, seed=1, test_size=200)
    assert first != clinicrealm_split(IDS, LABELS, seed=2, test_size=200)
    counts = pd.Series(first).value_counts().to_dict()
    assert counts == {"train": 700, "val": 100, "test": 200}


def _patients() -> pd.DataFrame:
    """300 groups owning 1-4 patients each; a group's patients may have different labels."""
    rng = np.random.default_rng(11)
    rows = []
    patient = 0
    for group in range(300):
        for _ in range(int(rng.integers(1, 5))):
            rows.append(
                {"patient_id": patient, "group_id": 5000 + group, "label": int(rng.random() < 0.25)}
            )
            patient += 1
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    ("strategy", "kwargs"),
    [("stratified", {}), ("clinicrealm", {"test_size": 60})],
)
def test_assign_splits_keeps_groups_together(strategy: str, kwargs: dict) -> None:
    patients = _patients()
    assert patients.groupby("group_id").size().max() > 1
    split = assign_splits(patients, strategy=strategy, seed=42, **kwargs)
    assert split.name == "split"
    assert split.index.equals(patients.index)
    assert split.notna().all()
    assert set(split) == {"train", "val", "test"}
    per_group = split.groupby(patients["group_id"]).nunique()
    assert (per_group == 1).all()
    if strategy == "clinicrealm":
        assert patients.loc[split == "test", "group_id"].nunique() == 60


def test_assign_splits_group_label_is_max() -> None:
    """A group with any positive patient stratifies as positive (its label is the maximum)."""
    patients = _patients()
    group_max = patients.groupby("group_id")["label"].max()
    group_first = patients.groupby("group_id")["label"].first()
    assert (group_max != group_first).any()  # the choice matters for this cohort
    expected = stratified_split(group_max.index, group_max.to_numpy(), seed=9)
    split = assign_splits(patients, strategy="stratified", seed=9)
    assert split.tolist() == patients["group_id"].map(expected).tolist()


@pytest.mark.parametrize(
    "fractions",
    [(0.7, 0.2, 0.2), (0.8, 0.2, 0.0), (0.9, 0.2, -0.1), (0.8, 0.2)],
    ids=["sum-above-1", "zero-test", "negative", "two-values"],
)
def test_bad_fractions_raise(fractions: tuple[float, ...]) -> None:
    with pytest.raises(InputDataError) as exc:
        stratified_split(IDS, LABELS, fractions=fractions)
    assert exc.value.column == "split_fractions"
    message = str(exc.value)
    assert "cohort_dataset config" in message
    assert "column 'split_fractions'" in message
    assert "Fix:" in message


@pytest.mark.parametrize("test_size", [10, 11])
def test_test_size_not_below_cohort_raises(test_size: int) -> None:
    with pytest.raises(InputDataError) as exc:
        clinicrealm_split(list(range(10)), [0, 1] * 5, test_size=test_size)
    assert exc.value.column == "test_size"
    assert f"test_size={test_size} leaves fewer than 2 of 10 patients" in str(exc.value)
    assert "Fix:" in str(exc.value)


def test_unknown_strategy_raises() -> None:
    with pytest.raises(InputDataError) as exc:
        assign_splits(_patients(), strategy="random", seed=0)  # type: ignore[arg-type]
    assert exc.value.column == "split_strategy"
    assert "'random'" in str(exc.value)


def test_test_size_leaving_one_patient_raises_input_error() -> None:
    with pytest.raises(InputDataError) as exc:
        clinicrealm_split(list(range(10)), [0, 1] * 5, test_size=9)
    assert exc.value.column == "test_size"


def test_stratified_split_too_few_groups_raises_input_error() -> None:
    with pytest.raises(InputDataError):
        stratified_split([1, 2], [0, 1])
