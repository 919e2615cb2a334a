"""``fleet report RUN``: a self-contained HTML report comparing the paradigms of a run.

Plots are drawn with matplotlib and embedded as inline SVG, so the file opens anywhere without
a server or network. Everything is recomputed from the run's store and manifest: the comparison
(every figure with n and the completion rate), per-app latencies and slowdowns with confidence
intervals, latency CDFs solo vs co-run, throughput and memory against the app count, fairness,
memory over time of every co-run with the budget and the kills, failed trials with their
reasons, the run's notes and its provenance (experiment as run, host, cores, versions, times,
thread plan, weights).

    path = write_report(run_dir)      # run_dir / "report.html"
"""

from __future__ import annotations

import html
import io
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

from fleet.results.analysis import GroupResult, analyze
from fleet.results.stats import Spread
from fleet.results.store import ResultStore
from fleet.results.summary import slo_text

PARADIGM_ORDER = {"per_app": 0, "slmaas": 1, "agent_os": 2}
COLORS = {"per_app": "#d62728", "slmaas": "#1f77b4", "agent_os": "#2ca02c"}
DEFAULT_MIN_N = 20


def load(run_dir: Path) -> tuple[dict, list[GroupResult], list[dict]]:
    """(manifest, analysis, trials not completed)."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    store = ResultStore(run_dir / "results.sqlite")
    try:
        bad = [
            dict(t)
            for t in store.query(
                "SELECT trial_id, status, reason FROM trials WHERE status != 'completed' "
                "ORDER BY seq"
            )
        ]
        manifest["weights"] = sorted(
            r[0]
            for r in store.query(
                "SELECT DISTINCT json_extract(summary_json, '$.weights_label') FROM trials "
                "WHERE summary_json IS NOT NULL"
            )
            if r[0]
        )
        manifest["thermal_rows"] = thermal_rows(
            store.query(
                "SELECT phone, battery_start_c, battery_end_c, cooldown_s FROM trials "
                "WHERE battery_start_c IS NOT NULL OR battery_end_c IS NOT NULL ORDER BY seq"
            )
        )
        return manifest, analyze(store), bad
    finally:
        store.close()


def thermal_rows(rows) -> list[dict[str, str]]:
    """Per phone: its battery temperature at trial starts and ends (median [min, max]), the
    largest rise within a trial and the time spent cooling down (real phones only)."""
    by_phone: dict[str, list] = {}
    for r in rows:
        by_phone.setdefault(r[0], []).append(r)
    out = []
    for phone, rs in sorted(by_phone.items()):
        start = [r[1] for r in rs if r[1] is not None]
        end = [r[2] for r in rs if r[2] is not None]
        rises = [r[2] - r[1] for r in rs if r[1] is not None and r[2] is not None]

        def spread(xs: list[float]) -> str:
            if not xs:
                return "-"
            return f"{statistics.median(xs):.1f} [{min(xs):.1f}, {max(xs):.1f}]"

        out.append({
            "phone": phone,
            "trials": str(len(rs)),
            "battery C at start": spread(start),
            "battery C at end": spread(end),
            "largest rise C": f"{max(rises):.1f}" if rises else "-",
            "cooldown s": f"{sum(r[3] or 0.0 for r in rs):.0f}",
        })  # fmt: skip
    return out


def min_n_of(manifest: dict) -> int:
    return int(manifest.get("method", {}).get("min_samples", DEFAULT_MIN_N))


def _order(groups: list[GroupResult]) -> list[GroupResult]:
    return sorted(
        groups, key=lambda g: (g.phone, g.model, g.workload, PARADIGM_ORDER.get(g.paradigm, 9))
    )


def _ci(sd: Any, min_n: int, digits: int = 2) -> str:
    if sd is None:
        return "no baseline"
    text = sd.estimate.fmt(1, digits, min_n)
    lo, hi = sd.ci
    if text in ("-", "unserved") or text.startswith("n<") or math.isnan(lo):
        return text
    return f"{text} [{lo:.{digits}f}-{hi:.{digits}f}]"


def _median_slowdown(g: GroupResult, min_n: int) -> str:
    """Median over the apps whose p50 TTFT slowdown rests on at least min_n requests."""
    xs = sorted(
        sd.estimate.value
        for sd in (a.slowdowns.get("ttft_p50") for a in g.apps)
        if sd is not None and sd.estimate.n >= min_n and not math.isnan(sd.estimate.value)
    )
    if not xs:
        return f"n<{min_n}"
    median = xs[len(xs) // 2]
    return f"{'unserved' if math.isinf(median) else f'{median:.2f}x'} (of {len(xs)} apps)"


def _fairness(g: GroupResult) -> str:
    text = "-" if not g.fairness.n else f"{g.fairness.value:.2f} ({g.fairness.n} apps)"
    if g.fairness_by_rep.n > 1:
        text += f" [{g.fairness_by_rep.lo:.2f}-{g.fairness_by_rep.hi:.2f}]"
    if g.no_baseline:
        text += f"; no baseline: {', '.join(g.no_baseline)}"
    if g.starved:
        text += f"; p50 unserved co-running: {', '.join(g.starved)}"
    if g.uncomparable:
        text += f"; baseline not comparable (censored): {', '.join(g.uncomparable)}"
    return text


def _split(g: GroupResult) -> str:
    s = g.peak_split
    if "weights" not in s:
        return "-"

    def mib(k: str) -> str:
        return f"{s[k].median / 2**20:.0f}"

    return f"{mib('weights')} / {mib('kv')} ({mib('kv_used')}) / {mib('runtime')}"


def comparison_rows(groups: list[GroupResult], min_n: int = DEFAULT_MIN_N) -> list[dict[str, str]]:
    return [
        {
            "phone": g.phone,
            "paradigm": g.paradigm,
            "model": g.model,
            "workload": g.workload,
            "arrivals": str(g.outcomes.n),
            "completed": g.outcomes.fmt(),
            "fg TTFT p50 ms": g.fg_ttft_p50.fmt(1000, 0, min_n),
            "tokens/s": g.tokens_per_s.fmt(1, 1),
            "TTFT p50 slowdown": _median_slowdown(g, min_n),
            "Jain fairness": _fairness(g),
            "SLO met": slo_text(g.slo, min_n) + (f" (n={g.slo.n})" if g.slo.n else ""),
            "peak PSS MiB": g.peak_pss_bytes.fmt(1 / 2**20, 0),
            "at peak: weights / KV (used) / runtime MiB": _split(g),
            "kills": g.kills.fmt(1, 0),
            "cold starts": g.cold_starts.fmt(1, 0),
            "ctx restores": g.swaps.fmt(1, 0),
            "mean batch": g.mean_batch_size.fmt(1, 2),
            "aged": g.promotions.fmt(1, 0),
        }
        for g in _order(groups)
        if g.outcomes.n  # groups with co-run trials (a sweep-only run has none)
    ]


def app_rows(groups: list[GroupResult], min_n: int = DEFAULT_MIN_N) -> list[dict[str, str]]:
    rows = []
    for g in _order(groups):
        for a in g.apps:
            sd = a.slowdowns
            rows.append(
                {
                    "paradigm": g.paradigm,
                    "app": a.app,
                    "fg": "yes" if a.foreground else "",
                    "SLO ms": f"{a.slo_ttft_s * 1000:.0f}" if a.slo_ttft_s else "none",
                    "n": str(a.outcomes.n),
                    "completed": a.outcomes.fmt(),
                    "TTFT p50": a.ttft_p50.fmt(1000, 0, min_n),
                    "TTFT p99": a.ttft_p99.fmt(1000, 0, min_n),
                    "e2e p50": a.e2e_p50.fmt(1000, 0, min_n),
                    "e2e p99": a.e2e_p99.fmt(1000, 0, min_n),
                    "ITL p50": a.itl_p50.fmt(1000, 1, min_n),
                    "solo TTFT p50": a.solo_ttft_p50.fmt(1000, 0, min_n),
                    "slowdown TTFT p50 [95% CI]": _ci(sd.get("ttft_p50"), min_n),
                    "slowdown TTFT p99": _ci(sd.get("ttft_p99"), min_n),
                    "slowdown e2e p50": _ci(sd.get("e2e_p50"), min_n),
                    "slowdown e2e p99": _ci(sd.get("e2e_p99"), min_n),
                    "app delay p50": a.app_delay_p50.fmt(1000, 1, min_n),
                    "queue wait p50": a.queue_wait_p50.fmt(1000, 0, min_n),
                    "SLO met": slo_text(a.slo, min_n),
                }
            )
    return rows


def count_rows(groups: list[GroupResult], min_n: int = DEFAULT_MIN_N) -> list[dict[str, str]]:
    rows = []
    for g in _order(groups):
        for k, f in sorted(g.by_app_count.items()):
            rows.append(
                {
                    "paradigm": g.paradigm,
                    "apps": str(k),
                    "completed": f["outcomes"].fmt(),
                    "TTFT p50 ms (all apps)": f["ttft_p50"].fmt(1000, 0, min_n),
                    "tokens/s": f["tokens_per_s"].fmt(1, 1),
                    "peak PSS MiB": f["peak_pss_bytes"].fmt(1 / 2**20, 0),
                    "LMK kills": f["kills"].fmt(1, 0),
                }
            )
    return rows


# -- plots ----------------------------------------------------------------------------------


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _color(paradigm: str) -> str:
    return COLORS.get(paradigm, "#777")


def _cdf_plot(gs: list[GroupResult], metric: str, plt) -> str | None:
    """Per paradigm, each app's CDF over its arrivals: co-run solid, solo dashed. A curve tops
    out at the share of requests served (unserved ones never reach it)."""
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, len(gs), figsize=(4.2 * len(gs), 3.4), squeeze=False)
    drawn = False
    for ax, g in zip(axes[0], gs):
        for i, a in enumerate(g.apps):
            color = f"C{i}"
            for side, style in (("corun", "-"), ("solo", "--")):
                obs = a.observed.get((metric, side))
                if obs is None or not obs.n:
                    continue
                xs = sorted(v * 1000 for v, ok in zip(obs.values, obs.exact) if ok)
                ys = [(k + 1) / obs.n for k in range(len(xs))]
                ax.step(xs, ys, style, where="post", color=color, label=f"{a.app} {side}")
                drawn = True
        ax.set_title(g.paradigm)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"{metric.upper()} (ms, log)")
        ax.set_ylabel("share of arrivals")
        ax.legend(fontsize=7)
    return _svg(fig) if drawn else (plt.close(fig) or None)


def _count_plot(gs: list[GroupResult], plt) -> str:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    for g in gs:
        ks = sorted(g.by_app_count)
        for ax, key, scale in ((ax1, "tokens_per_s", 1), (ax2, "peak_pss_bytes", 1 / 2**20)):
            spreads: list[Spread] = [g.by_app_count[k][key] for k in ks]
            ax.plot(
                ks,
                [s.median * scale for s in spreads],
                "o-",
                color=_color(g.paradigm),
                label=g.paradigm,
            )
            ax.fill_between(
                ks,
                [s.lo * scale for s in spreads],
                [s.hi * scale for s in spreads],
                color=_color(g.paradigm),
                alpha=0.15,
            )
    for ax in (ax1, ax2):
        ax.set_xlabel("apps on the phone")
        ax.set_xticks(sorted({k for g in gs for k in g.by_app_count}))
        ax.legend()
    ax1.set_ylabel("output tokens/s (all apps)")
    ax2.set_ylabel("peak PSS of SLM processes (MiB)")
    return _svg(fig)


def _fairness_plot(gs: list[GroupResult], apps: list[str], plt) -> str:
    """p50 TTFT slowdown per app with its 95% CI, per paradigm; Jain's index in the legend."""
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(apps)), 3.6))
    width = 0.8 / max(1, len(gs))
    for i, g in enumerate(gs):
        xs, ys, err_lo, err_hi = [], [], [], []
        for j, name in enumerate(apps):
            a = next((a for a in g.apps if a.app == name), None)
            sd = a.slowdowns.get("ttft_p50") if a else None
            if sd is None or not math.isfinite(sd.estimate.value):
                continue
            lo, hi = sd.ci
            xs.append(j + i * width)
            ys.append(sd.estimate.value)
            err_lo.append(max(0.0, sd.estimate.value - lo) if math.isfinite(lo) else 0.0)
            err_hi.append(max(0.0, hi - sd.estimate.value) if math.isfinite(hi) else 0.0)
        jain = f"{g.fairness.value:.2f}" if g.fairness.n else "-"
        ax.bar(xs, ys, width * 0.9, color=_color(g.paradigm), label=f"{g.paradigm} (Jain {jain})")
        ax.errorbar(xs, ys, yerr=[err_lo, err_hi], fmt="none", ecolor="#333", capsize=3)
    ax.axhline(1.0, color="#999", lw=0.8)
    ax.set_xticks([j + width * (len(gs) - 1) / 2 for j in range(len(apps))], apps)
    ax.set_ylabel("p50 TTFT co-run / solo")
    ax.legend(fontsize=8)
    return _svg(fig)


def _slo_plot(gs: list[GroupResult], apps: list[str], plt) -> str:
    """Share of arrivals within the SLO; an app without an SLO is labelled, not drawn as 0."""
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(apps)), 3.4))
    width = 0.8 / max(1, len(gs))
    for i, g in enumerate(gs):
        for j, name in enumerate(apps):
            a = next((a for a in g.apps if a.app == name), None)
            x = j + i * width
            if a is None or not a.slo_ttft_s:
                ax.text(x, 2, "no SLO", rotation=90, ha="center", va="bottom", fontsize=7)
                continue
            v = a.slo.value * 100
            ax.bar(x, v, width * 0.9, color=_color(g.paradigm))
            ax.text(x, v + 1, f"{v:.0f}%", ha="center", va="bottom", fontsize=7)
        ax.plot([], [], "s", color=_color(g.paradigm), label=g.paradigm)
    ax.set_xticks([j + width * (len(gs) - 1) / 2 for j in range(len(apps))], apps)
    ax.set_ylabel("arrivals within TTFT SLO (%)")
    ax.set_ylim(0, 112)
    ax.legend(fontsize=8)
    return _svg(fig)


def _memory_plot(gs: list[GroupResult], plt) -> str | None:
    """Summed PSS over every co-run (one line per repetition), the budget, the LMK kills."""
    shown = [g for g in gs if any(line for _, line, _ in g.memory)]
    if not shown:
        return None
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.4), squeeze=False)
    for ax, g in zip(axes[0], shown):
        for rep, line, kills in g.memory:
            if not line:
                continue
            ax.plot([t for t, _ in line], [b / 2**20 for _, b in line], label=f"rep {rep}")
            for t, app in kills:
                ax.axvline(t, color="#d62728", lw=0.8, ls=":")
                ax.annotate(
                    f"kill {app}",
                    (t, 0),
                    xytext=(2, 4),
                    textcoords="offset points",
                    fontsize=6,
                    rotation=90,
                    color="#d62728",
                )
        if g.budget_bytes:
            ax.axhline(g.budget_bytes / 2**20, color="#333", ls="--", lw=1, label="budget")
        ax.set_title(g.paradigm)
        ax.set_xlabel("seconds into the co-run")
        ax.set_ylabel("summed PSS (MiB)")
        ax.legend(fontsize=7)
    return _svg(fig)


def _plots(groups: list[GroupResult]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gs = sorted(groups, key=lambda g: PARADIGM_ORDER.get(g.paradigm, 9))
    apps = sorted({a.app for g in gs for a in g.apps})
    out = []
    if apps:
        for metric in ("ttft", "e2e", "itl"):
            svg = _cdf_plot(gs, metric, plt)
            if svg:
                out.append((f"{metric.upper()} CDF, co-run (solid) vs solo (dashed)", svg))
        out.append(("Fairness: p50 TTFT slowdown per app, 95% CI", _fairness_plot(gs, apps, plt)))
        out.append(("SLO attainment over all arrivals (co-run)", _slo_plot(gs, apps, plt)))
    out.append(("Throughput and memory vs app count", _count_plot(gs, plt)))
    svg = _memory_plot(gs, plt)
    if svg:
        out.append(("Memory over time, every co-run (budget dashed, kills dotted)", svg))
    return out


# -- page -----------------------------------------------------------------------------------


def _table(rows: list[dict[str, str]], empty: str = "No completed trials.") -> str:
    if not rows:
        return f"<p>{html.escape(empty)}</p>"
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _when(t: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _provenance(manifest: dict) -> str:
    git, host, sw = manifest.get("git", {}), manifest.get("host", {}), manifest.get("software", {})
    method = manifest.get("method", {})
    phones = []
    for name, p in sorted(manifest.get("phones", {}).items()):
        prof = p.get("describe", {}).get("profile", {})
        phones.append(
            {
                "phone": name,
                "status": p.get("status", ""),
                "cores": ",".join(map(str, p.get("cpus", []))) or "not pinned",
                "shares cores": "yes" if p.get("shared_cores") else "no",
                "budget MiB": str(int(prof.get("memory_budget_bytes", 0)) // 2**20 or "-"),
                "threads": str(prof.get("cpu_threads", "-")),
                "storage": f"{prof.get('storage_model', '-')} at "
                f"{prof.get('storage_dir') or 'none'} "
                f"({p.get('describe', {}).get('host_facts', {}).get('storage_filesystem', '?')})",
                "error": p.get("error", ""),
            }
        )
    facts = {
        "run": manifest.get("run_id", ""),
        "started / ended": f"{_when(manifest.get('started_at'))} / "
        f"{_when(manifest.get('ended_at'))}",
        "status": manifest.get("status", ""),
        "experiment file": manifest.get("experiment_source", ""),
        "git": f"{str(git.get('commit', ''))[:12]}{' (dirty)' if git.get('dirty') else ''}",
        "host": f"{host.get('hostname', '')}: {host.get('cpu_model', '')}, "
        f"{host.get('cpu_count', '')} CPUs, {int(host.get('memory_total_bytes', 0)) // 2**30} GiB",
        "software": ", ".join(f"{k} {v}" for k, v in sorted(sw.items())),
        "trial order": f"{method.get('trial_order', '-')}; cooldown {method.get('cooldown_s', 0)} "
        f"s; in-flight drain {method.get('drain_s', '-')} s",
        "threads per SLM process": "; ".join(
            f"{k}: {v}" for k, v in method.get("threads", {}).items()
        ),
        "cores": method.get("cores", ""),
        "requests": method.get("requests", ""),
        "weights": ", ".join(manifest.get("weights", [])) or "see trials",
    }
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in facts.items()
    )
    exp = yaml.safe_dump(manifest.get("experiment", {}), sort_keys=False)
    return (
        f"<table class='facts'>{rows}</table>{_table(phones, 'No phones.')}"
        f"<details><summary>Experiment as run</summary><pre>{html.escape(exp)}</pre></details>"
    )


METHOD_NOTE = """Every figure is over <b>every arrival</b> of the co-run trials of all repetitions,
with n and the completion rate beside it. A request still waiting when the workload ended counts
with the time it had waited (a lower bound, shown as &ge;); a dropped or failed request counts as
never served ("unserved"). Percentiles are nearest-rank; a statistic over fewer than {min_n}
requests is shown as n&lt;{min_n}. Solo baselines replay the same requests (same ids) as the
co-run; slowdown = co-run / solo percentile of those requests, pooled over repetitions, with a
95% bootstrap confidence interval in brackets. Other brackets are [min-max] over repetitions,
with n trials. SLO met = share of all arrivals whose first token came within the SLO. Jain's index
is over the p50 TTFT slowdowns of apps measured on both sides. App delay: arrival to send, inside
the app; queue wait: send to first scheduled on the model. Memory is the summed PSS of the phone's
SLM processes. Models use <b>random weights</b> of the named shape unless a local path was given:
latency and memory depend on shapes and dtype, not on weight values."""


MAX_SECTIONS = 24  # (phone, model, workload) sections with plots; a larger fleet's rest is counted


def _simulated_banner(manifest: dict) -> str:
    """Simulated phones replay a profile: their figures measure the testbed, not a paradigm."""
    labels = [w for w in manifest.get("weights", []) if w.startswith("simulated:")]
    if not labels:
        return ""
    return (
        "<p class='simulated'><b>Simulated phones.</b> Figures of these phones are replays of a "
        "profile measured by the real engine in an earlier run, not new measurements: "
        f"{html.escape('; '.join(labels))}. Use them to size and test the fleet, not to compare "
        "paradigms.</p>"
    )


def render_html(manifest: dict, groups: list[GroupResult], failed: list[dict] | None = None) -> str:
    exp = manifest["experiment"]
    min_n = min_n_of(manifest)
    sections = []
    keys = sorted({(g.phone, g.model, g.workload) for g in groups})
    for phone, model, workload in keys[:MAX_SECTIONS]:
        gs = [g for g in groups if (g.phone, g.model, g.workload) == (phone, model, workload)]
        plots = "".join(
            f"<figure><figcaption>{html.escape(t)}</figcaption>{svg}</figure>"
            for t, svg in _plots(gs)
        )
        sections.append(
            f"<h2>{html.escape(phone)} &middot; {html.escape(model)} &middot; "
            f"{html.escape(workload)}</h2>"
            f"{_table(comparison_rows(gs, min_n), 'No co-run trials (see By app count).')}"
            f"<h3>Per app</h3>{_table(app_rows(gs, min_n))}"
            f"<h3>By app count</h3>{_table(count_rows(gs, min_n))}"
            f"<div class='plots'>{plots}</div>"
        )
    if len(keys) > MAX_SECTIONS:
        sections.append(
            f"<p class='note'>{len(keys) - MAX_SECTIONS:,} more (phone, model, workload) "
            f"groups are not shown (the first {MAX_SECTIONS} are): <code>fleet export</code> "
            "writes every record of every phone.</p>"
        )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in manifest.get("notes", []))
    thermal = manifest.get("thermal_rows", [])
    failed_rows = [
        {"trial": t["trial_id"], "status": t["status"], "reason": t["reason"] or ""}
        for t in failed or []
    ]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>fleet report {html.escape(manifest["run_id"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child, th:first-child {{ text-align: left; }}
table.facts td, table.facts th {{ text-align: left; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 1.5em; }}
figure {{ margin: 0; }} figcaption {{ font-weight: 600; margin-bottom: .3em; }}
.note {{ color: #555; max-width: 60em; }}
.simulated {{ background: #fff3cd; border: 1px solid #e0c060; padding: .6em; max-width: 60em; }}
</style></head><body>
<h1>Paradigm comparison: {html.escape(exp["name"])}</h1>
<p class="note">{html.escape(exp.get("description", ""))} {exp["repetitions"]} repetition(s).</p>
<p class="note">{METHOD_NOTE.format(min_n=min_n)}</p>
{_simulated_banner(manifest)}
{"".join(sections) or "<p>No completed trials.</p>"}
<h2>Trials not completed</h2>{_table(failed_rows, "Every trial completed.")}
<h2>Phone temperatures</h2>{_table(thermal, "No battery readings (virtual phones).")}
<h2>Notes</h2>{f"<ul>{notes}</ul>" if notes else "<p>None.</p>"}
<h2>Provenance</h2>{_provenance(manifest)}
</body></html>
"""


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    manifest, groups, failed = load(run_dir)
    out = out or run_dir / "report.html"
    out.write_text(render_html(manifest, groups, failed), encoding="utf-8")
    return out
