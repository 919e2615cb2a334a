"""One app's own OS process with its own model instance (the per-app paradigm's unit).

Started by ``PerAppParadigm`` with the multiprocessing "spawn" method. It loads the model, reports
ready, then runs the app's workload each time it is told to, sending every request record back as
soon as it completes. It talks to the agent over two pipes: commands in, events out. When the
agent dies the command pipe closes and this process exits on its own, so a killed agent leaves no
orphans holding memory.

Events sent: ("ready", {...}), ("record", RequestRecord), ("done", n), ("error", message).
Commands read: ("run", WorkloadRun), ("stop",), ("exit",).
"""

from __future__ import annotations

import os
import queue
import threading
import traceback

from fleet.records import AppWorkload, ModelSpec


def app_main(cmd_conn, evt_conn, app: AppWorkload, model_spec: ModelSpec, threads: int,
             max_context: int) -> None:
    import torch

    from agents.apps import run_app
    from agents.engine.context import KVContext
    from agents.engine.generate import generate
    from agents.engine.weights import load_model

    torch.set_num_threads(threads)
    commands: queue.Queue = queue.Queue()
    stop = threading.Event()

    def watch_commands() -> None:
        while True:
            try:
                cmd = cmd_conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # the agent is gone
            if cmd[0] == "stop":
                stop.set()
            elif cmd[0] == "exit":
                os._exit(0)
            else:
                stop.clear()  # here, not in the main loop: a stop right after run must stick
                commands.put(cmd)

    threading.Thread(target=watch_commands, daemon=True, name="commands").start()
    try:
        loaded = load_model(model_spec)
        model = loaded.model
        ctx = KVContext(model, capacity=max_context)
    except Exception as exc:
        evt_conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    evt_conn.send(("ready", {
        "weights_label": loaded.weights_label,
        "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "kv_cache_bytes": ctx.allocated_bytes(),
    }))

    def serve(prompt, n_out, on_token, should_stop):
        ctx.truncate(0)  # no context is kept between requests: the app's own model serves one
        return generate(model, prompt, n_out, on_token=on_token, should_stop=should_stop, ctx=ctx)

    while True:
        cmd = commands.get()
        if cmd[0] != "run":
            continue
        try:
            n = run_app(app, cmd[1], serve=serve, emit=lambda r: evt_conn.send(("record", r)),
                        vocab_size=model.args.vocab_size, max_context=max_context, stop=stop)
            evt_conn.send(("done", n))
        except Exception:
            evt_conn.send(("error", traceback.format_exc(limit=3)))
