"""``python -m fleet.coordinator.reaper``: ends a coordinator's processes if it dies.

The coordinator starts it (in a session of its own, so a Ctrl-C does not reach it) with a pipe on
its stdin. While the pipe is open it notes, twice a second, every descendant of the coordinator:
Ray's processes, the phone agents and their model and app processes, the embedded Prometheus.
When the coordinator ends cleanly it writes ``done`` first and the reaper leaves. When the pipe
closes without it (kill -9, a crash), the reaper sends SIGTERM to every noted process still
alive (the same process: pid and start time match), SIGKILL to any left after a grace period,
and sweeps the private directories of agents that are gone.

    reaper = start_reaper()      # in the coordinator
    ...
    stop_reaper(reaper)          # a clean end: nothing is killed
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys

import psutil

POLL_S = 0.5
GRACE_S = 8.0


def start_reaper() -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fleet.coordinator.reaper", str(os.getpid())],
        stdin=subprocess.PIPE,
        start_new_session=True,
    )


def stop_reaper(proc: subprocess.Popen) -> None:
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"done\n")
        proc.stdin.close()
        proc.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired, AssertionError):
        proc.kill()


def _descendants(parent: psutil.Process, seen: dict[int, float]) -> None:
    try:
        for child in parent.children(recursive=True):
            try:
                seen.setdefault(child.pid, child.create_time())
            except psutil.Error:
                pass
    except psutil.Error:
        pass


def _still_ours(seen: dict[int, float]) -> list[psutil.Process]:
    alive = []
    for pid, created in seen.items():
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - created) < 0.01 and pid != os.getpid():
                alive.append(p)
        except psutil.Error:
            pass
    return alive


def reap(seen: dict[int, float]) -> int:
    """SIGTERM, a grace period, SIGKILL; returns how many processes had to be ended."""
    procs = _still_ours(seen)
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(procs, timeout=GRACE_S)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=5)
    return len(procs)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        parent = psutil.Process(int(argv[0]))
    except (IndexError, ValueError, psutil.Error):
        return 2
    seen: dict[int, float] = {}
    data = b""
    while True:
        _descendants(parent, seen)
        ready, _, _ = select.select([sys.stdin.buffer], [], [], POLL_S)
        if not ready:
            continue
        chunk = os.read(sys.stdin.fileno(), 64)
        if chunk:
            data += chunk
            continue
        break  # EOF: the coordinator closed the pipe, or died
    if b"done" in data:
        return 0
    n = reap(seen)
    from fleet.runtime_dirs import runtime_root, sweep_stale

    if runtime_root().is_dir():
        sweep_stale(runtime_root())
    print(
        f"fleet reaper: the coordinator {parent.pid} died; ended {n} of its processes",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
