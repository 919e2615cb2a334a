"""The dispatcher's handling of one trial's items, from a stand-in phone host: the items a real
host yields, handed over as plain values (``ray.get`` is the identity on them here), into a real
store and real coordinator metrics. The path through Ray is covered by test_fleet_run."""

from __future__ import annotations

import threading
import time
import types

import pytest
import ray
from prometheus_client import CollectorRegistry

from fleet.coordinator.dispatch import Dispatcher
from fleet.coordinator.phone_host import TrialEnd
from fleet.observe.coordinator_metrics import FleetMetrics
from fleet.records import DeployResult, RequestRecord, RequestStatus, TrialStatus, TrialSummary
from fleet.results.store import ResultStore


def _record(i: int) -> RequestRecord:
    return RequestRecord(f"t1/kb/{i}", "kb", RequestStatus.OK, 1, 0, 1, [2])


def _end(summary: TrialSummary | None, failed: str = "") -> TrialEnd:
    now = time.time()  # the Deploy is sent 0.5 s after the dispatcher starts the trial
    return TrialEnd(summary, failed, [_record(1)], ("end", 36.5, 0.0), now + 0.5, now)


@pytest.fixture
def dispatch(tmp_path, monkeypatch):
    """Run one trial whose host yields ``items``; returns (status, store, registry, dispatcher)."""
    monkeypatch.setattr(ray, "get", lambda ref, **_: ref)
    store = ResultStore(tmp_path / "results.sqlite")
    store.add_trial("t1", phone="p", paradigm="slmaas", workload="w", model="tiny", repetition=0,
                    shared_cores=False)  # fmt: skip
    registry = CollectorRegistry()
    metrics = FleetMetrics(run_id="r", experiment="e", registry=registry)
    trial = types.SimpleNamespace(
        trial_id="t1", phone="p", deploy_spec=lambda: None, workload_run=lambda *_: None
    )

    def run(items: list, stop: bool = False) -> tuple[str, ResultStore, CollectorRegistry]:
        host = types.SimpleNamespace(run_trial=types.SimpleNamespace(remote=lambda *_: iter(items)))
        d = Dispatcher(store, types.SimpleNamespace(metrics=metrics), {"p": host}, {}, 1.0)
        if stop:
            d.stop.set()
        return d.run_trial(trial), store, registry

    yield run
    store.close()


def _items(end: TrialEnd) -> list:
    return [
        ("thermal", ("start", 35.0, 4.0)),
        ("deployed", DeployResult((), "random weights", 10, 20)),
        ("events", [_record(0)]),
        ("end", end),
    ]


def test_a_trial_end_is_stored_once_with_its_events_battery_and_dispatch_time(dispatch):
    summary = TrialSummary(TrialStatus.COMPLETED, num_requests=2, duration_s=2.0)
    status, store, registry = dispatch(_items(_end(summary)))
    assert status == "completed"
    t = store.query("SELECT status, battery_start_c, battery_end_c, dispatch_s FROM trials")[0]
    assert (t["status"], t["battery_start_c"], t["battery_end_c"]) == ("completed", 35.0, 36.5)
    assert 0.5 <= t["dispatch_s"] < 30.0  # 0.5 s to the Deploy, then from the summary to stored
    ids = [r[0] for r in store.query("SELECT request_id FROM requests ORDER BY request_id")]
    assert ids == ["t1/kb/0", "t1/kb/1"]
    stored = registry.get_sample_value("slmfleet_records_stored_total", {"phone": "p"})
    assert stored == 2  # the streamed batch and the end's, each counted once
    ends = store.query("SELECT status FROM trial_events WHERE status NOT IN ('pending', 'running')")
    assert [r[0] for r in ends] == ["completed"]  # one end, not stored again


def test_a_failed_end_keeps_its_records_and_a_stop_makes_it_interrupted(dispatch):
    status, store, _ = dispatch(_items(_end(None, "RunWorkload: UNAVAILABLE")), stop=True)
    assert status == "interrupted"
    t = store.query("SELECT status, reason, battery_end_c FROM trials")[0]
    assert t["reason"] == "the run was stopped (RunWorkload: UNAVAILABLE)"
    assert t["battery_end_c"] == 36.5
    assert store.query("SELECT COUNT(*) FROM requests")[0][0] == 2


def test_a_failure_after_the_end_is_stored_does_not_store_it_again(dispatch, monkeypatch):
    def broken(*_):
        raise OSError("disk full")

    monkeypatch.setattr(ResultStore, "note_dispatch", broken)
    summary = TrialSummary(TrialStatus.COMPLETED, num_requests=2, duration_s=2.0)
    status, store, _ = dispatch(_items(_end(summary)))
    assert status == "completed"
    assert store.query("SELECT status FROM trials")[0][0] == "completed"
    assert store.query("SELECT COUNT(*) FROM requests")[0][0] == 2


def test_a_trial_is_called_ahead_of_its_paced_start_and_timed_from_it(tmp_path, monkeypatch):
    """Each trial's host call is made as soon as its start slot is given, with the slot's wall
    time (in the host's clock), so the call's trip to the host overlaps the wait; its dispatch
    time counts from the slot to the Deploy (less the phone's own wait: a lost phone, a
    cooldown) and from the summary to stored, the host's times taken back to this clock."""
    monkeypatch.setattr(ray, "get", lambda ref, **_: ref)
    store = ResultStore(tmp_path / "results.sqlite")
    calls: dict[str, tuple[float, float]] = {}  # trial -> (called, start_at)
    trials = {}
    for phone in ("p", "q"):
        store.add_trial(f"t-{phone}", phone=phone, paradigm="slmaas", workload="w", model="tiny",
                        repetition=0, shared_cores=False)  # fmt: skip
        trials[phone] = types.SimpleNamespace(
            trial_id=f"t-{phone}", phone=phone, deploy_spec=lambda: None,
            workload_run=lambda *_: None,
        )  # fmt: skip

    offsets = {"p": 100.0, "q": -50.0}  # each host's clock less the coordinator's

    def remote(phone, _spec, _run, start_at):  # start_at, and the end's times: the host's clock
        calls[phone] = (time.time(), start_at - offsets[phone])
        summary = TrialSummary(TrialStatus.COMPLETED, num_requests=1, duration_s=1.0)
        # the Deploy went 0.3 s after the start, 0.2 s of them waiting for the phone
        got = time.time() + offsets[phone]
        end = TrialEnd(summary, "", [], None, start_at + 0.3, got, phone_wait_s=0.2)
        return iter([("deployed", DeployResult((), "random weights", 10, 20)), ("end", end)])

    stops: list[str] = []
    host = types.SimpleNamespace(
        run_trial=types.SimpleNamespace(remote=remote),
        stop_trial=types.SimpleNamespace(remote=stops.append),
    )
    metrics = FleetMetrics(run_id="r", experiment="e", registry=CollectorRegistry())

    def dispatcher(rate_per_s: float) -> Dispatcher:
        return Dispatcher(store, types.SimpleNamespace(metrics=metrics), {"p": host, "q": host},
                          {}, 1.0, start_rate_per_s=rate_per_s,
                          clock_offsets=offsets)  # fmt: skip

    statuses = dispatcher(2.0).run({"p": [trials["p"]], "q": [trials["q"]]})
    assert statuses == {"t-p": "completed", "t-q": "completed"}
    (first_called, first), (second_called, second) = sorted(calls.values(), key=lambda c: c[1])
    assert second - first == pytest.approx(0.5, abs=0.05)  # slots 1/rate apart
    assert second_called < second - 0.3  # called well before its slot
    for t in store.query("SELECT dispatch_s FROM trials"):
        assert 0.1 <= t[0] < 0.1 + 5.0  # 0.3 - 0.2 to the Deploy, then the summary to stored
    # a stop while a called trial waits for its slot: its host is asked to stop that phone
    # (the trial then never deploys), and the dispatcher leaves the trial pending
    d = dispatcher(0.1)  # the second slot 10 s on
    threading.Timer(0.5, d.stop.set).start()
    t0 = time.monotonic()
    statuses = d.run({"p": [trials["p"]], "q": [trials["q"]]})
    assert time.monotonic() - t0 < 5.0 and len(statuses) == 1 and len(stops) == 2
    store.close()


def test_a_trial_called_ahead_is_cancelled_when_the_coordinator_fails_it(tmp_path, monkeypatch):
    """A coordinator error before the trial is read (here the store refusing its start) fails
    it and cancels its host call, which would otherwise deploy and run on unobserved."""
    store = ResultStore(tmp_path / "results.sqlite")
    store.add_trial("t1", phone="p", paradigm="slmaas", workload="w", model="tiny", repetition=0,
                    shared_cores=False)  # fmt: skip
    call = object()  # the Ray call's stream
    cancelled: list = []
    monkeypatch.setattr(ray, "cancel", lambda ref, **_: cancelled.append(ref))

    def full(*_):
        raise OSError("disk full")

    monkeypatch.setattr(ResultStore, "start_trial", full)
    host = types.SimpleNamespace(run_trial=types.SimpleNamespace(remote=lambda *_: call))
    metrics = FleetMetrics(run_id="r", experiment="e", registry=CollectorRegistry())
    d = Dispatcher(store, types.SimpleNamespace(metrics=metrics), {"p": host}, {}, 1.0)
    trial = types.SimpleNamespace(
        trial_id="t1", phone="p", deploy_spec=lambda: None, workload_run=lambda *_: None
    )
    assert d.run({"p": [trial]}) == {"t1": "failed"}
    assert cancelled == [call]
    assert store.query("SELECT reason FROM trials")[0][0] == "coordinator error: OSError: disk full"
    store.close()
