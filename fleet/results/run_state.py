"""Is a run live, finished, stopped or interrupted? Read from its directory alone.

The coordinator holds an exclusive ``flock`` on ``RUN_DIR/.lock`` for as long as it runs; the
kernel drops it when the process ends, however it ends (kill -9 included). So a run whose lock
is free while some of its trials are still ``pending`` or ``running`` was interrupted (the
coordinator crashed or was killed), and ``fleet run --resume RUN_DIR`` finishes it.

    with RunLock(run_dir):           # raises RunBusy if another coordinator holds it
        ...
    state = run_state(run_dir)       # RunState("interrupted", "3 of 12 trials never finished")
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from fleet.records import TrialStatus

UNFINISHED = (TrialStatus.PENDING.value, TrialStatus.RUNNING.value)
CUT_SHORT = (TrialStatus.INTERRUPTED.value, TrialStatus.NOT_RUN.value)


class RunBusy(Exception):
    """Another coordinator holds the run."""


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunBusy(
                f"{self.path.parent}: a coordinator (pid {holder}) is running it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_locked(run_dir: Path) -> bool:
    path = Path(run_dir) / ".lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


@dataclass(frozen=True)
class RunState:
    status: str  # "live", "finished", "stopped" or "interrupted"
    detail: str = ""

    @property
    def complete(self) -> bool:
        return self.status == "finished"


def run_state(run_dir: Path) -> RunState:
    """The run's state from its lock and its trials' statuses."""
    if is_locked(run_dir):
        return RunState("live", "a coordinator is running it")
    db = sqlite3.connect(f"file:{Path(run_dir) / 'results.sqlite'}?mode=ro", uri=True)
    try:
        counts = dict(db.execute("SELECT status, COUNT(*) FROM trials GROUP BY status").fetchall())
    finally:
        db.close()
    total = sum(counts.values())
    unfinished = sum(counts.get(s, 0) for s in UNFINISHED)
    cut = sum(counts.get(s, 0) for s in CUT_SHORT)
    if unfinished:
        return RunState(
            "interrupted",
            f"{unfinished} of {total} trials never finished (the coordinator died); "
            f"finish it with: fleet run --resume {run_dir}",
        )
    if cut:
        return RunState(
            "stopped",
            f"{cut} of {total} trials were stopped or never run; "
            f"finish it with: fleet run --resume {run_dir}",
        )
    return RunState("finished", f"{total} trials")
