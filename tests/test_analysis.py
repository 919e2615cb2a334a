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
from fleet.results.stats import Estimate, Observed, Outcomes
from fleet.results.store import ResultStore


def test_jain_index_and_spread():
    assert jain_index([2.0, 2.0, 2.0]) == pytest.approx(1.0)
    assert jain_index([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    assert jain_index([2.0, float("inf"), float("nan")]) == 1.0  # only finite values count
    s = Spread.of([3.0, 1.0, 2.0, float("nan")])
    assert (s.median, s.lo, s.hi, s.n) == (2.0, 1.0, 3.0, 3)
    assert s.fmt(1, 1) == "2.0 [1.0-3.0] n=3"
    assert Spread.of([]).fmt() == "-"


def _row(status, ttft=None, e2e=None, waited=0.0):
    return {"status": status, "ttft_s": ttft, "e2e_s": e2e, "waited_s": waited}


def test_unserved_requests_are_censored_not_dropped():
    rows = [_row("ok", t, t + 1) for t in (1.0, 2.0, 3.0)] + [
        _row("cancelled", waited=10.0),  # still waiting at the end: >= 10 s
        _row("dropped"),  # never sent: never served
    ]
    ttft = Observed.of(rows, "ttft_s")
    assert ttft.n == 5  # every arrival
    assert ttft.quantile(50) == Estimate(3.0, 5, False)  # nearest rank: the 3rd of 5
    p80 = ttft.quantile(80)
    assert (p80.value, p80.lower_bound) == (10.0, True) and p80.fmt(1, 0) == ">=10"
    assert ttft.quantile(99).fmt() == "unserved"
    # served-only would have said p99 = 3 s: survivorship
    assert ttft.within(2.5) == Estimate(2 / 5, 5)  # SLO over all arrivals, unserved = miss
    # a censored request below the rank may truly lie above it: the percentile is a bound
    early = Observed.of([_row("cancelled", waited=0.1), _row("ok", 1.0), _row("ok", 2.0)], "ttft_s")
    assert early.quantile(50) == Estimate(1.0, 3, True)
    assert Estimate(0.5, 12).fmt(1000, 0, min_n=20) == "n<20"
    # a request cut short has a first token (exact TTFT) but only a lower bound on e2e
    cut = [_row("cancelled", 0.5, 2.0, waited=2.0)]
    assert Observed.of(cut, "ttft_s").exact.tolist() == [True]
    assert Observed.of(cut, "e2e_s", whole=True).exact.tolist() == [False]
    assert Outcomes.of(["ok", "ok", "cancelled", "dropped"]).fmt() == (
        "2/4 ok (1 cancelled, 1 dropped)"
    )


def _records(app, ttfts_ms, start=0):
    out = []
    for i, ms in enumerate(ttfts_ms):
        submit = start + i * NS_PER_S
        first = submit + int(ms * 1e6)
        out.append(
            RequestRecord(
                f"{app}/{i}",  # the trace's id: the same in the solo run and the co-run
                app,
                RequestStatus.OK,
                10,
                submit,
                submit,
                sent_ns=submit,
                end_ns=first + 10_000_000,
                token_ns=[first, first + 10_000_000],
            )
        )
    return out


KB = AppWorkload("kb", foreground=True, slo_ttft_s=0.015)
CHAT = AppWorkload("chat", slo_ttft_s=0.5)
BG = AppWorkload("bg")  # no SLO, no solo baseline
STARVED = AppWorkload("starved", slo_ttft_s=1.0)


@pytest.fixture
def store(tmp_path):
    s = ResultStore(tmp_path / "results.sqlite")
    # two repetitions; "kb" is slowed 2x, "chat" 4x in co-run under paradigm "slmaas"; "bg"
    # never ran alone; "starved" was served alone but dropped in every co-run
    for rep in (0, 1):
        for mix, apps in (
            ("solo:kb", {KB: [10, 10, 10, 10]}),
            ("solo:chat", {CHAT: [100, 100]}),
            ("solo:starved", {STARVED: [50, 50]}),
            ("corun", {KB: [20, 20, 20], CHAT: [400, 400], BG: [30], STARVED: []}),
        ):
            tid = f"slmaas.{mix}.r{rep}"
            s.add_trial(
                tid,
                phone="p",
                paradigm="slmaas",
                workload="w",
                model="m",
                repetition=rep,
                shared_cores=False,
                mix=mix,
                apps=tuple(apps),
            )
            s.start_trial(tid)
            events: list = []
            for app, ttfts in apps.items():
                events += _records(app.name, ttfts)
            events += [
                ResourceSample(t * 250_000_000, "service", 1, 100 * 2**20 + t, 90 * 2**20)
                for t in range(4)
            ]
            if mix == "corun":
                events.append(PhoneEvent(1, "swap_in", "chat", "", 1024, 0.002))
                events.append(PhoneEvent(260_000_000, "lmk_kill", "bg", "", 1024, 0.0))
                events.append(ServiceStats(2, mean_batch_size=1.5))
                # kb/3 was still waiting when the workload ended: censored at 5 s
                events.append(
                    RequestRecord("kb/3", "kb", RequestStatus.CANCELLED, 10, 0, end_ns=5 * NS_PER_S)
                )
                events += [
                    RequestRecord(f"starved/{i}", "starved", RequestStatus.DROPPED, 0, 0)
                    for i in range(2)
                ]
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
    s.add_trial(
        "slmaas.broken.r0",
        phone="p",
        paradigm="slmaas",
        workload="w",
        model="m",
        repetition=0,
        shared_cores=False,
        mix="corun",
    )
    s.finish_trial("slmaas.broken.r0", TrialStatus.FAILED, "agent died")
    yield s
    s.close()


def test_slowdowns_compare_the_same_requests_and_name_what_they_leave_out(store):
    (g,) = analyze(store)  # priorities and SLOs come from the trials' stored apps
    apps = {a.app: a for a in g.apps}
    kb, chat = apps["kb"], apps["chat"]
    assert kb.outcomes == Outcomes(ok=6, cancelled=2)  # pooled over both repetitions
    assert kb.ttft_p50 == Estimate(0.020, 8, False)
    assert kb.ttft_p99.lower_bound and kb.ttft_p99.value == pytest.approx(5.0)
    sd = kb.slowdowns["ttft_p50"]
    assert sd.estimate.value == pytest.approx(2.0) and sd.estimate.n == 8
    assert sd.ci[0] <= 2.0 <= sd.ci[1]
    assert sd.by_rep.n == 2 and sd.by_rep.median == pytest.approx(2.0)
    assert kb.slowdowns["ttft_p99"].estimate.lower_bound  # censored co-run: a lower bound
    assert chat.slowdowns["ttft_p50"].estimate.value == pytest.approx(4.0)
    # Jain over apps measured on both sides; the others are named, not averaged in
    assert g.fairness == Estimate(pytest.approx(jain_index([2.0, 4.0])), 2)
    assert g.no_baseline == ["bg"] and g.starved == ["starved"]
    assert math.isinf(apps["starved"].slowdowns["ttft_p50"].estimate.value)
    # SLO over all arrivals: kb's 20 ms misses 15 ms and its unserved request misses too
    assert kb.slo == Estimate(0.0, 8) and chat.slo == Estimate(1.0, 4)
    assert math.isnan(apps["bg"].slo.value)  # no SLO is not 0%
    assert g.slo == Estimate(pytest.approx(4 / 16), 16)  # kb 8 + chat 4 + starved 4 arrivals
    assert g.outcomes.n == 2 * (4 + 2 + 1 + 2)
    assert g.swaps.median == 1 and g.mean_batch_size.median == 1.5
    assert g.peak_pss_bytes.median == 200 * 2**20
    assert g.tokens_per_s.median == pytest.approx((3 * 2 + 2 * 2 + 2) / 5.0)
    assert g.fg_ttft_p50.value == pytest.approx(0.020)
    assert set(g.by_app_count) == {1, 4}
    assert g.by_app_count[1]["peak_pss_bytes"].median == 100 * 2**20
    assert len(g.memory) == 2  # every co-run, with its kills
    rep, line, kills = g.memory[0]
    assert len(line) == 4 and line[0] == (0.0, 90 * 2**20) and kills == [(0.26, "bg")]


def test_report_html_shows_n_completion_censoring_and_provenance(store):
    groups = analyze(store)
    manifest = {
        "run_id": "r1",
        "experiment": {"name": "t", "repetitions": 2, "workloads": []},
        "software": {"torch": "2.13.0"},
        "host": {"cpu_count": 2},
        "git": {},
        "phones": {"p": {"status": "up", "cpus": [1], "shared_cores": False}},
        "method": {"min_samples": 5, "trial_order": "shuffled", "threads": {"slmaas": "x"}},
        "notes": ["a note for the reader"],
    }
    page = render_html(manifest, groups, [{"trial_id": "t9", "status": "failed", "reason": "boom"}])
    for text in (
        "TTFT CDF",
        "E2E CDF",
        "ITL CDF",
        "Fairness",
        "SLO attainment",
        "Throughput and memory vs app count",
        "Memory over time",
        "6/8 ok (2 cancelled)",  # completion beside the figures
        "&gt;=5000",  # a censored p99
        "n&lt;5",  # chat's 4 requests are under the minimum
        "no baseline: bg",
        "p50 unserved co-running: starved",
        "no SLO",
        "boom",
        "a note for the reader",
        "Provenance",
        "random weights",
    ):
        assert text in page, text
    assert page.count("<svg") == 7


def test_summary_uses_the_same_definitions(store):
    from fleet.results.summary import summarize

    rows = {r.app: r for r in summarize(store)}
    assert rows["kb"].outcomes.n == 8 and rows["kb"].slo == Estimate(0.0, 8)
    assert rows["kb"].ttft_p99.lower_bound
