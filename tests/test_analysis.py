"""Contention analysis and the HTML report, over a real store filled with known records."""

import math

import pytest

from fleet.records import (
    NS_PER_S,
    AppWorkload,
    PhoneEvent,
    RequestRecord,
    RequestStatus,
    ResourceSample,
    ServiceStats,
    TrialStatus,
    TrialSummary,
)
from fleet.results.analysis import Spread, analyze, jain_index
from fleet.results.report import render_html
from fleet.results.store import ResultStore


def test_jain_index_and_spread():
    assert jain_index([2.0, 2.0, 2.0]) == pytest.approx(1.0)
    assert jain_index([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    s = Spread.of([3.0, 1.0, 2.0, float("nan")])
    assert (s.median, s.lo, s.hi, s.n) == (2.0, 1.0, 3.0, 3)
    assert s.fmt(1, 1) == "2.0 [1.0-3.0]"
    assert Spread.of([]).fmt() == "-"


def _records(trial, app, ttfts_ms, start=0):
    out = []
    for i, ms in enumerate(ttfts_ms):
        submit = start + i * NS_PER_S
        first = submit + int(ms * 1e6)
        out.append(
            RequestRecord(
                f"{trial}/{app}/{i}",
                app,
                RequestStatus.OK,
                10,
                submit,
                submit,
                token_ns=[first, first + 10_000_000],
            )
        )
    return out


KB = AppWorkload("kb", foreground=True, slo_ttft_s=0.015)
CHAT = AppWorkload("chat", slo_ttft_s=0.5)


@pytest.fixture
def store(tmp_path):
    s = ResultStore(tmp_path / "results.sqlite")
    # two repetitions; fast app "kb" is slowed 2x, "chat" 4x in co-run under paradigm "slmaas"
    for rep in (0, 1):
        for mix, kb, chat in (
            ("solo:kb", [10, 10, 10], None),
            ("solo:chat", None, [100, 100]),
            ("corun", [20, 20, 20], [400, 400]),
        ):
            tid = f"slmaas.{mix}.r{rep}"
            apps = tuple(a for a, used in ((KB, kb), (CHAT, chat)) if used)
            s.add_trial(
                tid,
                phone="p",
                paradigm="slmaas",
                workload="w",
                model="m",
                repetition=rep,
                shared_cores=False,
                mix=mix,
                apps=apps,
            )
            s.start_trial(tid)
            events = []
            if kb:
                events += _records(tid, "kb", kb)
            if chat:
                events += _records(tid, "chat", chat)
            events += [
                ResourceSample(t * 250_000_000, "service", 1, 100 * 2**20 + t, 90 * 2**20)
                for t in range(4)
            ]
            if mix == "corun":
                events.append(PhoneEvent(1, "swap_in", "chat", "", 1024, 0.002))
                events.append(ServiceStats(2, mean_batch_size=1.5))
                # one unserved keyboard request: a miss for its SLO
                events.append(
                    RequestRecord(f"{tid}/kb/x", "kb", RequestStatus.CANCELLED, 10, 5 * NS_PER_S)
                )
            s.add_events(tid, events)
            s.finish_trial(
                tid,
                TrialStatus.COMPLETED,
                "",
                TrialSummary(
                    TrialStatus.COMPLETED,
                    num_requests=5,
                    output_tokens=10,
                    duration_s=5.0,
                    peak_pss_bytes=(200 if mix == "corun" else 100) * 2**20,
                ),
            )
    yield s
    s.close()


def test_slowdowns_fairness_and_slo_are_computed_per_repetition(store):
    (g,) = analyze(store)  # priorities and SLOs come from the trials' stored apps
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
    groups = analyze(store)
    manifest = {
        "run_id": "r1",
        "experiment": {"name": "t", "repetitions": 2, "workloads": []},
        "software": {"torch": "2.13.0"},
        "host": {"cpu_count": 2},
        "git": {},
        "phones": {},
    }
    page = render_html(manifest, groups)
    assert page.count("<svg") == 5
    for title in (
        "Memory vs app count",
        "TTFT distribution",
        "Slowdown heat map",
        "Memory over time",
        "SLO attainment",
    ):
        assert title in page
    assert "random weights" in page and "slmaas" in page and "2.00 [2.00-2.00]" in page
    assert not math.isnan(groups[0].fairness.median)
