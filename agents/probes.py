"""Resource probes: per-process memory (RSS and PSS) and CPU of a phone's SLM processes.

On a virtual phone the processes are local and read through psutil (PSS from
/proc/<pid>/smaps_rollup). PSS charges shared pages (the torch runtime's libraries, say) to each
process in proportion, so summing PSS across processes does not double-count; summing RSS does.
"""

from __future__ import annotations

import time

import psutil

from fleet.records import ResourceSample


class ProcessSampler:
    """Reads one sample per live process each time ``sample()`` is called."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def sample(self, processes: dict[int, str]) -> list[ResourceSample]:
        out: list[ResourceSample] = []
        now = time.monotonic_ns()  # one time per tick, so a tick's samples can be summed
        for pid, component in processes.items():
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                    proc.cpu_percent(None)  # the first call only primes the counter
                mem = proc.memory_full_info()
                cpu = proc.cpu_percent(None)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                self._procs.pop(pid, None)
                continue
            pss = getattr(mem, "pss", 0) or mem.rss  # no PSS outside Linux: fall back to RSS
            out.append(
                ResourceSample(
                    t_ns=now,
                    component=component,
                    pid=pid,
                    rss_bytes=mem.rss,
                    pss_bytes=pss,
                    cpu_percent=cpu,
                )
            )
        return out
