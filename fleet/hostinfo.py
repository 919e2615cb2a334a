"""Facts about the machine and software a measurement ran on, read the same way on both sides
(the phone agent's Describe, the coordinator's run manifest).

    software_versions(("torch", "grpcio"))   # {"python": "3.11.7", "torch": "2.13.0", ...}
    host_facts()                             # {"hostname": ..., "cpu_count": 2, ...}

Both are read once a process and copied after: neither changes while it runs, and reading them
is slow (installed versions about 4 ms, from every distribution's metadata; every Describe
carries them, and a coordinator describes each phone as it comes up).
"""

from __future__ import annotations

import functools
import os
import platform
from importlib import metadata
from pathlib import Path


def software_versions(dists: tuple[str, ...]) -> dict[str, str]:
    """Python's version and each distribution's installed version (or "not installed")."""
    return dict(_software_versions(tuple(dists)))


@functools.cache
def _software_versions(dists: tuple[str, ...]) -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Hardware")):  # x86 / many ARM kernels
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def host_facts() -> dict[str, str | int]:
    return dict(_host_facts())


@functools.cache
def _host_facts() -> dict[str, str | int]:
    import psutil

    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count() or 0,
        "cpu_model": cpu_model(),
        "memory_total_bytes": int(psutil.virtual_memory().total),
    }
