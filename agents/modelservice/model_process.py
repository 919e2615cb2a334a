"""Starting and stopping SLM processes (agents.modelservice.slm_server) and talking to their stdin/stdout.

    proc = ServiceProcess(socket_path, model_spec, options, threads=1)
    info = proc.start()          # blocks until it serves; info["cold_start_s"] = spawn + load
    proc.stats()                 # the engine's counters and context events, or None
    proc.stop()

The process exits by itself when this side's pipe closes (its parent died), so none outlive their
launcher.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from agents.modelservice.launch_spec import spec_to_json
from fleet.records import ModelSpec, ServiceOptions

READY_TIMEOUT_S = 300.0


class ServiceError(RuntimeError):
    pass


class ServiceProcess:
    def __init__(self, socket_path: Path, model: ModelSpec, options: ServiceOptions, *,
                 threads: int = 1, kv_budget_bytes: int = 0, swap_dir: Path | None = None):
        self.socket_path = Path(socket_path)
        self.swap_dir = swap_dir or self.socket_path.with_suffix(".swap")
        self._spec = spec_to_json(model, options, threads, kv_budget_bytes, str(self.swap_dir))
        self.proc: subprocess.Popen | None = None
        self._lines: queue.Queue = queue.Queue()

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    @property
    def address(self) -> str:
        return f"unix:{self.socket_path}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> dict:
        if self.socket_path.exists():
            self.socket_path.unlink()
        t0 = time.perf_counter()
        self._lines = queue.Queue()  # per launch: a dead predecessor's "exit" must not leak in
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agents.modelservice.slm_server", "--socket", str(self.socket_path),
             "--spec", self._spec, "--exit-on-stdin-eof"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        threading.Thread(target=self._read, args=(self.proc, self._lines), daemon=True,
                         name="slm-stdout").start()
        try:
            msg = self._next("ready", timeout_s)
        except ServiceError:
            self.kill()
            raise
        msg["cold_start_s"] = time.perf_counter() - t0
        return msg

    @staticmethod
    def _read(proc: subprocess.Popen, lines: queue.Queue) -> None:
        for line in proc.stdout:
            try:
                lines.put(json.loads(line))
            except ValueError:
                continue
        lines.put({"event": "exit", "code": proc.wait()})

    def _next(self, event: str, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServiceError(f"SLM process gave no {event!r} within {timeout_s:.0f} s")
            try:
                msg = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if msg.get("event") == event:
                return msg
            if msg.get("event") == "exit":
                raise ServiceError(f"SLM process exited with code {msg['code']} before {event!r}")

    def stats(self, timeout_s: float = 10.0) -> dict | None:
        if not self.alive():
            return None
        try:
            self.proc.stdin.write("stats\n")
            self.proc.stdin.flush()
            return self._next("stats", timeout_s)
        except (OSError, ServiceError):
            return None

    def stop(self, timeout_s: float = 10.0) -> None:
        if not self.alive():
            return
        try:
            self.proc.stdin.close()  # it exits on EOF
            self.proc.wait(timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=10)
