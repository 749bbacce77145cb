"""benchmarks/results.py: each benchmark's measurement history is one JSON list that a run
appends to, with the provenance that makes its figures comparable, and never half-written."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import results

REPO = Path(__file__).resolve().parent.parent
REPO_RESULTS = REPO / "benchmarks" / "results"
# benchmarks/learning.py rewrites its results whole on every study (the table is learning.md):
# a snapshot of the latest study, not a history.
SNAPSHOTS = {"learning.json"}
HISTORIES = {
    "no_change_run", "make_run", "mcts", "experts", "training", "warehouse", "pandas_cohorts",
    "learning_history", "label_finetune",
}  # fmt: skip


@pytest.fixture
def results_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """record() writes under tmp_path only; the repository's results must not change."""
    before = {p.name: p.stat().st_mtime_ns for p in REPO_RESULTS.iterdir()}
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path / "results")
    yield tmp_path / "results"
    assert {p.name: p.stat().st_mtime_ns for p in REPO_RESULTS.iterdir()} == before


def test_record_appends_and_keeps_earlier_entries(results_dir: Path) -> None:
    first = results.record("demo", {"speedup": 2.5, "sizes": [1, 2]})
    second = results.record("demo", {"speedup": 3.0})
    assert first == second == results_dir / "demo.json"
    history = json.loads(first.read_text())
    assert [e["speedup"] for e in history] == [2.5, 3.0]
    assert history[0]["sizes"] == [1, 2]
    assert sorted(p.name for p in results_dir.iterdir()) == ["demo.json"]  # no temporary left


def test_entries_carry_provenance(results_dir: Path) -> None:
    entry = json.loads(results.record("demo", {"x": 1}).read_text())[-1]
    assert set(results.PROVENANCE_KEYS) - {"commit", "dirty"} <= set(entry)
    date = dt.datetime.fromisoformat(entry["date"])
    assert date.tzinfo is not None and abs(dt.datetime.now(dt.UTC) - date).total_seconds() < 300
    machine = entry["machine"]
    assert machine["cpu"] and machine["cores"] >= 1
    assert isinstance(machine["amx_bf16"], bool) and isinstance(machine["avx512_bf16"], bool)
    assert entry["torch"]
    assert entry["command"] == " ".join([Path(sys.executable).name, *sys.argv])
    if shutil.which("git") and (REPO / ".git").exists():
        assert entry["commit"] and isinstance(entry["dirty"], bool)


def test_numpy_scalars_and_paths_are_written_as_plain_values(results_dir: Path) -> None:
    entry = {"s": np.float32(1.5), "n": np.int64(7), "where": Path("/tmp/x")}
    written = json.loads(results.record("demo", entry).read_text())[-1]
    assert (written["s"], written["n"], written["where"]) == (1.5, 7, "/tmp/x")


def test_an_unserialisable_entry_leaves_the_history_as_it_was(results_dir: Path) -> None:
    path = results.record("demo", {"x": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        results.record("demo", {"x": 2, "bad": object()})
    assert path.read_bytes() == before
    assert sorted(p.name for p in results_dir.iterdir()) == ["demo.json"]


def test_a_crash_mid_write_leaves_the_history_as_it_was(
    results_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = results.record("demo", {"x": 1})
    before = path.read_bytes()
    write_text = Path.write_text

    def half_then_crash(self: Path, text: str, *args: object, **kwargs: object) -> int:
        write_text(self, text[: len(text) // 2])
        raise OSError("disk full")

    with monkeypatch.context() as patch, pytest.raises(OSError, match="disk full"):
        patch.setattr(Path, "write_text", half_then_crash)
        results.record("demo", {"x": 2})
    assert path.read_bytes() == before
    assert sorted(p.name for p in results_dir.iterdir()) == ["demo.json"]


def test_entry_keys_may_not_shadow_provenance(results_dir: Path) -> None:
    with pytest.raises(ValueError, match="provenance"):
        results.record("demo", {"date": "yesterday"})
    assert not (results_dir / "demo.json").exists()


def test_a_file_that_is_not_a_history_is_not_appended_to(results_dir: Path) -> None:
    results_dir.mkdir()
    path = results_dir / "learning.json"
    path.write_text('{"partition": "tjh-mortality"}\n')
    with pytest.raises(ValueError, match="not a JSON list"):
        results.record("learning", {"x": 1})
    assert path.read_text() == '{"partition": "tjh-mortality"}\n'


@pytest.mark.parametrize("path", sorted(REPO_RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_repository_results_files_are_dated_histories(path: Path) -> None:
    """Every history entry says when it was measured, or that it was transcribed from prose."""
    data = json.loads(path.read_text())
    if path.name in SNAPSHOTS:
        assert isinstance(data, dict) and data
        return
    assert isinstance(data, list) and data, f"{path.name}: not a non-empty JSON list"
    for i, entry in enumerate(data):
        assert isinstance(entry, dict), f"{path.name}[{i}] is not an object"
        if "date" in entry:
            dt.datetime.fromisoformat(entry["date"])
        else:
            assert str(entry.get("source", "")).startswith("README.md before "), (
                f"{path.name}[{i}] has neither a date nor a transcription source"
            )


def test_every_benchmark_has_a_history_file() -> None:
    assert {p.stem for p in REPO_RESULTS.glob("*.json")} >= HISTORIES
