"""Live observability against a real Prometheus (Debian package `prometheus`) on loopback."""

import json
import os
import re
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
from fleet.observe.prometheus import EmbeddedPrometheus
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
        client.deploy(
            DeploySpec(
                Paradigm.SLMAAS,
                ModelSpec(preset="tiny"),
                apps,
                paradigm_label="service-b4",
                phase="solo",
            )
        )
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
    labels = 'app="kb",model="tiny",paradigm="service-b4",phase="solo",phone="scraped"'
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


def fleet_run(path: Path, run_id: str, tmp_path: Path, url: str, shared: Path, **kw):
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
            "--prometheus-url",
            url,
            "--targets-file",
            str(shared),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        **kw,
    )


def substitute(expr: str, **values: str) -> str:
    """A dashboard expression as Grafana sends it, for these variable values."""
    out = expr.replace("$__rate_interval", "1m").replace("$__range", "10m")
    for name in sorted(values, key=len, reverse=True):
        out = out.replace(f"${name}", values[name])
    assert "$" not in out, out
    return out


@pytest.mark.long  # two runs and every panel's query: about two minutes, with the long suites
def test_dashboards_show_one_runs_phases_from_a_standing_prometheus(tmp_path):
    """Two runs share a standing Prometheus through `fleet run --targets-file`: every panel
    and annotation of every dashboard returns series for the first, and the paradigm board's
    selection of its co-run holds neither its solo baselines nor the other run."""
    exp = {
        "name": "observed",
        "heartbeat_s": 1,
        "contention": {"solo_baselines": True},
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
                "duration_s": 3,
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
    other = {
        **exp,
        "name": "other",
        "phones": exp["phones"][:1],
        "paradigms": exp["paradigms"][1:],
        "contention": {"solo_baselines": False},
        "workloads": [{**exp["workloads"][0], "duration_s": 2}],
    }
    other_path = tmp_path / "other.yaml"
    other_path.write_text(yaml.safe_dump(other))
    # the lab's standing Prometheus, reading the one file every run writes its targets into
    shared = tmp_path / "sd" / "fleet.json"
    shared.parent.mkdir()
    shared.write_text("[]")
    standing = EmbeddedPrometheus(tmp_path / "standing", shared)
    url = standing.start()
    db = tmp_path / "runs" / "obs" / "results.sqlite"
    proc = fleet_run(path, "obs", tmp_path, url, shared)
    try:
        # while the run is live, the standing Prometheus answers for it; then a phone dies
        deadline = time.monotonic() + 120
        victim = 0
        while time.monotonic() < deadline and proc.poll() is None:
            up = query(url, 'slmfleet_phone_up{run="obs",phone="phone-b"}')
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
            up = query(url, 'slmfleet_phone_up{run="obs",phone="phone-b"}')
            if up and up[0]["value"][1] == "0":
                down_after, down_at = time.monotonic() - killed_at, time.time()
                break
            time.sleep(0.2)
        # one heartbeat (1 s) to notice + one scrape (1 s) + query slack
        assert down_after is not None and down_after < 4.0, down_after
        out, _ = proc.communicate(timeout=400)
        assert f"Prometheus: {url}" in out and str(shared.resolve()) in out
        # the ended run's targets stay for the grace period (60 s), marked to expire
        groups = json.loads(shared.read_text())
        assert {g["labels"]["run"] for g in groups} == {"obs"}
        assert all("__slmfleet_expires" in g["labels"] for g in groups)
        second = fleet_run(other_path, "other", tmp_path, url, shared)
        out2, _ = second.communicate(timeout=300)
        assert second.returncode == 0, out2
        # every expression of every panel and annotation returns at least one series from the
        # first run, evaluated while it was live (afterwards its targets are gone)
        with sqlite3.connect(db) as conn:
            # instants inside the last completed trial: its workload ran during some of them
            # (on a busy machine its deploy can take up the first half)
            start, last_end = conn.execute(
                "SELECT started_at, ended_at FROM trials WHERE "
                "status='completed' ORDER BY ended_at DESC LIMIT 1"
            ).fetchone()
        instants = [start + f * (last_end - start) for f in (0.5, 0.6, 0.7, 0.8, 0.9)]
        everything = {v: ".*" for v in ("phone", "paradigm", "phase", "app", "model")}
        for uid, board in all_dashboards().items():
            for panel in board["panels"]:
                for target in panel["targets"]:
                    expr = substitute(
                        target["expr"], run="obs", **{**everything, "phone": "phone-a"}
                    )
                    assert any(query(url, expr, t) for t in instants), (
                        f"{uid} / {panel['title']}: no series: {expr}"
                    )
            annotations = {a["name"]: a["expr"] for a in board["annotations"]["list"]}
            expr = substitute(annotations["trial workloads"], run="obs", **everything)
            assert any(query(url, expr, t) for t in instants), f"{uid}: no trial: {expr}"
            expr = substitute(annotations["phone down"], run="obs", **everything)
            assert query(url, expr, down_at), f"{uid}: phone-b not down at {down_at}: {expr}"
        # the paradigm board's co-run selection of run obs: both paradigms, nothing else
        board = all_dashboards()["slmfleet-paradigms"]
        ttft = next(p for p in board["panels"] if p["title"].startswith("TTFT"))
        selector = re.search(
            r"slmfleet_request_ttft_seconds_bucket(\{[^}]*\})", ttft["targets"][0]["expr"]
        )
        assert selector
        chosen = substitute(
            f"slmfleet_request_ttft_seconds_count{selector.group(1)}",
            run="obs",
            **{**everything, "phase": "corun"},
        )
        series = query(url, f"last_over_time({chosen}[15m])", last_end)
        assert {(r["metric"]["run"], r["metric"]["phase"]) for r in series} == {("obs", "corun")}
        assert {r["metric"]["paradigm"] for r in series} == {"per_app", "agent_os"}
        # ... while both runs and both phases are in the same Prometheus, under the same
        # phone, paradigm and app names
        every = query(
            url, "count by (run, phase) (last_over_time(slmfleet_request_ttft_seconds_count[15m]))"
        )
        assert {(r["metric"]["run"], r["metric"]["phase"]) for r in every} >= {
            ("obs", "solo"),
            ("obs", "corun"),
            ("other", "corun"),
        }
        # and the figures the workload guarantees are real numbers, not zero-filled series
        # (at the end of the last trial: counters and histograms outlive a deployment)
        ttft = query(
            url,
            "histogram_quantile(0.5, sum by (le, paradigm) (increase("
            'slmfleet_request_ttft_seconds_bucket{run="obs",phone="phone-a"}[2m])))',
            last_end,
        )
        assert {r["metric"]["paradigm"] for r in ttft} == {"per_app", "agent_os"}
        assert all(0 < float(r["value"][1]) < 10 for r in ttft)
        tokens = query(
            url, 'sum(slmfleet_output_tokens_total{run="obs",phone="phone-a"})', last_end
        )
        assert float(tokens[0]["value"][1]) > 0
        stored = query(url, 'sum(slmfleet_records_stored_total{run="obs"})', last_end)
        assert float(stored[0]["value"][1]) > 0
    finally:
        if proc.poll() is None:
            proc.kill()
        standing.stop()
