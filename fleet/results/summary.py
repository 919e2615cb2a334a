"""The end-of-run summary, recomputed from the store: one row per (phone, paradigm, model, app)
over the co-run trials (all apps together), with the analysis's definitions (``stats.py``):
every arrival counts, unserved ones as censored; n and the completion rate beside every figure;
a statistic over fewer than ``min_n`` requests is shown as "n<min_n".

    rows = summarize(store)                   # list[SummaryRow]
    render(rows, trials, console, min_n=20)   # rich table
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.results.analysis import analyze
from fleet.results.stats import Estimate, Outcomes
from fleet.results.store import ResultStore


@dataclass(frozen=True)
class SummaryRow:
    phone: str
    paradigm: str
    model: str
    app: str
    num_trials: int
    outcomes: Outcomes
    ttft_p50: Estimate
    ttft_p99: Estimate
    itl_p50: Estimate
    e2e_p50: Estimate
    e2e_p99: Estimate
    peak_pss_bytes: int
    slo: Estimate  # share of all arrivals within the app's TTFT SLO (NaN without an SLO)


def summarize(store: ResultStore) -> list[SummaryRow]:
    peaks = {
        (r["phone"], r["paradigm"], r["model"], r["component"]): r["peak"]
        for r in store.query(
            "SELECT t.phone, t.paradigm, t.model, s.component, MAX(s.pss_bytes) AS peak "
            "FROM samples s JOIN trials t USING (trial_id) WHERE t.mix = 'corun' "
            "GROUP BY t.phone, t.paradigm, t.model, s.component"
        )
    }
    rows = []
    for g in analyze(store):
        key = (g.phone, g.paradigm, g.model)
        for a in g.apps:
            rows.append(
                SummaryRow(
                    *key,
                    a.app,
                    num_trials=g.tokens_per_s.n,
                    outcomes=a.outcomes,
                    ttft_p50=a.ttft_p50,
                    ttft_p99=a.ttft_p99,
                    itl_p50=a.itl_p50,
                    e2e_p50=a.e2e_p50,
                    e2e_p99=a.e2e_p99,
                    peak_pss_bytes=int(
                        peaks.get((*key, a.app)) or peaks.get((*key, "service")) or 0
                    ),
                    slo=a.slo,
                )
            )
    return rows


def slo_text(slo: Estimate, min_n: int) -> str:
    """SLO attainment as a cell: "no SLO" is not "0%"."""
    if slo.value != slo.value:  # NaN: the app has no SLO
        return "no SLO"
    text = slo.fmt(100, 0, min_n)
    return text + "%" if text[0].isdigit() else text


MAX_TABLE_ROWS = 60  # a terminal table of a large fleet shows this many rows and says how many more


def more_rows(total: int) -> str:
    """The line under a table cut at MAX_TABLE_ROWS ("" when nothing was cut)."""
    if total <= MAX_TABLE_ROWS:
        return ""
    return f"... {total - MAX_TABLE_ROWS:,} more rows not shown: fleet export RUN_DIR has every one"


def render(
    rows: list[SummaryRow], trials: list, console, weights_label: str = "", min_n: int = 20
) -> None:
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
            "n",
            "completed",
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
    for r in rows[:MAX_TABLE_ROWS]:
        extra = [v for (name, shown), v in zip(varied, (r.paradigm, r.model)) if shown]
        table.add_row(
            r.phone,
            *extra,
            r.app,
            str(r.num_trials),
            str(r.outcomes.n),
            r.outcomes.fmt(),
            r.ttft_p50.fmt(1000, 0, min_n),
            r.ttft_p99.fmt(1000, 0, min_n),
            r.itl_p50.fmt(1000, 1, min_n),
            r.e2e_p50.fmt(1000, 0, min_n),
            r.e2e_p99.fmt(1000, 0, min_n),
            f"{r.peak_pss_bytes / 2**20:.0f} MiB",
            slo_text(r.slo, min_n),
        )
    table.caption = (
        "co-run trials, all repetitions; latencies in ms over every arrival (>= : censored at "
        "the time it waited; unserved: never served), ITL over served requests; SLO met = "
        f"share of all arrivals within the TTFT target; n<{min_n}: too few requests to quote"
    )
    console.print(table)
    if more_rows(len(rows)):
        console.print(more_rows(len(rows)))
    bad = [t for t in trials if t["status"] != "completed"]
    if bad:
        failed = Table(title="Trials not completed")
        for col in ("trial", "status", "reason"):
            failed.add_column(col, overflow="fold")
        for t in bad[:MAX_TABLE_ROWS]:
            failed.add_row(t["trial_id"], t["status"], t["reason"] or "")
        console.print(failed)
        if more_rows(len(bad)):
            console.print(more_rows(len(bad)))
