"""One app as its own OS process: it runs the app's workload and reaches a model over local IPC.

Started by a paradigm host with the multiprocessing "spawn" method; talks to the host over two
pipes (commands in, events out) and to a model over fleet.v1.SlmService on a Unix socket:

- ``own`` model (per-app): the app launches its own model process and is its only user. When the
  low-memory killer has killed that process, the app's next request launches it again and pays
  the cold start (spawn + weight load), recorded on its own and inside that request's TTFT.
- ``shared`` model (SLMaaS, agent-OS): the app connects to the phone's one model service.

Timestamps are taken here, at the app's side of the IPC boundary. When the host dies the command
pipe closes and this process exits (and with it an own model process, whose stdin closes).

Events: ("ready", info), ("model_pid", pid), ("busy", bool), ("record", RequestRecord),
("phone_event", PhoneEvent), ("done", n), ("error", message).
Commands: ("run", WorkloadRun), ("stop",), ("exit",).
"""

from __future__ import annotations

import os
import queue
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from fleet.records import AppWorkload, ModelSpec, PhoneEvent, ServiceOptions


@dataclass(frozen=True)
class ModelEndpoint:
    socket: str  # Unix socket path of the model process
    own: bool  # per-app: this app launches (and relaunches) the model process itself
    model: ModelSpec | None = None  # own only
    threads: int = 1  # own only
    options: ServiceOptions | None = None  # own only


class _ModelLink:
    """The app's connection to its model, relaunching an own model that was killed."""

    def __init__(self, endpoint: ModelEndpoint, send, app: str):
        import grpc

        self.grpc = grpc
        self.app = app
        self.endpoint = endpoint
        self.send = send
        self.proc = None
        self.channel = self.stub = None
        if endpoint.own:
            from agents.modelservice.model_process import ServiceProcess

            self.proc = ServiceProcess(Path(endpoint.socket), endpoint.model, endpoint.options,
                                       threads=endpoint.threads)

    def connect(self) -> None:
        from fleet.v1 import slm_service_pb2_grpc as spb_grpc

        if self.channel is not None:
            self.channel.close()
        self.channel = self.grpc.insecure_channel(f"unix:{self.endpoint.socket}")
        self.stub = spb_grpc.SlmServiceStub(self.channel)

    def launch(self) -> dict:
        info = self.proc.start()
        self.send(("model_pid", self.proc.pid))
        self.connect()  # a fresh channel: the old one may be backing off from the dead socket
        return info

    def ensure_running(self) -> float:
        """Relaunch a killed own model; returns the cold start paid (0 when it was running)."""
        if self.proc is None or self.proc.alive():
            return 0.0
        info = self.launch()
        self.send(("phone_event", PhoneEvent(time.monotonic_ns(), "cold_start", self.app,
                                             "relaunch after kill", info["weight_bytes"],
                                             info["cold_start_s"])))
        return info["cold_start_s"]

    def describe_failure(self, err) -> str:
        if self.proc is not None and self.proc.proc is not None:
            try:  # a socket closes a moment before the kill is visible: let it show
                self.proc.proc.wait(timeout=1.0)
            except Exception:
                pass
        if self.proc is not None and not self.proc.alive():
            return f"its model process was killed (exit code {self.proc.proc.returncode})"
        return f"model service: {err.code().name}: {err.details()}"


def client_main(cmd_conn, evt_conn, app: AppWorkload, endpoint: ModelEndpoint, vocab_size: int,
                max_context: int) -> None:
    from agents.apps.workload import ServeResult, run_app
    from fleet import wire
    from fleet.v1 import slm_service_pb2 as spb

    commands: queue.Queue = queue.Queue()
    stop = threading.Event()
    send_lock = threading.Lock()

    def send(msg) -> None:
        with send_lock:
            evt_conn.send(msg)

    def watch_commands() -> None:
        while True:
            try:
                cmd = cmd_conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # the host is gone (an own model exits when our pipe to it closes)
            if cmd[0] == "stop":
                stop.set()
            elif cmd[0] == "exit":
                if link.proc is not None:
                    link.proc.stop()
                os._exit(0)
            else:
                stop.clear()  # here, not in the main loop: a stop right after run must stick
                commands.put(cmd)

    link = _ModelLink(endpoint, send, app.name)
    threading.Thread(target=watch_commands, daemon=True, name="commands").start()
    try:
        info = link.launch() if endpoint.own else (link.connect() or {})
    except Exception as exc:
        send(("error", f"{type(exc).__name__}: {exc}"))
        return
    send(("ready", info))

    def serve(call, on_token, should_stop) -> ServeResult:
        send(("busy", True))  # before a relaunch, so the LMK sees this app in use
        cold_start_s = link.ensure_running()
        tokens: list[int] = []
        extra = {"cold_start_s": cold_start_s} if cold_start_s else {}
        scheduled_ns = 0
        stream = link.stub.Generate(spb.GenerateRequest(
            app=call.app, request_id=call.request_id, prompt_tokens=call.prompt,
            max_new_tokens=call.output_tokens, foreground=call.foreground, session=call.session,
            shared_prefix_tokens=call.shared_prefix_tokens), timeout=600)
        finished = threading.Event()

        def cancel_on_stop() -> None:  # a request still queued at the model gets no token to
            while not finished.wait(0.1):  # check should_stop on: cancel it from here
                if should_stop():
                    stream.cancel()
                    return

        threading.Thread(target=cancel_on_stop, daemon=True).start()
        try:
            for msg in stream:
                if msg.HasField("completion"):
                    c = msg.completion
                    scheduled_ns = c.scheduled_ns
                    extra.update(slices=[wire.slice_from_pb(s) for s in c.slices],
                                 context_switch_s=c.context_switch_s,
                                 context_switch_bytes=c.context_switch_bytes,
                                 context_restore=c.context_restore,
                                 cached_prompt_tokens=c.cached_prompt_tokens,
                                 max_batch_size=c.max_batch_size)
                    continue
                for tok in msg.tokens.ids:
                    tokens.append(tok)
                    on_token(tok)
                if should_stop() and len(tokens) < call.output_tokens:
                    stream.cancel()
                    break
        except link.grpc.RpcError as err:
            if err.code() != link.grpc.StatusCode.CANCELLED or not should_stop():
                raise RuntimeError(link.describe_failure(err)) from None
        finally:
            finished.set()
            send(("busy", False))
        return ServeResult(tokens, scheduled_ns=scheduled_ns, extra=extra)

    while True:
        cmd = commands.get()
        if cmd[0] != "run":
            continue
        try:
            n = run_app(app, cmd[1], serve=serve, emit=lambda r: send(("record", r)),
                        vocab_size=vocab_size, max_context=max_context, stop=stop)
            send(("done", n))
        except Exception:
            send(("error", traceback.format_exc(limit=3)))
