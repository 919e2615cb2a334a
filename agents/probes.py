"""Resource probes: per-process memory (RSS and PSS) and CPU of a phone's SLM processes.

The processes are the agent's own, read through psutil (PSS from /proc/<pid>/smaps_rollup), on a
virtual phone as on a real one; where a phone hides that file, ``dumpsys meminfo PID`` gives it.
PSS charges shared pages (the torch runtime's libraries, say) to each process in proportion, so
summing PSS across processes does not double-count; summing RSS does.

Reading PSS makes the kernel walk the process's page tables: about 2 ms of CPU for a 250 MB
process, 4% of a core at a 100 ms interval for one model process alone (bench/overhead.py).
RSS (``/proc/<pid>/statm``) costs 15 us. So each tick reads RSS and CPU, and re-reads PSS only
when RSS moved by more than ``PSS_REFRESH_BYTES`` since the last PSS read, or ``PSS_REFRESH_S``
has passed; in between, PSS is the last one read plus the change in RSS since (a process's new
pages are its own: a growing KV cache, a loading model), which is what the next read would show
to within the shared pages that moved meanwhile.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import psutil

from fleet.records import ResourceSample

DUMPSYS_EVERY_S = 2.0
PSS_REFRESH_S = 1.0  # PSS read at least this often per process
PSS_REFRESH_BYTES = 4 << 20  # and whenever RSS moved by more than this since the last read
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
        self._pss: dict[int, tuple[float, int, int]] = {}  # pid -> (when, rss, pss) last read

    def _dumpsys(self, pid: int) -> tuple[int, int] | None:
        """dumpsys is slow and loads the phone it measures: asked once per DUMPSYS_EVERY_S per
        process, the last answer is reused in between."""
        when, got = self._denied.get(pid, (-DUMPSYS_EVERY_S, None))
        if time.monotonic() - when >= DUMPSYS_EVERY_S:
            got = dumpsys_pss(pid)
            self._denied[pid] = (time.monotonic(), got)
        return got

    def _memory(self, pid: int, proc: psutil.Process) -> tuple[int, int]:
        """(RSS, PSS) bytes: PSS read afresh, or carried forward by the RSS change (module doc)."""
        rss = proc.memory_info().rss
        last = self._pss.get(pid)
        now = time.monotonic()
        if last and now - last[0] < PSS_REFRESH_S and abs(rss - last[1]) <= PSS_REFRESH_BYTES:
            return rss, max(0, last[2] + rss - last[1])
        try:
            mem = proc.memory_full_info()
            rss, pss = mem.rss, getattr(mem, "pss", 0) or mem.rss  # no PSS: RSS
        except psutil.AccessDenied:  # a phone that hides /proc/<pid>/smaps_rollup
            got = self._dumpsys(pid)
            if got is None:
                raise
            rss, pss = got
        self._pss[pid] = (now, rss, pss)
        return rss, pss

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
                rss, pss = self._memory(pid, proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                self._procs.pop(pid, None)
                self._pss.pop(pid, None)
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
