"""One experiment on Android phones of two lab hosts: a 2-node Ray cluster on this machine (two
``ray start`` nodes named hub-a and hub-b), each with its own adb server and an emulated phone
connected to it. ``fleet run --address`` finds each phone on its host, prepares it, starts its
agent over ``adb shell``, runs through ``adb forward``, stores, and scrapes both phones through
their hosts' /metrics relays; one phone's cable is pulled mid-trial: that trial alone fails,
keeps what it measured, and the phone rejoins for its next trial.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from fleet.devices.emulator.device import EmulatedDevice, Facts

pytestmark = [
    pytest.mark.slow,
    pytest.mark.long,
    pytest.mark.ray,
    pytest.mark.skipif(shutil.which("adb") is None, reason="needs Debian's adb"),
]
RAY = str(Path(sys.executable).with_name("ray"))
FLEET = str(Path(sys.executable).with_name("fleet"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start(env: dict, *args: str) -> None:
    subprocess.run(
        [RAY, "start", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
         "--disable-usage-stats", *args],
        env=env, check=True, capture_output=True, timeout=180,
    )  # fmt: skip


def test_an_experiment_spans_emulated_phones_on_two_hosts(tmp_path):
    root = Path(tempfile.mkdtemp(prefix="m", dir="/tmp"))  # short: unix socket paths
    adb_ports = {"hub-a": _free_port(), "hub-b": _free_port()}
    head = _free_port()
    devices: dict[str, EmulatedDevice] = {}
    env = {k: v for k, v in os.environ.items() if k != "ANDROID_ADB_SERVER_PORT"}
    env["RAY_AUTH_MODE"] = "token"  # Ray 2.60's default on the head; joiners must say so
    try:
        for hub, port in adb_ports.items():
            subprocess.run(["adb", "-P", str(port), "start-server"], check=True, timeout=60)
            devices[hub] = EmulatedDevice(root / hub, Facts(model=f"Pixel {hub}"))
            devices[hub].connect_to(port)
        _ray_start(
            env | {"ANDROID_ADB_SERVER_PORT": str(adb_ports["hub-a"])},
            "--head", "--port", str(head), "--include-dashboard", "false",
            "--resources", json.dumps({"slm-fleet-host:hub-a": 1}),
        )  # fmt: skip
        _ray_start(
            env | {"ANDROID_ADB_SERVER_PORT": str(adb_ports["hub-b"])},
            "--address", f"127.0.0.1:{head}",
            "--resources", json.dumps({"slm-fleet-host:hub-b": 1}),
        )  # fmt: skip
        listed = subprocess.run(
            [FLEET, "devices", "--json", "--address", f"127.0.0.1:{head}"],
            env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        where = {d["serial"]: d["host"] for d in json.loads(listed.stdout)}
        assert where[devices["hub-a"].serial] == "hub-a"
        assert where[devices["hub-b"].serial] == "hub-b"

        exp = {
            "name": "two-hosts",
            "seed": 5,
            "repetitions": 2,
            "paradigms": [{"kind": "slmaas"}],
            "models": [{"preset": "tiny"}],
            "workloads": [{
                "name": "w", "duration_s": 4.0,
                "apps": [{"name": "chat", "arrival": {"kind": "closed_loop"},
                          "prompt_tokens": 16, "output_tokens": 4}],
            }],
            "phones": [
                {"name": f"ph-{hub}", "kind": "android", "serial": dev.serial,
                 "memory_budget_mb": 2048, "cpu_threads": 1}
                for hub, dev in devices.items()
            ],
        }  # fmt: skip
        path = tmp_path / "exp.yaml"
        path.write_text(yaml.safe_dump(exp))
        log = tmp_path / "run.log"
        with log.open("w") as out:
            run = subprocess.Popen(
                [FLEET, "run", str(path), "--address", f"127.0.0.1:{head}",
                 "--runs-dir", str(tmp_path / "runs"), "--run-id", "r"],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
            cable = threading.Thread(
                target=_pull_cable, args=(tmp_path / "runs" / "r", devices["hub-b"], run)
            )
            cable.start()
            scraped = _watch_targets(tmp_path / "runs" / "r", run)
            rc = run.wait(timeout=600)
            cable.join()
        assert rc == 1, log.read_text()[-4000:]  # one trial failed: the one the cable cut
        db = sqlite3.connect(tmp_path / "runs" / "r" / "results.sqlite")
        hosts = dict(db.execute("SELECT name, host FROM phones"))
        assert hosts == {"ph-hub-a": "hub-a", "ph-hub-b": "hub-b"}
        outcomes: dict[str, list] = {}
        tail = log.read_text()[-3000:]
        for phone, n, status, reason, start_c in db.execute(
            "SELECT t.phone, COUNT(r.request_id), t.status, t.reason, t.battery_start_c "
            "FROM trials t LEFT JOIN requests r ON r.trial_id = t.trial_id GROUP BY t.trial_id "
            "ORDER BY t.seq"
        ):
            assert n > 0 and start_c is not None, (phone, n, status, reason, tail)  # none lost
            outcomes.setdefault(phone, []).append((status, reason))
        assert [s for s, _ in outcomes["ph-hub-a"]] == ["completed", "completed"]  # untouched
        (failed, why), (after, _) = outcomes["ph-hub-b"]  # cut, then back for the next one
        assert (failed, after) == ("failed", "completed") and why, outcomes
        assert scraped == {"ph-hub-a", "ph-hub-b"}, log.read_text()[-3000:]
        # the other host's clock was compared with the coordinator's, and the dispatch times,
        # taken on both, came out sane
        assert "its clock is" in (tmp_path / "runs" / "r" / "fleet.log").read_text()
        dispatch = [
            d for (d,) in db.execute("SELECT dispatch_s FROM trials WHERE status='completed'")
        ]
        assert len(dispatch) == 3 and all(0.0 <= d < 5.0 for d in dispatch), dispatch
        report = (tmp_path / "runs" / "r" / "report.html").read_text()
        temps = report[report.index("Phone temperatures") :]
        assert "ph-hub-a" in temps and "ph-hub-b" in temps  # battery at trial start and end
        readings = db.execute("SELECT COUNT(*) FROM device_readings WHERE kind='battery'")
        assert readings.fetchone()[0] > 0
        for hub in devices:
            agent_log = tmp_path / "runs" / "r" / "agents" / f"ph-{hub}.log"
            assert '"event": "ready"' in agent_log.read_text()  # collected from its host
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
        for dev in devices.values():
            dev.close()
        for port in adb_ports.values():
            subprocess.run(["adb", "-P", str(port), "kill-server"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _pull_cable(run_dir: Path, dev: EmulatedDevice, run: subprocess.Popen) -> None:
    """Unplug the phone once its first trial has stored a record; plug it back 3 s later."""
    while run.poll() is None:
        time.sleep(0.2)
        try:
            db = sqlite3.connect(f"file:{run_dir / 'results.sqlite'}?mode=ro", uri=True)
            try:
                (n,) = db.execute(
                    "SELECT COUNT(*) FROM requests r JOIN trials t ON r.trial_id = t.trial_id "
                    "WHERE t.phone = 'ph-hub-b'"
                ).fetchone()
            finally:
                db.close()
        except sqlite3.Error:
            continue
        if n:
            dev.unplug()
            time.sleep(3.0)
            dev.replug()
            return


def _watch_targets(run_dir: Path, run: subprocess.Popen, timeout_s: float = 300) -> set[str]:
    """Phones whose /metrics the run's Prometheus scraped (up == 1) through their host's relay,
    asked while the run lasts."""
    deadline = time.monotonic() + timeout_s
    scraped: set[str] = set()
    while run.poll() is None and time.monotonic() < deadline and len(scraped) < 2:
        time.sleep(1.0)
        try:
            manifest = json.loads((run_dir / "manifest.json").read_text())
            url = manifest["prometheus"]["url"]
            targets = json.loads((run_dir / "prometheus" / "targets.json").read_text())
        except (OSError, ValueError, KeyError):
            continue
        relayed = {
            t["labels"]["phone"]
            for t in targets
            if t["labels"].get("__metrics_path__", "").startswith("/phones/")
        }
        if not url or not relayed:
            continue
        q = urllib.parse.quote('up{job="phone-agent"} == 1')
        try:
            with urllib.request.urlopen(f"{url}/api/v1/query?query={q}", timeout=5) as r:
                result = json.load(r)["data"]["result"]
        except OSError:
            continue
        scraped |= {s["metric"]["phone"] for s in result if s["metric"].get("phone") in relayed}
    return scraped
