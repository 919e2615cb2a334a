"""An SLM process: one model behind fleet.v1.SlmService on a Unix domain socket.

The same program is a per-app app's own model process (batch of one, nothing shared) and the
shared system service of SLMaaS and agent-OS; ``ServiceOptions`` make the difference. The engine
runs in its own thread; the gRPC handlers only queue requests and stream tokens back.

    python -m agents.modelservice.slm_server --socket /tmp/x.sock --spec '{...}' --exit-on-stdin-eof
prints ``{"event": "ready", "pid": ..., "load_s": ..., "weight_bytes": ...}`` once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path

import grpc

from agents.modelservice.serving_engine import ServingEngine
from agents.modelservice.scheduler import RequestState, ServiceRequest
from agents.modelservice.launch_spec import spec_from_json
from fleet import wire
from fleet.v1 import slm_service_pb2 as spb
from fleet.v1 import slm_service_pb2_grpc as spb_grpc


class SlmServicer(spb_grpc.SlmServiceServicer):
    def __init__(self, engine: ServingEngine, max_position: int, vocab_size: int):
        self.engine = engine
        self.max_position = max_position
        self.vocab_size = vocab_size

    async def Generate(self, request, context):
        prompt = list(request.prompt_tokens)
        if not prompt or request.max_new_tokens < 1:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "need at least one prompt token and max_new_tokens >= 1")
        if max(prompt) >= self.vocab_size or min(prompt) < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"token ids must be in [0, {self.vocab_size})")
        if len(prompt) + request.max_new_tokens > self.max_position:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"{len(prompt)} + {request.max_new_tokens} tokens exceed the "
                                f"model's {self.max_position} positions")
        pending: deque = deque()  # token ids, then the finished request
        arrived = asyncio.Event()
        req = ServiceRequest(request.request_id, request.app, prompt, request.max_new_tokens,
                             foreground=request.foreground, session=request.session,
                             shared_prefix_tokens=request.shared_prefix_tokens)
        def sink(item) -> None:  # runs on this event loop, through the engine's deliver()
            pending.append(item)
            arrived.set()

        req.sink = sink
        self.engine.submit(req)
        try:
            while True:
                await arrived.wait()
                arrived.clear()
                items = list(pending)
                pending.clear()
                ids = [i for i in items if isinstance(i, int)]
                if ids:  # several when the app fell behind the model: sent together
                    yield spb.GenerateResponse(tokens=spb.TokenChunk(ids=ids))
                if not items or not isinstance(items[-1], ServiceRequest):
                    continue
                item = items[-1]
                if item.state != RequestState.FINISHED:
                    await context.abort(grpc.StatusCode.ABORTED, f"request {item.state.name}"
                                        + (f": {self.engine.error}" if self.engine.error else ""))
                yield spb.GenerateResponse(completion=spb.Completion(
                    scheduled_ns=req.scheduled_ns,
                    slices=[wire.slice_to_pb(s) for s in req.slices],
                    context_switch_s=req.context_switch_s,
                    context_switch_bytes=req.context_switch_bytes,
                    context_restore=req.context_restore,
                    cached_prompt_tokens=req.cached_prompt_tokens,
                    max_batch_size=req.max_batch_size))
                return
        finally:
            if not req.done:
                self.engine.cancel(req)  # the app went away: free its place in the batch


async def _amain(ns) -> None:
    import torch

    from agents.llm.weights import load_model

    model_spec, options, threads, kv_budget, swap_dir = spec_from_json(ns.spec)
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    loaded = load_model(model_spec)
    load_s = time.perf_counter() - t0
    engine = ServingEngine(loaded.model, options, Path(swap_dir), kv_budget_bytes=kv_budget)
    loop = asyncio.get_running_loop()

    def dispatch(items) -> None:
        for sink, item in items:
            sink(item)

    engine.deliver = lambda items: loop.call_soon_threadsafe(dispatch, items)
    stop = threading.Event()
    worker = threading.Thread(target=engine.run_forever, args=(stop,), name="engine", daemon=True)
    worker.start()
    server = grpc.aio.server()
    args = loaded.model.args
    spb_grpc.add_SlmServiceServicer_to_server(
        SlmServicer(engine, args.max_position, args.vocab_size), server)
    if server.add_insecure_port(f"unix:{ns.socket}") == 0:
        raise SystemExit(f"cannot bind unix:{ns.socket}")
    await server.start()
    os.chmod(ns.socket, 0o600)  # only this user's apps may talk to the model
    print(json.dumps({"event": "ready", "pid": os.getpid(), "load_s": load_s,
                      "weight_bytes": loaded.model.weight_bytes(),
                      "weights_label": loaded.weights_label}), flush=True)
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    def watch_stdin() -> None:
        # Commands on stdin: "stats" prints the engine's stats as one JSON line; EOF exits.
        try:
            for line in sys.stdin:
                if line.strip() != "stats":
                    continue
                stats = {"event": "stats", "error": "engine busy, no stats"}
                for _ in range(5):  # the engine thread may be mid-update: read again
                    try:
                        stats = {"event": "stats", **engine.stats(), "error": engine.error,
                                 "events": [asdict(e) for e in engine.contexts.take_events()]}
                        break
                    except RuntimeError:
                        time.sleep(0.01)
                print(json.dumps(stats), flush=True)
        finally:
            loop.call_soon_threadsafe(stopping.set)

    if ns.exit_on_stdin_eof:
        threading.Thread(target=watch_stdin, daemon=True).start()

    async def engine_watch() -> None:  # a failed engine ends the process: the host sees it die
        while not stop.is_set():
            await asyncio.sleep(0.1)
        stopping.set()

    watcher = asyncio.ensure_future(engine_watch())
    await stopping.wait()
    watcher.cancel()
    stop.set()
    await server.stop(grace=1.0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="slm-service", description="Serve one SLM on a Unix socket.")
    p.add_argument("--socket", required=True)
    p.add_argument("--spec", required=True, help="JSON: model, service options, threads")
    p.add_argument("--exit-on-stdin-eof", action="store_true")
    ns = p.parse_args(argv)
    asyncio.run(_amain(ns))


if __name__ == "__main__":
    main()
