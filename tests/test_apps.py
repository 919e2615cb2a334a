"""App workload generators driven against the real tiny engine, in-process."""

import threading
import time

import pytest
import torch

from agents.apps.workload import ServeResult, local_serve, run_app
from agents.llm.weights import random_model
from fleet.records import (
    NS_PER_S,
    AppWorkload,
    ArrivalPattern,
    RequestStatus,
    ServiceFacts,
    WorkloadRun,
)
from fleet.shapes import ModelArgs
from fleet.traces import generate_trace


@pytest.fixture(scope="module")
def serve():
    return local_serve(random_model(ModelArgs.from_name("tiny"), torch.float32, 0))


def test_poisson_trace_has_the_configured_rate_and_is_seeded():
    app = AppWorkload("kb", ArrivalPattern.POISSON, rate_per_s=50.0, burst_size=2)
    a = [t.at_s for t in generate_trace(app, 100.0, seed=1)]
    assert a == [t.at_s for t in generate_trace(app, 100.0, seed=1)]
    assert a != [t.at_s for t in generate_trace(app, 100.0, seed=2)]
    assert a == sorted(a) and a[-1] < 100
    assert a[0::2] == a[1::2]  # bursts of two at the same instant
    assert 4500 < len(a) / 2 < 5500  # 50/s for 100 s


def test_closed_loop_records_have_consistent_timestamps(serve):
    app = AppWorkload(
        "chat",
        ArrivalPattern.CLOSED_LOOP,
        think_time_s=0.01,
        prompt_tokens=20,
        output_tokens=6,
        multi_turn=True,
        max_requests=5,
    )
    records = []
    n = run_app(
        app,
        WorkloadRun("t", 30.0),
        serve=serve,
        emit=records.append,
        vocab_size=256,
        max_context=256,
    )
    assert n == 5 == len(records)
    for i, r in enumerate(records):
        assert r.status is RequestStatus.OK and r.output_tokens == 6
        assert r.submit_ns <= r.scheduled_ns <= r.first_token_ns <= r.last_token_ns
        assert r.token_ns == sorted(r.token_ns)
        # ITL excludes TTFT: it is the mean gap after the first token, not e2e / tokens
        assert r.itl_s == pytest.approx((r.last_token_ns - r.first_token_ns) / 5 / NS_PER_S)
        assert r.e2e_s == pytest.approx(r.ttft_s + 5 * r.itl_s)
        assert r.turn == i and r.prompt_tokens == 20 + i * 26  # the context grows per turn
    for prev, cur in zip(records, records[1:]):
        assert cur.submit_ns - prev.last_token_ns >= 0.01 * NS_PER_S  # think time honoured


def test_multi_turn_context_restarts_when_the_window_is_full(serve):
    app = AppWorkload(
        "chat",
        ArrivalPattern.CLOSED_LOOP,
        prompt_tokens=40,
        output_tokens=10,
        multi_turn=True,
        max_requests=6,
    )
    records = []
    run_app(
        app,
        WorkloadRun("t", 30.0),
        serve=serve,
        emit=records.append,
        vocab_size=256,
        max_context=128,
    )
    assert [r.turn for r in records] == [0, 1, 0, 1, 0, 1]
    assert max(r.prompt_tokens + r.output_tokens for r in records) <= 128


def _burst_app(k: int, **kw) -> AppWorkload:
    return AppWorkload(
        "kb",
        ArrivalPattern.POISSON,
        rate_per_s=1.0,
        burst_size=k,
        prompt_tokens=4,
        output_tokens=3,
        max_requests=k,  # one burst
        **kw,
    )


def test_a_burst_of_k_arrivals_is_k_requests_outstanding_at_once():
    """Open loop: every arrival is sent at its time, whatever is still outstanding."""
    lock, active, peak = threading.Lock(), [0], [0]

    def slow(call, on_token, should_stop):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.3)
        for i in range(call.output_tokens):
            on_token(i)
        with lock:
            active[0] -= 1
        return ServeResult(list(range(call.output_tokens)))

    records = []
    run_app(
        _burst_app(4),
        WorkloadRun("t", 10.0, seed=1),
        serve=slow,
        emit=records.append,
        vocab_size=256,
        max_context=64,
    )
    assert peak[0] == 4 and len(records) == 4
    assert len({r.submit_ns for r in records}) == 1  # one arrival instant
    assert sorted(r.request_id for r in records) == [f"kb/{i}" for i in range(4)]
    for r in records:
        assert r.status is RequestStatus.OK
        assert 0 <= r.app_delay_s < 0.2  # sent at its arrival, not after the others
        assert r.submit_ns <= r.sent_ns <= r.scheduled_ns <= r.first_token_ns <= r.end_ns


def test_arrivals_over_the_outstanding_cap_are_dropped_and_recorded():
    def slow(call, on_token, should_stop):
        time.sleep(0.3)
        for i in range(call.output_tokens):
            on_token(i)
        return ServeResult(list(range(call.output_tokens)))

    records = []
    run_app(
        _burst_app(5, max_outstanding=2),
        WorkloadRun("t", 10.0, seed=1),
        serve=slow,
        emit=records.append,
        vocab_size=256,
        max_context=64,
    )
    by = {s: [r for r in records if r.status is s] for s in RequestStatus}
    assert len(by[RequestStatus.OK]) == 2 and len(by[RequestStatus.DROPPED]) == 3
    assert all(r.sent_ns == 0 and r.output_tokens == 0 for r in by[RequestStatus.DROPPED])


def test_open_loop_queues_at_the_model_and_cancels_what_the_drain_leaves():
    """A model serving one request at a time: arrivals queue there (queue wait, not app delay);
    after the duration and the drain, the rest are cancelled with the time they waited."""
    gate = threading.Lock()

    def serial(call, on_token, should_stop):
        with gate:
            scheduled = time.monotonic_ns()
            out = []
            for i in range(call.output_tokens):
                if should_stop():
                    break
                time.sleep(0.05)
                on_token(i)
                out.append(i)
        return ServeResult(out, scheduled_ns=scheduled)

    app = AppWorkload(
        "kb", ArrivalPattern.POISSON, rate_per_s=40.0, prompt_tokens=4, output_tokens=2
    )
    run = WorkloadRun("t", 1.0, seed=3, drain_s=0.5)
    records = []
    run_app(app, run, serve=serial, emit=records.append, vocab_size=256, max_context=64)
    trace = generate_trace(app, 1.0, seed=3)
    assert sorted(r.request_id for r in records) == sorted(t.request_id for t in trace)
    ok = [r for r in records if r.status is RequestStatus.OK]
    cancelled = [r for r in records if r.status is RequestStatus.CANCELLED]
    assert ok and cancelled  # ~10/s served vs 40/s offered
    assert max(r.queue_wait_s for r in ok) > 0.2
    assert all(r.app_delay_s < 0.2 for r in records if r.sent_ns)
    assert all(
        r.waited_s >= 1.0 - t.at_s for r in cancelled for t in trace if t.request_id == r.request_id
    )


def test_stop_cancels_the_request_in_flight(serve):
    stop = threading.Event()

    def slow(call, on_token, should_stop):
        out = []
        for i in range(call.output_tokens):
            if out and should_stop():
                break
            time.sleep(0.02)
            on_token(i)
            out.append(i)
            if i == 3:
                stop.set()
        return ServeResult(out)

    app = AppWorkload("chat", ArrivalPattern.CLOSED_LOOP, prompt_tokens=4, output_tokens=50)
    records = []
    run_app(
        app,
        WorkloadRun("t", 30.0),
        serve=slow,
        emit=records.append,
        vocab_size=256,
        max_context=64,
        stop=stop,
    )
    assert len(records) == 1
    assert records[0].status is RequestStatus.CANCELLED and records[0].output_tokens == 4


def test_itl_excludes_ttft():
    """A server slow to the first token and quick after it: ITL is the gaps after the first."""

    def slow_first(call, on_token, should_stop):
        time.sleep(0.3)
        for i in range(call.output_tokens):
            if i:
                time.sleep(0.01)
            on_token(i)
        return ServeResult(list(range(call.output_tokens)))

    app = AppWorkload(
        "chat", ArrivalPattern.CLOSED_LOOP, prompt_tokens=4, output_tokens=11, max_requests=1
    )
    records = []
    run_app(
        app,
        WorkloadRun("t", 30.0),
        serve=slow_first,
        emit=records.append,
        vocab_size=256,
        max_context=64,
    )
    (r,) = records
    assert r.ttft_s >= 0.3
    assert 0.01 <= r.itl_s < 0.03  # folding TTFT in would give >= (0.3 + 0.1) / 11 = 0.036
    assert r.itl_s < (r.e2e_s / r.output_tokens)
    assert r.e2e_s >= 0.4


def test_system_prompt_and_sessions_reach_the_model():
    calls = []

    def record(call, on_token, should_stop):
        calls.append(call)
        for i in range(call.output_tokens):
            on_token(i)
        return ServeResult(
            list(range(call.output_tokens)), service=ServiceFacts(cached_prompt_tokens=7)
        )

    app = AppWorkload(
        "agent",
        ArrivalPattern.CLOSED_LOOP,
        prompt_tokens=5,
        output_tokens=2,
        multi_turn=True,
        max_requests=5,
        turns_per_session=2,
        system_prompt_tokens=8,
    )
    records = []
    run_app(
        app,
        WorkloadRun("t", 30.0),
        serve=record,
        emit=records.append,
        vocab_size=256,
        max_context=256,
    )
    assert [r.turn for r in records] == [0, 1, 0, 1, 0]  # a new task every two steps
    system = calls[0].prompt[:8]
    assert all(c.prompt[:8] == system and c.shared_prefix_tokens == 8 for c in calls)
    # turn 2 = turn 1's prompt + its answer + 5 new tokens
    assert calls[1].prompt[:13] == calls[0].prompt and calls[1].prompt[13:15] == [0, 1]
    assert len(calls[1].prompt) == 8 + 5 + 2 + 5
    assert [c.session for c in calls] == ["agent#0", "agent#0", "agent#1", "agent#1", "agent#2"]
    assert all(r.service.cached_prompt_tokens == 7 for r in records)
