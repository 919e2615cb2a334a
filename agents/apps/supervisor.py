"""The app processes of a deployment: spawn one process per app (app_process.py), run their
workloads, relay what they send. Shared by every paradigm; what differs is the model each app
reaches (its own, or the phone's shared service).
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, cast

from agents.apps.app_process import ModelEndpoint, client_main
from agents.errors import DeployError
from agents.modelservice.model_process import ModelReady
from fleet.records import AppWorkload, WorkloadRun

READY_TIMEOUT_S = 300.0


@dataclass
class AppProc:
    app: AppWorkload
    proc: mp.process.BaseProcess
    cmd: Connection  # host -> app
    evt: Connection  # app -> host
    ready: ModelReady | None = None  # an own model's launch (per-app), None for shared
    model_pid: int = 0  # own model process (per-app), 0 for shared
    model_starting: bool = False  # spawned, not serving yet (its memory counts already)
    # shared with the app process, which updates the first two on every request without a
    # message: [requests in flight, when its last request started or ended (monotonic ns),
    # stop asked (written by the supervisor: the app sees it before the stop command arrives)]
    activity: Any = None
    spawned_ns: int = 0  # when its own model was last spawned

    @property
    def busy(self) -> bool:
        return self.activity is not None and self.activity[0] > 0

    @property
    def last_used_ns(self) -> int:
        """When it last started or ended a request, or spawned its model (for LRU choices)."""
        return max(self.activity[1] if self.activity is not None else 0, self.spawned_ns)


class AppSupervisor:
    def __init__(self) -> None:
        self.apps: list[AppProc] = []
        self._stop_lock = threading.Lock()
        self._stop_sent = False  # this run's apps were told to stop

    def start(
        self,
        apps: tuple[AppWorkload, ...],
        endpoint_of: Callable[[AppWorkload], ModelEndpoint],
        vocab_of: Callable[[AppWorkload], int],
        max_context_of: Callable[[AppWorkload], int],
    ) -> None:
        """Start one process per app; vocab_of(app) is its model's vocabulary (its prompts draw
        token ids from it)."""
        ctx = mp.get_context("spawn")
        for app in apps:
            cmd_r, cmd_w = ctx.Pipe(duplex=False)
            evt_r, evt_w = ctx.Pipe(duplex=False)
            activity = ctx.RawArray("q", 3)  # no lock: one writer a slot, word-sized values
            proc = ctx.Process(
                target=client_main,
                name=f"app-{app.name}",
                daemon=True,
                args=(
                    cmd_r,
                    evt_w,
                    activity,
                    app,
                    endpoint_of(app),
                    vocab_of(app),
                    max_context_of(app),
                ),
            )
            proc.start()
            cmd_r.close()
            evt_w.close()  # keep only our ends, so a dead app reads as EOF
            self.apps.append(AppProc(app, proc, cmd_w, evt_r, activity=activity))
        pending = {a.evt: a for a in self.apps}
        deadline = time.monotonic() + READY_TIMEOUT_S
        while pending:
            ready = cast(
                list[Connection], wait(list(pending), timeout=max(0.0, deadline - time.monotonic()))
            )
            if not ready:
                raise DeployError(
                    f"apps {sorted(a.app.name for a in pending.values())} did not "
                    f"start within {READY_TIMEOUT_S:.0f} s"
                )
            for conn in ready:
                a = pending[conn]
                try:
                    kind, payload = conn.recv()
                except (EOFError, OSError):
                    kind, payload = "error", f"process exited with code {a.proc.exitcode}"
                if kind == "model_pid":
                    a.model_pid, a.model_starting = payload, True
                    continue
                if kind == "model_ready":
                    a.model_starting = False
                    continue
                del pending[conn]
                if kind != "ready":
                    raise DeployError(f"app {a.app.name} failed to start: {payload}")
                a.ready = payload

    def run(
        self,
        run: WorkloadRun,
        emit: Callable,
        stop: threading.Event,
        on_tick: Callable[[], None] | None = None,
    ) -> list[str]:
        """Run every app's workload; ``on_tick`` is called about every 0.1 s meanwhile."""
        problems: list[str] = []
        pending = {}
        with self._stop_lock:  # a stop_all now comes after every "run" on each pipe
            self._stop_sent = False
            for a in self.apps:
                a.activity[2] = 0
                if self.send(a, ("run", run)):
                    pending[a.evt] = a
                else:
                    problems.append(f"app {a.app.name} process {a.proc.pid} was dead at the start")
        while pending:
            if stop.is_set():
                self.stop_all()  # once: a Stop usually told them already (interrupt)
            for conn in cast(list[Connection], wait(list(pending), timeout=0.1)):
                a = pending[conn]
                try:
                    kind, payload = conn.recv()
                except (EOFError, OSError):
                    a.proc.join(timeout=1.0)
                    problems.append(
                        f"app {a.app.name} process {a.proc.pid} died (exit code {a.proc.exitcode})"
                    )
                    del pending[conn]
                    continue
                if kind == "record":
                    emit(payload)
                elif kind == "phone_event":
                    emit(payload)
                elif kind == "model_pid":
                    a.model_pid, a.spawned_ns = payload, time.monotonic_ns()
                    a.model_starting = True
                elif kind == "model_ready":
                    a.model_starting = False
                elif kind == "done":
                    del pending[conn]
                elif kind == "error":
                    problems.append(f"app {a.app.name}: {payload}")
                    del pending[conn]
            if on_tick is not None:
                on_tick()
        return problems

    def stop_all(self) -> None:
        """Tell every app to stop its workload now (any thread; once a run): an app reads the
        shared flag just before it sends each request, so none decides to send one after this
        returns; the stop command wakes the apps that wait (think time, open-loop arrivals)."""
        with self._stop_lock:
            if self._stop_sent:
                return
            self._stop_sent = True
            for a in self.apps:
                a.activity[2] = 1
                self.send(a, ("stop",))

    @staticmethod
    def send(a: AppProc, cmd: tuple) -> bool:
        try:
            a.cmd.send(cmd)
            return True
        except (BrokenPipeError, OSError):
            return False

    def shutdown(self) -> int:
        n = 0
        for a in self.apps:
            if a.proc.is_alive():
                self.send(a, ("exit",))
                a.proc.join(timeout=10.0)
                if a.proc.is_alive():
                    a.proc.kill()
                    a.proc.join(timeout=5.0)
                n += 1
            a.cmd.close()
            a.evt.close()
        self.apps = []
        return n
