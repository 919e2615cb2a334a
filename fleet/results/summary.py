"""The end-of-run summary, recomputed from the store: one row per (phone, paradigm, model, app)
over the co-run trials (all apps together; solo baselines and sweeps are the report's business).

    rows = summarize(store)          # list[SummaryRow]
    render(rows, failed, console)    # rich table
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fleet.results.stats import percentile
from fleet.results.store import ResultStore


@dataclass(frozen=True)
class SummaryRow:
    phone: str
    paradigm: str
    model: str
    app: str
    num_trials: int
    num_requests: int
    num_ok: int
    ttft_p50_s: float
    ttft_p99_s: float
    itl_p50_s: float
    e2e_p50_s: float
    e2e_p99_s: float
    peak_pss_bytes: int
    slo_met: float  # share of ok requests within the app's TTFT SLO (NaN without an SLO)


def summarize(store: ResultStore) -> list[SummaryRow]:
    groups: dict[tuple[str, str, str, str], dict] = {}
    for r in store.query(
        "SELECT t.phone, t.paradigm, t.model, t.trial_id, q.app, q.status, q.ttft_s, q.itl_s, "
        "q.e2e_s, q.output_tokens, a.slo_ttft_s FROM requests q JOIN trials t USING "
        "(trial_id) LEFT JOIN trial_apps a ON a.trial_id = q.trial_id AND a.app = q.app "
        "WHERE t.mix = 'corun' ORDER BY t.phone, t.paradigm, t.model, q.app"
    ):
        g = groups.setdefault(
            (r["phone"], r["paradigm"], r["model"], r["app"]),
            {
                "trials": set(),
                "n": 0,
                "ttft": [],
                "itl": [],
                "e2e": [],
                "slo": r["slo_ttft_s"] or 0.0,
            },
        )
        g["trials"].add(r["trial_id"])
        g["n"] += 1
        if r["status"] == "ok":
            g["ttft"].append(r["ttft_s"])
            g["e2e"].append(r["e2e_s"])
            if r["output_tokens"] > 1:
                g["itl"].append(r["itl_s"])
    peaks = {
        (r["phone"], r["paradigm"], r["model"], r["component"]): r["peak"]
        for r in store.query(
            "SELECT t.phone, t.paradigm, t.model, s.component, MAX(s.pss_bytes) AS peak "
            "FROM samples s JOIN trials t USING (trial_id) WHERE t.mix = 'corun' "
            "GROUP BY t.phone, t.paradigm, t.model, s.component"
        )
    }
    rows = []
    for key, g in groups.items():
        slo = g["slo"]
        met = (sum(t <= slo for t in g["ttft"]) / len(g["ttft"])) if slo and g["ttft"] else math.nan
        rows.append(
            SummaryRow(
                *key,
                num_trials=len(g["trials"]),
                num_requests=g["n"],
                num_ok=len(g["ttft"]),
                ttft_p50_s=percentile(g["ttft"], 50),
                ttft_p99_s=percentile(g["ttft"], 99),
                itl_p50_s=percentile(g["itl"], 50),
                e2e_p50_s=percentile(g["e2e"], 50),
                e2e_p99_s=percentile(g["e2e"], 99),
                peak_pss_bytes=int(peaks.get(key) or peaks.get((*key[:3], "service")) or 0),
                slo_met=met,
            )
        )
    return rows


def _ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{x * 1000:.1f}"


def render(rows: list[SummaryRow], trials: list, console, weights_label: str = "") -> None:
    from rich.table import Table

    paradigms, models = sorted({r.paradigm for r in rows}), sorted({r.model for r in rows})
    varied = [("paradigm", len(paradigms) > 1), ("model", len(models) > 1)]
    title = "Per-(phone, app) summary"
    if len(paradigms) == 1:
        title += f", {paradigms[0]}"
    if len(models) == 1:
        title += f", {models[0]}"
    if weights_label:
        title += f" ({weights_label})"
    table = Table(title=title)
    cols = (
        ["phone"]
        + [name for name, shown in varied if shown]
        + [
            "app",
            "trials",
            "ok/all",
            "TTFT p50",
            "TTFT p99",
            "ITL p50",
            "e2e p50",
            "e2e p99",
            "peak PSS",
            "SLO met",
        ]
    )
    for col in cols:
        table.add_column(
            col, justify="left" if col in ("phone", "paradigm", "model", "app") else "right"
        )
    for r in rows:
        extra = [v for (name, shown), v in zip(varied, (r.paradigm, r.model)) if shown]
        table.add_row(
            r.phone,
            *extra,
            r.app,
            str(r.num_trials),
            f"{r.num_ok}/{r.num_requests}",
            _ms(r.ttft_p50_s),
            _ms(r.ttft_p99_s),
            _ms(r.itl_p50_s),
            _ms(r.e2e_p50_s),
            _ms(r.e2e_p99_s),
            f"{r.peak_pss_bytes / 2**20:.0f} MiB",
            "-" if math.isnan(r.slo_met) else f"{r.slo_met:.0%}",
        )
    table.caption = (
        "co-run trials; latencies in ms; peak PSS of the app's own SLM process "
        "(per-app) or of the shared service; SLO = TTFT target"
    )
    console.print(table)
    bad = [t for t in trials if t["status"] != "completed"]
    if bad:
        failed = Table(title="Trials not completed")
        for col in ("trial", "status", "reason"):
            failed.add_column(col, overflow="fold")
        for t in bad:
            failed.add_row(t["trial_id"], t["status"], t["reason"] or "")
        console.print(failed)
