"""Apps as request generators: they replay their trace, open loop or closed loop.

An app's requests come from the run's trace (``fleet.traces``): an open-loop app (Poisson or a
replayed trace) sends every request at its arrival time, each on its own thread, whatever is still
outstanding, up to an optional cap (``max_outstanding``) over which arrivals are recorded as
dropped; a closed-loop app sends the next request ``think_time_s`` after the previous response.
A request of a multi-turn session carries the session's earlier turns and is sent only once the
previous turn has finished (the wait is the request's app-side delay).

Every timestamp is taken here, at the app's side, with the system-wide monotonic clock: the
arrival (``submit_ns``, the scheduled time, so nothing is omitted when the app falls behind), the
send, the first scheduling on the model (reported by the model side), every token and the end.
After the duration no request arrives; those in flight get ``run.drain_s`` to finish and are then
cancelled (their latency is censored at the time they waited).

    run_app(app, run, serve=local_serve(model), emit=records.append, vocab_size=...,
            max_context=...)
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fleet.records import (
    NS_PER_S,
    AppWorkload,
    ArrivalPattern,
    RequestRecord,
    RequestStatus,
    ServeCall,
    ServiceFacts,
    TraceRequest,
    WorkloadRun,
)
from fleet.traces import generate_trace

HARD_MAX_OUTSTANDING = 1024  # the agent's own ceiling on one app's requests in flight


@dataclass
class ServeResult:
    tokens: list[int]
    scheduled_ns: int = 0  # 0: the app stamps it when it sends the request
    service: ServiceFacts = ServiceFacts()  # what the model side reported
    cold_start_s: float = 0.0  # a relaunch of the app's own model that this request paid


# serve(call, on_token, should_stop) -> ServeResult; called from several threads at once
ServeFn = Callable[[ServeCall, Callable[[int], None], Callable[[], bool]], ServeResult]


def system_prompt(app: AppWorkload, vocab_size: int) -> list[int]:
    rng = random.Random(f"system:{app.name}")
    return [rng.randrange(vocab_size) for _ in range(app.system_prompt_tokens)]


def prompt_tokens(req: TraceRequest, seed: int, vocab_size: int) -> list[int]:
    """The new prompt tokens of a traced request: the same ids in every trial that replays it."""
    rng = random.Random(f"prompt:{seed}:{req.app}:{req.index}")
    return [rng.randrange(vocab_size) for _ in range(req.prompt_tokens)]


def app_requests(app: AppWorkload, run: WorkloadRun, max_context: int) -> list[TraceRequest]:
    """The app's requests in this run: its part of the run's trace, or generated from the seed
    when the run carries no trace."""
    if run.trace:
        return [t for t in run.trace if t.app == app.name]
    if app.pattern is ArrivalPattern.TRACE:
        return []  # a replayed trace comes with the run
    return list(generate_trace(app, run.duration_s, run.seed, max_context))


def _sleep_until(t_ns: int, stop: threading.Event) -> bool:
    """Sleep until t_ns; False when stopped first."""
    delay = (t_ns - time.monotonic_ns()) / NS_PER_S
    return not stop.wait(delay) if delay > 0 else not stop.is_set()


class _AppRun:
    """One app's workload in progress: its requests, conversations and requests in flight."""

    def __init__(
        self,
        app: AppWorkload,
        run: WorkloadRun,
        serve: ServeFn,
        emit: Callable[[RequestRecord], None],
        vocab_size: int,
        max_context: int,
        stop: threading.Event,
    ):
        self.app, self.run, self.serve, self.emit, self.stop = app, run, serve, emit, stop
        self.vocab_size, self.max_context = vocab_size, max_context
        self.requests = app_requests(app, run, max_context)
        self.start_ns = time.monotonic_ns()
        self.deadline_ns = self.start_ns + int(run.duration_s * NS_PER_S)
        self.drain_end_ns = self.deadline_ns + int(run.drain_s * NS_PER_S)
        self.system = system_prompt(app, vocab_size)
        self.histories: dict[str, list[int]] = {}  # session -> its turns so far
        self.turn_done: dict[tuple[str, int], threading.Event] = {}
        self.lock = threading.Lock()
        self.outstanding = 0
        self.n = 0  # records emitted

    def should_stop(self) -> bool:
        return self.stop.is_set() or time.monotonic_ns() >= self.drain_end_ns

    def _emit(self, rec: RequestRecord) -> None:
        with self.lock:
            self.n += 1
        self.emit(rec)

    def _prompt(self, req: TraceRequest) -> tuple[list[int], list[int]]:
        """(full prompt, its new tokens): the system prompt, the session's turns, the new ones."""
        new = prompt_tokens(req, self.run.seed, self.vocab_size)
        history = self.histories.get(req.session, []) if req.session and req.turn else []
        if len(self.system) + len(history) + len(new) + req.output_tokens > self.max_context:
            history = []  # the model's context is shorter than the trace's: start over
        return self.system + history + new, new

    def _wait_previous_turn(self, req: TraceRequest) -> bool:
        prev = self.turn_done.get((req.session, req.turn - 1)) if req.session else None
        while prev is not None and not prev.wait(0.05):
            if self.should_stop():
                return False
        return True

    def execute(self, req: TraceRequest, submit_ns: int) -> RequestRecord:
        """Send one request (after its session's previous turn) and wait for all of it."""
        app = self.app
        rec = RequestRecord(
            request_id=req.request_id,
            app=app.name,
            status=RequestStatus.OK,
            prompt_tokens=0,
            submit_ns=submit_ns,
            turn=req.turn,
        )
        try:
            if not self._wait_previous_turn(req):
                rec.status, rec.error = RequestStatus.CANCELLED, "its previous turn never ended"
                return rec
            prompt, new = self._prompt(req)
            rec.prompt_tokens = len(prompt)
            call = ServeCall(
                req.request_id,
                app.name,
                prompt,
                req.output_tokens,
                app.foreground,
                session=req.session,
                shared_prefix_tokens=len(self.system),
            )
            rec.sent_ns = time.monotonic_ns()
            try:
                result = self.serve(
                    call, lambda _tok: rec.token_ns.append(time.monotonic_ns()), self.should_stop
                )
            except Exception as exc:  # a failed request is a record, not a crash of the app
                rec.status, rec.error = RequestStatus.FAILED, f"{type(exc).__name__}: {exc}"
                rec.cold_start_s = getattr(exc, "cold_start_s", 0.0)  # paid before it failed
                return rec
            rec.scheduled_ns = result.scheduled_ns  # 0: unknown (cut short before it was told)
            rec.service, rec.cold_start_s = result.service, result.cold_start_s
            if len(result.tokens) < req.output_tokens:
                rec.status, rec.error = RequestStatus.CANCELLED, "stopped during generation"
            elif not rec.scheduled_ns:
                rec.scheduled_ns = rec.sent_ns  # a model that reports no scheduling (in-process)
            if req.session:
                self.histories[req.session] = prompt[len(self.system) :] + result.tokens
            return rec
        finally:
            rec.end_ns = time.monotonic_ns()
            done = self.turn_done.get((req.session, req.turn)) if req.session else None
            if done is not None:
                done.set()

    def dropped(self, req: TraceRequest, submit_ns: int, why: str) -> RequestRecord:
        return RequestRecord(
            request_id=req.request_id,
            app=self.app.name,
            status=RequestStatus.DROPPED,
            prompt_tokens=0,
            submit_ns=submit_ns,
            end_ns=submit_ns,
            turn=req.turn,
            error=why,
        )

    def _in_flight(self, req: TraceRequest, submit_ns: int) -> None:
        try:
            self._emit(self.execute(req, submit_ns))
        finally:
            with self.lock:
                self.outstanding -= 1

    def open_loop(self) -> None:
        for req in self.requests:
            if req.session:
                self.turn_done[(req.session, req.turn)] = threading.Event()
        cap = min(self.app.max_outstanding or HARD_MAX_OUTSTANDING, HARD_MAX_OUTSTANDING)
        threads = []
        for req in self.requests:
            submit_ns = self.start_ns + int((req.at_s or 0.0) * NS_PER_S)
            if not _sleep_until(submit_ns, self.stop):
                break
            with self.lock:
                full = self.outstanding >= cap
                self.outstanding += not full
            if full:
                self._emit(self.dropped(req, submit_ns, f"{cap} requests already outstanding"))
                done = self.turn_done.get((req.session, req.turn))
                if done is not None:
                    done.set()
                continue
            th = threading.Thread(target=self._in_flight, args=(req, submit_ns), daemon=True)
            th.start()
            threads.append(th)
        for th in threads:
            th.join()

    def closed_loop(self) -> None:
        for req in self.requests:
            if self.stop.is_set() or time.monotonic_ns() >= self.deadline_ns:
                break
            self._emit(self.execute(req, time.monotonic_ns()))
            if self.app.think_time_s and not _sleep_until(
                time.monotonic_ns() + int(self.app.think_time_s * NS_PER_S), self.stop
            ):
                break


def run_app(
    app: AppWorkload,
    run: WorkloadRun,
    *,
    serve: ServeFn,
    emit: Callable[[RequestRecord], None],
    vocab_size: int,
    max_context: int,
    stop: threading.Event | None = None,
) -> int:
    """Run one app's workload to its end; returns the number of records emitted."""
    state = _AppRun(app, run, serve, emit, vocab_size, max_context, stop or threading.Event())
    if app.pattern is ArrivalPattern.CLOSED_LOOP:
        state.closed_loop()
    else:
        state.open_loop()
    return state.n


def local_serve(model) -> ServeFn:
    """Serve from a model in this process (tests, benchmarks): one request at a time, the
    others wait their turn (and that wait is their queue wait)."""
    from agents.llm.generate import generate

    lock = threading.Lock()

    def serve(call: ServeCall, on_token, should_stop) -> ServeResult:
        with lock:
            scheduled_ns = time.monotonic_ns()
            tokens = generate(
                model, call.prompt, call.output_tokens, on_token=on_token, should_stop=should_stop
            )
        return ServeResult(tokens, scheduled_ns=scheduled_ns)

    return serve
