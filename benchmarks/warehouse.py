"""Benchmark: DuckDB snapshot + dbt cohort marts vs plain-pandas builds of the same marts.

Two pandas baselines (``benchmarks/pandas_cohorts.py``): ``vectorised`` (no per-stay loop, the
strongest pandas we could write) and ``per_stay`` (one stay at a time, as PyEHR-style scripts
walk patients; the issue's baseline). Ratios are printed against each.

For each size a synthetic MIMIC-IV folder is generated (timed, but not part of either path),
then each path runs in its own subprocess so that its wall time and peak memory are its own. The
peak is the maximum of the summed RSS of the whole process tree (dbt runs as a grandchild),
polled every 0.1 s; a tree above ``--mem-limit-gb`` is killed and reported, so the pandas path
cannot take the machine down. At the smallest size the two paths' marts are cross-checked. The
summary table is appended to ``benchmarks/results/warehouse.json`` (not with ``--no-record``).

    .venv/bin/python -m benchmarks.warehouse --sizes 1000 10000 100000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import psutil

from benchmarks.results import record

REPO = Path(__file__).resolve().parent.parent
DBT_DIR = REPO / "dbt_project"
SEEDS_DIR = DBT_DIR / "seeds"
MARTS = ("cohort_mimic_iv_mortality", "cohort_mimic_iv_readmission")
SELECT = ["--select", *(f"+{m}" for m in MARTS)]
KEYS = ["patient_id", "visit_index"]
STYLES = ("vectorised", "per_stay")


@dataclass
class Measurement:
    """One path's run: wall seconds, peak tree RSS, how it ended and what the child reported."""

    wall_s: float
    peak_mb: float
    cpu_s: float  # user + system of the whole tree: robust when other jobs share the CPUs
    killed: str | None = None
    rc: int = 0
    report: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.killed is None and self.rc == 0


def measure(
    cmd: list[str], mem_limit_mb: float, timeout_s: float, log: Path, cwd: Path = REPO
) -> Measurement:
    """Run ``cmd``; poll the tree's summed RSS every 0.1 s; kill it past the memory/time limit."""
    start = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    root = psutil.Process(proc.pid)
    peak = 0.0
    killed = None
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        rss = 0
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                rss += p.memory_info().rss
        peak = max(peak, rss / 2**20)
        elapsed = time.perf_counter() - start
        if peak > mem_limit_mb or elapsed > timeout_s:
            what = f"{mem_limit_mb / 1024:.0f} GB" if peak > mem_limit_mb else "the time limit"
            killed = f"killed at {what} after {elapsed:.0f} s"
            for p in reversed(tree):
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            break
        time.sleep(0.1)
    rc = proc.wait()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    report_path = log.with_suffix(".json")
    report = json.loads(report_path.read_text()) if report_path.exists() and not killed else {}
    return Measurement(wall, peak, cpu, killed, rc, report)


# --- child processes: each path exactly as it would run, reporting stage timings as JSON ----


def _child_duckdb(root: Path, work: Path, dbt_cmd: list[str], report: Path) -> None:
    """Snapshot csv.gz -> parquet in-process, then dbt (seeds + models, no tests) as dbt runs."""
    from eagrl_pipeline.data.mimic_iv import snapshot_mimic_iv

    t0 = time.perf_counter()
    counts = snapshot_mimic_iv(
        root,
        work / "artifacts" / "raw_mimic_iv",
        feature_set="vitals_labs",
        chart_itemids=pd.read_csv(SEEDS_DIR / "mimic_iv_chart_items.csv")["itemid"].tolist(),
        lab_itemids=pd.read_csv(SEEDS_DIR / "mimic_iv_lab_items.csv")["itemid"].tolist(),
    )
    t1 = time.perf_counter()
    subprocess.run(dbt_cmd, cwd=DBT_DIR, check=True)
    t2 = time.perf_counter()
    report.write_text(json.dumps({"counts": counts, "snapshot_s": t1 - t0, "dbt_s": t2 - t1}))


def _child_pandas(root: Path, work: Path, report: Path, style: str) -> None:
    """Build the marts with pandas and persist them (the warehouse path persists its marts too)."""
    from benchmarks.pandas_cohorts import build_cohorts_pandas

    t0 = time.perf_counter()
    marts = build_cohorts_pandas(root, style=style)  # type: ignore[arg-type]
    t1 = time.perf_counter()
    (work / f"pandas_{style}").mkdir(exist_ok=True)
    for name, frame in marts.items():
        frame.to_parquet(work / f"pandas_{style}" / f"{name}.parquet", index=False)
    t2 = time.perf_counter()
    report.write_text(json.dumps({"build_s": t1 - t0, "write_s": t2 - t1}))


# --- cross-check ------------------------------------------------------------------------------


def compare_marts(warehouse: Path, pandas_dir: Path, rtol: float = 1e-6) -> list[str]:
    """Differences between the dbt marts and the pandas marts; empty when they agree."""
    problems: list[str] = []
    with duckdb.connect(str(warehouse), read_only=True) as con:
        for name in MARTS:
            d = con.sql(f"select * from {name}").df()
            p = pd.read_parquet(pandas_dir / f"{name}.parquet")
            if list(d.columns) != list(p.columns):
                problems.append(f"{name}: columns differ: {list(d.columns)} vs {list(p.columns)}")
                continue
            m = d.merge(p, on=KEYS, how="outer", suffixes=("_d", "_p"), indicator=True)
            only = m["_merge"].value_counts()
            if only["left_only"] or only["right_only"]:
                problems.append(
                    f"{name}: (patient_id, visit_index) only in dbt: {only['left_only']}, "
                    f"only in pandas: {only['right_only']}; e.g. "
                    f"{m.loc[m['_merge'] != 'both', [*KEYS, '_merge']].head(5).to_dict('records')}"
                )
            both = m[m["_merge"] == "both"]
            for col in d.columns.drop(KEYS):
                a, b = both[f"{col}_d"], both[f"{col}_p"]
                if col in ("visit_date", "intime", "outtime"):
                    bad = (pd.to_datetime(a) != pd.to_datetime(b)).to_numpy()
                else:
                    x, y = a.astype("float64").to_numpy(), b.astype("float64").to_numpy()
                    bad = ~(np.isclose(x, y, rtol=rtol, atol=0) | (np.isnan(x) & np.isnan(y)))
                if bad.any():
                    rows = both.loc[bad, [*KEYS, f"{col}_d", f"{col}_p"]].head(3)
                    problems.append(
                        f"{name}.{col}: {bad.sum()} differ, e.g. {rows.to_dict('records')}"
                    )
    return problems


# --- driver -----------------------------------------------------------------------------------


def _dbt_cmd(work: Path, command: str) -> list[str]:
    from resources.dbt import dbt_executable, dbt_vars

    cmd = [dbt_executable(), command, "--profiles-dir", ".", "--target-path", str(work / "target")]
    cmd += ["--log-path", str(work / "logs"), *SELECT]
    cmd += dbt_vars(
        raw_root=work / "artifacts",
        warehouse_path=work / "warehouse.duckdb",
        mimic_iv_feature_set="vitals_labs",
    )
    if command == "build":  # seeds + models: the cohort logic; dbt tests are timed apart
        cmd += ["--exclude-resource-type", "test", "--exclude-resource-type", "unit_test"]
    return cmd


def _model_times(work: Path, top: int = 4) -> str:
    """The slowest dbt nodes of the last invocation, from its run_results.json."""
    path = work / "target" / "run_results.json"
    if not path.exists():
        return "n/a"
    results = json.loads(path.read_text())["results"]
    slow = sorted(results, key=lambda r: -r["execution_time"])[:top]
    return ", ".join(f"{r['unique_id'].split('.')[-1]} {r['execution_time']:.1f}s" for r in slow)


def _fmt(m: Measurement, value: float, spec: str) -> str:
    return format(value, spec) if m.ok else "-"


def _report(name: str, m: Measurement, log: Path, detail: Callable[[dict], str]) -> None:
    status = m.killed or (f"exit {m.rc}, see {log}" if m.rc else detail(m.report))
    print(
        f"  {name}: {m.wall_s:.1f} s wall, {m.cpu_s:.1f} s CPU, peak {m.peak_mb:.0f} MB; {status}",
        f"(load avg {os.getloadavg()[0]:.1f})",
        flush=True,
    )


def run_size(n: int, args: argparse.Namespace, check: bool) -> dict[str, object]:
    """Generate one size, measure both paths, print the stage breakdown; return the table row."""
    from eagrl_pipeline.data.synthetic_mimic_iv import write_synthetic_mimic_iv

    work = Path(args.workdir) / f"stays_{n}"
    work.mkdir(parents=True, exist_ok=True)
    root = work / "mimic_iv"
    t0 = time.perf_counter()
    write_synthetic_mimic_iv(root, n_stays=n, seed=args.seed)
    gen_s = time.perf_counter() - t0
    print(f"\n[{n} stays] generated {root} in {gen_s:.1f} s", flush=True)

    pandas_dirs = [f"pandas_{style}" for style in STYLES]
    for stale in ("target", "logs", "artifacts", *pandas_dirs, "warehouse.duckdb"):  # a first run
        path = work / stale
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    me = [sys.executable, "-m", "benchmarks.warehouse", "--root", str(root), "--work", str(work)]
    limit_mb = args.mem_limit_gb * 1024
    duck = measure(
        [*me, "--child", "duckdb", "--dbt-cmd", json.dumps(_dbt_cmd(work, "build"))],
        limit_mb,
        args.timeout,
        work / "duckdb.log",
    )
    _report(
        "duckdb",
        duck,
        work / "duckdb.log",
        lambda r: (
            f"snapshot {r['snapshot_s']:.1f} s, dbt build (seeds + models) {r['dbt_s']:.1f} s; "
            f"slowest dbt nodes: {_model_times(work)}"
        ),
    )
    tests = measure(
        _dbt_cmd(work, "test"), limit_mb, args.timeout, work / "dbt_test.log", cwd=DBT_DIR
    )
    _report("dbt test (not in the timed path)", tests, work / "dbt_test.log", lambda r: "passed")
    pand: dict[str, Measurement] = {}
    for style in args.pandas_styles:
        log = work / f"pandas_{style}.log"
        cmd = [*me, "--child", "pandas", "--style", style]
        pand[style] = measure(cmd, limit_mb, args.timeout, log)
        _report(
            f"pandas ({style})",
            pand[style],
            log,
            lambda r: f"build {r['build_s']:.1f} s, write parquet {r['write_s']:.1f} s",
        )

    chart_rows = int(duck.report.get("counts", {}).get("chartevents", 0))
    out_rows = 0
    if duck.ok:
        with duckdb.connect(str(work / "warehouse.duckdb"), read_only=True) as con:
            row = con.execute(f"select count(*) from {MARTS[0]}").fetchone()
            out_rows = int(row[0]) if row else 0
    for style, m in pand.items():
        if check and duck.ok and m.ok:
            problems = compare_marts(work / "warehouse.duckdb", work / f"pandas_{style}")
            print(f"  agreement with pandas ({style}): {'DIFFERENCES' if problems else 'OK'}")
            for problem in problems:
                print("    " + problem)
    return {"n": n, "chart": chart_rows, "out": out_rows, "gen": gen_s, "duck": duck, "pand": pand}


def print_table(rows: list[dict]) -> None:
    """The summary: rows/s = chartevents rows per wall second; ratios are pandas / duckdb."""
    styles = list(rows[0]["pand"]) if rows else []
    cols = ["stays", "chart rows", "out rows", "gen s", "duckdb s", "duckdb cpu s", "duckdb MB",
            "duckdb rows/s"]  # fmt: skip
    for style in styles:
        cols += [f"{style} s", f"{style} MB", f"{style}/duckdb", f"{style} cpu ratio"]
    table = []
    for r in rows:
        d = r["duck"]
        line = [
            f"{r['n']}", f"{r['chart']:,}", f"{r['out']:,}", f"{r['gen']:.1f}",
            _fmt(d, d.wall_s, ".1f"), _fmt(d, d.cpu_s, ".1f"), f"{d.peak_mb:.0f}",
            _fmt(d, r["chart"] / d.wall_s, ",.0f"),
        ]  # fmt: skip
        for style in styles:
            p = r["pand"][style]
            both = d.ok and p.ok
            line += [
                _fmt(p, p.wall_s, ".1f"), f"{p.peak_mb:.0f}",
                f"{p.wall_s / d.wall_s:.1f}x" if both else "-",
                f"{p.cpu_s / d.cpu_s:.1f}x" if both else "-",
            ]  # fmt: skip
        table.append(line)
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    header = " | ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))
    print("\n" + header + "\n" + "-" * len(header))
    for r, t in zip(rows, table, strict=True):
        print(" | ".join(v.rjust(w) for v, w in zip(t, widths, strict=True)))
        for name, m in (("duckdb", r["duck"]), *((f"pandas ({s})", r["pand"][s]) for s in styles)):
            if not m.ok:
                print(f"    {name}: {m.killed or f'exit {m.rc}'}")


def table_entry(rows: list[dict]) -> list[dict[str, object]]:
    """The summary table's rows as the results file keeps them: per path its wall and CPU
    seconds, peak MB and stage seconds, or why it failed; pandas' ratios are over DuckDB's."""

    def path(m: Measurement, extra: dict[str, float]) -> dict[str, object]:
        if not m.ok:
            return {"peak_mb": round(m.peak_mb), "failed": m.killed or f"exit {m.rc}"}
        stages = {k: round(v, 1) for k, v in m.report.items() if k != "counts"}
        return {"wall_s": round(m.wall_s, 1), "cpu_s": round(m.cpu_s, 1),
                "peak_mb": round(m.peak_mb), **stages, **extra}  # fmt: skip

    out = []
    for r in rows:
        d = r["duck"]
        row: dict[str, object] = {
            "stays": r["n"],
            "chartevents_rows": r["chart"],
            "out_rows": r["out"],
            "generation_s": round(r["gen"], 1),
            "duckdb": path(d, {"rows_per_s": round(r["chart"] / d.wall_s)}),
        }
        for style, p in r["pand"].items():
            ratios = (
                {"over_duckdb": round(p.wall_s / d.wall_s, 1),
                 "cpu_over_duckdb": round(p.cpu_s / d.cpu_s, 1)}
                if d.ok else {}
            )  # fmt: skip
            row[f"pandas_{style}"] = path(p, ratios)
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--workdir", default=None, help="default: a new folder under /tmp")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument("--mem-limit-gb", type=float, default=18.0)
    parser.add_argument("--timeout", type=float, default=3600.0, help="per path, seconds")
    parser.add_argument(
        "--pandas-styles", nargs="+", choices=STYLES, default=list(STYLES), help="baselines to run"
    )
    parser.add_argument("--child", choices=["duckdb", "pandas"], help=argparse.SUPPRESS)
    parser.add_argument("--style", choices=STYLES, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--dbt-cmd", help=argparse.SUPPRESS)
    parser.add_argument("--no-record", action="store_true", help="do not append to the results")
    args = parser.parse_args(argv)

    if args.child:
        work = Path(args.work)
        report = work / (f"pandas_{args.style}.json" if args.child == "pandas" else "duckdb.json")
        report.unlink(missing_ok=True)
        if args.child == "duckdb":
            _child_duckdb(Path(args.root), work, json.loads(args.dbt_cmd), report)
        else:
            _child_pandas(Path(args.root), work, report, args.style)
        return 0

    os.environ["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    temporary = args.workdir is None
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="eagrl_bench_", dir="/tmp")
    limit = os.environ.get("EAGRL_DUCKDB_MEMORY_LIMIT", "3GB (default)")
    ram = psutil.virtual_memory().total / 2**30
    print(
        f"workdir {args.workdir}; {psutil.cpu_count()} CPUs, {ram:.0f} GiB RAM; "
        f"EAGRL_DUCKDB_MEMORY_LIMIT={limit}"
    )
    rows = []
    smallest = min(args.sizes)
    for n in args.sizes:
        rows.append(run_size(n, args, check=n == smallest))
        if not args.keep:  # raw csv.gz, parquet snapshot and warehouse: GBs at 100k stays
            shutil.rmtree(Path(args.workdir) / f"stays_{n}", ignore_errors=True)
    print_table(rows)
    if not args.no_record:
        record(
            "warehouse",
            {
                "seed": args.seed,
                "mem_limit_gb": args.mem_limit_gb,
                "duckdb_memory_limit": limit,
                "ram_gib": round(ram, 1),
                "rows": table_entry(rows),
            },
        )
    if temporary and not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
