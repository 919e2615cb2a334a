"""The adb devices of one lab host: discovery, hot-plug, facts and forwards, through ``adbutils``
and the host's own adb server.

A plain class; ``fleet devices`` and the run's phone hosts place one per Ray node (never one per
phone). Every adb call has a timeout. The device list follows the adb server's
``track-devices`` feed in a thread that re-subscribes with back-off when the server restarts; a
phone that leaves the feed is kept as ``gone`` for ``SILENT_S`` and then forgotten. The feed is
also checked against the server's full device list every ``RECONCILE_S``: Debian's adb server
sometimes lists a TCP-attached phone offline after its connection drops without telling the
feed (seen about once in ten unplugs of an emulated phone), and a wireless-adb phone would be
followed the same way. A difference that two lists in a row agree on is taken.

    provider = DeviceProvider(host="lab-3")
    for d in provider.devices(): print(d.serial, d.state, d.model, d.battery_c)
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import asdict, dataclass

import adbutils

ADB_TIMEOUT_S = 10.0
SILENT_S = 30.0
RECONCILE_S = 2.0
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
FACTS_COMMAND = (
    "getprop ro.product.model; getprop ro.build.version.release; getprop ro.product.cpu.abi; "
    "grep MemTotal /proc/meminfo; dumpsys battery"
)


class DeviceError(RuntimeError):
    """An adb call failed or timed out; the message says which device and why."""


@dataclass(frozen=True)
class DeviceInfo:
    host: str
    serial: str
    state: str  # device | offline | unauthorized | gone | ...
    model: str = ""
    android: str = ""
    abi: str = ""
    ram_mb: int = 0
    battery_level: int = -1
    battery_c: float | None = None
    error: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def parse_battery(text: str) -> dict[str, float]:
    """``dumpsys battery`` (AOSP BatteryService's dump): level %, temperature C, voltage V."""
    out: dict[str, float] = {}
    for key, name, scale in (
        ("level", "level", 1.0),
        ("temperature", "temperature_c", 0.1),
        ("voltage", "voltage_v", 0.001),
    ):
        m = re.search(rf"^\s*{key}:\s*(-?\d+)\s*$", text, re.MULTILINE)
        if m:
            out[name] = int(m.group(1)) * scale
    return out


def parse_facts(text: str) -> dict:
    lines = text.splitlines()
    facts: dict = {
        "model": lines[0].strip() if lines else "",
        "android": lines[1].strip() if len(lines) > 1 else "",
        "abi": lines[2].strip() if len(lines) > 2 else "",
    }
    m = re.search(r"^MemTotal:\s+(\d+)\s+kB", text, re.MULTILINE)
    facts["ram_mb"] = int(m.group(1)) // 1024 if m else 0
    battery = parse_battery(text)
    facts["battery_level"] = int(battery.get("level", -1))
    facts["battery_c"] = battery.get("temperature_c")
    return facts


class DeviceProvider:
    def __init__(self, host: str = "", adb_host: str = "127.0.0.1", adb_port: int | None = None):
        self.host = host or socket.gethostname()
        self.adb = adbutils.AdbClient(host=adb_host, port=adb_port, socket_timeout=ADB_TIMEOUT_S)
        # the device feed is silent while nothing changes: no read timeout on it
        self._feed = adbutils.AdbClient(host=adb_host, port=self.adb.port, socket_timeout=None)
        self._states: dict[str, str] = {}
        self._gone_since: dict[str, float] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._tracker: threading.Thread | None = None

    # -- the device list ----------------------------------------------------------------------
    def serials(self) -> dict[str, str]:
        """serial -> adb state, as the adb server says now (no tracking needed). A local adb
        server that is not running is started, as the adb command does."""
        self.ensure_server()
        try:
            return {d.serial: d.state for d in self.adb.list()}
        except (adbutils.AdbError, OSError) as e:
            raise DeviceError(f"adb server at {self.adb.host}:{self.adb.port}: {e}") from e

    def ensure_server(self) -> None:
        """Start the host's adb server (the ``adb`` on PATH, Debian's) on this provider's port if
        nothing listens there."""
        try:
            socket.create_connection((self.adb.host, self.adb.port), timeout=2.0).close()
        except OSError:
            self.start_server()

    def start_server(self) -> bool:
        """Start this host's adb server on its port; False when that is not ours to start."""
        adb = shutil.which("adb")
        if adb is None or self.adb.host not in ("127.0.0.1", "localhost"):
            return False
        try:
            subprocess.run(
                [adb, "-P", str(self.adb.port), "start-server"],
                capture_output=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return True

    def devices(self) -> list[DeviceInfo]:
        """Every device with its facts (those that answer), as a table row each."""
        states = self.tracked() if self._tracker is not None else self.serials()
        return [self.describe(serial, state) for serial, state in sorted(states.items())]

    def describe(self, serial: str, state: str) -> DeviceInfo:
        if state != "device":
            return DeviceInfo(self.host, serial, state)
        try:
            facts = parse_facts(self.shell(serial, FACTS_COMMAND))
        except DeviceError as e:
            return DeviceInfo(self.host, serial, state, error=str(e))
        return DeviceInfo(self.host, serial, state, **facts)

    def device(self, serial: str) -> adbutils.AdbDevice:
        return self.adb.device(serial)

    def shell(self, serial: str, command: str, timeout_s: float = ADB_TIMEOUT_S) -> str:
        """Run ``command`` (already quoted by the caller: see ``shlex.quote``) with shell v2;
        a non-zero exit is a DeviceError with the command's stderr."""
        try:
            r = self.device(serial).shell2(command, timeout=timeout_s, v2=True)
        except (adbutils.AdbError, OSError) as e:
            raise DeviceError(f"{serial}: adb shell failed: {e}") from e
        if r.returncode != 0:
            raise DeviceError(
                f"{serial}: `{command[:80]}` exited {r.returncode}: {(r.stderr or r.output)[-300:]}"
            )
        return r.stdout if isinstance(r.stdout, str) else r.output

    # -- hot-plug ----------------------------------------------------------------------------
    def track(self) -> None:
        """Follow the adb server's device feed from now on (idempotent)."""
        if self._tracker is None:
            with self._lock:
                self._states = self.serials()
            self._tracker = threading.Thread(target=self._follow, daemon=True, name="adb-track")
            self._tracker.start()
            threading.Thread(target=self._reconcile, daemon=True, name="adb-reconcile").start()

    def tracked(self) -> dict[str, str]:
        now = time.monotonic()
        with self._lock:
            for serial, since in list(self._gone_since.items()):
                if now - since > SILENT_S:
                    self._gone_since.pop(serial)
                    self._states.pop(serial, None)
            return dict(self._states)

    def wait_for(self, serial: str, state: str | tuple[str, ...], timeout_s: float) -> bool:
        """Until ``serial`` is in ``state`` (or one of several, e.g. ("offline", "gone") after an
        unplug: adb may list the phone offline or drop it); False on timeout."""
        self.track()
        states = (state,) if isinstance(state, str) else state
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._states.get(serial) not in states:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 1.0))
            return True

    def _follow(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                self.ensure_server()  # restarted by someone, or gone: ours comes up
                for event in self._feed.track_devices():  # starts with every present device
                    attempt = 0
                    self._note(event.serial, event.status if event.present else "gone")
                    if self._stop.is_set():
                        return
            except (adbutils.AdbError, OSError, EOFError):
                pass
            with self._lock:  # the server is gone: so are its devices, for now
                for serial in list(self._states):
                    self._mark(serial, "gone")
                self._changed.notify_all()
            self._stop.wait(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
            attempt += 1

    def _reconcile(self) -> None:
        """Take what the feed missed: a state that the server's list has shown twice in a row
        (the second look spares a change that the feed is just delivering)."""
        pending: dict[str, str] = {}
        while not self._stop.wait(RECONCILE_S):
            try:
                listed = self.serials()
            except Exception:  # no server (the feed's thread marks its devices gone), or a
                continue  # garbled answer: the next look
            with self._lock:
                now = {s: listed.get(s, "gone") for s in set(listed) | set(self._states)}
                differ = {s: st for s, st in now.items() if self._states.get(s, "gone") != st}
                confirmed = {s: st for s, st in differ.items() if pending.get(s) == st}
                for serial, state in confirmed.items():
                    self._mark(serial, state)
                if confirmed:
                    self._changed.notify_all()
                pending = differ

    def _note(self, serial: str, state: str) -> None:
        with self._lock:
            self._mark(serial, state)
            self._changed.notify_all()

    def _mark(self, serial: str, state: str) -> None:
        if state == "gone":
            self._gone_since.setdefault(serial, time.monotonic())
        else:
            self._gone_since.pop(serial, None)
        self._states[serial] = state

    def close(self) -> None:
        self._stop.set()
