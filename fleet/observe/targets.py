"""Prometheus ``file_sd`` targets: the run's own file, and a file shared with a standing
Prometheus.

A run's phones and coordinator listen on ephemeral ports, so Prometheus learns them from a
targets file the coordinator rewrites (atomically: written aside, then renamed) as phones join
and leave. ``TargetsFile`` is the run's own (``runs/<id>/prometheus/targets.json``, read by the
embedded Prometheus). ``SharedTargetsFile`` is one a standing Prometheus reads
(``fleet run --targets-file PATH``): several runs, one after another or at once, write their
groups into it under a lock, each keeping the others'. When a run ends its groups stay for a
grace period (marked with a hidden ``__slmfleet_expires`` label, which Prometheus drops after
relabelling) and the next write by any run, or ``fleet targets prune``, removes them.

    sd = TargetsFile(run_dir / "prometheus" / "targets.json")
    sd.set("phone-a", "127.0.0.1:9101", job="phone-agent", run=run_id)
    shared = SharedTargetsFile(Path("/var/lib/slm-fleet/targets/fleet.json"), run_id, grace_s=60)
    shared.set(...); shared.retire()             # at the end of the run
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

EXPIRES = "__slmfleet_expires"  # unix seconds after which a finished run's group is removed


def _write_atomically(path: Path, groups: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(groups, indent=2))
    os.replace(tmp, path)  # Prometheus never reads half a file


class TargetsFile:
    """A Prometheus file_sd JSON file: one target group per endpoint, rewritten whole."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._targets: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._deferred = 0  # open deferred() blocks
        self._dirty = False  # changed inside one, not written yet
        self._write()

    def set(self, name: str, address: str, *, job: str, **labels: str) -> None:
        with self._lock:
            self._targets[name] = {"targets": [address], "labels": {"job": job, **labels}}
            self._changed()

    def remove(self, *names: str) -> None:
        """Drop these endpoints' groups; one rewrite for all of them."""
        with self._lock:
            if [n for n in names if self._targets.pop(n, None) is not None]:
                self._changed()

    @contextmanager
    def deferred(self):
        """Changes inside are written once, at the end: a thousand phones coming up rewrite the
        file (and Prometheus rereads it) once, not once each."""
        with self._lock:
            self._deferred += 1
        try:
            yield self
        finally:
            with self._lock:
                self._deferred -= 1
                if not self._deferred and self._dirty:
                    self._dirty = False
                    self._write()

    def _changed(self) -> None:  # under the lock
        if self._deferred:
            self._dirty = True
        else:
            self._write()

    def _write(self) -> None:
        _write_atomically(self.path, list(self._targets.values()))


def read_groups(path: Path) -> list[dict]:
    """The groups of a targets file; a missing, empty or unreadable file has none."""
    try:
        groups = json.loads(path.read_text() or "[]")
    except (OSError, ValueError):
        return []
    if not isinstance(groups, list):
        return []
    return [g for g in groups if isinstance(g, dict) and isinstance(g.get("labels", {}), dict)]


def _expired(group: dict, now: float) -> bool:
    try:
        return float(group.get("labels", {}).get(EXPIRES, "inf")) <= now
    except (TypeError, ValueError):
        return False


@contextmanager
def _locked(path: Path):
    """An exclusive lock beside the file, held across read-modify-write (every run's
    coordinator and ``fleet targets prune`` take it)."""
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def prune(path: Path, now: float | None = None) -> int:
    """Remove the groups of finished runs whose grace period is over; returns how many."""
    now = time.time() if now is None else now
    with _locked(path):
        groups = read_groups(path)
        kept = [g for g in groups if not _expired(g, now)]
        if len(kept) != len(groups):
            _write_atomically(path, kept)
    return len(groups) - len(kept)


class SharedTargetsFile(TargetsFile):
    """This run's groups in a targets file that other runs write too (see the module doc):
    every group is labelled with the run, and a write keeps the other runs' live groups."""

    def __init__(self, path: Path, run_id: str, grace_s: float = 60.0):
        self.run_id = run_id
        self.grace_s = grace_s
        super().__init__(path)

    def set(self, name: str, address: str, *, job: str, **labels: str) -> None:
        super().set(name, address, job=job, **{**labels, "run": self.run_id})

    def retire(self, now: float | None = None) -> None:
        """The run ended: its groups stay ``grace_s`` more, then any write removes them."""
        expires = f"{(time.time() if now is None else now) + self.grace_s:.3f}"
        with self._lock:
            for group in self._targets.values():
                group["labels"][EXPIRES] = expires
            self._write()
            self._targets = {}

    def _write(self) -> None:
        now = time.time()
        with _locked(self.path):
            others = [
                g
                for g in read_groups(self.path)
                if g.get("labels", {}).get("run") != self.run_id and not _expired(g, now)
            ]
            _write_atomically(self.path, others + list(self._targets.values()))
