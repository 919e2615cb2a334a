"""Simulated phones: the profile, the replay's queueing rules, the one process serving many
phones over real gRPC, and a real coordinator run on a simulated fleet."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
import urllib.request
from dataclasses import replace

import grpc
import psutil
import pytest
from blocking import blocking, blocking_iter

from agents.simulated import main as sim_main
from agents.simulated.replay import SimulatedParadigm, replay_schedule
from fleet.coordinator.agent_client import AgentClient, AgentError
from fleet.coordinator.config import ConfigError, SimulatedPhone, load_experiment, parse_experiment
from fleet.coordinator.phone_host import PhoneHost
from fleet.records import (
    AppWorkload,
    ArrivalPattern,
    DeploySpec,
    ModelSpec,
    Paradigm,
    PhoneProfile,
    RequestRecord,
    RequestStatus,
    ResourceSample,
    ServiceOptions,
    TraceRequest,
    TrialStatus,
    TrialSummary,
    WorkloadRun,
)
from fleet.sim_profile import ProfileError, Quantiles, load_profile, parse_profile

SIM = load_profile("builtin")


def test_builtin_profile_names_its_source_and_draws_within_its_measurements():
    assert SIM.source["run"] and SIM.source["git"] and SIM.model == "smollm-135m"
    assert set(SIM.paradigms) == {"per_app", "slmaas", "agent_os"}
    assert SIM.label.startswith("simulated: profile builtin")
    q = SIM.paradigm("slmaas").itl_s
    draws = [q.draw(i / 100) for i in range(101)]
    assert draws == sorted(draws)
    assert draws[0] == q.values[0] and draws[-1] == q.values[-1]
    again = parse_profile(json.loads(SIM.to_json()), "copy")
    assert again.paradigms == SIM.paradigms and again.source == SIM.source


def test_a_bad_profile_names_the_field(tmp_path):
    data = json.loads(SIM.to_json())
    data["paradigms"]["slmaas"]["itl_s"]["values"] = [0.3, 0.1]
    with pytest.raises(ProfileError, match=r"paradigms\.slmaas\.itl_s\.values"):
        parse_profile(data, "bad.json")
    with pytest.raises(ProfileError, match="no such profile"):
        load_profile(str(tmp_path / "none.json"))
    with pytest.raises(ProfileError, match="no measurements of paradigm"):
        replace(SIM, paradigms={}).paradigm("slmaas")
    assert Quantiles.of([3.0, 1.0, 2.0]).median == 2.0


def _app(name, **kw) -> AppWorkload:
    return AppWorkload(name=name, prompt_tokens=32, output_tokens=8, **kw)


def _spec(paradigm, *apps, batch=8) -> DeploySpec:
    return DeploySpec(
        paradigm=paradigm,
        model=ModelSpec(preset="smollm-135m"),
        apps=tuple(apps),
        service=ServiceOptions(max_batch_size=batch),
    )


def _open_trace(app, n, every_s) -> tuple[TraceRequest, ...]:
    return tuple(TraceRequest(app, i, i * every_s, 32, 8) for i in range(n))


def test_replay_is_deterministic_and_queues_first_come_first_served():
    apps = (_app("a", pattern=ArrivalPattern.POISSON), _app("b", pattern=ArrivalPattern.POISSON))
    trace = _open_trace("a", 20, 0.1) + _open_trace("b", 20, 0.1)
    run = WorkloadRun("t", duration_s=5.0, seed=3, trace=trace, drain_s=600)
    one = replay_schedule(_spec(Paradigm.SLMAAS, *apps, batch=1), run, SIM, "p")
    assert [(r.req, r.tokens) for r in one] == [
        (r.req, r.tokens)
        for r in replay_schedule(_spec(Paradigm.SLMAAS, *apps, batch=1), run, SIM, "p")
    ]
    assert len(one) == 40 and all(r.status is RequestStatus.OK for r in one)
    # one shared model serving one at a time: no two requests overlap, and arrivals go in order
    served = sorted(one, key=lambda r: r.scheduled)
    assert all(x.end <= y.scheduled for x, y in zip(served, served[1:]))
    assert [r.submit for r in served] == sorted(r.submit for r in served)
    # per-app: each app's own model, so the two apps overlap but each app's requests do not
    per_app = replay_schedule(_spec(Paradigm.PER_APP, *apps), run, SIM, "p")
    for app in "ab":
        mine = sorted((r for r in per_app if r.req.app == app), key=lambda r: r.scheduled)
        assert all(x.end <= y.scheduled for x, y in zip(mine, mine[1:]))
    a0, b0 = (next(r for r in per_app if r.req.app == x and r.req.index == 0) for x in "ab")
    assert a0.scheduled == b0.scheduled == 0.0
    # a batch of 8 lets eight run at once
    batched = replay_schedule(_spec(Paradigm.SLMAAS, *apps), run, SIM, "p")
    assert max(r.end for r in batched) < max(r.end for r in one)


def test_closed_loop_thinks_after_each_response_and_the_deadline_censors():
    app = _app("chat", pattern=ArrivalPattern.CLOSED_LOOP, think_time_s=0.5)
    trace = tuple(TraceRequest("chat", i, None, 32, 8) for i in range(50))
    run = WorkloadRun("t", duration_s=6.0, trace=trace, drain_s=0.5)
    got = replay_schedule(_spec(Paradigm.SLMAAS, app), run, SIM, "p")
    ok = [r for r in got if r.status is RequestStatus.OK]
    assert ok and all(y.submit == pytest.approx(x.end + 0.5) for x, y in zip(ok, got[1:]))
    assert all(r.submit < 6.0 for r in got)  # nothing is sent after the duration
    assert all(r.end <= 6.5 + 1e-9 for r in got)  # nor served past the drain
    late = [r for r in got if r.status is RequestStatus.CANCELLED]
    assert all(len(r.tokens) < 8 for r in late)


def test_max_outstanding_drops_open_loop_arrivals():
    app = _app("kb", pattern=ArrivalPattern.POISSON, max_outstanding=1)
    run = WorkloadRun("t", duration_s=1.0, trace=_open_trace("kb", 10, 0.01), drain_s=60)
    got = replay_schedule(_spec(Paradigm.PER_APP, app), run, SIM, "p")
    dropped = [r for r in got if r.status is RequestStatus.DROPPED]
    assert dropped and not any(r.scheduled >= 0 for r in dropped)
    assert len(got) == 10


def test_the_replay_on_a_thread_and_on_the_event_loop_emit_the_same_records():
    """The trial runner runs a simulated phone's replay on the agent's event loop; the replay on
    a thread (the paradigm host's ``run``) is the same replay."""
    phone = PhoneProfile(name="p", kind="simulated", memory_budget_bytes=2 << 30)
    host = SimulatedParadigm(Paradigm.SLMAAS, phone, SIM)
    host.deploy(_spec(Paradigm.SLMAAS, _app("kb", pattern=ArrivalPattern.POISSON), batch=1))
    run = WorkloadRun("t", duration_s=1.0, seed=1, trace=_open_trace("kb", 6, 0.1), drain_s=5)
    on_thread: list = []
    assert host.run(run, on_thread.append, threading.Event()) == []
    on_loop: list = []
    assert asyncio.run(host.run_on_loop(run, on_loop.append, asyncio.Event())) == []

    def shape(r: RequestRecord) -> tuple:
        return r.request_id, r.status, [t - r.submit_ns for t in r.token_ns], r.end_ns - r.submit_ns

    assert len(on_thread) == 6 and [shape(r) for r in on_thread] == [shape(r) for r in on_loop]


def test_config_expands_counts_and_checks_the_profile(tmp_path):
    exp = load_experiment(None).model_dump(mode="json")
    exp["phones"] = [{"kind": "simulated", "name": "sim", "count": 3}]
    names = [p.name for p in parse_experiment(exp).phones]
    assert names == ["sim-0000", "sim-0001", "sim-0002"]
    (tmp_path / "p.json").write_text(SIM.to_json())
    exp["phones"] = [{"kind": "simulated", "name": "s", "profile": "p.json"}]
    phone = parse_experiment(exp, base_dir=tmp_path).phones[0]
    assert isinstance(phone, SimulatedPhone) and phone.profile == str(tmp_path / "p.json")
    exp["phones"] = [{"kind": "simulated", "name": "s", "profile": "missing.json"}]
    with pytest.raises(ConfigError, match=r"phones\.0\.simulated.*no such profile file"):
        parse_experiment(exp, base_dir=tmp_path)
    exp["phones"] = [{"kind": "simulated", "name": "s", "count": 2, "cuont": 1}]
    with pytest.raises(ConfigError, match="cuont: unknown field"):
        parse_experiment(exp)


@pytest.mark.slow
def test_one_process_serves_many_phones_over_grpc():
    host = PhoneHost()
    try:
        phones = [SimulatedPhone(name=f"sim-{i}", memory_budget_mb=2048) for i in range(3)]
        started = host.start_simulated_phones(phones, "builtin")
        assert len({s["pid"] for s in started.values()}) == 1  # one process for all
        # it yields the cores it shares with the coordinator it stands in for phones to
        pid = started["sim-0"]["pid"]
        assert psutil.Process(pid).nice() == min(19, os.nice(0) + sim_main.NICE)
        desc = host.describe("sim-1")
        assert desc.profile.name == "sim-1" and desc.profile.kind == "simulated"
        assert desc.host_facts["simulated"] == SIM.label
        app = _app("kb", pattern=ArrivalPattern.POISSON, rate_per_s=2.0)
        run = WorkloadRun("t", 2.0, seed=1, sample_interval_s=0.5, trace=_open_trace("kb", 4, 0.5))
        events = list(blocking_iter(host.run_trial("sim-1", _spec(Paradigm.SLMAAS, app), run)))
        kinds = [k for k, _ in events]
        assert kinds[0] == "deployed" and kinds[-1] == "end", events[-1]
        end = events[-1][1]
        summary = end.summary
        assert isinstance(summary, TrialSummary) and summary.weights_label == SIM.label
        stream = [e for k, p in events if k == "events" for e in p] + end.events
        records = [e for e in stream if isinstance(e, RequestRecord)]
        assert sorted(r.request_id for r in records) == [f"kb/{i}" for i in range(4)]
        samples = [e for e in stream if isinstance(e, ResourceSample)]
        assert samples and all(s.pss_bytes > s.weights_bytes > 0 for s in samples)
        # a trial called ahead of its start deploys at its start, not before; a stop before
        # then ends it undeployed at once
        start_at = time.time() + 0.5
        trial = host.run_trial("sim-2", _spec(Paradigm.SLMAAS, app), run, start_at)
        end = list(blocking_iter(trial))[-1][1]
        assert end.summary is not None and start_at <= end.deploy_sent < start_at + 5.0
        later = host.run_trial("sim-0", _spec(Paradigm.SLMAAS, app), run, time.time() + 60.0)
        threading.Timer(0.3, lambda: blocking(host.stop_trial("sim-0"))).start()
        t = time.monotonic()
        assert list(blocking_iter(later)) == [
            ("failed", "the run was stopped before the trial deployed")
        ]
        assert time.monotonic() - t < 10.0
        # each phone's own /metrics; the other phones' are apart
        text = urllib.request.urlopen(
            f"http://{started['sim-1']['metrics_address']}{started['sim-1']['metrics_path']}"
        ).read()
        assert b'phone="sim-1"' in text and b'phone="sim-0"' not in text
        assert b"slmfleet_requests_total" in text
        # a call naming no phone, or another one, is refused with the reason
        address = started["sim-0"]["address"]
        for name in ("", "sim-9"):
            client = AgentClient(address, host._token, phone=name)
            with pytest.raises(AgentError) as err:
                client.describe()
            assert err.value.code is grpc.StatusCode.NOT_FOUND and "phone" in err.value.reason
            client.close()
    finally:
        host.shutdown()


def test_the_heartbeat_checks_a_process_of_simulated_phones_once_for_all(monkeypatch):
    """Phones behind one agent server share its health: one check for the process, its answer
    for each of them, and all of them down once the process is gone."""
    host = PhoneHost()
    try:
        phones = [SimulatedPhone(name=f"sim-{i}", memory_budget_mb=2048) for i in range(3)]
        started = host.start_simulated_phones(phones, "builtin")
        checked: list[str] = []
        health = host._health_async

        async def counted(name: str, timeout_s: float) -> bool:
            checked.append(name)
            return await health(name, timeout_s)

        monkeypatch.setattr(host, "_health_async", counted)
        names = [p.name for p in phones]
        assert blocking(host.health_many(names)) == dict.fromkeys(names, True)
        assert len(checked) == 1
        host._procs[f"simulated:{started['sim-0']['pid']}"].kill()
        host._procs[f"simulated:{started['sim-0']['pid']}"].wait(10)
        assert blocking(host.health_many(names, timeout_s=1.0)) == dict.fromkeys(names, False)
        assert len(checked) == 2
    finally:
        host.shutdown()


def test_a_stop_ends_a_simulated_trial_and_cuts_what_was_in_flight():
    """The replay runs on the agent's event loop: a Stop wakes it (not its next record), the
    summary says stopped, requests waiting or running at the stop end cancelled, and no request
    ends after the stop."""
    host = PhoneHost()
    try:
        host.start_simulated_phones(
            [SimulatedPhone(name="sim-0", memory_budget_mb=2048)], "builtin"
        )
        app = _app("kb", pattern=ArrivalPattern.POISSON, rate_per_s=10.0)
        trace = _open_trace("kb", 600, 0.1)  # one server, a request every 0.1 s: a queue grows
        run = WorkloadRun("t", 60.0, seed=1, sample_interval_s=0.5, trace=trace)
        events: list = []
        streaming = threading.Event()

        def trial() -> None:
            trial = host.run_trial("sim-0", _spec(Paradigm.SLMAAS, app, batch=1), run)
            for kind, payload in blocking_iter(trial):
                events.append((kind, payload))
                if kind == "events":  # the workload runs on the phone
                    streaming.set()

        runner = threading.Thread(target=trial, daemon=True)
        runner.start()
        assert streaming.wait(60), f"the workload did not start: {events}"
        time.sleep(2.0)  # requests end, and more wait
        asked_ns = time.monotonic_ns()
        assert blocking(host.stop_trial("sim-0"))
        runner.join(45)
        assert not runner.is_alive(), "the stopped trial ran on"
        end = events[-1][1]
        assert end.summary is not None and end.summary.status is TrialStatus.STOPPED, end
        stream = [e for k, p in events if k == "events" for e in p] + end.events
        records = [e for e in stream if isinstance(e, RequestRecord)]
        done = [r for r in records if r.status is RequestStatus.OK]
        cut = [r for r in records if r.status is RequestStatus.CANCELLED]
        assert done and cut and len(records) < len(trace)
        assert max(r.end_ns for r in records) <= time.monotonic_ns()
        assert min(r.end_ns for r in cut) >= asked_ns  # cut at the stop, not before it
        assert max(r.end_ns for r in done) <= min(r.end_ns for r in cut)
    finally:
        host.shutdown()


@pytest.mark.slow
def test_a_real_agent_refuses_a_call_for_another_phone():
    import os
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "agents.main", "--name", "pixel-a", "--exit-on-stdin-eof"]
        + ["--storage-dir", "none", "--metrics-port", "-1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=dict(os.environ, FLEET_AGENT_TOKEN="t0ken"),
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = json.loads(proc.stdout.readline())["port"]
        right = AgentClient(f"127.0.0.1:{port}", "t0ken", phone="pixel-a")
        assert right.describe().profile.name == "pixel-a"
        wrong = AgentClient(f"127.0.0.1:{port}", "t0ken", phone="pixel-b")
        with pytest.raises(AgentError) as err:
            wrong.reset()
        assert err.value.code is grpc.StatusCode.NOT_FOUND
        assert "serves phone pixel-a, not pixel-b" in err.value.reason
        right.close()
        wrong.close()
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=20)


@pytest.mark.slow
@pytest.mark.ray
def test_a_simulated_fleet_runs_through_the_real_coordinator(tmp_path):
    from fleet.coordinator.driver import Coordinator

    exp = parse_experiment(
        {
            "name": "simfleet",
            "drain_s": 2,
            "sample_interval_s": 1.0,
            "heartbeat_s": 1,
            "contention": {"solo_baselines": False, "corun": True},
            "phones": [{"kind": "simulated", "name": "sim", "count": 12}],
            "models": [{"preset": "smollm-135m"}],
            "paradigms": [{"kind": "slmaas"}, {"kind": "per_app"}],
            "workloads": [
                {
                    "name": "w",
                    "duration_s": 3,
                    "apps": [
                        {
                            "name": "kb",
                            "arrival": {"kind": "poisson", "rate_per_s": 2.0},
                            "prompt_tokens": 16,
                            "output_tokens": 4,
                        }
                    ],
                }
            ],
        }
    )
    result = Coordinator(
        exp, runs_dir=tmp_path, prometheus="off", announce=lambda *a, **k: None
    ).run()
    assert result.num_trials == 24 and result.num_failed == 0, result.statuses
    db = sqlite3.connect(result.run_dir / "results.sqlite")
    assert db.execute("SELECT DISTINCT kind FROM phones").fetchall() == [("simulated",)]
    labels = {
        json.loads(s)["weights_label"] for (s,) in db.execute("SELECT summary_json FROM trials")
    }
    assert labels == {SIM.label}
    n = db.execute("SELECT COUNT(*) FROM requests WHERE status = 'ok'").fetchone()[0]
    assert n > 24
    from fleet.results.report import write_report

    assert "Simulated phones." in write_report(result.run_dir).read_text()
