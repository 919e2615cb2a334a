"""fleet.coordinator.plan and the one sizing rule (fleet.sizing) it shares with the phones."""

from __future__ import annotations

import pytest

from fleet.coordinator.config import parse_experiment
from fleet.coordinator.plan import check_budgets, check_cores, plan_trials
from fleet.records import (
    AppWorkload,
    DeploySpec,
    ModelSpec,
    Paradigm,
    PhoneProfile,
    SchedulerPolicy,
    ServiceOptions,
    effective_service_options,
)
from fleet.shapes import ModelArgs
from fleet.sizing import BudgetError, ServingError, footprints, planned_bytes


def experiment(**changes):
    return parse_experiment(raw_experiment(**changes))


def raw_experiment(**changes):
    exp = {
        "name": "c",
        "phones": [{"name": "p", "kind": "virtual", "memory_budget_mb": 4096}],
        "models": [{"preset": "tiny"}],
        "paradigms": [{"kind": "per_app"}],
        "workloads": [
            {
                "name": "w",
                "duration_s": 5,
                "apps": [
                    {
                        "name": "a",
                        "arrival": {"kind": "closed_loop"},
                        "prompt_tokens": 4,
                        "output_tokens": 2,
                    }
                ],
            }
        ],
    }
    exp.update(changes)
    return exp


def test_plan_expands_solo_corun_and_sweep():
    exp = parse_experiment(
        {
            "name": "c",
            "repetitions": 2,
            "trial_order": "sequential",
            "contention": {"solo_baselines": True, "app_counts": [1, 4]},
            "phones": [{"name": "p", "kind": "virtual"}],
            "models": [{"preset": "tiny"}],
            "paradigms": [{"kind": "per_app"}, {"kind": "slmaas"}, {"kind": "agent_os"}],
            "workloads": [
                {
                    "name": "w",
                    "duration_s": 5,
                    "apps": [
                        {
                            "name": "a",
                            "arrival": {"kind": "closed_loop"},
                            "prompt_tokens": 4,
                            "output_tokens": 2,
                        },
                        {
                            "name": "b",
                            "arrival": {"kind": "closed_loop"},
                            "prompt_tokens": 4,
                            "output_tokens": 2,
                        },
                    ],
                }
            ],
        }
    )
    trials = plan_trials(exp)
    assert len(trials) == 2 * 3 * (2 + 1 + 2)
    mixes = [t.mix for t in trials[:5]]
    assert mixes == ["solo:a", "solo:b", "corun", "apps:1", "apps:4"]
    assert trials[0].duration_s == trials[2].duration_s == 5  # solo replays the co-run
    sweep4 = trials[4]
    assert [a.name for a in sweep4.apps] == ["a", "b", "a-2", "b-2"]
    assert trials[5].deploy_spec().service.scheduler.value == "fcfs"
    agent_os = next(t for t in trials if t.paradigm.kind == "agent_os")
    spec = agent_os.deploy_spec()
    assert spec.service.scheduler.value == "priority" and spec.service.persistent_contexts
    # the agent labels each trial's series with the paradigm's name and the trial's phase
    assert [t.deploy_spec().phase for t in trials[:5]] == [
        "solo",
        "solo",
        "corun",
        "sweep",
        "sweep",
    ]
    assert spec.paradigm_label == "agent_os"


def test_the_scheduler_keeps_one_enum_from_the_file_to_the_deploy_spec():
    exp = experiment(paradigms=[{"kind": "agent_os", "scheduler": "round_robin"}])
    assert exp.paradigms[0].scheduler is SchedulerPolicy.ROUND_ROBIN
    assert plan_trials(exp)[0].deploy_spec().service.scheduler is SchedulerPolicy.ROUND_ROBIN


def test_paradigm_defaults_are_decided_in_one_place():
    asked = ServiceOptions(scheduler=SchedulerPolicy.PRIORITY, persistent_contexts=True)
    slmaas = effective_service_options(Paradigm.SLMAAS, asked)
    assert slmaas.scheduler is SchedulerPolicy.FCFS and not slmaas.persistent_contexts
    assert effective_service_options(Paradigm.AGENT_OS, asked) == asked
    own = effective_service_options(Paradigm.PER_APP, asked)
    # an app's own runtime: one request at a time, its own conversation and prefix kept
    assert own.max_batch_size == 1 and own.prefix_cache and own.persistent_contexts


def test_budget_check_uses_the_phones_rule():
    tiny = ModelArgs.from_name("smollm-135m")
    spec = DeploySpec(
        Paradigm.SLMAAS,
        ModelSpec(preset="smollm-135m"),
        (AppWorkload("a"), AppWorkload("b")),
        max_context_tokens=256,
    )
    need = footprints(spec, PhoneProfile("p", memory_budget_bytes=4 << 30))
    assert need["a"].weight_bytes == tiny.weight_bytes("fp32")
    assert need["a"].kv_bytes == tiny.kv_cache_bytes(256, "fp32")
    # a shared service holds the weights once, per-app once per app
    shared = planned_bytes(spec, PhoneProfile("p"))
    per_app = planned_bytes(
        DeploySpec(Paradigm.PER_APP, spec.model, spec.apps, 256), PhoneProfile("p")
    )
    assert per_app - shared == tiny.weight_bytes("fp32")
    with pytest.raises(BudgetError, match="cannot hold model smollm-135m"):
        footprints(spec, PhoneProfile("small", memory_budget_bytes=100 << 20))


def test_own_models_only_under_per_app():
    own = AppWorkload("a", model=ModelSpec(preset="tiny", dtype="bf16"))
    spec = DeploySpec(Paradigm.SLMAAS, ModelSpec(preset="tiny"), (own,))
    with pytest.raises(ServingError, match="only per_app"):
        planned_bytes(spec, PhoneProfile("p"))


def test_check_budgets_lists_each_problem_once():
    exp = experiment(
        phones=[{"name": "p", "kind": "virtual", "memory_budget_mb": 64}],
        models=[{"preset": "smollm-135m"}],
        repetitions=3,
    )
    problems = check_budgets(exp, plan_trials(exp))
    assert len(problems) == 1 and "phone p (64 MiB) cannot hold model smollm-135m" in problems[0]
    assert check_budgets(experiment(), plan_trials(experiment())) == []


def test_phones_asking_for_more_cores_than_the_host_has_are_refused_with_the_numbers():
    phones = [
        {"name": "a", "kind": "virtual", "cpu_threads": 2},
        {"name": "b", "kind": "virtual", "cpu_threads": 1},
        {"name": "r", "kind": "remote", "address": "127.0.0.1:1"},  # has its own cores
    ]
    (problem,) = check_cores(experiment(phones=phones), host_cores=2)
    assert "ask for 3 cores (a 2, b 1) but this host has 2" in problem
    assert check_cores(experiment(phones=phones), host_cores=3) == []
    assert check_cores(experiment(phones=phones, allow_shared_cores=True), host_cores=2) == []


def test_core_allocation_is_disjoint_and_sharing_is_explicit():
    from fleet.coordinator.phone_host import CoreError, allocate_cores

    given: dict[str, tuple[int, ...]] = {}
    given["a"], shared = allocate_cores("a", 2, [0, 1, 2, 3], given, False)
    assert given["a"] == (0, 1) and not shared
    given["b"], shared = allocate_cores("b", 2, [0, 1, 2, 3], given, False)
    assert given["b"] == (2, 3) and not shared
    with pytest.raises(CoreError, match="phone c asks for 1 cores; this host has 4"):
        allocate_cores("c", 1, [0, 1, 2, 3], given, False)
    cores, shared = allocate_cores("c", 1, [0, 1, 2, 3], given, True)
    assert shared and len(cores) == 1
    with pytest.raises(CoreError):
        allocate_cores("d", 5, [0, 1, 2, 3], {}, True)  # more than the host has at all


def _mixes_experiment(**changes):
    apps = [
        {
            "name": "kb",
            "arrival": {"kind": "poisson", "rate_per_s": 3, "burst_size": 2},
            "prompt_tokens": 4,
            "output_tokens": 2,
        },
        {
            "name": "chat",
            "arrival": {"kind": "closed_loop", "think_time_s": 0.5},
            "prompt_tokens": 4,
            "output_tokens": 2,
            "multi_turn": True,
        },
    ]
    return experiment(
        repetitions=2,
        paradigms=[{"kind": "per_app"}, {"kind": "slmaas"}],
        contention={"solo_baselines": True, "corun": True, "app_counts": [3]},
        workloads=[{"name": "w", "duration_s": 4, "apps": apps}],
        **changes,
    )


def test_solo_baselines_replay_exactly_the_corun_requests():
    trials = plan_trials(_mixes_experiment())
    for rep in (0, 1):
        for paradigm in ("per_app", "slmaas"):
            mine = {
                t.mix: t for t in trials if t.repetition == rep and t.paradigm.label == paradigm
            }
            co = mine["corun"]
            assert co.duration_s == mine["solo:kb"].duration_s == 4
            for app in ("kb", "chat"):
                solo = mine[f"solo:{app}"].trace
                assert solo == tuple(t for t in co.trace if t.app == app)  # same ids, sizes, times
            sweep = mine["apps:3"].trace  # the third app is a renamed copy with its own requests
            assert {t.app for t in sweep} == {"kb", "chat", "kb-2"}
    r0 = next(t for t in trials if t.mix == "corun" and t.repetition == 0).trace
    r1 = next(t for t in trials if t.mix == "corun" and t.repetition == 1).trace
    assert [t.at_s for t in r0 if t.app == "kb"] != [t.at_s for t in r1 if t.app == "kb"]
    chat = [t for t in r0 if t.app == "chat"]
    assert [t.turn for t in chat[:3]] == [0, 1, 2] and chat[0].at_s is None


def test_trial_order_is_shuffled_by_the_seed_within_each_repetition():
    a = [t.trial_id for t in plan_trials(_mixes_experiment())]
    assert a == [t.trial_id for t in plan_trials(_mixes_experiment())]  # reproducible
    assert a != [t.trial_id for t in plan_trials(_mixes_experiment(seed=1))]
    seq = [t.trial_id for t in plan_trials(_mixes_experiment(trial_order="sequential"))]
    assert sorted(a) == sorted(seq) and a != seq
    turns = plan_trials(_mixes_experiment(trial_order="interleaved"))
    assert [(t.mix, t.paradigm.label) for t in turns[:4]] == [
        ("solo:kb", "per_app"),
        ("solo:kb", "slmaas"),
        ("solo:chat", "per_app"),
        ("solo:chat", "slmaas"),
    ]
    half = len(a) // 2
    assert all(t.endswith(".r0") for t in a[:half]) and all(t.endswith(".r1") for t in a[half:])


def test_trace_files_are_replayed_and_bad_lines_are_named(tmp_path):
    from fleet.coordinator.config import ConfigError

    (tmp_path / "kb.jsonl").write_text(
        '{"t_s": 0.5, "prompt_tokens": 8, "output_tokens": 4}\n'
        '{"t_s": 0.1, "prompt_tokens": 12, "output_tokens": 2, "session": "s", "turn": 0}\n'
        '{"t_s": 9.0, "prompt_tokens": 8, "output_tokens": 4}\n'
    )
    app = {"name": "kb", "arrival": {"kind": "trace", "path": "kb.jsonl"}}
    exp = parse_experiment(
        raw_experiment(workloads=[{"name": "w", "duration_s": 5, "apps": [app]}]), base_dir=tmp_path
    )
    (t,) = plan_trials(exp)
    assert [(r.at_s, r.prompt_tokens, r.session) for r in t.trace] == [
        (0.1, 12, "kb:s"),
        (0.5, 8, ""),
    ]  # sorted by time, cut at the duration
    assert t.deploy_spec().apps[0].prompt_tokens == 12  # sized for the largest request
    # the session is the app's own: copies of one file never share a context
    (tmp_path / "gap.jsonl").write_text(
        '{"t_s": 0.1, "prompt_tokens": 8, "output_tokens": 4, "session": "s", "turn": 0}\n'
        '{"t_s": 0.2, "prompt_tokens": 8, "output_tokens": 4, "session": "s", "turn": 2}\n'
    )
    app["arrival"]["path"] = "gap.jsonl"
    with pytest.raises(ConfigError, match="turn 2 arrives where turn 1 is due"):
        parse_experiment(
            raw_experiment(workloads=[{"name": "w", "duration_s": 5, "apps": [app]}]),
            base_dir=tmp_path,
        )
    (tmp_path / "bad.jsonl").write_text('{"t_s": 0.5, "prompt_tokens": 8}\n')
    app["arrival"]["path"] = "bad.jsonl"
    with pytest.raises(ConfigError, match="bad.jsonl:1: missing field 'output_tokens'"):
        parse_experiment(
            raw_experiment(workloads=[{"name": "w", "duration_s": 5, "apps": [app]}]),
            base_dir=tmp_path,
        )


def test_trial_starts_are_paced_fleet_wide():
    """Starts asked at once from many threads get slots 1/rate apart, in one queue; a stop
    releases the waiting ones without starting them."""
    import threading
    import time

    from fleet.coordinator.dispatch import StartPacer

    pacer, stop = StartPacer(rate_per_s=50.0), threading.Event()
    started: list[float] = []
    lock = threading.Lock()

    def start() -> None:
        if pacer.wait(stop):
            with lock:
                started.append(time.monotonic())

    threads = [threading.Thread(target=start) for _ in range(11)]
    t0 = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(started) == 11
    assert max(started) - t0 >= 10 / 50.0 - 0.005  # the last slot is 10 intervals on
    late = StartPacer(rate_per_s=0.1)
    assert late.wait(stop)  # the first slot is now
    stop.set()
    t = time.monotonic()
    assert not late.wait(stop) and time.monotonic() - t < 1.0  # the next, 10 s on: stopped


def test_a_stream_batch_is_due_at_its_interval_when_full_or_at_the_summary():
    """The host wakes a trial once a batch of its stream is due, not per message."""
    import asyncio
    import time

    from fleet.coordinator.stream_pump import BATCH_MAX, _Batches

    async def check() -> None:
        loop = asyncio.get_running_loop()
        b = _Batches()
        b.put("r1", force=False)
        t0 = time.monotonic()
        assert await b.take(0.2) == (["r1"], False) and time.monotonic() - t0 >= 0.19  # interval
        for i in range(BATCH_MAX):
            b.put(i, force=False)
        t0 = time.monotonic()
        assert len((await b.take(30.0))[0]) == BATCH_MAX and time.monotonic() - t0 < 1.0  # full
        loop.call_later(0.05, lambda: b.put("summary", force=True))
        t0 = time.monotonic()
        assert await b.take(30.0) == (["summary"], False) and time.monotonic() - t0 < 5.0
        loop.call_later(0.05, b.end, None)
        assert await b.take(30.0) == ([], True)  # the end wakes it too
        assert await b.take(30.0) == ([], True)  # and stays due

    asyncio.run(check())


def test_a_streams_summary_ends_its_batches_without_waiting_for_the_stream_to_close():
    """The summary is a workload stream's last message: its trial goes on at once (at a
    thousand phones the agents' teardown held the end of every trial a third of a second), and
    the call is left to end by itself, not cancelled."""
    import asyncio
    import time

    from fleet import wire
    from fleet.coordinator.stream_pump import (
        ChannelArgs,
        close_channel,
        retain_channel,
        stream_batches,
    )
    from fleet.records import RequestRecord, RequestStatus, TrialStatus, TrialSummary

    cancelled: list = []

    class Call:  # a grpc.aio stream: two messages, then no end until it is let go
        def __init__(self, closed: asyncio.Event):
            self.closed = closed

        def __aiter__(self):
            return self._messages()

        async def _messages(self):
            yield wire.event_to_pb(RequestRecord("kb/0", "kb", RequestStatus.OK, 8, 1, 2, [3]))
            yield wire.event_to_pb(TrialSummary(TrialStatus.COMPLETED, num_requests=1))
            await self.closed.wait()

        def cancel(self):
            cancelled.append(True)

    async def read() -> list:
        closed = asyncio.Event()
        got = []
        args = ChannelArgs("127.0.0.1:1")
        retain_channel(args)
        try:
            async with asyncio.timeout(10.0):  # not its 30 s interval, nor the stream's end
                async for batch in stream_batches(args, lambda _ch: Call(closed), lambda: 30.0):
                    got.append(batch)
        finally:
            closed.set()  # the stream may end now
            close_channel(args)
        return got

    t0 = time.monotonic()
    got = asyncio.run(read())
    assert time.monotonic() - t0 < 10.0
    assert all(error is None for _, error in got), got
    events = [e for batch, _ in got for e in batch]
    assert [type(e) for e in events] == [RequestRecord, TrialSummary]
    assert not cancelled
