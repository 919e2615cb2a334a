"""An emulated Android device: a stand-in for a phone on a USB hub, for tests and for rehearsing
an adb fleet without phones. IT IS NOT A PHONE: it runs on this Linux machine, its commands use
this machine's CPUs and memory, and its ``/proc`` is this machine's.

What is faithful is the path to it. It speaks the adb transport protocol over TCP, so the real
adb server reaches it after ``adb connect 127.0.0.1:PORT`` and every client (the ``adb`` command,
``adbutils``, this testbed) talks to it exactly as to a phone: the CNXN handshake (or AUTH, when
it plays an unauthorized phone), ``shell:``, ``shell,v2:`` with exit codes, ``sync:`` push and
stat, ``tcp:`` forwards. Its commands run in a sandbox directory where Android's paths
(``/data/local/tmp``, ``/sdcard``) are mapped, and its tools print what AOSP's print:

- ``getprop`` (``[name]: [value]`` lines; ``getprop NAME``), from ``system/build.prop``;
- ``dumpsys battery`` in ``BatteryService``'s dump format, from the power-supply files below;
- ``/sys/class/power_supply/battery/{capacity,current_now,voltage_now,temp,status}``,
  ``/sys/class/thermal/thermal_zone*/{type,temp}`` and
  ``/sys/devices/system/cpu/cpufreq/policy*/{related_cpus,scaling_cur_freq}`` in the kernel's
  units (%, uA, uV, 0.1 C, m°C, kHz), under the sandbox; a program on the device finds them at
  ``$SLM_FLEET_DEVICE_ROOT`` + the Android path (the root is empty on a real phone);
- ``logcat -d`` prints ``logcat.txt`` (``lmkd`` kill lines are appended there by ``lmk_kill``).

A thermal model moves the battery and CPU temperatures with this machine's CPU load (first-order,
tau 20 s), drains the battery 1 % every two minutes under load, and reports the CPU frequency
from ``/proc/cpuinfo``. ``unplug()`` drops every connection and stops answering (adb reports the
device offline or gone); ``replug()`` answers again on the same port.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import adbutils

from fleet.devices.emulator import services
from fleet.devices.emulator.sandbox import Facts, Sandbox
from fleet.devices.emulator.transport import Connection, Service, Stream


def _busy_fraction(prev: tuple[int, int] | None) -> tuple[float, tuple[int, int]]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, total = fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields)
    if prev is None or total == prev[1]:
        return 0.0, (idle, total)
    return 1.0 - (idle - prev[0]) / (total - prev[1]), (idle, total)


class EmulatedDevice:
    """One emulated phone listening on 127.0.0.1:``port`` (0: any free port)."""

    def __init__(
        self,
        root: Path,
        facts: Facts | None = None,
        port: int = 0,
        authorized: bool = True,
        ambient_c: float = 27.0,
    ):
        self.facts = facts or Facts()
        self.port = port
        self.authorized = authorized
        self._listener: socket.socket | None = None
        self._servers: set[int] = set()  # adb server ports it is attached to
        self._connections: list[Connection] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._ambient = ambient_c
        self._battery_c = self._cpu_c = ambient_c + 2.0
        self._level = float(self.facts.battery_level)
        self.start_listening()
        if not self.facts.serialno:
            self.facts.serialno = f"EMU{self.port}"
        self.sandbox = Sandbox(root, self.facts)
        self._tick(None, 1.0)
        threading.Thread(target=self._sensors, daemon=True, name="emu-sensors").start()

    @property
    def serial(self) -> str:
        """The serial the adb server lists it under after ``adb connect``."""
        return f"127.0.0.1:{self.port}"

    def banner(self) -> bytes:
        f = self.facts
        return (
            f"device::ro.product.name={f.device};ro.product.model={f.model};"
            f"ro.product.device={f.device};features=shell_v2,cmd"
        ).encode()

    def start_listening(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(8)
        self.port = sock.getsockname()[1]
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True, name="emu-accept").start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(sock, self.banner(), self._resolve, self.authorized)
            with self._lock:
                if self._listener is not listener:  # unplugged meanwhile: not answered
                    sock.close()
                    return
                self._connections = [c for c in self._connections if c.alive] + [conn]
            threading.Thread(target=conn.serve, daemon=True, name="emu-conn").start()

    def _resolve(self, name: str) -> Service | None:
        sandbox = self.sandbox
        head, _, rest = name.partition(":")
        options = head.split(",")
        if options[0] == "shell":
            if "v2" in options:
                return lambda s, _n: services.shell_v2(sandbox, s, rest)
            return lambda s, _n: services.shell_v1(sandbox, s, rest)
        if head == "exec":
            return lambda s, _n: services.shell_v1(sandbox, s, rest, merge_stderr=False)
        if head == "sync":
            return lambda s, _n: services.sync(sandbox, s)
        if head == "tcp" and rest.isdigit() and 0 < int(rest) < 65536:
            port = int(rest)

            def forward(s: Stream, _n: str) -> None:
                services.tcp(s, port)

            return forward
        return None

    def unplug(self) -> None:
        """Pull the cable: no more answers, every connection and stream dropped."""
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
            except OSError:
                pass
            listener.close()
        with self._lock:
            conns, self._connections = self._connections, []
        for c in conns:
            c.drop()

    def connect_to(self, adb_port: int | None = None) -> None:
        """Attach to a host's adb server (``adb connect``), as plugging into its USB hub would;
        a replug attaches again to every server it was attached to."""
        port = adb_port or int(os.environ.get("ANDROID_ADB_SERVER_PORT", "5037"))
        self._servers.add(port)
        _adb(port, "connect", self.serial)

    def replug(self, timeout_s: float = 30.0) -> None:
        """Plug the cable back: answer again, and be found again by the adb servers it was
        attached to (a TCP device that adb gave up on is forgotten; USB re-enumerates it). As a
        re-enumerated phone is, it is listed again before this returns: the connect is repeated
        (up to ``timeout_s``) while a server still lists it offline or not at all."""
        if self._listener is None:
            self.start_listening()
        want = "device" if self.authorized else "unauthorized"
        deadline = time.monotonic() + timeout_s
        for port in self._servers:
            while True:
                _adb(port, "disconnect", self.serial)
                _adb(port, "connect", self.serial)
                again = min(deadline, time.monotonic() + 5.0)
                while (listed := _listed(port, self.serial)) != want and time.monotonic() < again:
                    time.sleep(0.2)
                if listed == want or time.monotonic() >= deadline:
                    break

    @property
    def plugged(self) -> bool:
        return self._listener is not None

    def close(self) -> None:
        self._stopping.set()
        self.unplug()

    def _sensors(self) -> None:
        prev = None
        while not self._stopping.wait(1.0):
            prev = self._tick(prev, 1.0)

    def _tick(self, prev, dt: float):
        try:
            load, prev = _busy_fraction(prev)
        except (OSError, ValueError, IndexError):
            load = 0.0
        a = dt / 20.0
        self._battery_c += a * (self._ambient + 2.0 + 9.0 * load - self._battery_c)
        self._cpu_c += a * (self._ambient + 5.0 + 35.0 * load - self._cpu_c)
        self._level = max(1.0, self._level - dt * load / 120.0)
        self.sandbox.write_sensors(self._battery_c, self._cpu_c, round(self._level), load)
        return prev


def _listed(port: int, serial: str) -> str:
    """``serial``'s state in the adb server's list ("" when not listed or no answer)."""
    try:
        listing = adbutils.AdbClient(port=port, socket_timeout=30).list()
    except (adbutils.AdbError, OSError):
        return ""
    return next((d.state for d in listing if d.serial == serial), "")


def _adb(port: int, *args: str) -> None:
    try:
        subprocess.run(
            ["adb", "-P", str(port), *args], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        pass
