"""Starting and stopping SLM processes (agents.modelservice.slm_server) and asking them for stats.

    proc = ModelProcess(socket_path, LaunchSpec(model_spec, options, threads=1))
    ready = proc.start()         # blocks until it serves; ready.cold_start_s = spawn + load
    proc.stats()                 # (ServiceStats, context events), or None when it is gone
    proc.stop()

The process exits by itself when this side's stdin pipe closes (its parent died), so none
outlive their launcher. Statistics come over the process's own socket (a stats call, slm_ipc).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agents.modelservice.launch_spec import LaunchSpec, encode
from agents.modelservice.slm_ipc import SlmCallError, SlmClient
from fleet.records import PhoneEvent, ServiceStats

READY_TIMEOUT_S = 300.0


class ModelProcessError(RuntimeError):
    pass


@dataclass(frozen=True)
class ModelReady:
    """What a started SLM process reported."""

    pid: int
    cold_start_s: float  # process spawn + interpreter + weight load, measured here
    load_s: float  # weight load alone (read from storage), measured in the process
    weight_bytes: int
    weights_label: str
    read_bytes: int = 0  # bytes the load read from storage
    install_s: float = 0.0  # first install of random weights into storage (not a cold start)


class StatsReader:
    """Reads a model process's statistics over its socket (a stats call, ``slm_ipc``), e.g. an
    app's own model, which its launcher is not: the agent's paradigm reads it for the memory
    split."""

    def __init__(self, socket_path: Path):
        self._client = SlmClient(str(socket_path))

    def read(self, timeout_s: float = 2.0) -> tuple[ServiceStats, list[PhoneEvent]] | None:
        """The statistics and the context events since the last read; None when the process
        is gone or does not answer in time."""
        from fleet import wire

        try:
            return wire.stats_response_from_pb(self._client.stats(timeout_s))
        except SlmCallError:
            return None

    def close(self) -> None:
        self._client.close()


class ModelProcess:
    def __init__(self, socket_path: Path, spec: LaunchSpec):
        self.socket_path = Path(socket_path)
        if not spec.swap_dir:
            spec = replace(spec, swap_dir=str(self.socket_path.with_suffix(".swap")))
        self.spec = spec
        self.proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self._stats: StatsReader | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc else None

    @property
    def address(self) -> str:
        return f"unix:{self.socket_path}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float = READY_TIMEOUT_S, on_spawn=None) -> ModelReady:
        """Spawn and wait until it serves; ``on_spawn(pid)`` right after the spawn, so its memory
        is watched (sampler, low-memory killer) from the first page it touches."""
        if self.socket_path.exists():
            self.socket_path.unlink()
        self._close_stats()
        t0 = time.perf_counter()
        self._lines = queue.Queue()  # per launch: a dead predecessor's "exit" must not leak in
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agents.modelservice.slm_server",
                "--socket",
                str(self.socket_path),
                "--spec",
                encode(self.spec),
                "--exit-on-stdin-eof",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        threading.Thread(
            target=self._read, args=(self.proc, self._lines), daemon=True, name="slm-stdout"
        ).start()
        if on_spawn is not None:
            on_spawn(self.proc.pid)
        try:
            msg = self._next("ready", timeout_s)
        except ModelProcessError:
            self.kill()
            raise
        return ModelReady(
            pid=msg["pid"],
            cold_start_s=time.perf_counter() - t0 - msg.get("install_s", 0.0),
            load_s=msg["load_s"],
            read_bytes=msg.get("read_bytes", 0),
            install_s=msg.get("install_s", 0.0),
            weight_bytes=msg["weight_bytes"],
            weights_label=msg["weights_label"],
        )

    @staticmethod
    def _read(proc: subprocess.Popen[str], lines: queue.Queue[dict[str, Any]]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                lines.put(json.loads(line))
            except ValueError:
                continue
        lines.put({"event": "exit", "code": proc.wait()})

    def _next(self, event: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ModelProcessError(f"SLM process gave no {event!r} within {timeout_s:.0f} s")
            try:
                msg = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if msg.get("event") == event:
                return msg
            if msg.get("event") == "exit":
                raise ModelProcessError(
                    f"SLM process exited with code {msg['code']} before {event!r}"
                )

    def stats(self, timeout_s: float = 10.0) -> tuple[ServiceStats, list[PhoneEvent]] | None:
        """The engine's statistics and the context events since the last call; None when the
        process is gone or does not answer in time."""
        if not self.alive():
            return None
        if self._stats is None:
            self._stats = StatsReader(self.socket_path)
        return self._stats.read(timeout_s)

    def _close_stats(self) -> None:
        if self._stats is not None:
            self._stats.close()
        self._stats = None

    def stop(self, timeout_s: float = 10.0) -> None:
        self._close_stats()
        if self.proc is None or not self.alive():
            return
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # it exits on EOF
            self.proc.wait(timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.alive():
            self.proc.kill()
            self.proc.wait(timeout=10)
