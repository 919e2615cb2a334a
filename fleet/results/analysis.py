"""Contention analysis, recomputed from a run's store: how the paradigms compare.

For each (phone, paradigm, model, workload): per app, the slowdown of p50 and p99 TTFT and e2e
when co-running against running solo (same repetition); across apps, Jain's fairness index over
the TTFT slowdowns, SLO attainment, LMK kills, cold starts, context swaps, aggregate output
tokens/s and peak memory; the app-count sweep; memory over time. Every figure is a ``Spread``
over repetitions (median, min, max, n): one run is not a result. Each app's priority and SLO are
read from the trial it ran in (the store's ``trial_apps``).

    result = analyze(store)          # -> list[GroupResult]
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from fleet.results.stats import Spread, jain_index, percentile
from fleet.results.store import CORUN, ResultStore, solo_mix

__all__ = ["AppResult", "GroupResult", "Spread", "analyze", "jain_index"]


@dataclass
class AppResult:
    app: str
    foreground: bool
    slo_ttft_s: float
    solo_ttft_p50_s: Spread
    corun_ttft_p50_s: Spread
    corun_ttft_p99_s: Spread
    slowdown_ttft_p50: Spread
    slowdown_ttft_p99: Spread
    slowdown_e2e_p50: Spread
    slowdown_e2e_p99: Spread
    slo_attainment: Spread
    waiting_p50_s: Spread  # time not running on the model (before and between slices)
    ttft_samples_s: list[float]  # every ok co-run request, for distributions


@dataclass
class GroupResult:
    phone: str
    paradigm: str
    model: str
    workload: str
    apps: list[AppResult]
    fairness: Spread
    slo_attainment: Spread  # mean over apps (with an SLO) of each app's attainment
    tokens_per_s: Spread
    peak_pss_bytes: Spread
    kills: Spread
    cold_starts: Spread
    swaps: Spread  # swap-ins + recomputes: contexts made usable again
    context_switch_s: Spread
    mean_batch_size: Spread
    foreground_ttft_p50_s: Spread  # p50 over all foreground apps' requests, per co-run
    starved_apps: list[str] = field(default_factory=list)  # served alone, never in the co-run
    # app count -> {"peak_pss_bytes", "ttft_p50_s", "kills"}: solo (1), co-run and sweep trials
    by_app_count: dict[int, dict[str, Spread]] = field(default_factory=dict)
    memory_timeline: list[tuple[float, int]] = field(default_factory=list)  # (s, summed PSS)


def _p(values, q):
    return percentile(values, q) if values else math.nan


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


Row = Any  # a sqlite3.Row


@dataclass
class RunData:
    """A run's rows, indexed by trial: read from the store once per analysis."""

    trials: dict[str, dict]
    requests: dict[str, list[Row]]
    events: dict[str, list[Row]]
    stats: dict[str, list[Row]]  # service statistics in time order
    apps: dict[str, dict[str, Row]]  # trial -> app -> its trial_apps row

    @classmethod
    def load(cls, store: ResultStore) -> RunData:
        def by_trial(sql: str) -> dict[str, list[Row]]:
            out: dict[str, list[Row]] = defaultdict(list)
            for r in store.query(sql):
                out[r["trial_id"]].append(r)
            return out

        apps: dict[str, dict[str, Row]] = defaultdict(dict)
        for a in store.query("SELECT trial_id, app, foreground, slo_ttft_s FROM trial_apps"):
            apps[a["trial_id"]][a["app"]] = a
        return cls(
            trials={
                t["trial_id"]: dict(t)
                for t in store.query(
                    "SELECT trial_id, phone, paradigm, model, workload, repetition, mix, num_apps, "
                    "status, summary_json FROM trials"
                )
            },
            requests=by_trial(
                "SELECT trial_id, app, status, ttft_s, e2e_s, output_tokens, "
                "waiting_s FROM requests"
            ),
            events=by_trial("SELECT trial_id, kind, app, detail, duration_s FROM events"),
            stats=by_trial("SELECT trial_id, mean_batch_size FROM service_stats ORDER BY t_ns"),
            apps=apps,
        )

    def app_config(self, trials: list[dict], app: str) -> tuple[bool, float]:
        """(foreground, SLO in s) of an app, from the first of these trials that ran it."""
        for t in trials:
            row = self.apps.get(t["trial_id"], {}).get(app)
            if row is not None:
                return bool(row["foreground"]), float(row["slo_ttft_s"] or 0.0)
        return False, 0.0


def analyze(store: ResultStore) -> list[GroupResult]:
    data = RunData.load(store)
    groups: dict[tuple[str, str, str, str], list[dict]] = defaultdict(list)
    for t in data.trials.values():
        if t["status"] == "completed":
            groups[(t["phone"], t["paradigm"], t["model"], t["workload"])].append(t)
    return [_group(key, ts, data, store) for key, ts in sorted(groups.items())]


def _latency(rs, app=None):
    ok = [r for r in rs if r["status"] == "ok" and (app is None or r["app"] == app)]
    ttft = [r["ttft_s"] for r in ok]
    e2e = [r["e2e_s"] for r in ok]
    return {
        "ttft_p50": _p(ttft, 50),
        "ttft_p99": _p(ttft, 99),
        "e2e_p50": _p(e2e, 50),
        "e2e_p99": _p(e2e, 99),
        "ttft": ttft,
    }


def _slo(rs, app, slo_s):
    mine = [r for r in rs if r["app"] == app]
    if not slo_s or not mine:
        return math.nan
    met = sum(1 for r in mine if r["status"] == "ok" and r["ttft_s"] <= slo_s)
    return met / len(mine)  # unserved and failed requests miss their SLO


def _app_result(
    name: str,
    ts: list[dict],
    by_rep_mix: dict,
    reps: list[int],
    data: RunData,
    slowdowns_by_rep: dict[int, list[float]],
) -> AppResult:
    """One app's figures over the repetitions; appends its TTFT slowdown per repetition."""
    foreground, slo_s = data.app_config(ts, name)
    rows: dict[str, list[float]] = defaultdict(list)
    samples: list[float] = []
    for rep in reps:
        co, solo = by_rep_mix.get((rep, CORUN)), by_rep_mix.get((rep, solo_mix(name)))
        if co is None:
            continue
        co_reqs = data.requests[co["trial_id"]]
        c = _latency(co_reqs, name)
        samples += c["ttft"]
        rows["corun_p50"].append(c["ttft_p50"])
        rows["corun_p99"].append(c["ttft_p99"])
        rows["slo"].append(_slo(co_reqs, name, slo_s))
        rows["waiting"].append(
            _p(
                [
                    r["waiting_s"]
                    for r in co_reqs
                    if r["app"] == name and r["status"] == "ok" and r["waiting_s"] is not None
                ],
                50,
            )
        )
        if solo is not None:
            s = _latency(data.requests[solo["trial_id"]], name)
            rows["solo_p50"].append(s["ttft_p50"])
            for m in ("ttft_p50", "ttft_p99", "e2e_p50", "e2e_p99"):
                rows[f"sd_{m}"].append(_ratio(c[m], s[m]))
            slowdowns_by_rep[rep].append(_ratio(c["ttft_p50"], s["ttft_p50"]))
    return AppResult(
        name,
        foreground,
        slo_s,
        Spread.of(rows["solo_p50"]),
        Spread.of(rows["corun_p50"]),
        Spread.of(rows["corun_p99"]),
        Spread.of(rows["sd_ttft_p50"]),
        Spread.of(rows["sd_ttft_p99"]),
        Spread.of(rows["sd_e2e_p50"]),
        Spread.of(rows["sd_e2e_p99"]),
        Spread.of(rows["slo"]),
        Spread.of(rows["waiting"]),
        samples,
    )


def _corun_figures(corun: list[dict], apps: list[AppResult], data: RunData) -> dict[str, Spread]:
    """Per co-run trial, then spread over repetitions: throughput, memory, kills, swaps..."""
    cols: dict[str, list[float]] = defaultdict(list)
    foreground = {a.app for a in apps if a.foreground}
    for t in corun:
        tid = t["trial_id"]
        summary = json.loads(t["summary_json"] or "{}")
        rs, evs = data.requests[tid], data.events[tid]
        duration = summary.get("duration_s") or math.nan
        cols["tokens_s"].append(
            sum(r["output_tokens"] for r in rs if r["status"] == "ok") / duration
        )
        cols["peaks"].append(summary.get("peak_pss_bytes", math.nan))
        cols["kills"].append(sum(e["kind"] == "lmk_kill" for e in evs))
        cols["colds"].append(sum(e["kind"] == "cold_start" for e in evs))
        restores = [e for e in evs if e["kind"] in ("swap_in", "recompute")]
        cols["swaps"].append(len(restores))
        cols["switch_s"].extend(e["duration_s"] for e in restores)
        stats = data.stats.get(tid)  # the last statistics of a trial cover all of it
        cols["batch"].append(stats[-1]["mean_batch_size"] if stats else 1.0)
        cols["fg"].append(
            _p([r["ttft_s"] for r in rs if r["app"] in foreground and r["status"] == "ok"], 50)
        )
        mine = [
            x
            for x in (_slo(rs, a.app, a.slo_ttft_s) for a in apps if a.slo_ttft_s)
            if not math.isnan(x)
        ]
        cols["slo"].append(statistics.mean(mine) if mine else math.nan)
    return {k: Spread.of(v) for k, v in cols.items()}


def _by_app_count(ts: list[dict], data: RunData) -> dict[int, dict[str, Spread]]:
    out = {}
    for k in sorted({t["num_apps"] for t in ts}):
        ks = [t for t in ts if t["num_apps"] == k]
        out[k] = {
            "peak_pss_bytes": Spread.of(
                json.loads(t["summary_json"] or "{}").get("peak_pss_bytes", math.nan) for t in ks
            ),
            "ttft_p50_s": Spread.of(_latency(data.requests[t["trial_id"]])["ttft_p50"] for t in ks),
            "kills": Spread.of(
                sum(e["kind"] == "lmk_kill" for e in data.events[t["trial_id"]]) for t in ks
            ),
        }
    return out


def _group(
    key: tuple[str, str, str, str], ts: list[dict], data: RunData, store: ResultStore
) -> GroupResult:
    by_rep_mix = {(t["repetition"], t["mix"]): t for t in ts}
    reps = sorted({t["repetition"] for t in ts})
    corun = [by_rep_mix[(r, CORUN)] for r in reps if (r, CORUN) in by_rep_mix]
    app_names = sorted({r["app"] for t in corun for r in data.requests[t["trial_id"]]})
    slowdowns_by_rep: dict[int, list[float]] = defaultdict(list)
    apps = [_app_result(name, ts, by_rep_mix, reps, data, slowdowns_by_rep) for name in app_names]
    fairness = [jain_index(sds) for sds in slowdowns_by_rep.values()]
    # An app served solo but never in the co-run has no slowdown to put in the index; it is
    # listed instead, so a fairness figure that left it out cannot pass for the whole story.
    starved = [a.app for a in apps if a.solo_ttft_p50_s.n and not a.corun_ttft_p50_s.n]
    f = defaultdict(lambda: Spread.of([]), _corun_figures(corun, apps, data))
    timeline = _memory_timeline(store, corun[0]["trial_id"]) if corun else []
    return GroupResult(
        *key,
        apps=apps,
        fairness=Spread.of(fairness),
        slo_attainment=f["slo"],
        tokens_per_s=f["tokens_s"],
        peak_pss_bytes=f["peaks"],
        kills=f["kills"],
        cold_starts=f["colds"],
        swaps=f["swaps"],
        context_switch_s=f["switch_s"],
        mean_batch_size=f["batch"],
        foreground_ttft_p50_s=f["fg"],
        starved_apps=starved,
        by_app_count=_by_app_count(ts, data),
        memory_timeline=timeline,
    )


def _memory_timeline(store: ResultStore, trial_id: str) -> list[tuple[float, int]]:
    rows = store.query(
        "SELECT t_ns, SUM(pss_bytes) AS pss FROM samples WHERE trial_id=? "
        "GROUP BY t_ns ORDER BY t_ns",
        (trial_id,),
    )
    if not rows:
        return []
    t0 = rows[0]["t_ns"]
    return [((r["t_ns"] - t0) / 1e9, r["pss"]) for r in rows]
