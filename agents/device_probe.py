"""The phone's own state during a trial: battery, temperatures, CPU frequencies, free memory,
and the system low-memory killer's kills. On a real phone these decide whether two trials are
comparable at all (a hot phone throttles); on a Linux box the same files give its thermal zones
and frequencies, and what is not there is skipped.

Readings (``DeviceReading(t_ns, kind, name, value)``), in the kernel's files' units converted to
base ones:
- ``battery``: ``level_pct``, ``temp_c``, ``current_a``, ``voltage_v``
  (``/sys/class/power_supply/battery/{capacity,temp,current_now,voltage_now}``)
- ``thermal``: one per zone, named by its ``type``, in C (``/sys/class/thermal/thermal_zone*``)
- ``cpufreq``: one per cluster (``policy*``), in Hz (``scaling_cur_freq``)
- ``memory``: ``available_bytes`` (``/proc/meminfo`` MemAvailable)

Paths are read under ``$SLM_FLEET_DEVICE_ROOT`` (empty on a phone; an emulated device's sandbox),
except ``/proc``, which is the kernel's own wherever the agent runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from fleet.records import DeviceReading, PhoneEvent

MAX_ZONES = 16
MAX_POLICIES = 8
_LMK = re.compile(r"(?:lowmemorykiller|lmkd).*?Kill '([^']*)' \((\d+)\).*?to free (\d+)kB")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _number(path: Path) -> float | None:
    text = _read(path)
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _index(path: Path) -> int:
    digits = "".join(ch for ch in path.name if ch.isdigit())
    return int(digits) if digits else 0


def _wanted(zone_type: str) -> bool:
    return any(k in zone_type.lower() for k in ("battery", "skin", "cpu", "soc", "gpu", "xo"))


class DeviceProbe:
    def __init__(self, root: str | None = None):
        if root is None:
            root = os.environ.get("SLM_FLEET_DEVICE_ROOT", "")
        self.root = Path(root or "/")
        self._lmk_seen: set[str] | None = None

    def _p(self, android_path: str) -> Path:
        return self.root / android_path.lstrip("/")

    def read(self) -> list[DeviceReading]:
        now = time.monotonic_ns()
        out: list[DeviceReading] = []

        def add(kind: str, name: str, value: float | None, scale: float = 1.0) -> None:
            if value is not None:
                out.append(DeviceReading(now, kind, name, value * scale))

        battery = self._p("/sys/class/power_supply/battery")
        add("battery", "level_pct", _number(battery / "capacity"))
        add("battery", "temp_c", _number(battery / "temp"), 0.1)
        add("battery", "current_a", _number(battery / "current_now"), 1e-6)
        add("battery", "voltage_v", _number(battery / "voltage_now"), 1e-6)
        zones = sorted(self._p("/sys/class/thermal").glob("thermal_zone*"), key=_index)
        if len(zones) > MAX_ZONES:  # phones have dozens: the battery, skin and CPU ones first
            zones.sort(key=lambda z: (not _wanted(_read(z / "type") or ""), _index(z)))
            zones = sorted(zones[:MAX_ZONES], key=_index)
        for zone in zones:
            kind = _read(zone / "type") or zone.name
            add("thermal", kind[:64], _number(zone / "temp"), 1e-3)
        policies = sorted(self._p("/sys/devices/system/cpu/cpufreq").glob("policy*"), key=_index)
        for policy in policies[:MAX_POLICIES]:
            add("cpufreq", policy.name, _number(policy / "scaling_cur_freq"), 1e3)
        meminfo = _read(Path("/proc/meminfo")) or ""
        m = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.MULTILINE)
        if m:
            add("memory", "available_bytes", float(m.group(1)), 1024.0)
        return out

    # -- the system's own low-memory killer --------------------------------------------------------
    def lmk_kills(self) -> list[PhoneEvent]:
        """lmkd's kills logged since the previous call (the first call only takes note)."""
        logcat = shutil.which("logcat")
        if logcat is None:
            return []
        try:
            text = subprocess.run(
                [logcat, "-d", "-s", "lowmemorykiller:I", "lmkd:I"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return []
        lines = {line for line in text.splitlines() if _LMK.search(line)}
        before, self._lmk_seen = self._lmk_seen, lines
        if before is None:
            return []
        events = []
        for line in sorted(lines - before):
            m = _LMK.search(line)
            assert m is not None
            events.append(
                PhoneEvent(
                    time.monotonic_ns(),
                    "system_lmk_kill",
                    "",
                    f"the phone's lmkd killed {m.group(1)} (pid {m.group(2)})"[:200],
                    int(m.group(3)) * 1024,
                    0.0,
                )
            )
        return events
