"""The MIMIC-IV cohort marts in plain pandas: the baselines of the warehouse benchmark.

Both styles read the raw csv.gz tables with ``pd.read_csv`` (chartevents and labevents in
chunks, each chunk filtered to the mapped itemids and reduced to (stay or subject, time,
feature, value) before it is kept, as memory-aware scripts do) and are an independent
re-implementation of the cohort logic for a correctness cross-check. They differ in the
per-patient part:

- ``vectorised``: merge / groupby / unstack over all stays at once, no Python loop per stay:
  the strongest pandas version we could write, the fair upper bound for pandas.
- ``per_stay``: one stay at a time (``groupby`` loop, sort, daily means, rows via
  ``iterrows``), the way PyEHR's preprocessing (``datasets/preprocess/tools.py``:
  ``forward_fill_pipeline``) and the mimic3-benchmarks scripts it builds on walk patients: the
  "straightforward, PyEHR-style" baseline the issue names.

Logic (mirrors dbt_project/models/intermediate/int_icu_* and macros/cohort_features.sql):
chart items -> feature via the seed, unit conversion, GCS / capillary-refill text -> score
(case-insensitive, trimmed); measurements kept only inside [intime, outtime] of their stay (labs
attached by subject_id and time); a measurement whose converted value is missing is dropped;
daily mean per (stay, date, feature); GCS total = sum of the three daily component means when
all three exist; the last 7 calendar days with any measurement; labels as int_icu_stays_labeled.

Run on its own, it times both styles in this process on one MIMIC-IV folder (``--root``, or a
synthetic one of ``--stays`` stays), prints their seconds and ratio and appends them to
``benchmarks/results/pandas_cohorts.json`` (not with ``--no-record``); peak memory and the
comparison with DuckDB/dbt need separate processes, which ``benchmarks/warehouse.py`` runs.

    .venv/bin/python -m benchmarks.pandas_cohorts [--stays 10000 | --root DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from benchmarks.results import record

PandasStyle = Literal["vectorised", "per_stay"]
STYLES: tuple[PandasStyle, ...] = ("vectorised", "per_stay")

SEEDS_DIR = Path(__file__).resolve().parent.parent / "dbt_project" / "seeds"
MAX_VISITS = 7
MIN_AGE = 18
READMISSION_WINDOW = pd.Timedelta(days=30)
CHUNK_ROWS = 2_000_000
GCS_COMPONENTS = ("gcs_eye", "gcs_motor", "gcs_verbal")
_CONVERSIONS = {
    "fahrenheit_to_celsius": lambda v: (v - 32) * 5.0 / 9.0,
    "lbs_to_kg": lambda v: v * 0.453592,
    "inch_to_cm": lambda v: v * 2.54,
    "percent_to_fraction": lambda v: v.where(v <= 1, v / 100.0),
}
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
# Only an empty field is NULL (MIMIC_IV_SCHEMA.md). pandas' default NA strings include "None",
# which is the GCS eye-opening text for score 0: read with the defaults, it would become NaN.
_NULL_IS_EMPTY: dict = {"keep_default_na": False, "na_values": [""]}


def _seeds(seeds_dir: Path) -> dict[str, pd.DataFrame]:
    names = (
        "feature_dictionary",
        "mimic_iv_chart_items",
        "mimic_iv_gcs_values",
        "mimic_iv_lab_items",
    )
    return {name: pd.read_csv(seeds_dir / f"{name}.csv", **_NULL_IS_EMPTY) for name in names}


def feature_ids(dictionary: pd.DataFrame) -> list[str]:
    """Cohort feature columns in dictionary order: 17 chart variables + the default lab panel."""
    d = dictionary[(dictionary["dataset"] == "mimic_iv") & (dictionary["kind"] != "demographic")]
    d = d[(d["source_column"] != "labevents") | d["in_default_panel"]]
    return d["feature_id"].tolist()


def labeled_stays(root: Path) -> pd.DataFrame:
    """Adult ICU stays with mortality and 30-day readmission labels (int_icu_stays_labeled)."""
    stays = pd.read_csv(
        root / "icu/icustays.csv.gz",
        usecols=["subject_id", "hadm_id", "stay_id", "intime", "outtime"],
        parse_dates=["intime", "outtime"],
        date_format=_TIME_FORMAT,
    )
    stays = stays[stays["outtime"] > stays["intime"]]  # NaT compares False: drops missing too
    stays = stays.sort_values(["subject_id", "intime", "stay_id"])
    stays["next_intime"] = stays.groupby("subject_id")["intime"].shift(-1)
    admissions = pd.read_csv(
        root / "hosp/admissions.csv.gz",
        usecols=["hadm_id", "deathtime", "hospital_expire_flag"],
        parse_dates=["deathtime"],
        date_format=_TIME_FORMAT,
    )
    patients = pd.read_csv(
        root / "hosp/patients.csv.gz",
        usecols=["subject_id", "gender", "anchor_age", "anchor_year", "dod"],
        parse_dates=["dod"],
        date_format="%Y-%m-%d",
    )
    s = stays.merge(admissions, on="hadm_id").merge(patients, on="subject_id")
    s["age"] = (s["anchor_age"] + (s["intime"].dt.year - s["anchor_year"])).astype(float)
    s = s[s["age"] >= MIN_AGE].copy()
    s["sex"] = s["gender"].str.upper().map({"M": 1, "F": 0}).astype("Int32")
    s["mortality_label"] = (
        (s["hospital_expire_flag"].fillna(0) == 1) | s["deathtime"].notna()
    ).astype("int32")
    window_end = s["outtime"] + READMISSION_WINDOW
    s["readmission_label"] = (
        (s["next_intime"] <= window_end)
        | (s["deathtime"] <= window_end)
        | (s["dod"] <= s["outtime"].dt.normalize() + READMISSION_WINDOW)
    ).astype("int32")
    columns = ["stay_id", "subject_id", "intime", "outtime", "sex", "age"]
    return s[[*columns, "mortality_label", "readmission_label"]].reset_index(drop=True)


def _in_window(frame: pd.DataFrame, windows: pd.DataFrame, key: str) -> pd.DataFrame:
    """Join to the stays on ``key`` and keep rows charted inside [intime, outtime]."""
    m = frame.merge(windows, on=key)
    m = m[(m["charttime"] >= m["intime"]) & (m["charttime"] <= m["outtime"])]
    return m[["stay_id", "charttime", "feature_id", "value"]]


def chart_measurements(
    root: Path, stays: pd.DataFrame, seeds: dict[str, pd.DataFrame]
) -> pd.DataFrame:
    """chartevents -> (stay_id, charttime, feature_id, value) in the dictionary's units."""
    items = seeds["mimic_iv_chart_items"][["itemid", "feature_id", "conversion"]]
    text_scores = seeds["mimic_iv_gcs_values"].assign(
        key=lambda g: g["value_text"].str.strip().str.lower()
    )[["feature_id", "key", "score"]]
    windows = stays[["stay_id", "intime", "outtime"]]
    reader = pd.read_csv(
        root / "icu/chartevents.csv.gz",
        usecols=["stay_id", "charttime", "itemid", "value", "valuenum"],
        dtype={"stay_id": "int64", "itemid": "int64", "value": "str", "valuenum": "float64"},
        chunksize=CHUNK_ROWS,
        **_NULL_IS_EMPTY,
    )
    parts = []
    for chunk in reader:
        c = chunk[chunk["itemid"].isin(items["itemid"]) & chunk["charttime"].notna()]
        c = c.merge(items, on="itemid")
        c["charttime"] = pd.to_datetime(c["charttime"], format=_TIME_FORMAT)
        num = c["valuenum"].copy()
        for conversion, convert in _CONVERSIONS.items():
            rows = c["conversion"] == conversion
            num[rows] = convert(c.loc[rows, "valuenum"])
        c["num"] = num
        is_text = c["conversion"].isin(["gcs_text", "capillary_refill_text"])
        text = c[is_text].assign(key=lambda t: t["value"].str.strip().str.lower())
        text = text.merge(text_scores, on=["feature_id", "key"], how="left")
        gcs = text["conversion"] == "gcs_text"
        text["num"] = text["score"].where(~gcs, text["score"].fillna(text["valuenum"]))
        c = pd.concat([c[~is_text], text[c.columns]], ignore_index=True)
        c = c.drop(columns="value").rename(columns={"num": "value"}).dropna(subset="value")
        parts.append(_in_window(c, windows, "stay_id"))
    return pd.concat(parts, ignore_index=True)


def lab_measurements(
    root: Path, stays: pd.DataFrame, seeds: dict[str, pd.DataFrame]
) -> pd.DataFrame:
    """labevents of the default panel attached to stays by subject_id and charttime."""
    dictionary = seeds["feature_dictionary"]
    panel = dictionary[(dictionary["dataset"] == "mimic_iv") & dictionary["in_default_panel"]]
    items = seeds["mimic_iv_lab_items"][["itemid", "feature_id"]]
    items = items[items["feature_id"].isin(panel["feature_id"])]
    windows = stays[["subject_id", "stay_id", "intime", "outtime"]]
    reader = pd.read_csv(
        root / "hosp/labevents.csv.gz",
        usecols=["subject_id", "itemid", "charttime", "valuenum"],
        dtype={"subject_id": "int64", "itemid": "int64", "valuenum": "float64"},
        chunksize=CHUNK_ROWS,
    )
    parts = []
    for chunk in reader:
        c = chunk.dropna(subset=["charttime", "valuenum"]).merge(items, on="itemid")
        c["charttime"] = pd.to_datetime(c["charttime"], format=_TIME_FORMAT)
        parts.append(_in_window(c.rename(columns={"valuenum": "value"}), windows, "subject_id"))
    return pd.concat(parts, ignore_index=True)


def daily_measurements(measurements: pd.DataFrame) -> pd.DataFrame:
    """Daily mean per (stay, date, feature) plus GCS total, over the last 7 measured days."""
    measurements = measurements.assign(visit_date=measurements["charttime"].dt.normalize())
    daily = (
        measurements.groupby(["stay_id", "visit_date", "feature_id"], observed=True)["value"]
        .mean()
        .reset_index()
    )
    gcs = daily[daily["feature_id"].isin(GCS_COMPONENTS)]
    gcs = gcs.groupby(["stay_id", "visit_date"])["value"].agg(["sum", "count"]).reset_index()
    gcs = gcs[gcs["count"] == len(GCS_COMPONENTS)]
    gcs_total = gcs[["stay_id", "visit_date"]].assign(feature_id="gcs_total", value=gcs["sum"])
    daily = pd.concat([daily, gcs_total], ignore_index=True)
    days = daily[["stay_id", "visit_date"]].drop_duplicates()
    from_end = days.groupby("stay_id")["visit_date"].rank(method="first", ascending=False)
    kept = days[from_end <= MAX_VISITS]
    return daily.merge(kept, on=["stay_id", "visit_date"])


def _wide_vectorised(measurements: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    daily = daily_measurements(measurements)
    wide = daily.set_index(["stay_id", "visit_date", "feature_id"])["value"].unstack()
    wide = wide.reindex(columns=features).reset_index()
    wide.columns.name = None
    wide["visit_index"] = (wide.groupby("stay_id")["visit_date"].rank(method="first") - 1).astype(
        "int32"
    )
    return wide


def _wide_per_stay(measurements: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """One stay at a time: its daily means, GCS total, last visits, one row per visit."""
    records = []
    for stay_id, group in measurements.groupby("stay_id", sort=True):
        group = group.sort_values("charttime", kind="stable")
        daily = (
            group.assign(visit_date=group["charttime"].dt.normalize())
            .groupby(["visit_date", "feature_id"])["value"]
            .mean()
            .unstack()
        )
        if all(c in daily.columns for c in GCS_COMPONENTS):
            daily["gcs_total"] = daily[list(GCS_COMPONENTS)].sum(axis=1, min_count=3)
        daily = daily.sort_index().tail(MAX_VISITS)
        for visit_index, (visit_date, values) in enumerate(daily.iterrows()):
            record = {"stay_id": stay_id, "visit_date": visit_date}
            for feature in features:
                record[feature] = values.get(feature, np.nan)
            record["visit_index"] = visit_index
            records.append(record)
    wide = pd.DataFrame.from_records(records)
    wide[features] = wide[features].astype("float64")
    wide["visit_index"] = wide["visit_index"].astype("int32")
    return wide


def build_cohorts_pandas(
    mimic_root: Path, seeds_dir: Path = SEEDS_DIR, style: PandasStyle = "vectorised"
) -> dict[str, pd.DataFrame]:
    """``cohort_mimic_iv_mortality`` and ``cohort_mimic_iv_readmission`` from the raw csv.gz."""
    if style not in ("vectorised", "per_stay"):
        raise ValueError(f"unknown pandas style {style!r}; use 'vectorised' or 'per_stay'")
    root = Path(mimic_root)
    seeds = _seeds(seeds_dir)
    stays = labeled_stays(root)
    measurements = pd.concat(
        [chart_measurements(root, stays, seeds), lab_measurements(root, stays, seeds)],
        ignore_index=True,
    )
    features = feature_ids(seeds["feature_dictionary"])
    build = _wide_vectorised if style == "vectorised" else _wide_per_stay
    wide = build(measurements, features)
    del measurements
    base = wide.merge(stays, on="stay_id").rename(
        columns={"stay_id": "patient_id", "subject_id": "group_id"}
    )
    base = base.sort_values(["patient_id", "visit_index"], ignore_index=True)
    head = ["patient_id", "group_id", "visit_index", "visit_date"]
    tail = ["sex", "age", "intime", "outtime", *feature_ids(seeds["feature_dictionary"])]
    return {
        f"cohort_mimic_iv_{task}": base[[*head, f"{task}_label", *tail]].rename(
            columns={f"{task}_label": "label"}
        )
        for task in ("mortality", "readmission")
    }


def main(argv: list[str] | None = None) -> int:
    """Time each style's build of both marts on one folder; print and record the seconds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--root", type=Path, default=None, help="a MIMIC-IV hosp/ + icu/ folder")
    source.add_argument("--stays", type=int, default=10_000, help="synthetic stays, if no --root")
    parser.add_argument("--seed", type=int, default=0, help="of the synthetic data")
    parser.add_argument("--styles", nargs="+", choices=STYLES, default=list(STYLES))
    parser.add_argument("--no-record", action="store_true", help="do not append to the results")
    args = parser.parse_args(argv)

    work = None
    root = args.root
    if root is None:
        from eagrl_pipeline.data.synthetic_mimic_iv import write_synthetic_mimic_iv

        work = Path(tempfile.mkdtemp(prefix="eagrl_bench_pandas_"))
        started = time.perf_counter()
        root = write_synthetic_mimic_iv(work / "mimic_iv", n_stays=args.stays, seed=args.seed)
        print(f"[{args.stays} stays] generated in {time.perf_counter() - started:.1f} s")
    styles: dict[str, dict[str, float | int]] = {}
    walls: dict[str, float] = {}
    try:
        for style in args.styles:
            wall, cpu = time.perf_counter(), time.process_time()
            marts = build_cohorts_pandas(root, style=style)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            walls[style] = wall
            visits = len(marts["cohort_mimic_iv_mortality"])
            stays = int(marts["cohort_mimic_iv_mortality"]["patient_id"].nunique())
            styles[style] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                             "out_rows": visits, "out_stays": stays}  # fmt: skip
            print(f"  pandas ({style}): {wall:.1f} s wall, {cpu:.1f} s CPU; {visits:,} visit rows "
                  f"of {stays:,} stays", flush=True)  # fmt: skip
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    entry: dict[str, object] = {
        "root": "synthetic" if args.root is None else str(args.root),
        **({"stays": args.stays, "seed": args.seed} if args.root is None else {}),
        **styles,
    }
    if walls.keys() >= set(STYLES):
        ratio = walls["per_stay"] / walls["vectorised"]
        entry["per_stay_over_vectorised"] = round(ratio, 1)
        print(f"per-stay / vectorised: {ratio:.1f}x")
    if not args.no_record:
        record("pandas_cohorts", entry)
    return 0


if __name__ == "__main__":
    sys.exit(main())
