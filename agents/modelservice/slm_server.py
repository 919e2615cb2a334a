"""An SLM process: one model served to apps on a Unix domain socket (``slm_ipc`` framing).

The same program is a per-app app's own model process (batch of one, nothing shared) and the
shared system service of SLMaaS and agent-OS; ``ServiceOptions`` make the difference. The engine
runs in its own thread; the connection handlers on the asyncio loop only queue requests, stream
tokens back and read the engine's statistics. Messages are converted by ``fleet.wire`` only.

    python -m agents.modelservice.slm_server --socket /tmp/x.sock --spec <launch spec> \\
        --exit-on-stdin-eof
prints ``{"event": "ready", "pid": ..., "load_s": ..., "weight_bytes": ...}`` once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections import deque
from pathlib import Path

from agents.modelservice import launch_spec, slm_ipc
from agents.modelservice.scheduler import RequestState, ServiceRequest
from agents.modelservice.serving_engine import ServingEngine
from agents.storage import PhoneStorage
from fleet import wire
from fleet.storage_models import storage_model
from fleet.v1 import slm_service_pb2 as spb

STATS_RETRIES = 5


class SlmServicer:
    """Answers the calls of one connection (``slm_ipc``): a generate call streams its tokens and
    its completion; a stats call the engine's counters. A caller that goes away cancels."""

    def __init__(self, engine: ServingEngine, max_position: int, vocab_size: int):
        self.engine = engine
        self.max_position = max_position
        self.vocab_size = vocab_size

    def _check(self, prompt: list[int], max_new_tokens: int) -> str:
        if max(prompt) >= self.vocab_size or min(prompt) < 0:
            return f"token ids must be in [0, {self.vocab_size})"
        if len(prompt) + max_new_tokens > self.max_position:
            return (
                f"{len(prompt)} + {max_new_tokens} tokens exceed the model's "
                f"{self.max_position} positions"
            )
        return ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One caller's connection: its calls, one after another, until it closes."""
        try:
            while True:
                try:
                    call = await slm_ipc.read_call(reader)
                except slm_ipc.CallerGone:
                    return
                except slm_ipc.FrameError as exc:
                    writer.write(slm_ipc.error_frame("INVALID_ARGUMENT", str(exc)))
                    await writer.drain()
                    return
                if call.WhichOneof("call") == "stats":
                    writer.write(await self.stats())
                elif not await self.generate(call.generate, reader, writer):
                    await writer.drain()
                    return  # an error went back, or the caller cancelled by closing
                await writer.drain()
        except (ConnectionError, OSError):
            pass  # the caller went away; a generate call was cancelled on the way
        except asyncio.CancelledError:
            pass  # the process is ending: its callers see the connection close
        finally:
            writer.close()

    async def generate(
        self,
        request: spb.GenerateRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Serve one generate call; False when the connection should close (an error reply,
        or the caller closed it to cancel)."""
        try:
            call = wire.serve_call_from_pb(request)
        except wire.WireError as exc:
            writer.write(slm_ipc.error_frame("INVALID_ARGUMENT", str(exc)))
            return False
        problem = self._check(call.prompt, call.output_tokens)
        if problem:
            writer.write(slm_ipc.error_frame("INVALID_ARGUMENT", problem))
            return False
        pending: deque[int | ServiceRequest] = deque()  # token ids, then the finished request
        arrived = asyncio.Event()
        req = ServiceRequest.from_call(call)

        def sink(item: int | ServiceRequest) -> None:  # on this loop, via the engine's deliver()
            pending.append(item)
            arrived.set()

        def caller_gone(_: asyncio.Future) -> None:  # EOF (or a byte mid-call): cancel
            if not req.done:
                self.engine.cancel(req)

        req.sink = sink
        self.engine.submit(req)
        # the caller says nothing during a call: anything it sends, EOF included, cancels it
        watch = asyncio.ensure_future(reader.read(1))
        watch.add_done_callback(caller_gone)
        try:
            while True:
                await arrived.wait()
                arrived.clear()
                items = list(pending)
                pending.clear()
                ids = [i for i in items if isinstance(i, int)]
                out = b""
                if ids:  # several when the app fell behind the model: sent together
                    out = slm_ipc.reply_frame(tokens=spb.TokenChunk(ids=ids))
                if items and isinstance(items[-1], ServiceRequest):
                    if req.state == RequestState.FINISHED and not watch.done():
                        completion = wire.completion_to_pb(req.scheduled_ns, req.facts())
                        writer.write(out + slm_ipc.reply_frame(completion=completion))
                        return True
                    reason = f"request {req.state.name}"
                    if self.engine.error:
                        reason += f": {self.engine.error}"
                    writer.write(out + slm_ipc.error_frame("ABORTED", reason))
                    return False
                if out:
                    writer.write(out)
                    await writer.drain()
        finally:
            watch.remove_done_callback(caller_gone)
            if not watch.done():
                watch.cancel()  # the reader is free for the next call once it has unwound
                await asyncio.gather(watch, return_exceptions=True)
            if not req.done:
                self.engine.cancel(req)  # the app went away: free its place in the batch

    async def stats(self) -> bytes:
        for _ in range(STATS_RETRIES):  # the engine thread may be mid-update: read again
            try:
                stats = self.engine.stats()
                break
            except RuntimeError:
                await asyncio.sleep(0.01)
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
        self._stop: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
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
            loop, stopping = self._stop
        loop.call_soon_threadsafe(stopping.set)

    def serving(self, loop: asyncio.AbstractEventLoop, stopping: asyncio.Event) -> None:
        with self._lock:
            self._stop = (loop, stopping)
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


async def _amain(ns: argparse.Namespace, lifeline: _Lifeline | None) -> None:
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
    loop = asyncio.get_running_loop()

    def dispatch(items: list) -> None:
        for sink, item in items:
            sink(item)

    def deliver(items: list) -> None:  # one event-loop wake-up per engine step
        loop.call_soon_threadsafe(dispatch, items)

    engine.deliver = deliver
    stop = threading.Event()
    worker = threading.Thread(target=engine.run_forever, args=(stop,), name="engine", daemon=True)
    worker.start()
    args = loaded.model.args
    servicer = SlmServicer(engine, args.max_position, args.vocab_size)
    umask = os.umask(0o177)  # the socket is 0600 from birth: only this user's apps may talk
    try:
        server = await asyncio.start_unix_server(
            servicer.handle, ns.socket, limit=slm_ipc.MAX_FRAME_BYTES
        )
    except OSError as exc:
        raise SystemExit(f"slm-service: cannot bind {ns.socket}: {exc}") from None
    finally:
        os.umask(umask)
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
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    if lifeline is not None:
        lifeline.serving(loop, stopping)

    async def engine_watch() -> None:  # a failed engine ends the process: the host sees it die
        while not stop.is_set():
            await asyncio.sleep(0.1)
        stopping.set()

    watcher = asyncio.ensure_future(engine_watch())
    await stopping.wait()
    watcher.cancel()
    stop.set()
    server.close()  # calls in flight end with the process: their apps see the connection close
    if storage is not None:
        shutil.rmtree(swap_dir, ignore_errors=True)  # this process's swapped contexts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="slm-service", description="Serve one SLM on a Unix socket.")
    p.add_argument("--socket", required=True, help="Unix socket path to serve on")
    p.add_argument("--spec", required=True, help="launch spec, as its launcher encodes it")
    p.add_argument(
        "--exit-on-stdin-eof", action="store_true", help="exit when stdin closes (set by launchers)"
    )
    ns = p.parse_args(argv)
    asyncio.run(_amain(ns, _Lifeline() if ns.exit_on_stdin_eof else None))


if __name__ == "__main__":
    main()
