"""One app as its own OS process: it runs the app's workload and reaches a model over local IPC.

Started by the app supervisor with the multiprocessing "spawn" method; talks to it over two
pipes (commands in, events out) and to a model over a Unix socket (``slm_ipc``):

- ``own`` model (per-app): the app launches its own model process and is its only user. When the
  low-memory killer has killed that process, the app's next request launches it again and pays
  the cold start (spawn + weight load), recorded on its own and inside that request's TTFT.
- ``shared`` model (SLMaaS, agent-OS): the app connects to the phone's one model service.

Timestamps are taken here, at the app's side of the IPC boundary. When the supervisor dies the
command pipe closes and this process exits (and with it an own model process, whose stdin closes).

Events: ("ready", ModelReady | None), ("model_pid", pid) at an own model's spawn,
("model_ready", pid) once it serves, ("record", RequestRecord), ("phone_event", PhoneEvent),
("done", n), ("error", message). Commands: ("run", WorkloadRun), ("stop",), ("exit",).
Whether the app is busy (requests in flight) and when it last started or ended one live in a
shared array that the supervisor reads for the low-memory killer's choice: written here on every
request, without a message.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from agents.apps.workload import ServeResult
from agents.modelservice.launch_spec import LaunchSpec
from agents.modelservice.model_process import ModelProcess, ModelReady
from agents.modelservice.slm_ipc import SlmCallError, SlmClient
from fleet.records import AppWorkload, PhoneEvent, ServeCall, WorkloadRun

REQUEST_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class ModelEndpoint:
    socket: str  # Unix socket path of the model process
    own: LaunchSpec | None = None  # per-app: the model this app launches (and relaunches) itself


class ServeError(RuntimeError):
    """A request the model could not serve; carries the cold start it had paid first."""

    def __init__(self, message: str, cold_start_s: float = 0.0):
        super().__init__(message)
        self.cold_start_s = cold_start_s


class ModelLink:
    """The app's connection to its model, relaunching an own model that was killed."""

    def __init__(self, endpoint: ModelEndpoint, send: Callable[[tuple], None], app: str):
        self.app = app
        self.endpoint = endpoint
        self.send = send
        self.proc = ModelProcess(Path(endpoint.socket), endpoint.own) if endpoint.own else None
        self.client = SlmClient(endpoint.socket)
        self._launch_lock = threading.Lock()  # concurrent requests relaunch a killed model once

    def open(self) -> ModelReady | None:
        """Launch an own model (the shared one is up already)."""
        if self.proc is None:
            return None  # each request connects on its own
        return self._launch()

    def _launch(self) -> ModelReady:
        assert self.proc is not None
        old, self.client = self.client, SlmClient(self.endpoint.socket)
        old.close()  # its connections went to a killed predecessor
        ready = self.proc.start(on_spawn=lambda pid: self.send(("model_pid", pid)))
        self.send(("model_ready", ready.pid))
        return ready

    def ensure_running(self) -> float:
        """Relaunch a killed own model; returns the cold start paid (0 when it was running)."""
        if self.proc is None:
            return 0.0
        with self._launch_lock:  # held until a relaunched model serves
            if self.proc.alive():
                return 0.0  # running, or relaunched by another request (which paid for it)
            ready = self._launch()
            self.send(
                (
                    "phone_event",
                    PhoneEvent(
                        time.monotonic_ns(),
                        "cold_start",
                        self.app,
                        f"relaunch after kill: {ready.read_bytes} B read from storage in "
                        f"{ready.load_s:.2f} s",
                        ready.weight_bytes,
                        ready.cold_start_s,
                    ),
                )
            )
        return ready.cold_start_s

    def describe_failure(self, err: SlmCallError) -> str:
        if self.proc is not None and self.proc.proc is not None:
            try:  # a socket closes a moment before the kill is visible: let it show
                self.proc.proc.wait(timeout=1.0)
            except Exception:
                pass
        if self.proc is not None and not self.proc.alive():
            return f"its model process was killed (exit code {self.proc.returncode})"
        return f"model service: {err.code}: {err.details}"

    def close(self) -> None:
        self.client.close()
        if self.proc is not None:
            self.proc.stop()

    def serve(
        self, call: ServeCall, on_token: Callable[[int], None], should_stop: Callable[[], bool]
    ) -> ServeResult:
        """One request on the model: tokens as they stream, then the service's facts."""
        from fleet import wire

        cold_start_s = self.ensure_running()
        result = ServeResult([], cold_start_s=cold_start_s)

        def on_tokens(ids: list[int]) -> None:
            for tok in ids:
                result.tokens.append(tok)
                on_token(tok)

        try:
            completion = self.client.generate(
                wire.serve_call_to_pb(call),
                on_tokens,
                lambda: should_stop() and len(result.tokens) < call.output_tokens,
                REQUEST_TIMEOUT_S,
            )
        except SlmCallError as err:
            raise ServeError(self.describe_failure(err), cold_start_s) from None
        if completion is not None:  # None: stopped, the service cancels it
            result.scheduled_ns, result.service = wire.completion_from_pb(completion)
        return result


class _StopSignal(threading.Event):
    """The app's stop: set by the stop command, and shown at once by the supervisor's flag in
    shared memory (the command reaches this process a thread wake-up later)."""

    def __init__(self, activity: Any):
        super().__init__()
        self._activity = activity

    def is_set(self) -> bool:
        return super().is_set() or (self._activity is not None and self._activity[2] != 0)

    def wait(self, timeout: float | None = None) -> bool:
        return super().wait(timeout) or self.is_set()


class AppProcess:
    """The app's side of its two pipes: commands in, events out, the workload in between."""

    def __init__(
        self,
        cmd_conn: Connection,
        evt_conn: Connection,
        activity: Any,
        app: AppWorkload,
        endpoint: ModelEndpoint,
        vocab_size: int,
        max_context: int,
    ):
        self.cmd_conn, self.evt_conn, self.activity = cmd_conn, evt_conn, activity
        self.app, self.vocab_size, self.max_context = app, vocab_size, max_context
        self.commands: queue.Queue[tuple] = queue.Queue()
        self.stop = _StopSignal(activity)
        self._send_lock = threading.Lock()
        self.link = ModelLink(endpoint, self.send, app.name)

    def send(self, msg: tuple) -> None:
        with self._send_lock:
            self.evt_conn.send(msg)

    def watch_commands(self) -> None:
        while True:
            try:
                cmd = self.cmd_conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # the supervisor is gone (an own model exits when our pipe closes)
            if cmd[0] == "stop":
                self.stop.set()
            elif cmd[0] == "exit":
                self.link.close()
                os._exit(0)
            else:
                self.stop.clear()  # here, not in the main loop: a stop right after run sticks
                self.commands.put(cmd)

    def serve(
        self, call: ServeCall, on_token: Callable[[int], None], should_stop: Callable[[], bool]
    ) -> ServeResult:
        self._in_use(+1)  # before a relaunch, so the LMK sees this app in use
        try:
            return self.link.serve(call, on_token, should_stop)
        finally:
            self._in_use(-1)

    def _in_use(self, delta: int) -> None:
        with self._send_lock:
            self.activity[0] += delta
            self.activity[1] = time.monotonic_ns()

    def run_workload(self, run: WorkloadRun) -> None:
        from agents.apps.workload import run_app

        try:
            n = run_app(
                self.app,
                run,
                serve=self.serve,
                emit=lambda r: self.send(("record", r)),
                vocab_size=self.vocab_size,
                max_context=self.max_context,
                stop=self.stop,
            )
            self.send(("done", n))
        except Exception:
            self.send(("error", traceback.format_exc(limit=3)))

    def main(self) -> None:
        threading.Thread(target=self.watch_commands, daemon=True, name="commands").start()
        try:
            ready = self.link.open()
        except Exception as exc:
            self.send(("error", f"{type(exc).__name__}: {exc}"))
            return
        self.send(("ready", ready))
        while True:
            cmd = self.commands.get()
            if cmd[0] == "run":
                self.run_workload(cmd[1])


def client_main(
    cmd_conn: Connection,
    evt_conn: Connection,
    activity: Any,
    app: AppWorkload,
    endpoint: ModelEndpoint,
    vocab_size: int,
    max_context: int,
) -> None:
    """Entry point of the spawned app process."""
    AppProcess(cmd_conn, evt_conn, activity, app, endpoint, vocab_size, max_context).main()
