"""Runs as things an operator handles: ``fleet runs`` lists them with their state and counts,
``fleet export`` writes every table of a store as CSV, Parquet or JSON lines, and
docs/results.md describes every table and column the store has."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fleet.records import DeviceReading, RequestRecord, RequestStatus, TrialStatus
from fleet.results.export import export_run, tables
from fleet.results.runs import list_runs
from fleet.results.store import CORUN, ResultStore

ROOT = Path(__file__).resolve().parent.parent


def _run(runs: Path, run_id: str, started: float, outcomes: list[TrialStatus | None]) -> Path:
    d = runs / run_id
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({
        "run_id": run_id, "started_at": started, "ended_at": started + 60,
        "experiment": {"name": f"exp-{run_id}"},
    }))  # fmt: skip
    store = ResultStore(d / "results.sqlite")
    for i, outcome in enumerate(outcomes):
        tid = f"t{i}"
        paradigm = ("slmaas", "agent_os")[i % 2]
        store.add_trial(tid, phone=f"p{i % 2}", paradigm=paradigm, workload="w", model="tiny",
                        repetition=0, shared_cores=False, mix=CORUN)  # fmt: skip
        if outcome is None:
            continue  # never started: the run was cut
        store.start_trial(tid)
        store.add_events(tid, [
            RequestRecord(f"kb:{i}", "kb", RequestStatus.OK, 8, 1_000, 2_000, [3_000, 4_000]),
            DeviceReading(5_000, "battery", "temp_c", 31.5),
        ])  # fmt: skip
        store.finish_trial(tid, outcome, "" if outcome is TrialStatus.COMPLETED else "boom")
    store.close()
    return d


def test_runs_are_listed_newest_first_with_their_state_and_counts(tmp_path):
    runs = tmp_path / "runs"
    now = time.time()
    C, F = TrialStatus.COMPLETED, TrialStatus.FAILED
    _run(runs, "old", now - 3600, [C, C])
    _run(runs, "new", now, [C, F, None])
    (runs / "not-a-run").mkdir()
    rows = list_runs(runs)
    assert [r.run_id for r in rows] == ["new", "old"]
    new = rows[0]
    assert (new.state, new.completed, new.failed, new.interrupted, new.trials) == (
        "interrupted", 1, 1, 1, 3
    )  # fmt: skip
    assert new.phones == ("p0", "p1") and new.paradigms == ("agent_os", "slmaas")
    assert rows[1].state == "finished" and rows[1].duration_s == 60
    out = subprocess.run(
        [sys.executable, "-m", "fleet.coordinator.cli", "runs", "--runs-dir", str(runs), "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert [r["run_id"] for r in json.loads(out.stdout)] == ["new", "old"]
    (runs / "old" / "report.html").write_text("<html></html>")
    out = subprocess.run(
        [sys.executable, "-m", "fleet.coordinator.cli", "runs", "--runs-dir", str(runs), "--html"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    index = (runs / "index.html").read_text()
    assert out.returncode == 0 and '<a href="old/report.html">old</a>' in index
    assert "<td>new</td>" in index and "interrupted" in index  # no report yet: no link


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_export_writes_every_table_readably(tmp_path, fmt):
    d = _run(tmp_path / "runs", "r", time.time(), [TrialStatus.COMPLETED, TrialStatus.FAILED])
    out = subprocess.run(
        [sys.executable, "-m", "fleet.coordinator.cli", "export", str(d), "--format", fmt],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    db = sqlite3.connect(d / "results.sqlite")
    for name in tables(db):
        path = d / "export" / f"{name}.{fmt}"
        assert path.is_file(), name
        n = db.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0]
        if fmt == "parquet":
            t = pq.read_table(path)
            assert t.num_rows == n
            if name == "requests":
                assert str(t.schema.field("ttft_s").type) == "double"
                assert str(t.schema.field("submit_ns").type) == "int64"
        elif fmt == "csv":
            with path.open() as f:
                assert len(list(csv.DictReader(f))) == n
        else:
            lines = path.read_text().splitlines()
            assert len(lines) == n and all(json.loads(line) for line in lines)
    if fmt == "jsonl":
        first = (d / "export" / "device_readings.jsonl").read_text().splitlines()[0]
        assert json.loads(first)["value"] == 31.5


def test_every_table_and_column_of_the_store_is_documented(tmp_path):
    ResultStore(tmp_path / "r.sqlite").close()
    db = sqlite3.connect(tmp_path / "r.sqlite")
    doc = (ROOT / "docs" / "results.md").read_text()
    missing = [
        f"{name}.{col}"
        for name in tables(db)
        for col in (r[1] for r in db.execute(f'PRAGMA table_info("{name}")'))
        if f"`{name}`" not in doc or col not in doc
    ]
    assert not missing, missing


def test_export_refuses_a_directory_that_is_not_a_run(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "fleet.coordinator.cli", "export", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "not a run directory" in out.stderr
    with pytest.raises(ValueError, match="format"):
        export_run(tmp_path, tmp_path / "x", "xlsx")


def test_compare_says_whether_a_delta_exceeds_the_spread():
    from fleet.results.compare import _pooled_row, _spread_row
    from fleet.results.stats import Estimate, Spread

    beyond = _spread_row("g", "tokens/s", Spread(10, 9, 11, 3), Spread(20, 19, 22, 3), 1.0, "")
    assert (beyond.delta, beyond.verdict) == ("+10", "beyond")
    within = _spread_row("g", "tokens/s", Spread(10, 8, 12, 3), Spread(11, 9, 13, 3), 1.0, "")
    assert within.verdict == "within"
    assert _spread_row("g", "x", Spread(1, 1, 1, 1), Spread(2, 2, 2, 3), 1.0, "").verdict == "n=1"
    pooled = _pooled_row("g", "fg p50 TTFT", Estimate(0.1, 40), Estimate(0.15, 50), 1e3, " ms")
    assert (pooled.delta, pooled.verdict) == ("+50 ms", "pooled") and "n=50" in pooled.b


def test_compare_of_two_runs_on_the_command_line(tmp_path):
    C = TrialStatus.COMPLETED
    a = _run(tmp_path / "runs", "a", time.time(), [C, C])
    b = _run(tmp_path / "runs", "b", time.time(), [C, C])
    out = subprocess.run(
        [sys.executable, "-m", "fleet.coordinator.cli", "compare", str(a), str(b), "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["rows"]
    assert {r["group"] for r in rows} == {"p0 / tiny / w / slmaas", "p1 / tiny / w / agent_os"}
    bad = subprocess.run(
        [sys.executable, "-m", "fleet.coordinator.cli", "compare", str(a), str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2


def test_a_crafted_table_name_cannot_write_outside_the_export_folder(tmp_path):
    d = _run(tmp_path / "runs", "r", time.time(), [TrialStatus.COMPLETED])
    with sqlite3.connect(d / "results.sqlite") as db:
        db.execute('CREATE TABLE "../../escaped" (x INTEGER)')
    paths = export_run(d, d / "export", "jsonl")
    assert all(p.parent == d / "export" for p in paths)
    assert not list(tmp_path.rglob("escaped*"))
