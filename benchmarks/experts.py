"""Benchmark: the four experts on the real TJH cohort (ClinicRealm split) next to published
figures, and training throughput on a synthetic MIMIC-IV cohort.

The cohorts are built by the pipeline itself (raw -> dbt -> cohort_dataset, materialized into a
temporary EAGRL_HOME), so the numbers are those of the lineage, not of a side script. Both
tables are appended to ``benchmarks/results/experts.json`` (not with ``--no-record``).

    .venv/bin/python -m benchmarks.experts [--models concare gru ...] [--mimic-stays 10000]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from benchmarks.results import record
from eagrl_pipeline.data.cohort import CohortArrays
from eagrl_pipeline.evaluation.metrics import bootstrap_metrics
from eagrl_pipeline.experts import MODEL_NAMES, ExpertConfig, predict_proba, train_expert

REPO = Path(__file__).resolve().parent.parent
TJH_FILE = REPO.parent / "shared" / "data" / "tjh" / "time_series_375_prerpocess_en.xlsx"
# (AUROC, AUPRC) x 100: PyEHR 10-fold on TJH, and ClinicRealm on its 200-patient test split.
PUBLISHED = {
    "concare": ((97.89, 97.01), (91.00, 91.72)),
    "gru": ((97.59, 96.33), None),
    "adacare": ((98.53, 97.86), (99.02, 98.86)),
    "transformer": ((96.86, 93.47), None),
}


class PeakRss:
    """Peak resident memory of this process while the block runs (polled every 50 ms)."""

    def __enter__(self) -> PeakRss:
        self._process = psutil.Process()
        self.baseline = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def added_mb(self) -> float:
        """Growth over the process's footprint before the block (Dagster, DuckDB, data)."""
        return (self.peak - self.baseline) / 2**20


def build_cohort(home: Path, partition: str, **sources: object) -> CohortArrays:
    """raw -> warehouse -> cohort_dataset[partition] through Dagster, into ``home``."""
    from dagster import AssetSelection, DagsterInstance, materialize

    from definitions import all_assets, build_resources
    from resources import EhrSources

    resources = build_resources(str(home))
    resources["sources"] = EhrSources(**sources)
    instance = DagsterInstance.ephemeral()
    for selection, key in (
        (AssetSelection.groups("raw", "warehouse"), None),
        (AssetSelection.assets("cohort_dataset"), partition),
    ):
        result = materialize(
            all_assets, selection=selection, partition_key=key, resources=resources,
            instance=instance, raise_on_error=True,
        )  # fmt: skip
        assert result.success
    return CohortArrays.load(home / "artifacts" / "cohort_dataset" / partition / "arrays.npz")


def quality_on_tjh(arrays: CohortArrays, models: list[str], resamples: int) -> dict[str, Any]:
    """Print the quality table; return its figures (x 100, as printed) for the results file."""
    test = np.flatnonzero(arrays.split == "test")
    print(
        "\n(+MB: peak resident memory added by training, over the process's footprint)",
    )
    print(
        f"\n== TJH mortality, ClinicRealm split (train {int((arrays.split == 'train').sum())} / "
        f"val {int((arrays.split == 'val').sum())} / test {test.size}), "
        f"bootstrap {resamples} ==",
        flush=True,
    )
    header = ("model", "test AUROC", "test AUPRC", "epoch", "train s", "+MB", "PyEHR", "CR")
    print("{:<12}{:>17}{:>17}{:>7}{:>9}{:>7}{:>15}{:>15}".format(*header))
    figures: dict[str, Any] = {
        "split": {s: int((arrays.split == s).sum()) for s in ("train", "val", "test")},
        "resamples": resamples,
        "models": {},
    }
    for name in models:
        config = ExpertConfig.for_dataset("tjh")
        with PeakRss() as memory:
            trained = train_expert(arrays, name, config)
        probs = predict_proba(trained, arrays, test)
        est = bootstrap_metrics(arrays.y[test], probs, n_resamples=resamples, seed=42)
        pyehr, clinicrealm = PUBLISHED[name]
        fmt = lambda pair: f"{pair[0]:.2f}/{pair[1]:.2f}" if pair else "-"  # noqa: E731
        print(
            f"{name:<12}{est['auroc'].mean * 100:>10.2f}±{est['auroc'].std * 100:<5.2f}"
            f"{est['auprc'].mean * 100:>11.2f}±{est['auprc'].std * 100:<5.2f}"
            f"{trained.best_epoch:>7}{trained.train_seconds:>9.1f}{memory.added_mb:>7.0f}"
            f"{fmt(pyehr):>15}{fmt(clinicrealm):>15}",
            flush=True,
        )
        figures["models"][name] = {
            "test_auroc_mean": round(est["auroc"].mean * 100, 2),
            "test_auroc_std": round(est["auroc"].std * 100, 2),
            "test_auprc_mean": round(est["auprc"].mean * 100, 2),
            "test_auprc_std": round(est["auprc"].std * 100, 2),
            "best_epoch": int(trained.best_epoch),
            "train_s": round(trained.train_seconds, 1),
            "added_rss_mb": round(memory.added_mb),
        }
    return figures


def throughput_on_mimic(arrays: CohortArrays, models: list[str], epochs: int) -> dict[str, Any]:
    """Print the throughput table; return its figures for the results file."""
    n_train = int((arrays.split == "train").sum())
    print(
        f"\n== training throughput, synthetic MIMIC-IV mortality: {len(arrays.y)} stays, "
        f"{n_train} train, {arrays.x.shape[1]} visits x {arrays.x.shape[2]} features, "
        f"{epochs} epochs ==",
        flush=True,
    )
    print("{:<12}{:>14}{:>12}{:>8}".format("model", "patients/s", "s/epoch", "+MB"))
    figures: dict[str, Any] = {
        "stays": len(arrays.y),
        "train": n_train,
        "visits": arrays.x.shape[1],
        "features": arrays.x.shape[2],
        "epochs": epochs,
        "models": {},
    }
    for name in models:
        config = ExpertConfig.for_dataset("mimic_iv", max_epochs=epochs, patience=epochs)
        with PeakRss() as memory:
            started = time.perf_counter()
            trained = train_expert(arrays, name, config)
            seconds = time.perf_counter() - started
        per_epoch = seconds / max(len(trained.history), 1)
        print(
            f"{name:<12}{n_train / per_epoch:>14.0f}{per_epoch:>12.2f}{memory.added_mb:>8.0f}",
            flush=True,
        )
        figures["models"][name] = {
            "patients_per_s": round(n_train / per_epoch),
            "s_per_epoch": round(per_epoch, 2),
            "added_rss_mb": round(memory.added_mb),
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES))
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--mimic-stays", type=int, default=10_000)
    parser.add_argument("--mimic-epochs", type=int, default=2)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-record", action="store_true", help="do not append to the results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="eagrl_bench_experts_"))
    entry: dict[str, Any] = {"threads": args.threads}
    if TJH_FILE.exists():
        arrays = build_cohort(workdir / "tjh", "tjh-mortality", tjh_path=str(TJH_FILE))
        entry["tjh_quality"] = quality_on_tjh(arrays, args.models, args.resamples)
    else:
        print(f"real TJH file not found at {TJH_FILE}: skipping the quality table")
    if args.mimic_stays > 0:
        arrays = build_cohort(
            workdir / "mimic", "mimic_iv-mortality", synthetic_mimic_iv_stays=args.mimic_stays
        )
        entry["mimic_iv_throughput"] = throughput_on_mimic(arrays, args.models, args.mimic_epochs)
    if not args.no_record and len(entry) > 1:
        record("experts", entry)


if __name__ == "__main__":
    main()
