"""The run manifest (``runs/<run-id>/manifest.json``): what ran, on what, with which software.

Written when the run starts and rewritten (atomically) as phones join and when it ends, so a run
that crashed still says what it was.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

SOFTWARE = ("slm-fleet", "torch", "ray", "grpcio", "protobuf", "pydantic", "psutil")


def software_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in SOFTWARE:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def host_facts() -> dict[str, object]:
    import psutil

    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"hostname": platform.node(), "platform": platform.platform(),
            "machine": platform.machine(), "cpu_count": os.cpu_count(), "cpu_model": cpu_model,
            "memory_total_bytes": psutil.virtual_memory().total}


def git_revision() -> dict[str, object]:
    src = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


class Manifest:
    def __init__(self, path: Path, *, run_id: str, experiment: dict, source: str):
        self.path = path
        self.data: dict = {
            "run_id": run_id, "status": "running", "started_at": time.time(), "ended_at": None,
            "experiment_source": source, "experiment": experiment,
            "software": software_versions(), "host": host_facts(), "git": git_revision(),
            "ray": {}, "phones": {}, "notes": [],
        }
        self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.path)

    def update(self, **fields) -> None:
        self.data.update(fields)
        self.write()
