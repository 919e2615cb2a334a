"""Live observability against a real Prometheus (Debian package `prometheus`) on loopback."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import TOKEN, agent_process
from fleet.coordinator.agent_client import AgentClient
from fleet.observe.dashboards import all_dashboards
from fleet.records import (
    AppWorkload,
    ArrivalPattern,
    DeploySpec,
    ModelSpec,
    Paradigm,
    RequestRecord,
    WorkloadRun,
)

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("promtool") is None,
        reason="needs Debian's prometheus package (make installs it)",
    ),
]


def test_deploy_prometheus_config_passes_promtool():
    proc = subprocess.run(
        ["promtool", "check", "config", str(ROOT / "deploy" / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_agent_exposition_passes_promtool_and_counts_every_request():
    with agent_process("--name", "scraped", "--memory-budget-mb", "4096") as (address, proc):
        client = AgentClient(address, TOKEN)
        client.wait_healthy()
        port = client.describe().metrics_port
        assert port
        apps = (
            AppWorkload(
                "kb",
                ArrivalPattern.CLOSED_LOOP,
                prompt_tokens=8,
                output_tokens=4,
                max_requests=5,
                slo_ttft_s=0.0001,
                foreground=True,
            ),
        )
        client.deploy(DeploySpec(Paradigm.SLMAAS, ModelSpec(preset="tiny"), apps))
        records = [
            e
            for e in client.run_workload(WorkloadRun("t", 5.0, sample_interval_s=0.1))
            if isinstance(e, RequestRecord)
        ]
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        client.reset()
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    body = text.decode()
    labels = 'app="kb",model="tiny",paradigm="slmaas",phone="scraped"'
    assert f'slmfleet_requests_total{{{labels},status="ok"}} {float(len(records))}' in body
    assert f"slmfleet_slo_misses_total{{{labels}}} {float(len(records))}" in body
    assert f"slmfleet_request_ttft_seconds_count{{{labels}}} {float(len(records))}" in body
    assert 'slmfleet_memory_bytes{component="weights"' in body


def query(url: str, expr: str, at: float | None = None) -> list:
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    q = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=10) as resp:
        data = json.load(resp)
    assert data["status"] == "success", data
    return data["data"]["result"]


def test_every_dashboard_panel_returns_series_after_a_run(tmp_path):
    exp = {
        "name": "observed",
        "heartbeat_s": 1,
        "sample_interval_s": 0.2,
        "phones": [
            {"name": "phone-a", "kind": "virtual", "memory_budget_mb": 4096, "cpu_threads": 1},
            {"name": "phone-b", "kind": "virtual", "memory_budget_mb": 4096, "cpu_threads": 1},
        ],
        "models": [{"preset": "tiny"}],
        "paradigms": [{"kind": "per_app"}, {"kind": "agent_os", "threads_per_process": 1}],
        "workloads": [
            {
                "name": "w",
                "duration_s": 4,
                "apps": [
                    {
                        "name": "kb",
                        "arrival": {"kind": "poisson", "rate_per_s": 4},
                        "prompt_tokens": 8,
                        "output_tokens": 4,
                        "foreground": True,
                        "slo_ttft_ms": 50,
                    },
                    {
                        "name": "chat",
                        "arrival": {"kind": "closed_loop", "think_time_s": 0.1},
                        "prompt_tokens": 24,
                        "output_tokens": 16,
                        "multi_turn": True,
                    },
                ],
            }
        ],
    }
    path = tmp_path / "observed.yaml"
    path.write_text(yaml.safe_dump(exp))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleet.coordinator.cli",
            "run",
            str(path),
            "--run-id",
            "obs",
            "--runs-dir",
            str(tmp_path / "runs"),
            "--keep-prometheus",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    prom_dir = tmp_path / "runs" / "obs" / "prometheus"
    db = tmp_path / "runs" / "obs" / "results.sqlite"
    try:
        # while the run is live, the printed Prometheus answers for it; then a phone dies
        deadline = time.monotonic() + 120
        while not (prom_dir / "url").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        url = (prom_dir / "url").read_text()
        victim = 0
        while time.monotonic() < deadline and proc.poll() is None:
            up = query(url, 'slmfleet_phone_up{phone="phone-b"}')
            if up and up[0]["value"][1] == "1":
                with sqlite3.connect(db) as conn:
                    victim = conn.execute(
                        "SELECT agent_pid FROM phones WHERE name='phone-b'"
                    ).fetchone()[0]
                break
            time.sleep(0.5)
        assert victim, "phone-b never showed as up"
        # phone-a runs first (shared host): kill phone-b before its first trial
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        down_after = None
        while time.monotonic() - killed_at < 20:
            up = query(url, 'slmfleet_phone_up{phone="phone-b"}')
            if up and up[0]["value"][1] == "0":
                down_after = time.monotonic() - killed_at
                break
            time.sleep(0.2)
        # one heartbeat (1 s) to notice + one scrape (1 s) + query slack
        assert down_after is not None and down_after < 4.0, down_after
        out, _ = proc.communicate(timeout=400)
        assert f"Prometheus: {url}" in out
        # every expression of every panel returns at least one series from this run, evaluated
        # while it was live (afterwards its targets are gone and their series stale)
        with sqlite3.connect(db) as conn:
            # instants inside the last completed trial: its workload ran during some of them
            # (on a busy machine its deploy can take up the first half)
            start, last_end = conn.execute(
                "SELECT started_at, ended_at FROM trials WHERE "
                "status='completed' ORDER BY ended_at DESC LIMIT 1"
            ).fetchone()
        instants = [start + f * (last_end - start) for f in (0.5, 0.6, 0.7, 0.8, 0.9)]
        for uid, board in all_dashboards().items():
            for panel in board["panels"]:
                for target in panel["targets"]:
                    expr = (
                        target["expr"]
                        .replace("$__rate_interval", "1m")
                        .replace("$__range", "10m")
                        .replace("$phone", "phone-a")
                    )
                    assert any(query(url, expr, t) for t in instants), (
                        f"{uid} / {panel['title']}: no series: {expr}"
                    )
        # and the figures the workload guarantees are real numbers, not zero-filled series
        # (at the end of the last trial: counters and histograms outlive a deployment)
        ttft = query(
            url,
            "histogram_quantile(0.5, sum by (le, paradigm) (increase("
            'slmfleet_request_ttft_seconds_bucket{phone="phone-a"}[2m])))',
            last_end,
        )
        assert {r["metric"]["paradigm"] for r in ttft} == {"per_app", "agent_os"}
        assert all(0 < float(r["value"][1]) < 10 for r in ttft)
        tokens = query(url, 'sum(slmfleet_output_tokens_total{phone="phone-a"})', last_end)
        assert float(tokens[0]["value"][1]) > 0
        stored = query(url, "sum(slmfleet_records_stored_total)", last_end)
        assert float(stored[0]["value"][1]) > 0
    finally:
        if proc.poll() is None:
            proc.kill()
        pid_file = prom_dir / "pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
            except ProcessLookupError:
                pass
