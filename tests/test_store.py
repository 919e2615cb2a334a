"""fleet.results.store: what goes in comes out, derived columns are the records' own, a failed
batch loses nothing that was committed before it."""

from __future__ import annotations

import json
import sqlite3

import pytest

from fleet.records import (
    AgentDescription,
    AppWorkload,
    DeployResult,
    Paradigm,
    PhoneEvent,
    PhoneProfile,
    RejectedEvent,
    RequestRecord,
    RequestStatus,
    ResourceSample,
    ServiceFacts,
    ServiceStats,
    Slice,
    TrialStatus,
    TrialSummary,
)
from fleet.results.store import CORUN, SCHEMA_VERSION, ResultStore, solo_mix


@pytest.fixture
def store(tmp_path):
    s = ResultStore(tmp_path / "results.sqlite")
    yield s
    s.close()


def _trial(store, tid="t1", apps=(AppWorkload("kb", foreground=True, slo_ttft_s=0.1),)):
    store.add_trial(
        tid,
        phone="p",
        paradigm="agent_os",
        workload="w",
        model="tiny",
        repetition=0,
        shared_cores=False,
        mix=CORUN,
        apps=apps,
    )
    store.start_trial(tid)


def test_records_are_stored_with_their_derived_values(store):
    _trial(store)
    served = RequestRecord(
        "t1/kb/0",
        "kb",
        RequestStatus.OK,
        10,
        1_000,
        3_000,
        [5_000, 6_000, 9_000],
        service=ServiceFacts(
            slices=(Slice(3_000, 4_000), Slice(4_500, 9_000)),
            cached_prompt_tokens=4,
            max_batch_size=2,
        ),
    )
    unserved = RequestRecord("t1/kb/1", "kb", RequestStatus.CANCELLED, 10, 2_000)
    one_token = RequestRecord("t1/kb/2", "kb", RequestStatus.OK, 10, 0, 10, [20])
    assert store.add_events("t1", [served, unserved, one_token]) == (3, 0)
    rows = {r["request_id"]: r for r in store.query("SELECT * FROM requests")}
    r = rows["t1/kb/0"]
    assert r["ttft_s"] == pytest.approx(served.ttft_s) and r["e2e_s"] == pytest.approx(8e-6)
    assert r["itl_s"] == pytest.approx(served.itl_s) and r["queue_wait_s"] == pytest.approx(2e-6)
    assert r["waiting_s"] == pytest.approx(served.waiting_s)  # before and between its slices
    assert json.loads(r["slices_json"])[1] == {
        "start_ns": 4_500,
        "end_ns": 9_000,
        "prefill_tokens": 0,
        "output_tokens": 0,
    }
    assert r["cached_prompt_tokens"] == 4 and r["max_batch_size"] == 2
    u = rows["t1/kb/1"]  # never scheduled: NULL, not a zero that would pull percentiles down
    assert (u["queue_wait_s"], u["ttft_s"], u["itl_s"], u["e2e_s"]) == (None,) * 4
    assert rows["t1/kb/2"]["itl_s"] is None  # one token has no gap


def test_every_kind_of_event_lands_in_its_table(store):
    _trial(store)
    store.add_events(
        "t1",
        [
            PhoneEvent(1, "swap_in", "kb", "", 64, 0.01),
            ResourceSample(2, "service", 9, 100, 90, 50.0),
            ServiceStats(3, num_steps=7, mean_batch_size=1.5, swap_ins=1),
        ],
    )
    assert store.query("SELECT kind, bytes FROM events")[0][:] == ("swap_in", 64)
    assert store.query("SELECT pss_bytes FROM samples")[0][0] == 90
    stats = store.query("SELECT num_steps, mean_batch_size, swap_ins FROM service_stats")[0]
    assert tuple(stats) == (7, 1.5, 1)


def test_trials_keep_their_apps_deploy_and_summary(store):
    _trial(
        store,
        apps=(
            AppWorkload("kb", foreground=True, slo_ttft_s=0.1),
            AppWorkload("chat", multi_turn=True),
        ),
    )
    store.set_deploy("t1", DeployResult((), "random weights", 10, 20))
    store.finish_trial(
        "t1", TrialStatus.COMPLETED, "", TrialSummary(TrialStatus.COMPLETED, duration_s=2.0)
    )
    apps = {r["app"]: r for r in store.query("SELECT * FROM trial_apps")}
    assert apps["kb"]["foreground"] == 1 and apps["kb"]["slo_ttft_s"] == 0.1
    assert apps["chat"]["multi_turn"] == 1 and apps["chat"]["pattern"] == "closed_loop"
    t = store.query("SELECT status, num_apps, deploy_json, summary_json FROM trials")[0]
    assert t["status"] == "completed" and t["num_apps"] == 2
    assert json.loads(t["deploy_json"])["weights_label"] == "random weights"
    assert json.loads(t["summary_json"])["duration_s"] == 2.0


def test_a_trial_ends_with_its_last_events_and_battery_in_one_write(store):
    _trial(store)
    store.add_events("t1", [RequestRecord("t1/kb/0", "kb", RequestStatus.OK, 1, 0, 1, [2])])
    last = [
        RequestRecord("t1/kb/1", "kb", RequestStatus.OK, 1, 0, 1, [2]),
        RequestRecord("t1/kb/0", "kb", RequestStatus.FAILED, 1, 0),  # a duplicate: set aside
    ]
    summary = TrialSummary(TrialStatus.COMPLETED, num_requests=2, duration_s=2.0)
    got = store.finish_trial(
        "t1", TrialStatus.COMPLETED, "", summary, events=last, thermal=("end", 36.5, 0.0)
    )
    assert got == 1  # the refused row does not cost the trial its end
    t = store.query("SELECT status, battery_end_c, summary_json FROM trials")[0]
    assert t["status"] == "completed" and t["battery_end_c"] == 36.5
    assert json.loads(t["summary_json"])["num_requests"] == 2
    ids = [r[0] for r in store.query("SELECT request_id FROM requests ORDER BY request_id")]
    assert ids == ["t1/kb/0", "t1/kb/1"]
    assert [r[0] for r in store.query("SELECT ident FROM rejected")] == ["t1/kb/0"]


def test_phones_keep_their_description(store):
    desc = AgentDescription(
        PhoneProfile("p", memory_budget_bytes=1 << 30),
        (Paradigm.SLMAAS,),
        agent_pid=42,
        metrics_port=9100,
    )
    store.upsert_phone("p", kind="virtual", status="up", describe=desc)
    stored = json.loads(store.query("SELECT describe_json FROM phones")[0][0])
    assert stored["agent_pid"] == 42 and stored["paradigms"] == ["slmaas"]
    assert stored["profile"]["memory_budget_bytes"] == 1 << 30


def test_a_bad_record_is_set_aside_alone_with_its_reason_and_the_batch_lands(store, tmp_path):
    _trial(store)
    store.add_events("t1", [RequestRecord("t1/kb/0", "kb", RequestStatus.OK, 1, 0, 1, [2])])
    poison = RequestRecord(
        "t1/kb/1",
        "kb",
        RequestStatus.OK,
        1,
        0,
        1,
        [2],
        service=ServiceFacts(context_switch_bytes=2**64 - 1),  # a legal uint64 on the wire
    )
    good = RequestRecord("t1/kb/2", "kb", RequestStatus.OK, 1, 0, 1, [2])
    again = RequestRecord("t1/kb/0", "kb", RequestStatus.FAILED, 1, 0)  # a duplicate id
    assert store.add_events("t1", [good, poison, again]) == (1, 0)
    store.add_events("t1", [RequestRecord("t1/kb/3", "kb", RequestStatus.OK, 1, 0, 1, [2])])
    store.add_events("t1", [RejectedEvent("sample", "service@5", "cpu_percent is nan")])
    store.close()
    with sqlite3.connect(tmp_path / "results.sqlite") as db:
        ids = [r[0] for r in db.execute("SELECT request_id FROM requests ORDER BY request_id")]
        statuses = dict(db.execute("SELECT request_id, status FROM requests"))
        rejected = db.execute("SELECT kind, ident, reason FROM rejected ORDER BY t").fetchall()
    assert ids == ["t1/kb/0", "t1/kb/2", "t1/kb/3"]
    assert statuses["t1/kb/0"] == "ok"  # appended, never replaced
    assert [(k, i) for k, i, _ in rejected] == [
        ("record", "t1/kb/1"),
        ("record", "t1/kb/0"),
        ("sample", "service@5"),
    ]
    assert "does not fit 64 bits" in rejected[0][2] and "UNIQUE" in rejected[1][2]


def test_a_trial_run_again_supersedes_its_earlier_attempt(store):
    _trial(store)  # attempt 0
    store.add_events("t1", [RequestRecord("t1/kb/0", "kb", RequestStatus.CANCELLED, 1, 0)])
    store.mark_trials(["t1"], TrialStatus.INTERRUPTED, "stopped by SIGTERM")
    assert store.start_trial("t1") == 1  # resumed: a new attempt
    store.add_events("t1", [RequestRecord("t1/kb/0", "kb", RequestStatus.OK, 1, 0, 1, [2])])
    store.finish_trial("t1", TrialStatus.COMPLETED)
    assert [tuple(r) for r in store.query("SELECT request_id, status FROM requests")] == [
        ("t1/kb/0", "ok")
    ]
    kept = store.query("SELECT attempt, status FROM requests_all ORDER BY attempt")
    assert [tuple(r) for r in kept] == [(0, "cancelled"), (1, "ok")]  # nothing lost
    history = store.query("SELECT attempt, status FROM trial_events WHERE trial_id='t1'")
    assert [tuple(r) for r in history] == [
        (0, "pending"),
        (0, "running"),
        (0, "interrupted"),
        (1, "running"),
        (1, "completed"),
    ]


def test_run_state_tells_live_finished_stopped_and_interrupted_runs_apart(tmp_path):
    from fleet.results.run_state import RunBusy, RunLock, run_state

    s = ResultStore(tmp_path / "results.sqlite")
    _trial(s)  # running
    with RunLock(tmp_path):
        assert run_state(tmp_path).status == "live"
        with pytest.raises(RunBusy, match="is running it"):
            RunLock(tmp_path).acquire()
    assert run_state(tmp_path).status == "interrupted"  # lock gone, trial still running
    s.mark_trials(["t1"], TrialStatus.NOT_RUN, "never started")
    assert run_state(tmp_path).status == "stopped"
    s.start_trial("t1")
    s.finish_trial("t1", TrialStatus.COMPLETED)
    assert run_state(tmp_path).status == "finished"
    s.close()


def test_mix_names():
    assert solo_mix("kb") == "solo:kb" and CORUN == "corun"


def test_a_store_from_another_schema_version_is_refused_with_a_reason(tmp_path):
    import sqlite3

    from fleet.results.store import ResultStore, StoreError

    old = tmp_path / "old.sqlite"
    with sqlite3.connect(old) as db:  # what an earlier version left: tables, user_version 0
        db.execute("CREATE TABLE trials (trial_id TEXT PRIMARY KEY)")
    with pytest.raises(StoreError, match=f"results schema 0, this version reads {SCHEMA_VERSION}"):
        ResultStore(old)
    fresh = ResultStore(tmp_path / "new.sqlite")
    fresh.close()
    ResultStore(tmp_path / "new.sqlite").close()  # reopening our own is fine
