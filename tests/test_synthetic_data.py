"""The synthetic raw generators must match the real raw formats and carry a learnable signal."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from eagrl_pipeline.data.synthetic_mimic_iv import write_synthetic_mimic_iv
from eagrl_pipeline.data.synthetic_tjh import write_synthetic_tjh
from eagrl_pipeline.data.tjh import TJH_COLUMNS, TJH_LAB_COLUMNS

TS = "%Y-%m-%d %H:%M:%S"


def _cv_auroc(x: pd.DataFrame, y: pd.Series) -> float:
    """Out-of-fold AUROC of a standardised logistic regression (median-imputed features)."""
    x = x.fillna(x.median()).fillna(0.0)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    proba = cross_val_predict(model, x, y, cv=5, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, proba))


# ---------------------------------------------------------------- TJH


def test_tjh_header_matches_the_real_file_in_csv_and_xlsx(tmp_path: Path) -> None:
    assert len(TJH_COLUMNS) == 81 and len(TJH_LAB_COLUMNS) == 74
    assert TJH_COLUMNS[TJH_COLUMNS.index("outcome") + 1 :] == TJH_LAB_COLUMNS
    for name in ("Tumor necrosis factorα", "Interleukin 1β", "γ-glutamyl transpeptidase",
                 "Red blood cell distribution width ", "platelet large cell ratio ",
                 "mean corpuscular hemoglobin "):  # fmt: skip
        assert name in TJH_COLUMNS
    csv_path = write_synthetic_tjh(tmp_path / "tjh.csv", n_patients=30)
    first_line = csv_path.read_text(encoding="utf-8").split("\n", 1)[0]
    assert first_line == ",".join(TJH_COLUMNS)
    assert tuple(pd.read_csv(csv_path).columns) == TJH_COLUMNS
    xlsx = pd.read_excel(
        write_synthetic_tjh(tmp_path / "tjh.xlsx", n_patients=10), engine="openpyxl"
    )
    assert tuple(xlsx.columns) == TJH_COLUMNS
    assert pd.api.types.is_datetime64_any_dtype(xlsx["RE_DATE"])
    with pytest.raises(ValueError, match=r"\.xlsx or \.csv"):
        write_synthetic_tjh(tmp_path / "tjh.parquet", n_patients=5)


def test_tjh_long_layout_like_the_real_file(tmp_path: Path) -> None:
    df = pd.read_csv(write_synthetic_tjh(tmp_path / "tjh.csv", n_patients=375))
    pid = df["PATIENT_ID"].ffill()
    first = ~pid.duplicated()
    assert df.loc[first, "PATIENT_ID"].notna().all() and df.loc[~first, "PATIENT_ID"].isna().all()
    assert df.loc[first, "PATIENT_ID"].tolist() == list(range(1, 376))
    rows = pid.value_counts()
    assert rows.min() >= 1 and rows.max() <= 40 and rows.median() >= 8
    blank = df["RE_DATE"].isna()
    assert 3 <= blank.sum() <= 40  # ~4 % of patients, a single row without labs
    assert df.loc[blank, list(TJH_LAB_COLUMNS)].isna().all().all()
    for col in ("RE_DATE", "Admission time", "Discharge time"):
        pd.to_datetime(df[col], format=TS)  # raises on any other format
    assert set(df["gender"]) <= {1, 2} and df["age"].between(18, 95).all()
    static = ["age", "gender", "Admission time", "Discharge time", "outcome"]
    assert (df.groupby(pid)[static].nunique() == 1).all().all()
    assert 0.3 < df.groupby(pid)["outcome"].first().mean() < 0.6
    assert 0.75 < df[list(TJH_LAB_COLUMNS)].isna().to_numpy().mean() < 0.92
    ncov = df["2019-nCoV nucleic acid detection"].dropna()
    assert len(ncov) > 0 and (ncov == -1).all()
    dated = df[~blank]
    re_date = pd.to_datetime(dated["RE_DATE"])
    assert (re_date >= pd.to_datetime(dated["Admission time"])).all()
    assert (re_date <= pd.to_datetime(dated["Discharge time"])).all()
    assert re_date.groupby(pid[~blank]).is_monotonic_increasing.all()


def test_tjh_is_deterministic_per_seed(tmp_path: Path) -> None:
    a = write_synthetic_tjh(tmp_path / "a.csv", n_patients=50, seed=3).read_bytes()
    b = write_synthetic_tjh(tmp_path / "b.csv", n_patients=50, seed=3).read_bytes()
    c = write_synthetic_tjh(tmp_path / "c.csv", n_patients=50, seed=4).read_bytes()
    assert a == b and a != c


def test_tjh_mortality_is_learnable_from_mean_labs(tmp_path: Path) -> None:
    df = pd.read_csv(write_synthetic_tjh(tmp_path / "tjh.csv", n_patients=375, seed=0))
    df["pid"] = df["PATIENT_ID"].ffill()
    df = df[df["RE_DATE"].notna()]
    x = df.groupby("pid")[list(TJH_LAB_COLUMNS)].mean()
    y = df.groupby("pid")["outcome"].first().loc[x.index]
    assert _cv_auroc(x, y) > 0.85


# ---------------------------------------------------------------- MIMIC-IV

# Column order from shared/MIMIC_IV_SCHEMA.md "Table columns" (kept independent of the module).
EXPECTED_COLUMNS = {
    "hosp/patients": "subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod",
    "hosp/admissions": "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,"
    "admit_provider_id,admission_location,discharge_location,insurance,language,"
    "marital_status,race,edregtime,edouttime,hospital_expire_flag",
    "hosp/labevents": "labevent_id,subject_id,hadm_id,specimen_id,itemid,order_provider_id,"
    "charttime,storetime,value,valuenum,valueuom,ref_range_lower,ref_range_upper,flag,"
    "priority,comments",
    "hosp/d_labitems": "itemid,label,fluid,category",
    "icu/icustays": "subject_id,hadm_id,stay_id,first_careunit,last_careunit,intime,outtime,los",
    "icu/d_items": "itemid,label,abbreviation,linksto,category,unitname,param_type,"
    "lownormalvalue,highnormalvalue",
    "icu/chartevents": "subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,"
    "value,valuenum,valueuom,warning",
}
TIMESTAMPS = {
    "hosp/admissions": ["admittime", "dischtime", "deathtime", "edregtime", "edouttime"],
    "hosp/labevents": ["charttime", "storetime"],
    "icu/icustays": ["intime", "outtime"],
    "icu/chartevents": ["charttime", "storetime"],
}
INTEGERS = {
    "hosp/patients": ["subject_id", "anchor_age", "anchor_year"],
    "hosp/admissions": ["subject_id", "hadm_id", "hospital_expire_flag"],
    "hosp/labevents": ["labevent_id", "subject_id", "specimen_id", "itemid"],
    "hosp/d_labitems": ["itemid"],
    "icu/icustays": ["subject_id", "hadm_id", "stay_id"],
    "icu/d_items": ["itemid"],
    "icu/chartevents": ["subject_id", "hadm_id", "stay_id", "itemid", "warning"],
}
CHART_ITEMIDS = {
    223901, 223900, 220739, 224308, 223951, 224322, 226537, 225664, 220274, 220227, 223830,
    220621, 226707, 226730, 226531, 226512, 224690, 224422, 220277, 220210, 223835, 224689,
    225309, 220052, 220180, 223761, 227243, 220051, 223762, 220181, 220045, 225310, 224643,
    220179, 220050, 225312, 224167,
}  # fmt: skip
LAB_ITEMIDS = {
    50902, 50983, 50971, 50912, 51006, 51265, 51221, 50882, 50931, 51222, 50868, 51249, 51250,
    51301, 51248, 51277, 51279, 50960, 50970, 50893, 51274, 51237, 51275, 50920, 50885, 50878,
    50861, 50863, 51200, 51146,
}  # fmt: skip
# GCS text values of the schema doc (mimic_preprocessor possible_values), with the un-numbered
# MetaVision spellings of the mimic3-benchmarks maps.
GCS_TEXT = {
    220739: {"1 No Response", "2 To pain", "3 To speech", "4 Spontaneously", "None",
             "Spontaneously", "To Pain", "To Speech"},
    223901: {"1 No Response", "2 Abnorm extensn", "3 Abnorm flexion", "4 Flex-withdraws",
             "5 Localizes Pain", "6 Obeys Commands", "No response", "Abnormal extension",
             "Abnormal Flexion", "Flex-withdraws", "Localizes Pain", "Obeys Commands"},
    223900: {"1 No Response", "1.0 ET/Trach", "2 Incomp sounds", "3 Inapprop words",
             "4 Confused", "5 Oriented", "No Response-ETT", "No Response",
             "Incomprehensible sounds", "Inappropriate Words", "Confused", "Oriented"},
}  # fmt: skip


@pytest.fixture(scope="module")
def mimic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_mimic_iv(tmp_path_factory.mktemp("mimic"), n_stays=2000, seed=0)


def _read(root: Path, table: str, **kwargs) -> pd.DataFrame:
    return pd.read_csv(root / f"{table}.csv.gz", **kwargs)


def test_mimic_files_have_the_official_layout_and_headers(mimic_root: Path) -> None:
    for table, header in EXPECTED_COLUMNS.items():
        path = mimic_root / f"{table}.csv.gz"
        with gzip.open(path, "rt", encoding="utf-8") as f:
            assert f.readline().rstrip("\n") == header, table
            head = f.read(2_000_000)
        assert '""' not in head, f"{table}: NULL must be an empty field, not a quoted string"


def test_mimic_types_parse(mimic_root: Path) -> None:
    for table in EXPECTED_COLUMNS:
        df = _read(mimic_root, table, keep_default_na=False, na_values=[""])
        for col in INTEGERS[table]:
            assert pd.api.types.is_integer_dtype(df[col]), (table, col)
        for col in TIMESTAMPS.get(table, []):
            parsed = pd.to_datetime(df[col], format=TS)
            assert parsed.notna().sum() == df[col].notna().sum()
            assert parsed.dropna().dt.year.between(2110, 2200).all()
    pd.to_datetime(_read(mimic_root, "hosp/patients")["dod"], format="%Y-%m-%d")
    stays = _read(mimic_root, "icu/icustays")
    span = pd.to_datetime(stays["outtime"]) - pd.to_datetime(stays["intime"])
    assert np.allclose(stays["los"], span.dt.total_seconds() / 86400)
    assert stays["los"].between(0.5, 20).all()
    assert stays["subject_id"].min() >= 10_000_000 and stays["stay_id"].min() >= 30_000_000


def test_mimic_quirks_and_codes(mimic_root: Path) -> None:
    labs = _read(mimic_root, "hosp/labevents")
    assert 0.15 <= labs["hadm_id"].isna().mean() <= 0.35
    assert set(labs["itemid"]) == LAB_ITEMIDS
    assert 0.0 < labs["valuenum"].isna().mean() < 0.1 and labs["value"].notna().all()
    assert set(labs["flag"].dropna()) == {"abnormal"}
    d_labitems = _read(mimic_root, "hosp/d_labitems").set_index("itemid")
    assert set(d_labitems.index) > LAB_ITEMIDS
    assert d_labitems.loc[50893, "label"] == "Calcium, Total"
    assert d_labitems.loc[50878, "label"] == "Asparate Aminotransferase (AST)"

    chart = _read(mimic_root, "icu/chartevents", keep_default_na=False, na_values=[""])
    assert set(chart["itemid"]) == CHART_ITEMIDS
    for itemid, allowed in GCS_TEXT.items():
        values = set(chart.loc[chart["itemid"] == itemid, "value"])
        assert values <= allowed and len(values) > 3
    crr = chart[chart["itemid"].isin([224308, 223951])]
    assert crr["valuenum"].isna().all()
    assert set(crr["value"]) == {"Normal <3 secs", "Abnormal >3 secs"}
    temp_f = (chart["itemid"] == 223761).sum() / chart["itemid"].isin([223761, 223762]).sum()
    assert 0.6 < temp_f < 0.8
    uom = chart.groupby("itemid")["valueuom"].first()
    assert uom[223761] == "°F" and uom[223762] == "°C" and uom[220045] == "bpm"
    d_items = _read(mimic_root, "icu/d_items").set_index("itemid")
    assert set(d_items.index) > CHART_ITEMIDS
    assert (d_items.loc[list(CHART_ITEMIDS), "linksto"] == "chartevents").all()

    stays = _read(mimic_root, "icu/icustays")
    assert (stays.groupby("subject_id").size() >= 2).sum() > 50
    joined = chart.merge(stays[["stay_id", "intime"]], on="stay_id")
    early = pd.to_datetime(joined["charttime"]) < pd.to_datetime(joined["intime"])
    assert 0 < early.sum() < 0.01 * len(joined)
    adm = _read(mimic_root, "hosp/admissions")
    assert 0.08 < adm["hospital_expire_flag"].mean() < 0.16
    assert (adm["deathtime"].notna() == (adm["hospital_expire_flag"] == 1)).all()


def test_mimic_mortality_is_learnable_from_mean_vitals(mimic_root: Path) -> None:
    chart = _read(mimic_root, "icu/chartevents", usecols=["stay_id", "itemid", "valuenum"])
    x = chart.pivot_table(index="stay_id", columns="itemid", values="valuenum", aggfunc="mean")
    x = x.loc[:, x.notna().mean() > 0.2]
    stays = _read(mimic_root, "icu/icustays").merge(
        _read(mimic_root, "hosp/admissions")[["hadm_id", "hospital_expire_flag"]], on="hadm_id"
    )
    y = stays.set_index("stay_id")["hospital_expire_flag"]
    assert _cv_auroc(x.reindex(y.index), y) > 0.75


def test_mimic_without_labevents_and_determinism(tmp_path: Path) -> None:
    a = write_synthetic_mimic_iv(tmp_path / "a", n_stays=300, seed=1)
    b = write_synthetic_mimic_iv(tmp_path / "b", n_stays=300, seed=1)
    c = write_synthetic_mimic_iv(tmp_path / "c", n_stays=300, seed=2)
    for table in EXPECTED_COLUMNS:
        name = f"{table}.csv.gz"
        assert (a / name).read_bytes() == (b / name).read_bytes(), table
    assert (a / "icu/chartevents.csv.gz").read_bytes() != (
        c / "icu/chartevents.csv.gz"
    ).read_bytes()
    assert len(_read(a, "icu/icustays")) == 300
    write_synthetic_mimic_iv(a, n_stays=300, seed=1, include_labevents=False)
    assert not (a / "hosp/labevents.csv.gz").exists()
    assert (a / "icu/chartevents.csv.gz").exists()
