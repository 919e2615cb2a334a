"""Contention analysis, recomputed from a run's store: how the paradigms compare.

For each (phone, paradigm, model, workload), over the completed trials of every repetition:

- per app, over every co-run arrival (``fleet.results.stats``: censored, nothing dropped): how
  the arrivals ended, TTFT and e2e percentiles, SLO attainment, and the slowdown of p50/p99 TTFT
  and e2e against its solo baseline. The baseline replays the same requests (same ids), so each
  slowdown compares the same requests: a closed-loop app that reached fewer requests in the
  co-run is compared on those. Slowdowns carry a 95% bootstrap confidence interval (requests
  resampled in pairs) and their spread over repetitions;
- across apps: Jain's fairness index over the p50 TTFT slowdowns of apps measured on both sides
  (apps without a baseline, apps whose median co-run arrival was never served, and apps whose
  baseline is censored are named, not averaged in);
  foreground p50 TTFT; SLO attainment over all arrivals of apps with an SLO; throughput, memory,
  kills, cold starts and context restores per co-run trial, spread over repetitions;
- the app-count sweep, and memory over time of every co-run with its kills.

Each app's priority and SLO are read from the trial it ran in (the store's ``trial_apps``).

    result = analyze(store)          # -> list[GroupResult]
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fleet.results.stats import Estimate, Observed, Outcomes, Spread, jain_index, slowdown
from fleet.results.store import CORUN, ResultStore, solo_mix

__all__ = ["AppResult", "GroupResult", "Spread", "analyze", "jain_index"]

Row = Any  # a sqlite3.Row
SLOWDOWNS = (("ttft", 50), ("ttft", 99), ("e2e", 50), ("e2e", 99))
# metric -> (column, exact only for a request served whole)
METRICS = {"ttft": ("ttft_s", False), "e2e": ("e2e_s", True), "itl": ("itl_s", False)}


@dataclass
class Slowdown:
    estimate: Estimate  # co-run / solo percentile of the same requests, pooled over repetitions
    ci: tuple[float, float]  # 95% bootstrap confidence interval
    by_rep: Spread  # the same ratio per repetition


@dataclass
class AppResult:
    app: str
    foreground: bool
    slo_ttft_s: float
    outcomes: Outcomes  # co-run arrivals, all repetitions
    solo_outcomes: Outcomes
    has_baseline: bool
    ttft_p50: Estimate
    ttft_p99: Estimate
    e2e_p50: Estimate
    e2e_p99: Estimate
    itl_p50: Estimate  # served requests (an inter-token gap needs two tokens)
    solo_ttft_p50: Estimate  # the baseline of the same requests
    ttft_p50_by_rep: Spread
    slowdowns: dict[str, Slowdown]  # "ttft_p50", "ttft_p99", "e2e_p50", "e2e_p99"
    slo: Estimate  # share of all arrivals within the SLO (NaN without an SLO)
    slo_by_rep: Spread
    app_delay_p50: Estimate  # served: arrival -> sent, inside the app
    queue_wait_p50: Estimate  # served: sent -> first scheduled on the model
    observed: dict[tuple[str, str], Observed] = field(default_factory=dict)  # (metric, side)


@dataclass
class GroupResult:
    phone: str
    paradigm: str
    model: str
    workload: str
    apps: list[AppResult]
    outcomes: Outcomes  # every co-run arrival
    fairness: Estimate  # Jain over pooled slowdowns; n = apps counted
    fairness_by_rep: Spread
    fg_ttft_p50: Estimate  # every foreground app's co-run arrivals
    slo: Estimate  # every arrival of the apps with an SLO
    tokens_per_s: Spread
    peak_pss_bytes: Spread
    kills: Spread
    cold_starts: Spread
    swaps: Spread  # swap-ins + recomputes: contexts made usable again
    context_switch_s: Spread
    mean_batch_size: Spread
    promotions: Spread  # background requests aged into the foreground (priority with aging)
    no_baseline: list[str] = field(default_factory=list)  # in the co-run, never measured alone
    starved: list[str] = field(default_factory=list)  # co-running, its p50 arrival unserved
    # measured on both sides, but without a comparable baseline (censored solo, no common ids)
    uncomparable: list[str] = field(default_factory=list)
    # app count -> {"peak_pss_bytes", "tokens_per_s", "kills": Spread; "ttft_p50": Estimate;
    # "outcomes": Outcomes}: solo (1), co-run and sweep trials
    by_app_count: dict[int, dict[str, Any]] = field(default_factory=dict)
    # every co-run: (repetition, [(s, summed PSS)], [(s, killed app)])
    memory: list[tuple[int, list[tuple[float, int]], list[tuple[float, str]]]] = field(
        default_factory=list
    )
    budget_bytes: int = 0
    # at each co-run's peak of summed PSS among the ticks where every process had reported its
    # split: "weights", "kv", "runtime" (PSS less both), spread over repetitions
    peak_split: dict[str, Spread] = field(default_factory=dict)


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
                    "status, reason, summary_json, deploy_json FROM trials"
                )
            },
            requests=by_trial(
                "SELECT trial_id, request_id, app, status, ttft_s, e2e_s, itl_s, output_tokens, "
                "waited_s, app_delay_s, queue_wait_s, submit_ns FROM requests "
                "ORDER BY trial_id, app, request_id"
            ),
            events=by_trial("SELECT trial_id, t_ns, kind, app, detail, duration_s FROM events"),
            stats=by_trial(
                "SELECT trial_id, mean_batch_size, num_promotions FROM service_stats ORDER BY t_ns"
            ),
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


def _served_median(rows: list[Row], column: str) -> Estimate:
    xs = [r[column] for r in rows if r["status"] == "ok" and r[column] is not None]
    return Observed(np.asarray(xs, dtype=float), np.ones(len(xs), dtype=bool)).quantile(50)


def _matched(co: list[Row], solo: list[Row]) -> tuple[list[Row], list[Row]]:
    """The requests both trials had (same ids), in the same order."""
    by_id = {r["request_id"]: r for r in solo}
    pairs = [(r, by_id[r["request_id"]]) for r in co if r["request_id"] in by_id]
    return [a for a, _ in pairs], [b for _, b in pairs]


def _observed(rows: list[Row], metric: str) -> Observed:
    column, whole = METRICS[metric]
    return Observed.of(rows, column, whole)


def _concat(parts: list[Observed]) -> Observed:
    if not parts:
        return Observed(np.zeros(0), np.zeros(0, dtype=bool))
    return Observed(
        np.concatenate([p.values for p in parts]), np.concatenate([p.exact for p in parts])
    )


def _app_result(
    name: str,
    ts: list[dict],
    by_rep_mix: dict,
    reps: list[int],
    data: RunData,
    per_rep_slowdown: dict[int, dict[str, float]],
) -> AppResult:
    foreground, slo_s = data.app_config(ts, name)
    co_rows: list[Row] = []
    solo_rows: list[Row] = []
    pairs: dict[str, list[tuple[Observed, Observed]]] = defaultdict(list)
    by_rep: dict[str, list[float]] = defaultdict(list)
    has_baseline = False
    for rep in reps:
        co, solo = by_rep_mix.get((rep, CORUN)), by_rep_mix.get((rep, solo_mix(name)))
        mine = [r for r in data.requests[co["trial_id"]] if r["app"] == name] if co else []
        co_rows += mine
        if co is not None:
            p50 = _observed(mine, "ttft").quantile(50)
            by_rep["ttft_p50"].append(p50.value if math.isfinite(p50.value) else math.nan)
            if slo_s:
                by_rep["slo"].append(_observed(mine, "ttft").within(slo_s).value)
        if solo is None:
            continue
        has_baseline = True
        theirs = [r for r in data.requests[solo["trial_id"]] if r["app"] == name]
        solo_rows += theirs
        a, b = _matched(mine, theirs)
        for metric, q in SLOWDOWNS:
            pair = (_observed(a, metric), _observed(b, metric))
            pairs[f"{metric}_p{q}"].append(pair)
            est, _ = slowdown(*pair, q)
            by_rep[f"sd_{metric}_p{q}"].append(est.value)
        if co is not None:
            per_rep_slowdown[rep][name] = by_rep["sd_ttft_p50"][-1]
    slowdowns = {}
    for key, parts in pairs.items():
        q = int(key.rsplit("_p", 1)[1])
        est, ci = slowdown(_concat([a for a, _ in parts]), _concat([b for _, b in parts]), q)
        slowdowns[key] = Slowdown(est, ci, Spread.of(by_rep[f"sd_{key}"]))
    co_ttft = _observed(co_rows, "ttft")
    co_e2e = _observed(co_rows, "e2e")
    solo_matched = _concat([b for _, b in pairs.get("ttft_p50", [])])
    return AppResult(
        app=name,
        foreground=foreground,
        slo_ttft_s=slo_s,
        outcomes=Outcomes.of(r["status"] for r in co_rows),
        solo_outcomes=Outcomes.of(r["status"] for r in solo_rows),
        has_baseline=has_baseline,
        ttft_p50=co_ttft.quantile(50),
        ttft_p99=co_ttft.quantile(99),
        e2e_p50=co_e2e.quantile(50),
        e2e_p99=co_e2e.quantile(99),
        itl_p50=_served_median(co_rows, "itl_s"),
        solo_ttft_p50=solo_matched.quantile(50),
        ttft_p50_by_rep=Spread.of(by_rep["ttft_p50"]),
        slowdowns=slowdowns,
        slo=co_ttft.within(slo_s) if slo_s else Estimate(math.nan, co_ttft.n),
        slo_by_rep=Spread.of(by_rep["slo"]),
        app_delay_p50=_served_median(co_rows, "app_delay_s"),
        queue_wait_p50=_served_median(co_rows, "queue_wait_s"),
        observed={
            ("ttft", "corun"): co_ttft,
            ("e2e", "corun"): co_e2e,
            ("ttft", "solo"): _observed(solo_rows, "ttft"),
            ("e2e", "solo"): _observed(solo_rows, "e2e"),
            ("itl", "corun"): _observed([r for r in co_rows if r["itl_s"] is not None], "itl"),
            ("itl", "solo"): _observed([r for r in solo_rows if r["itl_s"] is not None], "itl"),
        },
    )


def _summary(t: dict) -> dict:
    return json.loads(t["summary_json"] or "{}")


def _corun_figures(corun: list[dict], data: RunData) -> dict[str, Spread]:
    """Per co-run trial, then spread over repetitions: throughput, memory, kills, swaps..."""
    cols: dict[str, list[float]] = defaultdict(list)
    for t in corun:
        tid = t["trial_id"]
        rs, evs = data.requests[tid], data.events[tid]
        duration = _summary(t).get("duration_s") or math.nan
        cols["tokens_s"].append(
            sum(r["output_tokens"] for r in rs if r["status"] == "ok") / duration
        )
        cols["peaks"].append(_summary(t).get("peak_pss_bytes", math.nan))
        cols["kills"].append(sum(e["kind"] == "lmk_kill" for e in evs))
        cols["colds"].append(sum(e["kind"] == "cold_start" for e in evs))
        restores = [e for e in evs if e["kind"] in ("swap_in", "recompute")]
        cols["swaps"].append(len(restores))
        cols["switch_s"].extend(e["duration_s"] for e in restores)
        stats = data.stats.get(tid)  # the last statistics of a trial cover all of it
        cols["batch"].append(stats[-1]["mean_batch_size"] if stats else 1.0)
        cols["promotions"].append(stats[-1]["num_promotions"] if stats else 0)
    return {k: Spread.of(v) for k, v in cols.items()}


def _by_app_count(ts: list[dict], data: RunData) -> dict[int, dict[str, Any]]:
    out = {}
    for k in sorted({t["num_apps"] for t in ts}):
        ks = [t for t in ts if t["num_apps"] == k]
        rows = [r for t in ks for r in data.requests[t["trial_id"]]]
        out[k] = {
            "peak_pss_bytes": Spread.of(_summary(t).get("peak_pss_bytes", math.nan) for t in ks),
            "tokens_per_s": Spread.of(
                sum(r["output_tokens"] for r in data.requests[t["trial_id"]] if r["status"] == "ok")
                / (_summary(t).get("duration_s") or math.nan)
                for t in ks
            ),
            "ttft_p50": _observed(rows, "ttft").quantile(50),
            "outcomes": Outcomes.of(r["status"] for r in rows),
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
    app_names = sorted({a for t in corun for a in data.apps.get(t["trial_id"], {})})
    per_rep: dict[int, dict[str, float]] = defaultdict(dict)
    apps = [_app_result(name, ts, by_rep_mix, reps, data, per_rep) for name in app_names]
    counted: list[AppResult] = []
    starved: list[AppResult] = []
    uncomparable: list[AppResult] = []
    for a in apps:
        sd = a.slowdowns.get("ttft_p50")
        if sd is None:
            continue  # no baseline: named as such
        if math.isnan(sd.estimate.value):
            uncomparable.append(a)
        else:
            (starved if math.isinf(sd.estimate.value) else counted).append(a)
    all_rows = [r for t in corun for r in data.requests[t["trial_id"]]]
    fg = {a.app for a in apps if a.foreground}
    slo_apps = [a for a in apps if a.slo_ttft_s]
    arrivals = sum(a.slo.n for a in slo_apps)
    met = sum(a.slo.value * a.slo.n for a in slo_apps if a.slo.n)
    f = defaultdict(lambda: Spread.of([]), _corun_figures(corun, data))
    budget = max(
        (json.loads(t["deploy_json"] or "{}").get("memory_budget_bytes", 0) for t in ts), default=0
    )
    return GroupResult(
        *key,
        apps=apps,
        outcomes=Outcomes.of(r["status"] for r in all_rows),
        fairness=Estimate(
            jain_index([a.slowdowns["ttft_p50"].estimate.value for a in counted]), len(counted)
        ),
        fairness_by_rep=Spread.of(  # per repetition, over the same apps as the pooled index
            jain_index([sds[a.app] for a in counted if a.app in sds])
            if sum(a.app in sds for a in counted) > 1
            else math.nan
            for sds in per_rep.values()
        ),
        fg_ttft_p50=_observed([r for r in all_rows if r["app"] in fg], "ttft").quantile(50),
        slo=Estimate(met / arrivals if arrivals else math.nan, arrivals),
        tokens_per_s=f["tokens_s"],
        peak_pss_bytes=f["peaks"],
        kills=f["kills"],
        cold_starts=f["colds"],
        swaps=f["swaps"],
        context_switch_s=f["switch_s"],
        mean_batch_size=f["batch"],
        promotions=f["promotions"],
        no_baseline=[a.app for a in apps if not a.has_baseline],
        starved=[a.app for a in starved],
        uncomparable=[a.app for a in uncomparable],
        by_app_count=_by_app_count(ts, data),
        memory=[_memory(store, t, data) for t in corun],
        peak_split=_peak_split(store, corun),
        budget_bytes=int(budget or 0),
    )


def _peak_split(store: ResultStore, corun: list[dict]) -> dict[str, Spread]:
    cols: dict[str, list[float]] = defaultdict(list)
    for t in corun:
        rows = store.query(
            "SELECT SUM(pss_bytes) AS pss, SUM(weights_bytes) AS w, SUM(kv_bytes) AS kv, "
            "SUM(kv_used_bytes) AS used "
            "FROM samples WHERE trial_id=? GROUP BY t_ns "
            "HAVING MIN(weights_bytes) > 0 ORDER BY pss DESC LIMIT 1",  # ticks every process split
            (t["trial_id"],),
        )
        if rows:
            pss, w, kv = rows[0]["pss"], rows[0]["w"] or 0, rows[0]["kv"] or 0
            cols["weights"].append(w)
            cols["kv"].append(kv)
            cols["kv_used"].append(rows[0]["used"] or 0)
            cols["runtime"].append(pss - w - kv)
    return {k: Spread.of(v) for k, v in cols.items()}


def _memory(
    store: ResultStore, t: dict, data: RunData
) -> tuple[int, list[tuple[float, int]], list[tuple[float, str]]]:
    rows = store.query(
        "SELECT t_ns, SUM(pss_bytes) AS pss FROM samples WHERE trial_id=? "
        "GROUP BY t_ns ORDER BY t_ns",
        (t["trial_id"],),
    )
    if not rows:
        return t["repetition"], [], []
    t0 = rows[0]["t_ns"]
    kills = [
        ((e["t_ns"] - t0) / 1e9, e["app"])
        for e in data.events[t["trial_id"]]
        if e["kind"] == "lmk_kill"
    ]
    return t["repetition"], [((r["t_ns"] - t0) / 1e9, r["pss"]) for r in rows], kills
