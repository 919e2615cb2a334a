"""The three paradigms on a real phone agent process: behaviour the comparison rests on."""

import os
import signal
import statistics
import time
from collections import Counter

import pytest

from conftest import TOKEN, agent_process
from fleet.coordinator.agent_client import AgentClient
from fleet.records import (
    AppWorkload,
    ArrivalPattern,
    DeploySpec,
    ModelSpec,
    Paradigm,
    PhoneEvent,
    RequestRecord,
    RequestStatus,
    ResourceSample,
    SchedulerPolicy,
    ServiceOptions,
    TrialStatus,
    TrialSummary,
    WorkloadRun,
)

pytestmark = pytest.mark.slow

AGENT_OS = ServiceOptions(
    scheduler=SchedulerPolicy.PRIORITY, persistent_contexts=True, prefill_chunk_tokens=64
)
SLMAAS = ServiceOptions(scheduler=SchedulerPolicy.FCFS)


def run_trial(
    client, paradigm, apps, *, model="tiny", duration=4.0, service=SLMAAS, seed=3, threads=1
):
    client.deploy(
        DeploySpec(
            paradigm,
            ModelSpec(preset=model),
            tuple(apps),
            max_context_tokens=1024,
            threads_per_process=threads,
            service=service,
        )
    )
    try:
        events = list(
            client.run_workload(
                WorkloadRun(f"{paradigm.value}", duration, seed=seed, sample_interval_s=0.1)
            )
        )
    finally:
        client.reset()
    out = {
        "records": [e for e in events if isinstance(e, RequestRecord)],
        "samples": [e for e in events if isinstance(e, ResourceSample)],
        "events": [e for e in events if isinstance(e, PhoneEvent)],
        "summary": events[-1],
    }
    assert isinstance(out["summary"], TrialSummary)
    return out


@pytest.fixture(scope="module")
def client():
    with agent_process("--name", "paradigms", "--memory-budget-mb", "8192") as (address, _):
        c = AgentClient(address, TOKEN)
        c.wait_healthy()
        yield c


def test_per_app_holds_at_least_2_5x_the_memory_of_slmaas(client):
    apps = [
        AppWorkload(
            n,
            ArrivalPattern.CLOSED_LOOP,
            think_time_s=0.5,
            prompt_tokens=16,
            output_tokens=4,
            max_requests=2,
        )
        for n in ("a", "b", "c")
    ]
    per_app = run_trial(client, Paradigm.PER_APP, apps, model="smollm-135m", duration=3)
    slmaas = run_trial(client, Paradigm.SLMAAS, apps, model="smollm-135m", duration=3)
    assert per_app["summary"].status is TrialStatus.COMPLETED
    assert len({s.pid for s in per_app["samples"]}) == 3  # three model processes
    assert len({s.pid for s in slmaas["samples"]}) == 1  # one service
    ratio = per_app["summary"].peak_pss_bytes / slmaas["summary"].peak_pss_bytes
    assert ratio >= 2.5, f"per-app/SLMaaS peak PSS ratio {ratio:.2f}"
    for trial in (per_app, slmaas):  # each model process reports its weights and KV
        split = [x for x in trial["samples"] if x.weights_bytes]
        assert split, "no sample carried the memory split"
        for x in split:
            assert x.kv_used_bytes <= x.kv_bytes and x.weights_bytes + x.kv_bytes < x.pss_bytes


def test_slmaas_batches_and_beats_per_app_aggregate_throughput(client):
    # six apps at once: enough concurrency that batching pays (about 1.6x here), so the
    # comparison is not decided by the machine's noise (four apps gave 1.1-1.3x)
    apps = [
        AppWorkload(f"app{i}", ArrivalPattern.CLOSED_LOOP, prompt_tokens=24, output_tokens=32)
        for i in range(6)
    ]
    ratios = []
    for _ in range(2):
        shared = run_trial(client, Paradigm.SLMAAS, apps, service=SLMAAS)  # 1 thread, as each app
        own = run_trial(client, Paradigm.PER_APP, apps)
        assert max(r.service.max_batch_size for r in shared["records"]) > 1
        assert max(r.service.max_batch_size for r in own["records"]) == 1
        ratios.append(
            (shared["summary"].output_tokens / shared["summary"].duration_s)
            / (own["summary"].output_tokens / own["summary"].duration_s)
        )
    assert statistics.median(ratios) > 1.0, f"SLMaaS / per-app tokens/s: {ratios}"


def test_a_burst_of_four_keyboard_arrivals_is_served_as_four_concurrent_requests(client):
    """Open loop: the four requests of one burst reach the service at once and it batches them."""
    app = AppWorkload(
        "keyboard",
        ArrivalPattern.POISSON,
        rate_per_s=1.0,
        burst_size=4,
        prompt_tokens=16,
        output_tokens=16,
        max_requests=4,  # one burst
        foreground=True,
    )
    trial = run_trial(client, Paradigm.SLMAAS, [app], model="smollm-135m", duration=20)
    recs = trial["records"]
    assert len(recs) == 4 and all(r.status is RequestStatus.OK for r in recs)
    assert len({r.submit_ns for r in recs}) == 1  # one arrival instant
    assert all(r.sent_ns - r.submit_ns < 0.1 * 1e9 for r in recs)  # none waited in the app
    assert max(r.service.max_batch_size for r in recs) == 4


def _fg_ttft_s(trial) -> list[float]:
    """Every foreground arrival's TTFT; an unserved one counts as never served (inf)."""
    fg = [r for r in trial["records"] if r.app == "keyboard"]
    assert len(fg) >= 8
    return [r.ttft_s if r.token_ns else float("inf") for r in fg]


def _fg_facts(name: str, trial) -> str:
    """A run's foreground at a glance: p50 TTFT, p50 wait to be scheduled, p50 of the rest."""
    fg = [r for r in trial["records"] if r.app == "keyboard" and r.token_ns and r.scheduled_ns]
    if not fg:
        return f"{name}: no foreground request served"
    wait = statistics.median((r.scheduled_ns - r.submit_ns) / 1e9 for r in fg)
    rest = statistics.median((r.first_token_ns - r.scheduled_ns) / 1e9 for r in fg)
    ttft = statistics.median(r.ttft_s for r in fg)
    return f"{name} n={len(fg)} ttft {ttft:.3f} s (wait {wait:.3f} + rest {rest:.3f})"


def test_agent_os_keeps_foreground_ttft_below_slmaas_under_background_load(client):
    """Priority scheduling protects a foreground app from background prefill that FCFS batches it
    with, at the same prefill chunk (64, both paradigms' default): the scheduler alone. Judged on
    paired runs (FCFS then priority, twice, so drift of a busy machine hits both alike) over every
    foreground arrival of each paradigm, with a margin: priority must cut the p50 TTFT by a
    third. One thread a model: a two-thread step waits for its slower thread at every operator,
    which a neighbour on the other core (or a VM's steal) stretches most in the small steps
    priority runs the foreground in, not in FCFS's batched ones; one thread keeps the comparison
    about the scheduler (here: 0.27-0.45 of FCFS on one thread, 0.35-0.53 on two)."""
    apps = [
        AppWorkload(
            "keyboard",
            ArrivalPattern.POISSON,
            rate_per_s=2.0,
            prompt_tokens=16,
            output_tokens=4,
            foreground=True,
        ),
        AppWorkload("summarizer", ArrivalPattern.CLOSED_LOOP, prompt_tokens=768, output_tokens=8),
        AppWorkload("indexer", ArrivalPattern.CLOSED_LOOP, prompt_tokens=512, output_tokens=8),
    ]
    fcfs: list[float] = []
    prio: list[float] = []
    preempted = []
    runs: list[str] = []  # what each run's foreground saw, printed with the verdict
    for seed in (3, 4):
        trials = {
            name: run_trial(
                client,
                paradigm,
                apps,
                model="smollm-135m",
                duration=6,
                service=service,
                threads=1,
                seed=seed,
            )
            for name, paradigm, service in (
                ("fcfs", Paradigm.SLMAAS, SLMAAS),
                ("prio", Paradigm.AGENT_OS, AGENT_OS),
            )
        }
        fcfs += _fg_ttft_s(trials["fcfs"])  # the same keyboard requests in both (same seed)
        prio += _fg_ttft_s(trials["prio"])
        preempted += [r for r in trials["prio"]["records"] if len(r.service.slices) > 1]
        runs += [f"seed {seed}: " + ", ".join(_fg_facts(name, t) for name, t in trials.items())]
    p50_fcfs, p50_prio = statistics.median(fcfs), statistics.median(prio)
    print(f"fg p50 TTFT: priority {p50_prio:.3f} s, FCFS {p50_fcfs:.3f} s, n={len(prio)}")
    print("\n".join(runs))
    assert p50_prio < 0.67 * p50_fcfs, (
        f"fg p50 TTFT priority {p50_prio} vs FCFS {p50_fcfs}; " + "; ".join(runs)
    )
    # background requests were preempted, and every slice of them was recorded
    assert preempted
    for r in preempted:
        assert sum(s.output_tokens for s in r.service.slices) == r.output_tokens
        assert all(a.end_ns <= b.start_ns for a, b in zip(r.service.slices, r.service.slices[1:]))


def test_a_per_app_chat_keeps_its_own_conversation_between_turns(client):
    """Per-app as a real app runs its model: the conversation's KV stays in the app's own
    process, so a turn prefills only what is new; a new conversation reuses the system prompt."""
    chat = AppWorkload(
        "chat",
        ArrivalPattern.CLOSED_LOOP,
        prompt_tokens=24,
        output_tokens=8,
        multi_turn=True,
        turns_per_session=3,
        system_prompt_tokens=16,
        max_requests=4,
    )
    trial = run_trial(client, Paradigm.PER_APP, [chat], duration=30)
    recs = sorted(trial["records"], key=lambda r: int(r.request_id.split("/")[1]))
    assert [r.turn for r in recs] == [0, 1, 2, 0]
    assert recs[0].service.cached_prompt_tokens == 0
    for r in recs[1:3]:  # all but the new tokens (and the last answer token, never fed back)
        assert r.service.cached_prompt_tokens == r.prompt_tokens - 24 - 1
    assert recs[3].service.cached_prompt_tokens == 16  # a new conversation: the system prompt


def test_lmk_kill_is_followed_by_a_recorded_cold_start():
    apps = [
        AppWorkload(
            "fg",
            ArrivalPattern.CLOSED_LOOP,
            think_time_s=0.05,
            prompt_tokens=16,
            output_tokens=8,
            foreground=True,
        ),
        AppWorkload(
            "bg", ArrivalPattern.CLOSED_LOOP, think_time_s=0.3, prompt_tokens=16, output_tokens=8
        ),
    ]
    # two tiny-model processes hold ~2 x 200 MiB of PSS, mostly runtime: 300 MiB fits one
    with agent_process("--name", "small", "--memory-budget-mb", "300") as (address, _):
        c = AgentClient(address, TOKEN)
        c.wait_healthy()
        trial = run_trial(c, Paradigm.PER_APP, apps, duration=8)
    kinds = Counter(e.kind for e in trial["events"])
    assert kinds["lmk_kill"] >= 1 and kinds["cold_start"] >= 1
    kills = [e for e in trial["events"] if e.kind == "lmk_kill"]
    assert all(e.app == "bg" for e in kills)  # the background app goes first
    cold = [r for r in trial["records"] if r.cold_start_s > 0]
    assert cold and all(r.app == "bg" for r in cold)
    for r in cold:
        if r.status is RequestStatus.OK:
            assert r.ttft_s >= r.cold_start_s  # the cold start is inside its TTFT
    assert not [r for r in trial["records"] if r.app == "fg" and r.status is not RequestStatus.OK]


def test_a_dead_service_fails_in_flight_requests_with_a_reason(client):
    apps = [AppWorkload("chat", ArrivalPattern.CLOSED_LOOP, prompt_tokens=16, output_tokens=400)]
    service_pid = (
        client.deploy(
            DeploySpec(Paradigm.SLMAAS, ModelSpec(preset="tiny"), tuple(apps), service=SLMAAS)
        )
        .apps[0]
        .pid
    )
    stream = client.run_workload(WorkloadRun("doomed", 30.0))
    t0 = time.monotonic()
    killed = False
    events = []
    for e in stream:
        events.append(e)
        if not killed and isinstance(e, ResourceSample):
            os.kill(service_pid, signal.SIGKILL)
            killed = True
    client.reset()
    assert time.monotonic() - t0 < 20  # no hang
    summary = events[-1]
    assert summary.status is TrialStatus.FAILED and "service process" in summary.reason
    failed = [
        e for e in events if isinstance(e, RequestRecord) and e.status is RequestStatus.FAILED
    ]
    assert failed and all(r.error for r in failed)
    assert any(isinstance(e, PhoneEvent) and e.kind == "service_died" for e in events)
