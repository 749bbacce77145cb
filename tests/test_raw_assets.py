"""Raw assets on bad input: one clear error, and the previous good snapshot stays in place."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from dagster import AssetSelection, DagsterInstance, materialize

from eagrl_pipeline.data.synthetic_tjh import write_synthetic_tjh
from eagrl_pipeline.errors import InputDataError


def _materialize_raw_tjh(home, tjh_path):
    from definitions import all_assets, build_resources
    from resources import EhrSources

    resources = build_resources(str(home))
    resources["sources"] = EhrSources(tjh_path=str(tjh_path))
    return materialize(
        all_assets,
        selection=AssetSelection.assets("raw_tjh"),
        resources=resources,
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def test_bad_tjh_file_fails_clearly_and_keeps_previous_snapshot(tmp_path):
    good = write_synthetic_tjh(tmp_path / "tjh.csv", n_patients=30, seed=1)
    first = _materialize_raw_tjh(tmp_path / "home", good)
    assert first.success
    snapshot = tmp_path / "home" / "artifacts" / "raw_tjh" / "lab_reports.parquet"
    before = snapshot.read_bytes()
    fingerprint = first.asset_materializations_for_node("raw_tjh")[0].metadata["fingerprint"]

    frame = pd.read_csv(good, dtype=str, keep_default_na=False)
    frame.loc[3, "hemoglobin"] = "n/a?"
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    second = _materialize_raw_tjh(tmp_path / "home", bad)

    assert not second.success
    (failure,) = [e for e in second.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.cause.message
    assert str(bad) in message and "'hemoglobin'" in message and "Fix:" in message
    assert snapshot.read_bytes() == before
    assert list(snapshot.parent.iterdir()) == [snapshot]
    assert fingerprint.value


def test_missing_labevents_names_the_feature_set_that_works(tmp_path):
    from eagrl_pipeline.data.mimic_iv import check_layout
    from eagrl_pipeline.data.synthetic_mimic_iv import write_synthetic_mimic_iv

    root = write_synthetic_mimic_iv(tmp_path / "mimic", n_stays=40, include_labevents=False)
    assert set(check_layout(root, "vitals")) >= {"chartevents", "icustays"}
    expected = r"labevents\.csv\.gz.*FEATURE_SET=vitals .*works without it"
    with pytest.raises(InputDataError, match=expected):
        check_layout(root, "vitals_labs")


def test_interrupted_synthetic_generation_is_never_taken_for_complete(tmp_path):
    """The marker used to be written after the data in place, and kept while regenerating."""
    from assets.raw import MARKER, _synthetic

    folder = tmp_path / "synthetic"
    calls = []

    def write(staged, fail=False):
        calls.append(staged)
        (staged / "part1.csv").write_text("first half")
        if fail:
            raise KeyboardInterrupt  # a user's Ctrl-C mid-generation
        (staged / "part2.csv").write_text("second half")

    _synthetic(folder, {"seed": 0}, write)
    assert json.loads((folder / MARKER).read_text()) == {"seed": 0}
    with pytest.raises(KeyboardInterrupt):
        _synthetic(folder, {"seed": 1}, lambda staged: write(staged, fail=True))
    # the seed-0 folder is whole and still says seed 0; nothing half-written is left around
    assert sorted(p.name for p in folder.iterdir()) == sorted([MARKER, "part1.csv", "part2.csv"])
    assert json.loads((folder / MARKER).read_text()) == {"seed": 0}
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic"]
    _synthetic(folder, {"seed": 1}, write)  # asked again, it generates (not reuses)
    assert len(calls) == 3 and json.loads((folder / MARKER).read_text()) == {"seed": 1}
    _synthetic(folder, {"seed": 1}, write)  # and a complete generation is reused
    assert len(calls) == 3


def test_an_unchanged_raw_input_is_not_read_again_and_keeps_its_data_version(tmp_path, monkeypatch):
    """Same names, sizes and mtimes: nothing is read (the reader is not called). Touched but
    identical: read once to hash, the snapshot is kept. New contents: a new snapshot and a new
    data version. The data version depends on the contents only."""
    import assets.raw
    from definitions import all_assets, build_resources
    from resources import EhrSources

    source = write_synthetic_tjh(tmp_path / "tjh.csv", n_patients=30, seed=1)
    resources = build_resources(str(tmp_path / "home"))
    resources["sources"] = EhrSources(tjh_path=str(source))
    instance = DagsterInstance.ephemeral()
    reads = []
    real_read = assets.raw.read_tjh
    monkeypatch.setattr(assets.raw, "read_tjh", lambda path: reads.append(path) or real_read(path))

    def run():
        result = materialize(
            all_assets, selection=["raw_tjh"], resources=resources, instance=instance
        )
        (event,) = result.asset_materializations_for_node("raw_tjh")
        record = instance.get_latest_data_version_record(event.asset_key)
        return record.asset_materialization.tags["dagster/data_version"], event.metadata

    first, meta = run()
    assert len(reads) == 1 and meta["snapshot_reused"].value == "no"
    snapshot = tmp_path / "home" / "artifacts" / "raw_tjh" / "lab_reports.parquet"
    written = snapshot.stat().st_mtime_ns

    again, meta = run()
    assert again == first and len(reads) == 1
    assert meta["snapshot_reused"].value == "unchanged files" and meta["rows"].value > 0
    assert snapshot.stat().st_mtime_ns == written

    stat = source.stat()
    import os

    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    touched, meta = run()
    assert touched == first and len(reads) == 1 and meta["snapshot_reused"].value == "same contents"

    frame = pd.read_csv(source, dtype=str, keep_default_na=False).iloc[:-3]
    frame.to_csv(source, index=False)
    changed, meta = run()
    assert changed != first and len(reads) == 2 and meta["snapshot_reused"].value == "no"
    assert snapshot.stat().st_mtime_ns != written
