"""Contention analysis and the HTML report, over a real store filled with known records."""

import json
import math

import pytest

from fleet.results.analysis import Spread, analyze, jain_index
from fleet.coordinator.config import parse_experiment
from fleet.coordinator.plan import plan_trials
from fleet.records import (
    NS_PER_S, PhoneEvent, RequestRecord, RequestStatus, ResourceSample, TrialStatus, TrialSummary,
)
from fleet.results.report import render_html
from fleet.results.store import ResultStore


def test_jain_index_and_spread():
    assert jain_index([2.0, 2.0, 2.0]) == pytest.approx(1.0)
    assert jain_index([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    s = Spread.of([3.0, 1.0, 2.0, float("nan")])
    assert (s.median, s.lo, s.hi, s.n) == (2.0, 1.0, 3.0, 3)
    assert s.fmt(1, 1) == "2.0 [1.0-3.0]"
    assert Spread.of([]).fmt() == "-"


def test_plan_expands_solo_corun_and_sweep():
    exp = parse_experiment({
        "name": "c", "repetitions": 2,
        "contention": {"solo_baselines": True, "solo_duration_s": 2, "app_counts": [1, 4]},
        "phones": [{"name": "p", "kind": "virtual"}], "models": [{"preset": "tiny"}],
        "paradigms": [{"kind": "per_app"}, {"kind": "slmaas"}, {"kind": "agent_os"}],
        "workloads": [{"name": "w", "duration_s": 5, "apps": [
            {"name": "a", "arrival": {"kind": "closed_loop"}, "prompt_tokens": 4,
             "output_tokens": 2},
            {"name": "b", "arrival": {"kind": "closed_loop"}, "prompt_tokens": 4,
             "output_tokens": 2}]}]})
    trials = plan_trials(exp)
    assert len(trials) == 2 * 3 * (2 + 1 + 2)
    mixes = [t.mix for t in trials[:5]]
    assert mixes == ["solo:a", "solo:b", "corun", "apps:1", "apps:4"]
    assert trials[0].duration_s == 2 and trials[2].duration_s == 5
    sweep4 = trials[4]
    assert [a.name for a in sweep4.apps] == ["a", "b", "a-2", "b-2"]
    assert trials[5].deploy_spec().service.scheduler.value == "fcfs"
    agent_os = next(t for t in trials if t.paradigm.kind == "agent_os")
    spec = agent_os.deploy_spec()
    assert spec.service.scheduler.value == "priority" and spec.service.persistent_contexts


def _records(trial, app, ttfts_ms, start=0):
    out = []
    for i, ms in enumerate(ttfts_ms):
        submit = start + i * NS_PER_S
        first = submit + int(ms * 1e6)
        out.append(RequestRecord(f"{trial}/{app}/{i}", app, RequestStatus.OK, 10, submit,
                                 submit, token_ns=[first, first + 10_000_000]))
    return out


@pytest.fixture
def store(tmp_path):
    s = ResultStore(tmp_path / "results.sqlite")
    # two repetitions; fast app "kb" is slowed 2x, "chat" 4x in co-run under paradigm "slmaas"
    for rep in (0, 1):
        for mix, kb, chat in (("solo:kb", [10, 10, 10], None), ("solo:chat", None, [100, 100]),
                              ("corun", [20, 20, 20], [400, 400])):
            tid = f"slmaas.{mix}.r{rep}"
            s.add_trial(tid, phone="p", paradigm="slmaas", workload="w", model="m",
                        repetition=rep, shared_cores=False, mix=mix,
                        num_apps=1 if mix.startswith("solo") else 2)
            s.start_trial(tid)
            events = []
            if kb:
                events += _records(tid, "kb", kb)
            if chat:
                events += _records(tid, "chat", chat)
            events += [ResourceSample(t * 250_000_000, "service", 1, 100 * 2**20 + t, 90 * 2**20)
                       for t in range(4)]
            if mix == "corun":
                events.append(PhoneEvent(1, "swap_in", "chat", "", 1024, 0.002))
                events.append(PhoneEvent(2, "service_stats", "", json.dumps(
                    {"mean_batch_size": 1.5})))
                # one unserved keyboard request: a miss for its SLO
                events.append(RequestRecord(f"{tid}/kb/x", "kb", RequestStatus.CANCELLED, 10,
                                            5 * NS_PER_S))
            s.add_events(tid, events)
            s.finish_trial(tid, TrialStatus.COMPLETED, "", TrialSummary(
                TrialStatus.COMPLETED, num_requests=5, output_tokens=10, duration_s=5.0,
                peak_pss_bytes=(200 if mix == "corun" else 100) * 2**20))
    yield s
    s.close()


def test_slowdowns_fairness_and_slo_are_computed_per_repetition(store):
    (g,) = analyze(store, {"kb": {"foreground": True, "slo_ttft_ms": 15},
                           "chat": {"slo_ttft_ms": 500}})
    apps = {a.app: a for a in g.apps}
    assert apps["kb"].slowdown_ttft_p50.median == pytest.approx(2.0)
    assert apps["chat"].slowdown_ttft_p50.median == pytest.approx(4.0)
    assert apps["kb"].slowdown_ttft_p50.n == 2  # one per repetition
    assert g.fairness.median == pytest.approx(jain_index([2.0, 4.0]))
    assert apps["kb"].slo_attainment.median == 0.0  # 20 ms > 15 ms, and one was unserved
    assert apps["chat"].slo_attainment.median == 1.0
    assert g.swaps.median == 1 and g.mean_batch_size.median == 1.5
    assert g.peak_pss_bytes.median == 200 * 2**20
    assert g.tokens_per_s.median == pytest.approx((3 * 2 + 2 * 2) / 5.0)
    assert g.foreground_ttft_p50_s.median == pytest.approx(0.020)
    assert set(g.by_app_count) == {1, 2}
    assert g.by_app_count[1]["peak_pss_bytes"].median == 100 * 2**20
    assert len(g.memory_timeline) == 4 and g.memory_timeline[0] == (0.0, 90 * 2**20)


def test_report_html_has_the_plots_and_the_table(store):
    groups = analyze(store, {"kb": {"foreground": True, "slo_ttft_ms": 15}})
    manifest = {"run_id": "r1", "experiment": {"name": "t", "repetitions": 2, "workloads": []},
                "software": {"torch": "2.13.0"}, "host": {"cpu_count": 2}, "git": {},
                "phones": {}}
    page = render_html(manifest, groups)
    assert page.count("<svg") == 5
    for title in ("Memory vs app count", "TTFT distribution", "Slowdown heat map",
                  "Memory over time", "SLO attainment"):
        assert title in page
    assert "random weights" in page and "slmaas" in page and "2.00 [2.00-2.00]" in page
    assert not math.isnan(groups[0].fairness.median)
