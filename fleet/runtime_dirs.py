"""The agents' private directories (kernel: the agent makes them, the coordinator's reaper
sweeps them): the agent's private directory for sockets, swapped contexts and other temporary files.

Every agent gets ``$TMPDIR/slm-fleet-<uid>/<name>.<pid>`` (mode 0700 down the path), and points
``TMPDIR`` and ``tempfile`` at it, so every temporary directory of a deployment, and of every
process the agent starts, lands inside it and nowhere else. It is removed when the agent exits;
an agent that was killed leaves its directory behind, and the next agent started on the host
sweeps every directory whose agent is gone.

    runtime = RuntimeDir.create("pixel-a")   # swept stale siblings, made its own
    sweep_stale(runtime_root())              # what the coordinator's reaper does at the end
    ...
    runtime.remove()
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil


def runtime_root() -> Path:
    base = Path(os.environ.get("SLM_FLEET_RUNTIME_ROOT") or tempfile.gettempdir())
    return base / f"slm-fleet-{os.getuid()}"


def _agent_alive(pid: int, made_at: float) -> bool:
    try:
        return psutil.Process(pid).create_time() <= made_at + 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def sweep_stale(root: Path) -> list[Path]:
    """Remove the directories of agents that are no longer running; returns them."""
    removed = []
    for d in root.glob("*.*"):
        try:
            pid = int(d.name.rsplit(".", 1)[1])
            made_at = d.stat().st_mtime
        except (ValueError, IndexError, OSError):
            continue
        if not _agent_alive(pid, made_at):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


@dataclass
class RuntimeDir:
    path: Path
    swept: tuple[Path, ...] = ()

    @classmethod
    def create(cls, name: str) -> RuntimeDir:
        root = runtime_root()
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if root.stat().st_uid != os.getuid() or root.stat().st_mode & 0o077:
            raise PermissionError(f"{root} must be owned by this user with mode 0700")
        swept = tuple(sweep_stale(root))
        path = root / f"{name}.{os.getpid()}"
        shutil.rmtree(path, ignore_errors=True)  # a dead agent's with a recycled pid
        path.mkdir(mode=0o700)
        os.environ["TMPDIR"] = str(path)  # every child's temporary files land here too
        tempfile.tempdir = str(path)
        return cls(path, swept)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
