"""Apps as request generators: open-loop Poisson (with bursts) and closed-loop with think time.

An app runs against a ``serve`` function that generates tokens for one request and calls back per
token. Every timestamp is taken here, at the app's side, with the system-wide monotonic clock, so
records from different processes on one phone share a time base. Open-loop arrivals are scheduled
up front and a late request keeps its scheduled submit time (no coordinated omission): time it
spent behind earlier requests shows up as queue wait. Arrivals the workload's end leaves unserved
are recorded as cancelled, never dropped.

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
    WorkloadRun,
)


@dataclass
class ServeResult:
    tokens: list[int]
    scheduled_ns: int = 0  # 0: the app stamps it when it sends the request
    service: ServiceFacts = ServiceFacts()  # what the model side reported
    cold_start_s: float = 0.0  # a relaunch of the app's own model that this request paid


# serve(call, on_token, should_stop) -> ServeResult
ServeFn = Callable[[ServeCall, Callable[[int], None], Callable[[], bool]], ServeResult]


def system_prompt(app: AppWorkload, vocab_size: int) -> list[int]:
    rng = random.Random(f"system:{app.name}")
    return [rng.randrange(vocab_size) for _ in range(app.system_prompt_tokens)]


def poisson_arrivals_ns(
    app: AppWorkload, start_ns: int, duration_s: float, rng: random.Random
) -> list[int]:
    """Submit times of an open-loop app within [start, start + duration)."""
    out: list[int] = []
    t = float(start_ns)
    end = start_ns + duration_s * NS_PER_S
    while True:
        t += rng.expovariate(app.rate_per_s) * NS_PER_S
        if t >= end:
            return out
        out.extend([int(t)] * max(1, app.burst_size))
        if app.max_requests and len(out) >= app.max_requests:
            return out[: app.max_requests]


def _sleep_until(t_ns: int, stop: threading.Event) -> bool:
    """Sleep until t_ns; False when stopped first."""
    delay = (t_ns - time.monotonic_ns()) / NS_PER_S
    return not stop.wait(delay) if delay > 0 else not stop.is_set()


class _AppRun:
    """One app's workload in progress: its random stream, conversation and request count."""

    def __init__(
        self,
        app: AppWorkload,
        run: WorkloadRun,
        serve: ServeFn,
        vocab_size: int,
        max_context: int,
        stop: threading.Event,
    ):
        self.app, self.run, self.serve, self.stop = app, run, serve, stop
        self.vocab_size, self.max_context = vocab_size, max_context
        self.rng = random.Random(f"{run.seed}:{app.name}")
        self.start_ns = time.monotonic_ns()
        self.deadline_ns = self.start_ns + int(run.duration_s * NS_PER_S)
        self.system = system_prompt(app, vocab_size)
        self.history: list[int] = []  # multi-turn conversation so far (after the system prompt)
        self.turn = 0
        self.n = 0  # records emitted

    def _next_prompt(self) -> tuple[list[int], list[int]]:
        """(full prompt, its new tokens); starts a new conversation when the last one is full
        or has had its turns."""
        app = self.app
        new = [self.rng.randrange(self.vocab_size) for _ in range(app.prompt_tokens)]
        full = (
            len(self.system) + len(self.history) + len(new) + app.output_tokens > self.max_context
        )
        if app.multi_turn and (
            full or (app.turns_per_session and self.turn >= app.turns_per_session)
        ):
            self.history, self.turn = [], 0  # a new conversation (or agent task) starts
        return self.system + (self.history if app.multi_turn else []) + new, new

    def one_request(self, submit_ns: int) -> RequestRecord:
        app = self.app
        prompt, new = self._next_prompt()
        rid = f"{self.run.trial_id}/{app.name}/{self.n}"
        rec = RequestRecord(
            request_id=rid,
            app=app.name,
            status=RequestStatus.OK,
            prompt_tokens=len(prompt),
            submit_ns=submit_ns,
            turn=self.turn,
        )
        call = ServeCall(
            rid,
            app.name,
            prompt,
            app.output_tokens,
            app.foreground,
            session=app.name if app.multi_turn else "",
            shared_prefix_tokens=len(self.system),
        )
        sent_ns = time.monotonic_ns()
        try:
            result = self.serve(
                call, lambda _tok: rec.token_ns.append(time.monotonic_ns()), self.stop.is_set
            )
        except Exception as exc:  # a failed request is a record, not a crash of the app
            rec.status, rec.error = RequestStatus.FAILED, f"{type(exc).__name__}: {exc}"
            return rec
        rec.scheduled_ns = result.scheduled_ns or sent_ns
        rec.service, rec.cold_start_s = result.service, result.cold_start_s
        if len(result.tokens) < app.output_tokens:
            rec.status, rec.error = RequestStatus.CANCELLED, "stopped during generation"
        if app.multi_turn:
            self.history, self.turn = self.history + new + result.tokens, self.turn + 1
        return rec

    def cancelled(self, submit_ns: int, why: str) -> RequestRecord:
        return RequestRecord(
            request_id=f"{self.run.trial_id}/{self.app.name}/{self.n}",
            app=self.app.name,
            status=RequestStatus.CANCELLED,
            prompt_tokens=self.app.prompt_tokens,
            submit_ns=submit_ns,
            error=why,
        )

    def open_loop(self, emit: Callable[[RequestRecord], None]) -> None:
        arrivals = poisson_arrivals_ns(self.app, self.start_ns, self.run.duration_s, self.rng)
        for submit_ns in arrivals:
            if self.stop.is_set() or time.monotonic_ns() >= self.deadline_ns:
                if submit_ns <= time.monotonic_ns():  # it had arrived: record it, unserved
                    emit(self.cancelled(submit_ns, "workload ended before it was scheduled"))
                    self.n += 1
                    continue
                break
            if not _sleep_until(submit_ns, self.stop):
                break
            emit(self.one_request(submit_ns))
            self.n += 1

    def closed_loop(self, emit: Callable[[RequestRecord], None]) -> None:
        app = self.app
        while not self.stop.is_set() and time.monotonic_ns() < self.deadline_ns:
            emit(self.one_request(time.monotonic_ns()))
            self.n += 1
            if app.max_requests and self.n >= app.max_requests:
                break
            if app.think_time_s and not _sleep_until(
                time.monotonic_ns() + int(app.think_time_s * NS_PER_S), self.stop
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
    state = _AppRun(app, run, serve, vocab_size, max_context, stop or threading.Event())
    if app.pattern is ArrivalPattern.POISSON:
        state.open_loop(emit)
    else:
        state.closed_loop(emit)
    return state.n


def local_serve(model) -> ServeFn:
    """Serve from a model in this process (tests, benchmarks): one request at a time."""
    from agents.llm.generate import generate

    def serve(call: ServeCall, on_token, should_stop) -> ServeResult:
        return ServeResult(
            generate(
                model, call.prompt, call.output_tokens, on_token=on_token, should_stop=should_stop
            )
        )

    return serve
