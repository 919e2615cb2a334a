"""Contention analysis, recomputed from a run's store: how the paradigms compare.

For each (phone, paradigm, model, workload): per app, the slowdown of p50 and p99 TTFT and e2e
when co-running against running solo (same repetition); across apps, Jain's fairness index over
the TTFT slowdowns, SLO attainment, LMK kills, cold starts, context swaps, aggregate output
tokens/s and peak memory; the app-count sweep; memory over time. Every figure is a ``Spread``
over repetitions (median, min, max, n): one run is not a result.

    result = analyze(store)          # -> list[GroupResult]
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from fleet.coordinator.plan import CORUN
from fleet.results.store import ResultStore
from fleet.results.summary import percentile

@dataclass(frozen=True)
class Spread:
    median: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values) -> "Spread":
        xs = [v for v in values if v is not None and not math.isnan(v)]
        if not xs:
            return cls(math.nan, math.nan, math.nan, 0)
        return cls(statistics.median(xs), min(xs), max(xs), len(xs))

    def fmt(self, scale: float = 1.0, digits: int = 2) -> str:
        if not self.n:
            return "-"
        m, lo, hi = self.median * scale, self.lo * scale, self.hi * scale
        if self.n == 1:
            return f"{m:.{digits}f} (n=1)"
        return f"{m:.{digits}f} [{lo:.{digits}f}-{hi:.{digits}f}]"


def jain_index(values: list[float]) -> float:
    """Jain's fairness index: 1 when all equal, 1/n when one value takes everything."""
    xs = [v for v in values if v is not None and not math.isnan(v)]
    if not xs:
        return math.nan
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))


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


def analyze(store: ResultStore, app_configs: dict[str, dict] | None = None) -> list[GroupResult]:
    """app_configs: {app name: {"foreground": bool, "slo_ttft_ms": float}} from the manifest."""
    app_configs = app_configs or {}
    trials = {t["trial_id"]: dict(t) for t in store.query(
        "SELECT trial_id, phone, paradigm, model, workload, repetition, mix, num_apps, status, "
        "summary_json FROM trials")}
    reqs: dict[str, list] = defaultdict(list)
    for r in store.query("SELECT trial_id, app, status, ttft_s, e2e_s, output_tokens, "
                         "waiting_s FROM requests"):
        reqs[r["trial_id"]].append(r)
    events: dict[str, list] = defaultdict(list)
    for e in store.query("SELECT trial_id, kind, app, detail, duration_s FROM events"):
        events[e["trial_id"]].append(e)

    groups: dict[tuple, list[dict]] = defaultdict(list)
    for t in trials.values():
        if t["status"] == "completed":
            groups[(t["phone"], t["paradigm"], t["model"], t["workload"])].append(t)
    return [_group(key, ts, reqs, events, store, app_configs)
            for key, ts in sorted(groups.items())]


def _latency(rs, app=None):
    ok = [r for r in rs if r["status"] == "ok" and (app is None or r["app"] == app)]
    ttft = [r["ttft_s"] for r in ok]
    e2e = [r["e2e_s"] for r in ok]
    return {"ttft_p50": _p(ttft, 50), "ttft_p99": _p(ttft, 99), "e2e_p50": _p(e2e, 50),
            "e2e_p99": _p(e2e, 99), "ttft": ttft}


def _slo(rs, app, slo_s):
    mine = [r for r in rs if r["app"] == app]
    if not slo_s or not mine:
        return math.nan
    met = sum(1 for r in mine if r["status"] == "ok" and r["ttft_s"] <= slo_s)
    return met / len(mine)  # unserved and failed requests miss their SLO


def _group(key, ts, reqs, events, store, app_configs) -> GroupResult:
    by_rep_mix = {(t["repetition"], t["mix"]): t for t in ts}
    reps = sorted({t["repetition"] for t in ts})
    corun = [by_rep_mix[(r, CORUN)] for r in reps if (r, CORUN) in by_rep_mix]
    app_names = sorted({r["app"] for t in corun for r in reqs[t["trial_id"]]})
    apps = []
    fairness, slo_all = [], []
    per_app_slowdowns: dict[str, list[float]] = defaultdict(list)
    for name in app_names:
        cfg = app_configs.get(name, {})
        slo_s = cfg.get("slo_ttft_ms", 0.0) / 1000.0
        rows = defaultdict(list)
        samples = []
        for rep in reps:
            co, solo = by_rep_mix.get((rep, CORUN)), by_rep_mix.get((rep, f"solo:{name}"))
            if co is None:
                continue
            c = _latency(reqs[co["trial_id"]], name)
            samples += c["ttft"]
            rows["corun_p50"].append(c["ttft_p50"])
            rows["corun_p99"].append(c["ttft_p99"])
            rows["slo"].append(_slo(reqs[co["trial_id"]], name, slo_s))
            rows["waiting"].append(_p([r["waiting_s"] for r in reqs[co["trial_id"]]
                                       if r["app"] == name and r["status"] == "ok"
                                       and r["waiting_s"] is not None], 50))
            if solo is not None:
                s = _latency(reqs[solo["trial_id"]], name)
                rows["solo_p50"].append(s["ttft_p50"])
                for m in ("ttft_p50", "ttft_p99", "e2e_p50", "e2e_p99"):
                    rows[f"sd_{m}"].append(_ratio(c[m], s[m]))
                per_app_slowdowns[rep].append(_ratio(c["ttft_p50"], s["ttft_p50"]))
        apps.append(AppResult(
            name, bool(cfg.get("foreground")), slo_s, Spread.of(rows["solo_p50"]),
            Spread.of(rows["corun_p50"]), Spread.of(rows["corun_p99"]),
            Spread.of(rows["sd_ttft_p50"]), Spread.of(rows["sd_ttft_p99"]),
            Spread.of(rows["sd_e2e_p50"]), Spread.of(rows["sd_e2e_p99"]), Spread.of(rows["slo"]),
            Spread.of(rows["waiting"]), samples))
    for rep, sds in per_app_slowdowns.items():
        fairness.append(jain_index(sds))
    # An app served solo but never in the co-run has no slowdown to put in the index; it is
    # listed instead, so a fairness figure that left it out cannot pass for the whole story.
    starved = [a.app for a in apps if a.solo_ttft_p50_s.n and not a.corun_ttft_p50_s.n]
    tokens_s, peaks, kills, colds, swaps, switch_s, batch, fg = [], [], [], [], [], [], [], []
    foreground = {a.app for a in apps if a.foreground}
    for t in corun:
        summary = json.loads(t["summary_json"] or "{}")
        rs = reqs[t["trial_id"]]
        duration = summary.get("duration_s") or math.nan
        tokens_s.append(sum(r["output_tokens"] for r in rs if r["status"] == "ok") / duration)
        peaks.append(summary.get("peak_pss_bytes", math.nan))
        evs = events[t["trial_id"]]
        kills.append(sum(e["kind"] == "lmk_kill" for e in evs))
        colds.append(sum(e["kind"] == "cold_start" for e in evs))
        restores = [e for e in evs if e["kind"] in ("swap_in", "recompute")]
        swaps.append(len(restores))
        switch_s.extend(e["duration_s"] for e in restores)
        stats = [json.loads(e["detail"]) for e in evs if e["kind"] == "service_stats"]
        # the last stats of a trial cover all of it (earlier ones are live snapshots)
        batch.append(stats[-1].get("mean_batch_size", math.nan) if stats else 1.0)
        fg.append(_p([r["ttft_s"] for r in rs if r["app"] in foreground and r["status"] == "ok"],
                     50))
        mine = [x for x in (_slo(rs, a.app, a.slo_ttft_s) for a in apps if a.slo_ttft_s)
                if not math.isnan(x)]
        slo_all.append(statistics.mean(mine) if mine else math.nan)
    by_count = {}
    for k in sorted({t["num_apps"] for t in ts}):
        ks = [t for t in ts if t["num_apps"] == k]
        by_count[k] = {
            "peak_pss_bytes": Spread.of(json.loads(t["summary_json"] or "{}")
                                        .get("peak_pss_bytes", math.nan) for t in ks),
            "ttft_p50_s": Spread.of(_latency(reqs[t["trial_id"]])["ttft_p50"] for t in ks),
            "kills": Spread.of(sum(e["kind"] == "lmk_kill" for e in events[t["trial_id"]])
                               for t in ks),
        }
    timeline = _memory_timeline(store, corun[0]["trial_id"]) if corun else []
    return GroupResult(*key, apps=apps, fairness=Spread.of(fairness),
                       slo_attainment=Spread.of(slo_all), tokens_per_s=Spread.of(tokens_s),
                       peak_pss_bytes=Spread.of(peaks), kills=Spread.of(kills),
                       cold_starts=Spread.of(colds), swaps=Spread.of(swaps),
                       context_switch_s=Spread.of(switch_s), mean_batch_size=Spread.of(batch),
                       foreground_ttft_p50_s=Spread.of(fg), starved_apps=starved,
                       by_app_count=by_count, memory_timeline=timeline)


def _memory_timeline(store: ResultStore, trial_id: str) -> list[tuple[float, int]]:
    rows = store.query("SELECT t_ns, SUM(pss_bytes) AS pss FROM samples WHERE trial_id=? "
                       "GROUP BY t_ns ORDER BY t_ns", (trial_id,))
    if not rows:
        return []
    t0 = rows[0]["t_ns"]
    return [((r["t_ns"] - t0) / 1e9, r["pss"]) for r in rows]
