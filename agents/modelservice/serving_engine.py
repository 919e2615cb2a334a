"""The serving engine of a model service: iteration-level (continuous) batching over one model.

``step()`` = schedule -> execute -> update, as in vLLM. New requests join between steps; each
step runs prefill chunks and decode tokens of every scheduled sequence in one forward pass over
their own KV contexts. Tokens go to each request's ``sink`` as soon as they are sampled.
Plain Python and torch: the model process (slm_server.py) drives it from a thread.

    engine = ServingEngine(model, options, swap_dir)
    engine.submit(request); engine.run_forever(stop_event)   # or step() in tests
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

from agents.llm.kv_context import MIN_CAPACITY
from agents.modelservice.contexts import ContextManager
from agents.modelservice.scheduler import RequestState, ServiceRequest, make_scheduler
from agents.storage import PhoneStorage
from fleet.records import ServiceOptions, ServiceStats


class ServingEngine:
    def __init__(
        self,
        model,
        options: ServiceOptions,
        swap_dir,
        kv_budget_bytes: int = 0,
        storage: PhoneStorage | None = None,
    ):
        self.model = model
        self.options = options
        self.scheduler = make_scheduler(
            options.scheduler,
            options.max_batch_size,
            options.quantum_tokens,
            options.priority_aging_s,
        )
        self.contexts = ContextManager(
            model,
            policy=options.context_policy,
            kv_budget_bytes=options.kv_budget_bytes or kv_budget_bytes,
            swap_dir=swap_dir,
            persistent=options.persistent_contexts,
            prefix_cache=options.prefix_cache,
            storage=storage,
        )
        self.contexts.on_io_done = self._io_done
        self.active: list[ServiceRequest] = []
        self._incoming: list[ServiceRequest] = []
        self._cond = threading.Condition()
        self._seq = 0
        self._running: set[ServiceRequest] = set()
        self.batch_sizes: Counter[int] = Counter()  # steps per batch size
        self.num_preemptions = 0
        self.num_steps = 0
        self.admission_waits = 0
        self._weight_bytes = model.weight_bytes()
        args = model.args
        self._kv_token_bytes = (
            2 * args.n_layer * args.n_kv_head * args.head_dim * model.dtype.itemsize
        )
        # deliver(items): hands a step's (sink, item) pairs over at once, e.g. to an event loop
        # with one wake-up per step instead of one per token; None calls the sinks here.
        self.deliver: Callable[[list[tuple[Any, Any]]], None] | None = None
        self._outbox: list = []
        self.error = ""  # why the engine stopped, when a step failed

    # -- intake (any thread) -----------------------------------------------------------------

    def submit(self, req: ServiceRequest) -> None:
        with self._cond:
            self._seq += 1
            req.seq, req.arrived_ns = self._seq, time.monotonic_ns()
            self._incoming.append(req)
            self._cond.notify()

    def cancel(self, req: ServiceRequest) -> None:
        req.cancelled = True
        with self._cond:
            self._cond.notify()

    # -- loop (engine thread) ----------------------------------------------------------------

    def run_forever(self, stop: threading.Event) -> None:
        """Step until stopped. A failing step fails every request with the reason (none is left
        waiting) and stops the engine: its state can no longer be trusted."""
        while not stop.is_set():
            with self._cond:
                while not self._incoming and not self.active and not stop.is_set():
                    self._cond.wait(timeout=0.5)
                self.active.extend(self._incoming)
                self._incoming.clear()
            try:
                self.step()
                if self.active and all(
                    r.restoring or (r.ctx is None and self.contexts.busy(r)) for r in self.active
                ):
                    with self._cond:  # only swap-ins are under way: wait for one, not spin
                        self._cond.wait(timeout=0.01)
            except Exception as exc:
                self.error = f"engine step failed: {type(exc).__name__}: {exc}"
                traceback.print_exc()
                with self._cond:
                    self.active.extend(self._incoming)
                    self._incoming.clear()
                try:
                    now = time.monotonic_ns()
                    for r in list(self.active):
                        self._finish(r, RequestState.FAILED, now)
                    self._flush()
                finally:
                    stop.set()  # whatever the failure left, the process ends and is seen to

    @torch.inference_mode()
    def step(self) -> None:
        now = time.monotonic_ns()
        for r in [r for r in self.active if r.cancelled]:
            self._finish(r, RequestState.CANCELLED, now)
        for r in self.active:  # swap-ins run on their own threads while their requests wait
            if r.ctx is None and not r.restoring and self.contexts.needs_swap_in(r):
                r.restoring = True
                self.contexts.start_swap_in(r, lambda r=r: self._restored(r))
        ready = [  # a context on its way to or from storage is not usable yet
            r
            for r in self.active
            if not r.restoring and not (r.ctx is None and self.contexts.busy(r))
        ]
        wanted = self.scheduler.schedule(ready)
        batch = self._admit(wanted)
        if wanted and not batch:  # all held back by memory: let those holding KV go on and free it
            holders = [r for r in ready if r.ctx is not None]
            batch = self.scheduler.schedule(holders) if holders else wanted[:1]
        chosen = set(batch)
        for r in self._running - chosen:
            if not r.done:
                r.end_slice(now, RequestState.PREEMPTED)
                self.num_preemptions += 1
        scheduled_ns = time.monotonic_ns()  # a slice starts once scheduled: readying its
        for r in batch:  # context (KV allocation, cached prefix) is the model's work
            if r not in self._running:
                r.start_slice(scheduled_ns)
                if r.ctx is None:
                    r.ctx = self.contexts.acquire(r)
        self._running = chosen
        if not batch:
            self._flush()
            return
        work = [(r.ctx, r.next_chunk(self.options.prefill_chunk_tokens)) for r in batch]
        logits = self.model(work)  # (S, V)
        self.num_steps += 1
        self.batch_sizes[len(batch)] += 1
        for i, (r, (_, chunk)) in enumerate(zip(batch, work)):
            r.max_batch_size = max(r.max_batch_size, len(batch))
            if r.needs_prefill:
                r.prefilled += len(chunk)
                r.slice_prefill += len(chunk)
                if r.recompute_tokens and r.prefilled >= r.recompute_tokens:
                    self.contexts.recomputed(r)
                if r.needs_prefill:
                    continue  # more prompt to go: these logits are not a token yet
            tok = int(torch.argmax(logits[i]))
            r.generated.append(tok)
            r.pending_token = tok
            r.slice_output += 1
            self._emit(r, tok)
            if len(r.generated) >= r.max_new_tokens:
                self._finish(r, RequestState.FINISHED, time.monotonic_ns())
        self._flush()
        self.contexts.enforce_budget(self._active_bytes())

    def _admit(self, batch: list[ServiceRequest]) -> list[ServiceRequest]:
        """The requests that may start without the KV held exceeding the memory budget (idle
        contexts are evicted first); the others wait, each counted once. With nothing else
        holding KV a request is admitted anyway: one context always fits (checked at deploy)."""
        budget = self.contexts.kv_budget_bytes
        if not budget:
            return batch
        out = []
        admitted = 0  # KV of requests admitted in this pass (their contexts come next)
        for r in batch:
            if r.ctx is not None:
                out.append(r)
                continue
            need = self._kv_need(r)
            if self._kv_now() + admitted + need > budget:
                self.contexts.enforce_budget(self._active_bytes() + admitted + need, keep=r.session)
            holders = admitted or any(x.ctx is not None and x.ctx.resident for x in self.active)
            if self._kv_now() + admitted + need > budget and holders:
                if not r.admission_waited:
                    r.admission_waited = True
                    self.admission_waits += 1
                continue
            admitted += need
            out.append(r)
        return out

    def _kv_used(self) -> int:
        """KV positions actually filled, in every context held or running."""
        ctxs = {id(c): c for c in self.contexts.sessions.values() if c.resident}
        ctxs.update({id(c): c for c in self.contexts.prefixes.values()})
        ctxs.update({id(r.ctx): r.ctx for r in self.active if r.ctx is not None and r.ctx.resident})
        return sum(c.used_bytes() for c in ctxs.values())

    def _kv_now(self) -> int:
        return self.contexts.held_bytes() + self._active_bytes()

    def _kv_need(self, r: ServiceRequest) -> int:
        """KV bytes a request will add: its whole context, less a kept session's."""
        kept = self.contexts.sessions.get(r.session) if r.session else None
        need = len(r.prompt) + r.max_new_tokens
        if kept is not None and kept.resident:
            return max(0, need - kept.capacity) * self._kv_token_bytes
        return max(need, MIN_CAPACITY) * self._kv_token_bytes  # a new context's allocation

    def _restored(self, r: ServiceRequest) -> None:  # on the swap-in thread
        r.restoring = False
        self._io_done()

    def _io_done(self) -> None:  # on an I/O thread: wake the loop
        with self._cond:
            self._cond.notify()

    def _emit(self, r: ServiceRequest, item) -> None:
        if r.sink is not None:
            self._outbox.append((r.sink, item))

    def _flush(self) -> None:
        out, self._outbox = self._outbox, []
        if not out:
            return
        if self.deliver is not None:
            self.deliver(out)
        else:
            for sink, item in out:
                sink(item)

    def _finish(self, r: ServiceRequest, state: RequestState, now_ns: int) -> None:
        r.end_slice(now_ns, state)
        r.state = state
        self.active.remove(r)
        self._running.discard(r)
        self.contexts.release(r)
        if not (self.options.persistent_contexts and r.session):
            r.ctx = None  # its KV is freed once nobody holds it
        self._emit(r, r)

    def _active_bytes(self) -> int:
        """KV of running requests that the context manager does not hold already."""
        kept = set(self.contexts.sessions.values())
        return sum(
            r.ctx.allocated_bytes()
            for r in self.active
            if r.ctx is not None and r.ctx not in kept and r.ctx.resident
        )

    def stats(self) -> ServiceStats:
        """The engine's counters now; may raise RuntimeError while the engine thread mutates
        its collections (the caller reads again)."""
        sizes = self.batch_sizes
        steps = sum(sizes.values())
        running = sum(1 for r in self.active if r.state == RequestState.RUNNING)
        c = self.contexts.counters
        return ServiceStats(
            t_ns=time.monotonic_ns(),
            num_running=running,
            num_waiting=len(self.active) - running + len(self._incoming),
            last_batch_size=len(self._running),
            kv_held_bytes=self.contexts.held_bytes() + self._active_bytes(),
            num_steps=steps,
            mean_batch_size=(sum(k * v for k, v in sizes.items()) / steps) if steps else 0.0,
            max_batch_size=max(sizes, default=0),
            num_preemptions=self.num_preemptions,
            num_promotions=self.scheduler.promotions,
            weight_bytes=self._weight_bytes,
            admission_waits=self.admission_waits,
            kv_used_bytes=self._kv_used(),
            prefix_hits=c["prefix_hits"],
            context_hits=c["context_hits"],
            swap_outs=c["swap_outs"],
            swap_ins=c["swap_ins"],
            recomputes=c["recomputes"],
            drops=c["drops"],
            swap_bytes=c["swap_bytes"],
        )
