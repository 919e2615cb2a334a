"""The context manager of a model service: persistent per-app contexts and shared prefixes, held
under a KV byte budget.

- Persistent contexts (agent-OS): a multi-turn app's KV cache is kept between its turns, keyed by
  session; the next turn prefills only what is new.
- Shared prefixes (SLMaaS and agent-OS): the KV of an app's system prompt is kept once and copied
  into each new request of that app instead of being prefilled again.
- Under the budget, idle contexts (least recently used first) are evicted by policy: swapped out
  to storage, or dropped to be recomputed. Making one usable again is a measured context switch,
  kept off the engine's critical path: a swap-out is written and a swap-in read by a thread of
  its own while a request for that context waits, and a recompute is the request's own prefill
  of its whole conversation, chunked and interleaved with the other requests' steps like any
  prefill. Each is recorded on the request (``context_switch_s``, bytes) and as an event of the
  app it belongs to.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from agents.llm.kv_context import KVContext
from agents.modelservice.scheduler import ServiceRequest
from agents.storage import IoCount, PhoneStorage
from fleet.records import ContextPolicy, PhoneEvent


class ContextManager:
    def __init__(
        self,
        model,
        *,
        policy: ContextPolicy,
        kv_budget_bytes: int,
        swap_dir: Path,
        persistent: bool,
        prefix_cache: bool,
        storage: PhoneStorage | None = None,
    ):
        self.model = model
        self.policy = policy
        self.kv_budget_bytes = kv_budget_bytes
        self.swap_dir = Path(swap_dir)
        self.swap_dir.mkdir(parents=True, exist_ok=True)
        self.storage = storage  # swaps go to the phone's storage, written and read cold
        self.persistent = persistent
        self.prefix_cache = prefix_cache
        self.sessions: OrderedDict[str, KVContext] = OrderedDict()  # LRU order: oldest first
        self.in_use: set[str] = set()
        self.session_app: dict[str, str] = {}  # whose context each session is
        self.restoring: set[str] = set()  # sessions being swapped in by a thread
        self.swapping_out: set[str] = set()  # sessions being written out by a thread
        self.on_io_done: Callable[[], None] | None = None  # from the I/O thread, when done
        self.prefixes: dict[tuple[int, ...], KVContext] = {}
        self.events: list[PhoneEvent] = []
        self._events_lock = threading.Lock()  # the engine appends, the stats reader takes
        self.counters = {
            "prefix_hits": 0,
            "context_hits": 0,
            "swap_outs": 0,
            "swap_ins": 0,
            "recomputes": 0,
            "drops": 0,
            "swap_bytes": 0,
        }

    def _event(self, kind: str, app: str, num_bytes: int, duration_s: float, detail: str = ""):
        with self._events_lock:
            self.events.append(
                PhoneEvent(time.monotonic_ns(), kind, app, detail, num_bytes, duration_s)
            )

    def needs_swap_in(self, req: ServiceRequest) -> bool:
        """A request whose kept context is on storage and not yet being read back."""
        if not (self.persistent and req.session) or self.busy(req):
            return False
        ctx = self.sessions.get(req.session)
        return ctx is not None and not ctx.resident and self._swap_path(req.session).exists()

    def start_swap_in(self, req: ServiceRequest, done) -> None:
        """Read the request's context back on a thread of its own; ``done()`` when it is."""
        session = req.session
        ctx = self.sessions[session]
        self.restoring.add(session)
        self.in_use.add(session)  # nobody evicts it meanwhile

        def work() -> None:
            try:
                self._restore(req, ctx)
            except Exception as exc:  # unreadable: forget the file, the request recomputes
                self._swap_path(session).unlink(missing_ok=True)
                self._event("swap_in_failed", req.app, 0, 0.0, f"{session}: {exc}"[:200])
            finally:
                self.restoring.discard(session)
                done()

        threading.Thread(target=work, name=f"swap-in-{session}", daemon=True).start()

    def acquire(self, req: ServiceRequest) -> KVContext:
        """The context a request starts from; sets how much of its prompt is already cached."""
        need = len(req.prompt) + req.max_new_tokens
        ctx = None
        if self.persistent and req.session:
            self.session_app[req.session] = req.app
            ctx = self.sessions.get(req.session)
            if ctx is not None:
                self.sessions.move_to_end(req.session)
                if not ctx.resident and self._swap_path(req.session).exists():
                    self._restore(req, ctx)  # not started ahead (tests driving step() alone)
                elif not ctx.resident:  # dropped: its own prefill recomputes it, chunked
                    tokens = ctx.reset_for_recompute()
                    req.recompute_tokens = min(len(tokens), len(req.prompt))
                    req.context_restore = "recompute"
                    req.context_switch_bytes = len(tokens) * ctx.bytes_per_token()
                    req.restore_started_ns = time.monotonic_ns()
                    self.counters["recomputes"] += 1
                keep = min(ctx.common_prefix(req.prompt), len(req.prompt) - 1)
                ctx.truncate(keep)
                req.prefilled = req.cached_prompt_tokens = keep
                self.counters["context_hits"] += keep > 0
            else:
                ctx = self.sessions[req.session] = KVContext(self.model, need)
            self.in_use.add(req.session)
        if ctx is None:
            ctx = KVContext(self.model, need)
        p = req.shared_prefix_tokens
        if self.prefix_cache and p and ctx.length == 0 and p < len(req.prompt):
            entry = self.prefixes.get(tuple(req.prompt[:p]))
            if entry is not None:
                ctx.copy_prefix_from(entry, p)
                req.prefilled = req.cached_prompt_tokens = p
                self.counters["prefix_hits"] += 1
        return ctx

    def _restore(self, req: ServiceRequest, ctx: KVContext) -> None:
        """Read a swapped-out context back from storage."""
        t0 = time.perf_counter()
        path = self._swap_path(req.session)
        with self._io("read", path) as io:
            moved = io.bytes = ctx.swap_in(path)
        self.counters["swap_ins"] += 1
        took = time.perf_counter() - t0
        req.context_switch_s, req.context_switch_bytes = took, moved
        req.context_restore = "swap"
        self._event("swap_in", req.app, moved, took, f"{ctx.length} tokens of {req.session}")

    def recomputed(self, req: ServiceRequest) -> None:
        """A recomputing request's prefill has rebuilt what its context held."""
        took = (time.monotonic_ns() - req.restore_started_ns) / 1e9
        req.context_switch_s = took
        req.recompute_tokens = 0
        detail = f"{req.context_switch_bytes} bytes of {req.session}, as chunked prefill"
        self._event("recompute", req.app, req.context_switch_bytes, took, detail)

    def release(self, req: ServiceRequest) -> None:
        """A request is done with its context: keep what is worth keeping."""
        ctx, p = req.ctx, req.shared_prefix_tokens
        if ctx is None:  # cancelled before it ran (perhaps while its context was read back)
            if self.persistent and req.session:
                self.in_use.discard(req.session)
            return
        key = tuple(req.prompt[:p])
        if (
            self.prefix_cache
            and p
            and key not in self.prefixes
            and ctx.resident
            and ctx.common_prefix(req.prompt) >= p
        ):
            entry = KVContext(self.model, p)
            entry.copy_prefix_from(ctx, p)
            self.prefixes[key] = entry
        if self.persistent and req.session:
            self.in_use.discard(req.session)

    def enforce_budget(self, active_bytes: int, keep: str = "") -> None:
        """Evict idle sessions, least recently used first, until the KV held fits the budget;
        ``keep``: a session about to be used (never evicted for its own admission)."""
        if not self.kv_budget_bytes:
            return
        held = active_bytes + self.held_bytes()  # in-use sessions count, they just can't go
        for session, ctx in list(self.sessions.items()):
            if held <= self.kv_budget_bytes:
                return
            if (
                session == keep
                or session in self.in_use
                or session in self.swapping_out
                or not ctx.resident
            ):
                continue
            t0 = time.perf_counter()
            freed = ctx.allocated_bytes()
            if self.policy is ContextPolicy.SWAP:
                self._start_swap_out(session, ctx)  # written on a thread: the step goes on
            else:
                ctx.drop()
                self.counters["drops"] += 1
                app = self.session_app.get(session, session)
                self._event("drop", app, freed, time.perf_counter() - t0, session)
            held -= freed

    def _start_swap_out(self, session: str, ctx: KVContext) -> None:
        """Write an idle context to storage on a thread of its own; until it is written its
        session is busy (a request for it waits, then reads it back)."""
        self.swapping_out.add(session)
        path = self._swap_path(session)

        def work() -> None:
            t0 = time.perf_counter()
            try:
                with self._io("write", path) as io:
                    moved = io.bytes = ctx.swap_out(path)
                self.counters["swap_outs"] += 1
                self.counters["swap_bytes"] += moved
                app = self.session_app.get(session, session)
                self._event("swap_out", app, moved, time.perf_counter() - t0, session)
            finally:
                self.swapping_out.discard(session)
                if self.on_io_done is not None:
                    self.on_io_done()

        threading.Thread(target=work, name=f"swap-out-{session}", daemon=True).start()

    def busy(self, req: ServiceRequest) -> bool:
        """Its session's context is being written to or read from storage."""
        return bool(req.session) and (
            req.session in self.swapping_out or req.session in self.restoring
        )

    def _io(self, kind: str, path: Path):
        if self.storage is None:
            return contextlib.nullcontext(IoCount())
        return self.storage.reading(path) if kind == "read" else self.storage.writing(path)

    def held_bytes(self) -> int:
        return sum(c.allocated_bytes() for c in self.sessions.values() if c.resident) + sum(
            c.allocated_bytes() for c in self.prefixes.values()
        )

    def _swap_path(self, session: str) -> Path:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in session)
        return self.swap_dir / f"{safe}.kv"

    def take_events(self) -> list[PhoneEvent]:
        with self._events_lock:
            out, self.events = self.events, []
        return out
