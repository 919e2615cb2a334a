"""An SLM process: one model served to apps on a Unix domain socket (``slm_ipc`` framing).

The same program is a per-app app's own model process (batch of one, nothing shared) and the
shared system service of SLMaaS and agent-OS; ``ServiceOptions`` make the difference. The engine
runs in its own thread and writes each step's tokens straight onto the callers' sockets; a
thread per connection reads the calls, queues requests and answers statistics. Messages are
converted by ``fleet.wire`` only.

    python -m agents.modelservice.slm_server --socket /tmp/x.sock --spec <launch spec> \\
        --exit-on-stdin-eof
prints ``{"event": "ready", "pid": ..., "load_s": ..., "weight_bytes": ...}`` once it serves.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

from agents.modelservice import launch_spec, slm_ipc
from agents.modelservice.scheduler import RequestState, ServiceRequest
from agents.modelservice.serving_engine import ServingEngine
from agents.storage import PhoneStorage
from fleet import wire
from fleet.storage_models import storage_model
from fleet.v1 import slm_service_pb2 as spb

STATS_RETRIES = 5
CANCEL_WAIT_S = 5.0  # how long a closed connection waits for its cancelled call's end
STALL_S = 30.0  # a caller that reads nothing this long while replies wait is cut off


class _Connection:
    """One caller's socket. The connection's thread reads calls from it; the engine thread
    writes a generate call's replies onto it without ever blocking: what the socket cannot take
    now waits in a backlog that a writer thread of this connection drains, in order. A caller
    that reads nothing for STALL_S is cut off (its call fails) rather than held forever."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._lock = threading.Lock()  # a send and the close never overlap (fd reuse)
        self._closed = False
        self._backlog = bytearray()  # bytes the socket could not take yet
        self._writer: threading.Thread | None = None

    def send(self, data: bytes) -> bool:
        """Queue ``data`` behind what is pending; False when the caller is gone or cut off."""
        with self._lock:
            if self._closed:
                return False
            if not self._backlog:
                try:
                    data = data[self.sock.send(data, socket.MSG_DONTWAIT) :]
                except BlockingIOError:
                    pass
                except OSError:
                    self._cut()
                    return False
                if not data:
                    return True
            self._backlog += data
            if self._writer is None:
                self._writer = threading.Thread(target=self._drain, name="writer", daemon=True)
                self._writer.start()
            return True

    def _drain(self) -> None:
        while True:
            with self._lock:
                if self._closed or not self._backlog:
                    self._writer = None
                    return
                try:
                    del self._backlog[: self.sock.send(self._backlog, socket.MSG_DONTWAIT)]
                except BlockingIOError:
                    pass
                except OSError:
                    self._cut()
                    self._writer = None
                    return
                if not self._backlog:
                    self._writer = None
                    return
                fd = self.sock.fileno()  # open: close() waits for this thread
            if not select.select([], [fd], [], STALL_S)[1]:
                with self._lock:
                    self._cut()
                    self._writer = None
                return

    def cut(self) -> None:
        """End the stream now (any thread): the connection's thread sees it and closes."""
        with self._lock:
            if not self._closed:
                self._cut()

    def _cut(self) -> None:  # under the lock: the stream is broken, end it
        self._backlog.clear()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # the connection's thread sees the end

    def close(self) -> None:
        """Close once the backlog has gone out (or the caller was cut off)."""
        writer = self._writer
        if writer is not None:
            writer.join(STALL_S + 1.0)
        with self._lock:
            self._closed = True
            self.sock.close()


class _Generation:
    """A generate call in flight: the engine's sink for its request. The engine hands it the
    step's tokens (and at the end the request itself); ``flush`` sends them from the engine
    thread, with no hop through another thread: the tokens first, then the completion."""

    def __init__(self, conn: _Connection, req: ServiceRequest):
        self.conn, self.req = conn, req
        self.ids: list[int] = []
        self.final = False
        self.ended = threading.Event()  # the request is over (its last reply sent or lost)

    def __call__(self, item: int | ServiceRequest) -> None:
        if isinstance(item, int):
            self.ids.append(item)
        else:
            self.final = True

    def flush(self, engine_error: str) -> None:
        if self.ids:  # several when the caller fell behind: sent together, and first, so the
            ids, self.ids = self.ids, []  # last token is not held up by the completion
            self._send(slm_ipc.reply_frame(tokens=spb.TokenChunk(ids=ids)))
        if not self.final:
            return
        req = self.req
        if req.state == RequestState.FINISHED:
            completion = wire.completion_to_pb(req.scheduled_ns, req.facts())
            last = slm_ipc.reply_frame(completion=completion)
        else:
            reason = f"request {req.state.name}" + (f": {engine_error}" if engine_error else "")
            last = slm_ipc.error_frame("ABORTED", reason)
        self.ended.set()  # before the send: the caller's next call may follow at once
        self._send(last)

    def _send(self, data: bytes) -> None:
        if not self.conn.send(data) and not self.req.done:
            self.req.cancelled = True  # nobody to send to: the engine drops it next step


class SlmServicer:
    """Answers the calls on each connection (``slm_ipc``), one thread per connection: a generate
    call streams its tokens and its completion; a stats call the engine's counters. A caller
    that closes its connection during a call (or sends a second call) cancels it."""

    def __init__(self, engine: ServingEngine, max_position: int, vocab_size: int):
        self.engine = engine
        self.max_position = max_position
        self.vocab_size = vocab_size

    def deliver(self, items: list) -> None:
        """The engine's deliver hook: a step's (sink, item) pairs, sent per call. A reply that
        cannot be built fails its own call, not the engine."""
        calls: dict[int, _Generation] = {}
        for sink, item in items:
            sink(item)
            calls[id(sink)] = sink
        for call in calls.values():
            try:
                call.flush(self.engine.error)
            except Exception:
                traceback.print_exc()
                call.req.cancelled = True
                call.ended.set()
                call.conn.cut()  # the caller sees the connection end: its request fails

    def _check(self, prompt: list[int], max_new_tokens: int) -> str:
        if max(prompt) >= self.vocab_size or min(prompt) < 0:
            return f"token ids must be in [0, {self.vocab_size})"
        if len(prompt) + max_new_tokens > self.max_position:
            return (
                f"{len(prompt)} + {max_new_tokens} tokens exceed the model's "
                f"{self.max_position} positions"
            )
        return ""

    def serve_connection(self, sock: socket.socket) -> None:
        """One caller's connection: its calls, one after another, until it closes."""
        conn = _Connection(sock)
        call: _Generation | None = None  # the generate call in flight
        try:
            while True:
                try:
                    msg = slm_ipc.recv_call(sock)
                except slm_ipc.CallerGone:
                    return
                except slm_ipc.FrameError as exc:
                    if call is None or call.ended.is_set():
                        conn.send(slm_ipc.error_frame("INVALID_ARGUMENT", str(exc)))
                    return
                if call is not None and not call.ended.is_set():
                    return  # a call during a call: the caller broke off (the first is cancelled)
                call = None
                if msg.WhichOneof("call") == "stats":
                    conn.send(self.stats())
                    continue
                try:
                    req = self.request(msg.generate)
                except wire.WireError as exc:
                    conn.send(slm_ipc.error_frame("INVALID_ARGUMENT", str(exc)))
                    return
                req.sink = call = _Generation(conn, req)
                self.engine.submit(req)
        finally:
            if call is not None and not call.ended.is_set():
                self.engine.cancel(call.req)  # the app went away: free its place in the batch
                call.ended.wait(CANCEL_WAIT_S)  # its last send comes before the close
            conn.close()

    def request(self, request: spb.GenerateRequest) -> ServiceRequest:
        """The engine's request for a generate call; WireError says why it cannot be served."""
        call = wire.serve_call_from_pb(request)
        problem = self._check(call.prompt, call.output_tokens)
        if problem:
            raise wire.WireError(problem)
        return ServiceRequest.from_call(call)

    def stats(self) -> bytes:
        for _ in range(STATS_RETRIES):  # the engine thread may be mid-update: read again
            try:
                stats = self.engine.stats()
                break
            except RuntimeError:
                time.sleep(0.01)
        else:
            return slm_ipc.error_frame("UNAVAILABLE", "engine busy, no stats")
        events = self.engine.contexts.take_events()
        return slm_ipc.reply_frame(stats=wire.stats_response_to_pb(stats, events))


class _Lifeline:
    """Stdin is only a lifeline: EOF (the launcher is gone or done) ends the process. Watched
    from the start, so a process whose launcher dies while it is still loading (kill -9 of an
    app mid-deploy) ends there and then instead of binding a socket in a removed directory;
    once serving, EOF is a graceful stop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop: threading.Event | None = None
        self._gone = False
        threading.Thread(target=self._watch, daemon=True, name="stdin-lifeline").start()

    def _watch(self) -> None:
        try:
            sys.stdin.buffer.read()
        except (OSError, ValueError):
            pass
        with self._lock:
            self._gone = True
            if self._stop is None:
                os._exit(0)  # nothing served yet, nothing to clean up
            self._stop.set()

    def serving(self, stopping: threading.Event) -> None:
        with self._lock:
            self._stop = stopping
            if self._gone:
                stopping.set()


def _own_pss() -> int:
    import psutil

    mem = psutil.Process().memory_full_info()
    return int(getattr(mem, "pss", 0) or mem.rss)


def _clear_dead_swaps(folder: Path) -> None:
    """Swapped contexts of model processes that died without cleaning up (SIGKILL, LMK)."""
    for d in folder.glob("*") if folder.is_dir() else ():
        try:
            os.kill(int(d.name), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


def _serve(ns: argparse.Namespace, lifeline: _Lifeline | None) -> None:
    import torch

    from agents.llm.weights import load_model

    spec = launch_spec.decode(ns.spec)
    torch.set_num_threads(spec.threads)
    storage = None
    swap_dir = Path(spec.swap_dir)
    if spec.storage_dir:
        storage = PhoneStorage(Path(spec.storage_dir), storage_model(spec.storage_model))
        _clear_dead_swaps(storage.root / "swap")
        swap_dir = storage.root / "swap" / str(os.getpid())
    t0 = time.perf_counter()
    loaded = load_model(spec.model, storage)
    load_s = time.perf_counter() - t0 - loaded.install_s
    base_pss = _own_pss()  # weights + runtime, before any KV
    kv_budget = spec.kv_budget_bytes
    if not kv_budget and spec.memory_budget_bytes:
        kv_budget = max(1, spec.memory_budget_bytes - base_pss)  # one rule: PSS within budget
        if kv_budget == 1:
            print(
                f"slm-service: warning: its own PSS {base_pss} B already fills the budget "
                f"{spec.memory_budget_bytes} B; requests are admitted one at a time",
                file=sys.stderr,
            )
    engine = ServingEngine(
        loaded.model, spec.options, swap_dir, kv_budget_bytes=kv_budget, storage=storage
    )
    args = loaded.model.args
    servicer = SlmServicer(engine, args.max_position, args.vocab_size)
    engine.deliver = servicer.deliver
    stop = threading.Event()
    worker = threading.Thread(target=engine.run_forever, args=(stop,), name="engine", daemon=True)
    worker.start()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)  # the socket is 0600 from birth: only this user's apps may talk
    try:
        listener.bind(ns.socket)
        listener.listen(128)
    except OSError as exc:
        raise SystemExit(f"slm-service: cannot bind {ns.socket}: {exc}") from None
    finally:
        os.umask(umask)
    threading.Thread(target=_accept, args=(listener, servicer), name="accept", daemon=True).start()
    print(
        json.dumps(
            {
                "event": "ready",
                "pid": os.getpid(),
                "load_s": load_s,
                "read_bytes": loaded.read_bytes,
                "base_pss_bytes": base_pss,
                "kv_budget_bytes": kv_budget,
                "install_s": loaded.install_s,
                "weight_bytes": loaded.model.weight_bytes(),
                "weights_label": loaded.weights_label,
            }
        ),
        flush=True,
    )
    stopping = threading.Event()
    signalled: list[int] = []  # a handler only appends: taking a lock there could deadlock
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: signalled.append(signum))
    if lifeline is not None:
        lifeline.serving(stopping)
    while not stopping.wait(0.1) and not signalled:
        if stop.is_set():  # a failed engine ends the process: the host sees it die
            break
    stop.set()
    listener.close()  # calls in flight end with the process: their apps see the connection close
    if storage is not None:
        shutil.rmtree(swap_dir, ignore_errors=True)  # this process's swapped contexts


def _accept(listener: socket.socket, servicer: SlmServicer) -> None:
    while True:
        try:
            sock, _ = listener.accept()
        except OSError:
            return  # closed: the process is ending
        threading.Thread(
            target=servicer.serve_connection, args=(sock,), name="connection", daemon=True
        ).start()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="slm-service", description="Serve one SLM on a Unix socket.")
    p.add_argument("--socket", required=True, help="Unix socket path to serve on")
    p.add_argument("--spec", required=True, help="launch spec, as its launcher encodes it")
    p.add_argument(
        "--exit-on-stdin-eof", action="store_true", help="exit when stdin closes (set by launchers)"
    )
    ns = p.parse_args(argv)
    _serve(ns, _Lifeline() if ns.exit_on_stdin_eof else None)


if __name__ == "__main__":
    main()
