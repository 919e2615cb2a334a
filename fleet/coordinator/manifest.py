"""The run manifest (``runs/<run-id>/manifest.json``): what ran, on what, with which software.

Written when the run starts and rewritten (atomically) as phones join and when it ends, so a run
that crashed still says what it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from fleet.hostinfo import host_facts, software_versions

SOFTWARE = ("slm-fleet", "torch", "ray", "grpcio", "protobuf", "pydantic", "psutil")


def git_revision() -> dict[str, object]:
    src = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(src), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


class Manifest:
    def __init__(self, path: Path, *, run_id: str, experiment: dict, source: str):
        self.path = path
        self.data: dict = {
            "run_id": run_id,
            "status": "running",
            "started_at": time.time(),
            "ended_at": None,
            "experiment_source": source,
            "experiment": experiment,
            "software": software_versions(SOFTWARE),
            "host": host_facts(),
            "git": git_revision(),
            "ray": {},
            "phones": {},
            "notes": [],
        }
        self.write()

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """An existing run's manifest, to be updated (a resumed run)."""
        self = cls.__new__(cls)
        self.path = path
        self.data = json.loads(path.read_text())
        self.data.setdefault("notes", [])
        self.data.setdefault("phones", {})
        return self

    def write(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.path)

    def update(self, **fields) -> None:
        self.data.update(fields)
        self.write()
