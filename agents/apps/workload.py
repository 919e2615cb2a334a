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
    stop = stop or threading.Event()
    rng = random.Random(f"{run.seed}:{app.name}")
    start_ns = time.monotonic_ns()
    deadline_ns = start_ns + int(run.duration_s * NS_PER_S)
    system = system_prompt(app, vocab_size)
    history: list[int] = []  # multi-turn conversation so far (after the system prompt)
    turn = 0
    n = 0

    def one_request(submit_ns: int) -> RequestRecord:
        nonlocal history, turn
        new = [rng.randrange(vocab_size) for _ in range(app.prompt_tokens)]
        full = len(system) + len(history) + len(new) + app.output_tokens > max_context
        if app.multi_turn and (full or (app.turns_per_session and turn >= app.turns_per_session)):
            history, turn = [], 0  # a new conversation (or agent task) starts
        prompt = system + (history if app.multi_turn else []) + new
        rid = f"{run.trial_id}/{app.name}/{n}"
        rec = RequestRecord(
            request_id=rid,
            app=app.name,
            status=RequestStatus.OK,
            prompt_tokens=len(prompt),
            submit_ns=submit_ns,
            turn=turn,
        )
        call = ServeCall(
            rid,
            app.name,
            prompt,
            app.output_tokens,
            app.foreground,
            session=app.name if app.multi_turn else "",
            shared_prefix_tokens=len(system),
        )
        sent_ns = time.monotonic_ns()
        try:
            result = serve(call, lambda _tok: rec.token_ns.append(time.monotonic_ns()), stop.is_set)
        except Exception as exc:  # a failed request is a record, not a crash of the app
            rec.status, rec.error = RequestStatus.FAILED, f"{type(exc).__name__}: {exc}"
            return rec
        rec.scheduled_ns = result.scheduled_ns or sent_ns
        rec.service, rec.cold_start_s = result.service, result.cold_start_s
        if len(result.tokens) < app.output_tokens:
            rec.status, rec.error = RequestStatus.CANCELLED, "stopped during generation"
        if app.multi_turn:
            history, turn = history + new + result.tokens, turn + 1
        return rec

    def cancelled(submit_ns: int, why: str) -> RequestRecord:
        return RequestRecord(
            request_id=f"{run.trial_id}/{app.name}/{n}",
            app=app.name,
            status=RequestStatus.CANCELLED,
            prompt_tokens=app.prompt_tokens,
            submit_ns=submit_ns,
            error=why,
        )

    if app.pattern is ArrivalPattern.POISSON:
        arrivals = poisson_arrivals_ns(app, start_ns, run.duration_s, rng)
        for submit_ns in arrivals:
            if stop.is_set() or time.monotonic_ns() >= deadline_ns:
                if submit_ns <= time.monotonic_ns():  # it had arrived: record it, unserved
                    emit(cancelled(submit_ns, "workload ended before it was scheduled"))
                    n += 1
                    continue
                break
            if not _sleep_until(submit_ns, stop):
                break
            emit(one_request(submit_ns))
            n += 1
        return n

    while not stop.is_set() and time.monotonic_ns() < deadline_ns:
        emit(one_request(time.monotonic_ns()))
        n += 1
        if app.max_requests and n >= app.max_requests:
            break
        if app.think_time_s and not _sleep_until(
            time.monotonic_ns() + int(app.think_time_s * NS_PER_S), stop
        ):
            break
    return n


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
