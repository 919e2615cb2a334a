"""Android phones over adb, without phones: the real Debian adb server, emulated devices that
speak the adb transport protocol (fleet.devices.emulator), adbutils and this testbed on top.

Each test gets its own adb server on a free port (ANDROID_ADB_SERVER_PORT), killed at the end.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import adbutils
import pytest
from blocking import blocking_iter

from fleet.devices.emulator.device import EmulatedDevice, Facts
from fleet.devices.provider import DeviceError, DeviceProvider

pytestmark = pytest.mark.skipif(shutil.which("adb") is None, reason="needs Debian's adb")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def adb_port(monkeypatch):
    port = _free_port()
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(port))
    subprocess.run(["adb", "-P", str(port), "start-server"], check=True, capture_output=True)
    yield port
    subprocess.run(["adb", "-P", str(port), "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def emulated(tmp_path, adb_port):
    """Emulated devices, each `adb connect`ed to this test's adb server."""
    made: list[EmulatedDevice] = []
    client = adbutils.AdbClient(port=adb_port)

    def make(authorized: bool = True, **facts) -> EmulatedDevice:
        dev = EmulatedDevice(tmp_path / f"emu{len(made)}", Facts(**facts), authorized=authorized)
        made.append(dev)
        dev.connect_to(adb_port)
        _wait_state(client, dev.serial, "device" if authorized else "unauthorized")
        return dev

    yield make
    for dev in made:
        dev.close()


def _wait_state(client, serial: str, state: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        seen = {d.serial: d.state for d in client.list()}.get(serial)
        if seen == state:
            return
        time.sleep(0.1)
    raise AssertionError(f"{serial}: {seen}, not {state}, after {timeout_s} s")


def test_adbutils_and_the_adb_command_reach_an_emulated_device(emulated, adb_port, tmp_path):
    dev = emulated(model="Pixel 8", android="15")
    d = adbutils.AdbClient(port=adb_port).device(dev.serial)
    assert d.prop.model == "Pixel 8"
    assert d.shell("getprop ro.build.version.release").strip() == "15"
    assert "[ro.product.model]: [Pixel 8]" in d.shell("getprop")
    r = d.shell2("echo out; echo err >&2; exit 7", v2=True)
    assert (r.returncode, r.stdout, r.stderr) == (7, "out\n", "err\n")
    cli = subprocess.run(
        ["adb", "-P", str(adb_port), "-s", dev.serial, "shell", "echo cli; exit 3"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (cli.returncode, cli.stdout) == (3, "cli\n")
    # push and pull 700 KiB: many WRTE/OKAY rounds and sync DATA chunks
    payload = os.urandom(700 * 1024)
    d.sync.push(payload, "/data/local/tmp/blob.bin", mode=0o600)
    assert d.sync.stat("/data/local/tmp/blob.bin").size == len(payload)
    assert (dev.sandbox.root / "data/local/tmp/blob.bin").read_bytes() == payload
    assert d.sync.read_bytes("/data/local/tmp/blob.bin") == payload
    assert "blob.bin" in d.sync.list("/data/local/tmp")[0].path or any(
        e.path == "blob.bin" for e in d.sync.list("/data/local/tmp")
    )
    # adb forward tcp:X tcp:Y to a server on the device's loopback
    server = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=_echo_once, args=(server,), daemon=True).start()
    local = d.forward_port(server.getsockname()[1])
    with socket.create_connection(("127.0.0.1", local), timeout=10) as c:
        c.sendall(b"ping")
        assert c.recv(16) == b"PING"
    battery = d.shell("dumpsys battery")
    assert "Current Battery Service state:" in battery and "temperature: " in battery


def _echo_once(server: socket.socket) -> None:
    conn, _ = server.accept()
    with conn:
        conn.sendall(conn.recv(16).upper())


def test_devices_are_listed_with_their_facts_and_states(emulated):
    ok = emulated(model="Pixel 7", abi="arm64-v8a", battery_level=64)
    locked = emulated(authorized=False)
    rows = {r.serial: r for r in DeviceProvider(host="hub-a").devices()}
    r = rows[ok.serial]
    assert (r.host, r.state, r.model, r.android, r.abi, r.battery_level) == (
        "hub-a", "device", "Pixel 7", "14", "arm64-v8a", 64
    )  # fmt: skip
    assert r.ram_mb > 0 and 20.0 < r.battery_c < 60.0
    assert rows[locked.serial].state == "unauthorized"  # reported, not fatal
    out = subprocess.run(
        [sys.executable, "-m", "fleet.coordinator.cli", "devices", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    listed = {d["serial"]: d for d in json.loads(out.stdout)}
    assert listed[ok.serial]["model"] == "Pixel 7"
    assert listed[locked.serial]["state"] == "unauthorized"


def test_unplug_and_replug_are_followed(emulated):
    dev = emulated()
    provider = DeviceProvider()
    provider.track()
    try:
        assert provider.wait_for(dev.serial, "device", 10)
        dev.unplug()
        assert provider.wait_for(dev.serial, ("offline", "gone"), 20)  # listed offline, or dropped
        with pytest.raises(DeviceError):
            provider.shell(dev.serial, "echo hi", timeout_s=5)
        dev.replug()
        assert provider.wait_for(dev.serial, "device", 30)  # adb reconnects by itself
        assert provider.shell(dev.serial, "echo hi").strip() == "hi"
    finally:
        provider.close()


def test_no_serial_or_argument_runs_a_command_of_its_own(emulated, adb_port, tmp_path):
    dev = emulated()
    witness = tmp_path / "pwned"
    evil = f"x;touch {witness};$(touch {witness})`touch {witness}`"
    provider = DeviceProvider()
    with pytest.raises(DeviceError):
        provider.shell(evil, "echo hi")
    out = subprocess.run(
        [sys.executable, "-m", "fleet.coordinator.cli", "devices", "prepare", evil],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    from fleet.devices.launcher import ShellLauncher

    launcher = ShellLauncher(provider, python=f"/data/local/tmp/{evil}")
    assert provider.shell(dev.serial, "echo " + shlex.quote(evil)).strip() == evil
    with pytest.raises(DeviceError):
        launcher.start(dev.serial, evil, "token", 512, 1, timeout_s=10)
    time.sleep(0.5)
    assert not witness.exists()
    assert not list(dev.sandbox.root.rglob("pwned"))


@pytest.fixture
def short_root():
    """Emulated sandboxes under a short path: unix socket paths inside must stay < 108 bytes."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="e", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_a_trial_on_an_emulated_phone_survives_an_unplug_and_the_phone_rejoins(
    short_root, adb_port
):
    from fleet.coordinator.config import AndroidPhone
    from fleet.coordinator.phone_host import PhoneHost
    from fleet.records import (
        AppWorkload,
        ArrivalPattern,
        DeploySpec,
        ModelSpec,
        Paradigm,
        RequestRecord,
        TrialStatus,
        WorkloadRun,
    )

    dev = EmulatedDevice(short_root / "p", Facts(model="Pixel 7"))
    dev.connect_to(adb_port)
    host = PhoneHost()
    try:
        phone = AndroidPhone(name="px", serial=dev.serial, memory_budget_mb=2048, cpu_threads=1)
        started = host.start_android_phone(phone, dev.serial)
        assert "installed" in started["prepared"]
        assert (dev.sandbox.root / "data/local/tmp/slm-fleet/app/agents/main.py").is_file()
        desc = host.describe("px")
        assert desc.profile.kind == "android" and desc.profile.name == "px"
        apps = (AppWorkload("chat", ArrivalPattern.CLOSED_LOOP, prompt_tokens=16,
                            output_tokens=4),)  # fmt: skip
        spec = DeploySpec(Paradigm.SLMAAS, ModelSpec(preset="tiny"), apps, max_context_tokens=256)

        def trial(tid: str, duration_s: float, unplug_after: float | None = None):
            kinds, records, pull = [], 0, None
            run = WorkloadRun(tid, duration_s, 1, 0.2)
            for kind, payload in blocking_iter(host.run_trial("px", spec, run)):
                kinds.append((kind, payload if kind in ("failed", "thermal") else None))
                if kind == "events":
                    records += sum(isinstance(e, RequestRecord) for e in payload)
                    if unplug_after is not None and records and pull is None:
                        pull = threading.Timer(unplug_after, dev.unplug)  # the cable, mid-trial
                        pull.start()
                elif kind == "end":  # the summary's batch, the end's battery, the outcome
                    records += sum(isinstance(e, RequestRecord) for e in payload.events)
                    if payload.thermal is not None:
                        kinds.append(("thermal", payload.thermal))
                    if payload.failed:
                        kinds.append(("failed", payload.failed))
                    else:
                        assert payload.summary.status is TrialStatus.COMPLETED, payload.summary
            if pull is not None:
                pull.join()
            return kinds, records

        kinds, records = trial("t0", 2.0)
        thermal = [p for k, p in kinds if k == "thermal"]
        assert records > 0 and [t[0] for t in thermal] == ["start", "end"]
        assert 15.0 < thermal[0][1] < 70.0  # battery C at the start, from dumpsys battery
        kinds, records = trial("t1", 6.0, unplug_after=0.5)
        failed = [p for k, p in kinds if k == "failed"]
        assert failed and records > 0, kinds  # the cut trial fails, with what it measured
        assert not host.health("px")
        with pytest.MonkeyPatch.context() as mp:  # still unplugged: the next trial says why
            mp.setattr("fleet.coordinator.phone_host.LOST_PHONE_WAIT_S", 2.0)
            kinds, records = trial("t1b", 1.0)
        ((kind, why),) = kinds
        assert kind == "failed" and records == 0, kinds
        assert "px did not come back within 2 s: " in why, why  # and why not
        dev.replug()
        deadline = time.monotonic() + 60
        while not host.health("px") and time.monotonic() < deadline:
            time.sleep(1.0)
        assert host.health("px"), (host._adb().tracked(), host.agent_log("px")[-5:])
        _, records = trial("t2", 1.5)
        assert records > 0
    finally:
        host.shutdown()
        dev.close()


def test_the_device_list_survives_an_adb_server_restart(emulated, adb_port):
    dev = emulated()
    provider = DeviceProvider()
    provider.track()
    try:
        assert provider.wait_for(dev.serial, "device", 10)
        subprocess.run(["adb", "-P", str(adb_port), "kill-server"], check=True, timeout=30)
        assert provider.wait_for(dev.serial, "gone", 20)
        assert provider.tracked().get(dev.serial) == "gone"  # kept a while, not forgotten
        # the tracker brought Debian's adb server back up; a USB phone would be found by it
        # again by itself, a TCP one (this stand-in) is connected again
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                adbutils.AdbClient(port=adb_port).connect(dev.serial, timeout=5)
                break
            except Exception:
                time.sleep(0.5)
        assert provider.wait_for(dev.serial, "device", 30)
        assert provider.shell(dev.serial, "echo back").strip() == "back"
    finally:
        provider.close()
