"""The emulated device's file system and what it says about itself: a sandbox directory where
Android's paths live (``/data/local/tmp``, ``/sdcard`` mapped into it), ``getprop``,
``dumpsys battery`` and ``logcat`` on its PATH in AOSP's output formats, and the kernel's
power-supply, thermal and cpufreq files in the kernel's units. See ``device`` for what the
emulated device is and is not.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ANDROID_PREFIXES = ("/data/", "/sdcard", "/storage/emulated/0", "/sys/class/", "/sys/devices/")
_PREFIX = re.compile(r"(?<![\w/.~-])(" + "|".join(re.escape(p) for p in ANDROID_PREFIXES) + r")")
RUNTIME_PYTHON = "/data/local/tmp/slm-fleet/runtime/bin/python3"


@dataclass
class Facts:
    """What the device says about itself."""

    model: str = "Pixel 7"
    device: str = "panther"
    android: str = "14"
    sdk: int = 34
    abi: str = "arm64-v8a"
    ram_mb: int = 8192
    battery_level: int = 86
    serialno: str = ""
    extra_props: dict[str, str] = field(default_factory=dict)

    def props(self) -> dict[str, str]:
        return {
            "ro.product.model": self.model,
            "ro.product.name": self.device,
            "ro.product.device": self.device,
            "ro.product.manufacturer": "Google",
            "ro.build.version.release": self.android,
            "ro.build.version.sdk": str(self.sdk),
            "ro.product.cpu.abi": self.abi,
            "ro.serialno": self.serialno,
            "ro.kernel.qemu": "0",
            "ro.boot.slm_fleet.emulated": "1",  # says plainly what it is
            "sys.slm_fleet.ram_mb": str(self.ram_mb),
        } | self.extra_props


GETPROP = """#!/bin/sh
P="$SLM_FLEET_DEVICE_ROOT/system/build.prop"
if [ $# -eq 0 ]; then
  sed -n 's/^\\([^=]*\\)=\\(.*\\)$/[\\1]: [\\2]/p' "$P"
else
  v=$(awk -v k="$1" 'index($0, k "=") == 1 { print substr($0, length(k) + 2); exit }' "$P")
  printf '%s\\n' "${v:-$2}"
fi
"""

DUMPSYS = """#!/bin/sh
B="$SLM_FLEET_DEVICE_ROOT/sys/class/power_supply/battery"
case "$1" in
battery)
  echo "Current Battery Service state:"
  echo "  AC powered: false"
  echo "  USB powered: true"
  echo "  Wireless powered: false"
  echo "  Max charging current: 500000"
  echo "  Max charging voltage: 5000000"
  echo "  Charge counter: $(( $(cat "$B/capacity") * 44000 ))"
  echo "  status: $(cat "$B/status_code")"
  echo "  health: 2"
  echo "  present: true"
  echo "  level: $(cat "$B/capacity")"
  echo "  scale: 100"
  echo "  voltage: $(( $(cat "$B/voltage_now") / 1000 ))"
  echo "  temperature: $(cat "$B/temp")"
  echo "  technology: Li-ion"
  ;;
meminfo)
  if [ -n "$2" ]; then  # one process, as Android 10+ prints its totals line (KiB)
    f=/proc/$2/smaps_rollup
    if [ ! -r "$f" ]; then echo "No process found for: $2"; exit 0; fi
    pss=$(awk '/^Pss:/ {print $2}' "$f"); rss=$(awk '/^Rss:/ {print $2}' "$f")
    swap=$(awk '/^SwapPss:/ {print $2}' "$f")
    echo "Applications Memory Usage (in Kilobytes):"
    echo ""
    echo "** MEMINFO in pid $2 [$(cat /proc/$2/comm)] **"
    printf "           TOTAL PSS:%9s            TOTAL RSS:%9s       TOTAL SWAP PSS:%9s\n" \
      "$pss" "$rss" "${swap:-0}"
  else
    awk '/^MemTotal:/ {t=$2} /^MemAvailable:/ {a=$2}
         END {printf "Total RAM: %dK (status normal)\n Free RAM: %dK\n", t, a}' /proc/meminfo
  fi
  ;;
"") echo "Currently running services:"; echo "  battery"; echo "  meminfo" ;;
*) echo "Can't find service: $1"; exit 0 ;;
esac
"""

LOGCAT = """#!/bin/sh
cat "$SLM_FLEET_DEVICE_ROOT/logcat.txt" 2>/dev/null
"""


class Sandbox:
    """The device's file system: a directory where Android's paths live."""

    def __init__(self, root: Path, facts: Facts):
        self.root = Path(root).resolve()
        self.facts = facts
        for d in ("data/local/tmp", "sdcard", "system/bin", "sys/class/power_supply/battery"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self._write("system/build.prop", "".join(f"{k}={v}\n" for k, v in facts.props().items()))
        for name, text in (("getprop", GETPROP), ("dumpsys", DUMPSYS), ("logcat", LOGCAT)):
            self._write(f"system/bin/{name}", text, 0o755)
        # the runtime a phone gets from ``fleet devices prepare``; here: this machine's Python
        self._write(
            RUNTIME_PYTHON.lstrip("/"),
            "#!/bin/sh\n# emulated device: this machine's Python\n"
            f'exec {shlex.quote(sys.executable)} "$@"\n',
            0o755,
        )
        self._write("logcat.txt", "", keep=True)

    def _write(self, rel: str, text: str, mode: int = 0o644, keep: bool = False) -> None:
        path = self.root / rel
        if keep and path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.chmod(mode)
        os.replace(tmp, path)

    def map_path(self, path: str) -> str:
        if path.startswith(ANDROID_PREFIXES) or path in ("/sdcard", "/data"):
            return str(self.root) + path
        return str(self.root / path.lstrip("/")) if path.startswith("/") else str(self.root / path)

    def map_command(self, command: str) -> str:
        return _PREFIX.sub(lambda m: str(self.root) + m.group(1), command)

    def environment(self) -> dict[str, str]:
        # the engine's native kernels: a folder of builds the host shares with its emulated
        # phones (a real phone compiles its own once), and the switch that turns them off
        shared = ("LANG", "LC_ALL", "TORCH_EXTENSIONS_DIR", "SLM_FLEET_NATIVE")
        env = {k: v for k, v in os.environ.items() if k in shared}
        tmp = str(self.root / "data/local/tmp")
        return env | {
            "PATH": f"{self.root / 'system/bin'}:/usr/local/bin:/usr/bin:/bin",
            "HOME": tmp,
            "TMPDIR": tmp,
            "ANDROID_DATA": "/data",
            "SLM_FLEET_DEVICE_ROOT": str(self.root),
        }

    # -- the device's sensors -------------------------------------------------------------------
    def write_sensors(self, battery_c: float, cpu_c: float, level: int, load: float) -> None:
        b = "sys/class/power_supply/battery"
        self._write(f"{b}/capacity", f"{level}\n")
        self._write(f"{b}/temp", f"{round(battery_c * 10)}\n")
        self._write(f"{b}/voltage_now", f"{round(3_600_000 + 6_000 * level)}\n")
        self._write(f"{b}/current_now", f"{-round(250_000 + 1_200_000 * load)}\n")
        self._write(f"{b}/status", "Discharging\n")
        self._write(f"{b}/status_code", "3\n")  # BATTERY_STATUS_DISCHARGING
        for i, (kind, c) in enumerate((("battery", battery_c), ("cpu-0-0-usr", cpu_c))):
            self._write(f"sys/class/thermal/thermal_zone{i}/type", f"{kind}\n")
            self._write(f"sys/class/thermal/thermal_zone{i}/temp", f"{round(c * 1000)}\n")
        cpus = " ".join(str(c) for c in sorted(os.sched_getaffinity(0)))
        policy = "sys/devices/system/cpu/cpufreq/policy0"
        self._write(f"{policy}/related_cpus", f"{cpus}\n")
        self._write(f"{policy}/scaling_cur_freq", f"{_cpu_khz()}\n")

    def lmk_kill(self, pid: int, process: str, freed_kb: int) -> None:
        """A low-memory-killer line as lmkd logs it (tag ``lowmemorykiller``)."""
        stamp = time.strftime("%m-%d %H:%M:%S.000")
        line = (
            f"{stamp}  1000  1000 I lowmemorykiller: Kill '{process}' ({pid}), uid 10123, "
            f"oom_score_adj 900 to free {freed_kb}kB; reason: low watermark is breached\n"
        )
        with open(self.root / "logcat.txt", "a") as f:
            f.write(line)


def _cpu_khz() -> int:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return round(float(line.split(":")[1]) * 1000)
    except (OSError, ValueError):
        pass
    return 2_000_000
