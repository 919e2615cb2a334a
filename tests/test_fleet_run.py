"""End to end: `fleet run` with a real local Ray cluster and real virtual phone agents."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def experiment(**changes) -> dict:
    exp = {
        "name": "e2e",
        "seed": 1,
        "phones": [
            {"name": "phone-a", "kind": "virtual", "memory_budget_mb": 1024, "cpu_threads": 1},
            {"name": "phone-b", "kind": "virtual", "memory_budget_mb": 1024, "cpu_threads": 1},
        ],
        "models": [{"preset": "tiny"}],
        "paradigms": [{"kind": "per_app"}],
        "sample_interval_s": 0.1,
        "workloads": [
            {
                "name": "w",
                "duration_s": 60,
                "max_context_tokens": 256,
                "apps": [
                    {
                        "name": "keyboard",
                        "arrival": {"kind": "closed_loop", "think_time_s": 0.02},
                        "prompt_tokens": 16,
                        "output_tokens": 4,
                        "max_requests": 6,
                        "slo_ttft_ms": 150,
                    },
                    {
                        "name": "chat",
                        "arrival": {"kind": "closed_loop"},
                        "prompt_tokens": 24,
                        "output_tokens": 8,
                        "multi_turn": True,
                        "max_requests": 5,
                    },
                    {
                        "name": "notification",
                        "arrival": {"kind": "closed_loop"},
                        "prompt_tokens": 64,
                        "output_tokens": 12,
                        "max_requests": 3,
                    },
                ],
            }
        ],
    }
    exp.update(changes)
    return exp


def start_run(tmp_path: Path, exp: dict, run_id: str) -> subprocess.Popen:
    path = tmp_path / f"{run_id}.yaml"
    path.write_text(yaml.safe_dump(exp))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleet.coordinator.cli",
            "run",
            str(path),
            "--run-id",
            run_id,
            "--runs-dir",
            str(tmp_path / "runs"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )


def rows(db: Path, sql: str, args=()):
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def test_fleet_run_writes_every_record_and_the_manifest(tmp_path):
    proc = start_run(tmp_path, experiment(), "ok")
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out
    run = tmp_path / "runs" / "ok"
    db = run / "results.sqlite"
    # closed loops with max_requests: 6 + 5 + 3 records per phone, two phones
    assert rows(db, "SELECT COUNT(*) FROM requests WHERE status='ok'") == [(28,)]
    assert rows(db, "SELECT app, COUNT(*) FROM requests GROUP BY app ORDER BY app") == [
        ("chat", 10),
        ("keyboard", 12),
        ("notification", 6),
    ]
    assert rows(
        db,
        "SELECT COUNT(*) FROM requests WHERE NOT (submit_ns <= first_token_ns "
        "AND first_token_ns <= last_token_ns)",
    ) == [(0,)]
    assert rows(db, "SELECT status, shared_cores FROM trials") == [("completed", 0)] * 2
    # each phone on a core of its own, so their trials may run at once
    (a,), (b,) = rows(db, "SELECT cpus FROM phones ORDER BY name")
    assert a and b and not set(a.split(",")) & set(b.split(","))
    # a solo-less run still stores every request of the trace it replayed
    assert rows(db, "SELECT COUNT(*) FROM trace_requests") == [(14,)]
    assert rows(db, "SELECT COUNT(DISTINCT pid) FROM samples") == [(6,)]  # 3 apps x 2 phones
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    assert manifest["software"]["torch"].startswith("2.13") and manifest["software"]["ray"]
    assert manifest["host"]["cpu_count"] >= 1 and "commit" in manifest["git"]
    assert manifest["experiment"]["name"] == "e2e"
    assert set(manifest["phones"]) == {"phone-a", "phone-b"}
    summary = json.loads(rows(db, "SELECT summary_json FROM trials LIMIT 1")[0][0])
    assert summary["weights_label"] == "random weights"
    assert "Per-(phone, app) summary" in out and "random weights" in out
    assert "all 2 trials completed" in out
    assert "Paradigm comparison" in out
    report = (run / "report.html").read_text()
    assert report.count("<svg") >= 2 * 5 and "per_app" in report  # plots for each phone
    assert "Provenance" in report and "TTFT CDF" in report
    # the summary can be recomputed from the store alone
    again = subprocess.run(
        [sys.executable, "-m", "fleet.coordinator.cli", "summary", str(run)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0 and "keyboard" in again.stdout
    # off a terminal: a line per trial start and end; the run's log and each agent's log
    for (trial,) in rows(db, "SELECT trial_id FROM trials"):
        assert f"start {trial} " in out and f"end   {trial} completed " in out
    assert "ETA" in out or "2/2 done" in out
    log = (run / "fleet.log").read_text()
    assert "phone phone-a up" in log and f"end   {trial} completed" in log
    for phone in ("phone-a", "phone-b"):
        assert '"event": "ready"' in (run / "agents" / f"{phone}.log").read_text()
    # the report as a reader sees it: in a real browser, every plot drawn, no errors
    from browser import CHROMIUM, look_at

    if CHROMIUM is None:
        pytest.fail("Debian's chromium is missing: `make test` installs it")
    seen = look_at(run / "report.html", run / "report.png")
    assert seen["errors"] == [] and seen["title"].startswith("fleet report")
    assert len(seen["plots"]) >= 10 and all(w > 50 and h > 50 for w, h in seen["plots"])
    assert (run / "report.png").stat().st_size > 10_000


def test_killed_agent_fails_its_trials_and_the_run_goes_on(tmp_path):
    exp = experiment(repetitions=2)
    for app in exp["workloads"][0]["apps"]:
        app["max_requests"] = 0  # run for the whole duration
    exp["workloads"][0]["duration_s"] = 4
    proc = start_run(tmp_path, exp, "kill")
    db = tmp_path / "runs" / "kill" / "results.sqlite"
    victim_trial = "per_app.w.tiny.phone-a.corun.r0"
    deadline = time.monotonic() + 240
    pid = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            got = rows(db, "SELECT COUNT(*) FROM requests WHERE trial_id=?", (victim_trial,))
            if got[0][0] >= 2:
                pid = rows(db, "SELECT agent_pid FROM phones WHERE name='phone-a'")[0][0]
                break
        except sqlite3.OperationalError:
            pass  # the store is not created yet
        time.sleep(0.1)
    assert pid, "phone-a never produced records"
    os.kill(pid, signal.SIGKILL)
    kept = rows(db, "SELECT COUNT(*) FROM requests WHERE trial_id=?", (victim_trial,))[0][0]
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out  # finished, with failed trials
    trials = dict(rows(db, "SELECT trial_id, status FROM trials"))
    assert trials == {
        "per_app.w.tiny.phone-a.corun.r0": "failed",
        "per_app.w.tiny.phone-a.corun.r1": "failed",
        "per_app.w.tiny.phone-b.corun.r0": "completed",
        "per_app.w.tiny.phone-b.corun.r1": "completed",
    }
    reasons = dict(rows(db, "SELECT trial_id, reason FROM trials WHERE status='failed'"))
    assert "UNAVAILABLE" in reasons[victim_trial] or "CANCELLED" in reasons[victim_trial]
    assert "not healthy" in reasons["per_app.w.tiny.phone-a.corun.r1"]
    # records received before the kill are still there
    assert kept >= 2
    assert (
        rows(db, "SELECT COUNT(*) FROM requests WHERE trial_id=? AND status='ok'", (victim_trial,))[
            0
        ][0]
        >= 2
    )
    assert "2 of 4 trials failed" in out


def test_unreachable_phone_fails_its_trials_only(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exp = experiment(
        phones=[
            {"name": "ghost", "kind": "remote", "address": f"127.0.0.1:{port}"},
            {"name": "phone-b", "kind": "virtual", "memory_budget_mb": 1024, "cpu_threads": 1},
        ]
    )
    monkeypatch.setenv("FLEET_AGENT_TOKEN", "ghost-token")
    proc = start_run(tmp_path, exp, "ghost")
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 1, out
    db = tmp_path / "runs" / "ghost" / "results.sqlite"
    trials = rows(db, "SELECT phone, status, reason FROM trials ORDER BY phone")
    assert trials[0][:2] == ("ghost", "failed")
    assert "did not come up" in trials[0][2] and f"127.0.0.1:{port}" in trials[0][2]
    assert trials[1][:2] == ("phone-b", "completed")
    assert rows(db, "SELECT status FROM phones WHERE name='ghost'") == [("down",)]
