"""Resource probes: per-process memory (RSS and PSS) and CPU of a phone's SLM processes.

The processes are the agent's own, read through psutil (PSS from /proc/<pid>/smaps_rollup), on a
virtual phone as on a real one; where a phone hides that file, ``dumpsys meminfo PID`` gives it.
PSS charges shared pages (the torch runtime's libraries, say) to each process in proportion, so
summing PSS across processes does not double-count; summing RSS does.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import psutil

from fleet.records import ResourceSample

DUMPSYS_EVERY_S = 2.0
_TOTALS = re.compile(r"TOTAL PSS:\s*(\d+)\s+TOTAL RSS:\s*(\d+)")


def dumpsys_pss(pid: int) -> tuple[int, int] | None:
    """(RSS, PSS) bytes of a process from Android's ``dumpsys meminfo PID`` (its "TOTAL PSS: ...
    TOTAL RSS: ..." line, KiB); None where there is no dumpsys or no such line."""
    dumpsys = shutil.which("dumpsys")
    if dumpsys is None:
        return None
    try:
        out = subprocess.run(
            [dumpsys, "meminfo", str(int(pid))], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = _TOTALS.search(out)
    return (int(m.group(2)) * 1024, int(m.group(1)) * 1024) if m else None


class ProcessSampler:
    """Reads one sample per live process each time ``sample()`` is called."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}
        self._denied: dict[int, tuple[float, tuple[int, int] | None]] = {}  # pid -> (when, got)

    def _dumpsys(self, pid: int) -> tuple[int, int] | None:
        """dumpsys is slow and loads the phone it measures: asked once per DUMPSYS_EVERY_S per
        process, the last answer is reused in between."""
        when, got = self._denied.get(pid, (-DUMPSYS_EVERY_S, None))
        if time.monotonic() - when >= DUMPSYS_EVERY_S:
            got = dumpsys_pss(pid)
            self._denied[pid] = (time.monotonic(), got)
        return got

    def sample(self, processes: dict[int, str]) -> list[ResourceSample]:
        out: list[ResourceSample] = []
        now = time.monotonic_ns()  # one time per tick, so a tick's samples can be summed
        for pid, component in processes.items():
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                    proc.cpu_percent(None)  # the first call only primes the counter
                cpu = proc.cpu_percent(None)
                try:
                    mem = proc.memory_full_info()
                    rss, pss = mem.rss, getattr(mem, "pss", 0) or mem.rss  # no PSS: RSS
                except psutil.AccessDenied:  # a phone that hides /proc/<pid>/smaps_rollup
                    got = self._dumpsys(pid)
                    if got is None:
                        raise
                    rss, pss = got
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                self._procs.pop(pid, None)
                continue
            out.append(
                ResourceSample(
                    t_ns=now,
                    component=component,
                    pid=pid,
                    rss_bytes=rss,
                    pss_bytes=pss,
                    cpu_percent=cpu,
                )
            )
        return out
