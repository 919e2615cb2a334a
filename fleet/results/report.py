"""``fleet report RUN``: a self-contained HTML report comparing the paradigms of a run.

Plots are drawn with matplotlib and embedded as inline SVG, so the file opens anywhere without
a server or network. Everything is recomputed from the run's store and manifest.

    path = write_report(run_dir)      # run_dir / "report.html"
"""

from __future__ import annotations

import html
import io
import json
import math
from pathlib import Path

from fleet.results.analysis import GroupResult, analyze
from fleet.results.store import ResultStore

PARADIGM_ORDER = {"per_app": 0, "slmaas": 1, "agent_os": 2}
COLORS = {"per_app": "#d62728", "slmaas": "#1f77b4", "agent_os": "#2ca02c"}


def load(run_dir: Path) -> tuple[dict, list[GroupResult]]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    store = ResultStore(run_dir / "results.sqlite")
    try:
        return manifest, analyze(store)
    finally:
        store.close()


def comparison_rows(groups: list[GroupResult]) -> list[dict[str, str]]:
    rows = []
    for g in sorted(
        groups, key=lambda g: (g.phone, g.model, g.workload, PARADIGM_ORDER.get(g.paradigm, 9))
    ):
        rows.append(
            {
                "phone": g.phone,
                "paradigm": g.paradigm,
                "model": g.model,
                "workload": g.workload,
                "peak PSS MiB": g.peak_pss_bytes.fmt(1 / 2**20, 0),
                "tokens/s": g.tokens_per_s.fmt(1, 1),
                "fg TTFT p50 ms": g.foreground_ttft_p50_s.fmt(1000, 0),
                "TTFT p50 slowdown": _median_slowdown(g),
                "Jain fairness": g.fairness.fmt(1, 2)
                + (f" ({len(g.starved_apps)} app starved, not counted)" if g.starved_apps else ""),
                "SLO met %": g.slo_attainment.fmt(100, 0),
                "kills": g.kills.fmt(1, 0),
                "cold starts": g.cold_starts.fmt(1, 0),
                "ctx restores": g.swaps.fmt(1, 0),
                "mean batch": g.mean_batch_size.fmt(1, 2),
            }
        )
    return rows


def _median_slowdown(g: GroupResult) -> str:
    xs = sorted(
        a.slowdown_ttft_p50.median
        for a in g.apps
        if a.slowdown_ttft_p50.n and not math.isnan(a.slowdown_ttft_p50.median)
    )
    return f"{xs[len(xs) // 2]:.2f}x" if xs else "-"


# -- plots ----------------------------------------------------------------------------------


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _plots(groups: list[GroupResult]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gs = sorted(groups, key=lambda g: PARADIGM_ORDER.get(g.paradigm, 9))
    out = []

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for g in gs:
        ks = sorted(g.by_app_count)
        ys = [g.by_app_count[k]["peak_pss_bytes"].median / 2**20 for k in ks]
        lo = [g.by_app_count[k]["peak_pss_bytes"].lo / 2**20 for k in ks]
        hi = [g.by_app_count[k]["peak_pss_bytes"].hi / 2**20 for k in ks]
        ax.plot(ks, ys, "o-", color=COLORS.get(g.paradigm), label=g.paradigm)
        ax.fill_between(ks, lo, hi, color=COLORS.get(g.paradigm), alpha=0.15)
    ax.set_xticks(sorted({k for g in gs for k in g.by_app_count}))
    ax.set_xlabel("apps on the phone")
    ax.set_ylabel("peak PSS of SLM processes (MiB)")
    ax.legend()
    out.append(("Memory vs app count", _svg(fig)))

    apps = sorted({a.app for g in gs for a in g.apps})
    if apps:  # per-app plots need co-run trials
        out += _per_app_plots(gs, apps, plt)
    if not any(g.memory_timeline for g in gs):
        return out
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for g in gs:
        if g.memory_timeline:
            ax.plot(
                [t for t, _ in g.memory_timeline],
                [b / 2**20 for _, b in g.memory_timeline],
                color=COLORS.get(g.paradigm),
                label=g.paradigm,
            )
    ax.set_xlabel("seconds into the co-run")
    ax.set_ylabel("summed PSS (MiB)")
    ax.legend()
    out.append(("Memory over time (first co-run)", _svg(fig)))
    return out


def _per_app_plots(gs: list[GroupResult], apps: list[str], plt) -> list[tuple[str, str]]:
    out = []
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(apps)), 3.6))
    width = 0.8 / max(1, len(gs))
    for i, g in enumerate(gs):
        data = [
            [t * 1000 for t in next((a.ttft_samples_s for a in g.apps if a.app == name), [])]
            or [math.nan]
            for name in apps
        ]
        pos = [j + i * width for j in range(len(apps))]
        bp = ax.boxplot(
            data,
            positions=pos,
            widths=width * 0.9,
            patch_artist=True,
            showfliers=True,
            manage_ticks=False,
        )
        for patch in bp["boxes"]:
            patch.set_facecolor(COLORS.get(g.paradigm, "#999"))
            patch.set_alpha(0.6)
        ax.plot([], [], "s", color=COLORS.get(g.paradigm), label=g.paradigm)
    ax.set_xticks([j + width * (len(gs) - 1) / 2 for j in range(len(apps))], apps)
    ax.set_yscale("log")
    ax.set_ylabel("TTFT, co-run (ms, log)")
    ax.legend()
    out.append(("TTFT distribution per app and paradigm", _svg(fig)))

    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(apps)), 0.6 * len(gs) + 1.2))
    grid = [
        [
            next((a.slowdown_ttft_p50.median for a in g.apps if a.app == name), math.nan)
            for name in apps
        ]
        for g in gs
    ]
    im = ax.imshow(grid, cmap="Reds", aspect="auto")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, "-" if math.isnan(v) else f"{v:.1f}x", ha="center", va="center")
    ax.set_xticks(range(len(apps)), apps)
    ax.set_yticks(range(len(gs)), [g.paradigm for g in gs])
    fig.colorbar(im, ax=ax, label="p50 TTFT co-run / solo")
    out.append(("Slowdown heat map (p50 TTFT, co-run over solo)", _svg(fig)))

    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(apps)), 3.4))
    for i, g in enumerate(gs):
        vals = [
            next((a.slo_attainment.median for a in g.apps if a.app == name), math.nan) * 100
            for name in apps
        ]
        ax.bar(
            [j + i * width for j in range(len(apps))],
            vals,
            width * 0.9,
            color=COLORS.get(g.paradigm),
            label=g.paradigm,
        )
    ax.set_xticks([j + width * (len(gs) - 1) / 2 for j in range(len(apps))], apps)
    ax.set_ylabel("requests within TTFT SLO (%)")
    ax.set_ylim(0, 105)
    ax.legend()
    out.append(("SLO attainment (co-run)", _svg(fig)))
    return out


# -- page -----------------------------------------------------------------------------------


def _table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "<p>No completed trials.</p>"
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _count_table(groups: list[GroupResult]) -> str:
    rows = []
    for g in sorted(groups, key=lambda g: PARADIGM_ORDER.get(g.paradigm, 9)):
        for k, f in sorted(g.by_app_count.items()):
            rows.append(
                {
                    "paradigm": g.paradigm,
                    "apps": str(k),
                    "peak PSS MiB": f["peak_pss_bytes"].fmt(1 / 2**20, 0),
                    "TTFT p50 ms (all apps)": f["ttft_p50_s"].fmt(1000, 0),
                    "LMK kills": f["kills"].fmt(1, 0),
                }
            )
    return _table(rows)


def _app_table(groups: list[GroupResult]) -> str:
    rows = []
    for g in sorted(groups, key=lambda g: PARADIGM_ORDER.get(g.paradigm, 9)):
        for a in g.apps:
            rows.append(
                {
                    "paradigm": g.paradigm,
                    "app": a.app,
                    "fg": "yes" if a.foreground else "",
                    "solo TTFT p50 ms": a.solo_ttft_p50_s.fmt(1000, 0),
                    "co-run TTFT p50 ms": a.corun_ttft_p50_s.fmt(1000, 0),
                    "co-run TTFT p99 ms": a.corun_ttft_p99_s.fmt(1000, 0),
                    "slowdown TTFT p50": a.slowdown_ttft_p50.fmt(1, 2),
                    "slowdown TTFT p99": a.slowdown_ttft_p99.fmt(1, 2),
                    "slowdown e2e p50": a.slowdown_e2e_p50.fmt(1, 2),
                    "slowdown e2e p99": a.slowdown_e2e_p99.fmt(1, 2),
                    "waiting p50 ms": a.waiting_p50_s.fmt(1000, 0),
                    "SLO met %": a.slo_attainment.fmt(100, 0),
                }
            )
    return _table(rows)


def render_html(manifest: dict, groups: list[GroupResult]) -> str:
    exp = manifest["experiment"]
    sections = []
    keys = sorted({(g.phone, g.model, g.workload) for g in groups})
    for phone, model, workload in keys:
        gs = [g for g in groups if (g.phone, g.model, g.workload) == (phone, model, workload)]
        plots = "".join(
            f"<figure><figcaption>{html.escape(t)}</figcaption>{svg}</figure>"
            for t, svg in _plots(gs)
        )
        sections.append(
            f"<h2>{html.escape(phone)} &middot; {html.escape(model)} &middot; "
            f"{html.escape(workload)}</h2>{_table(comparison_rows(gs))}"
            f"<h3>Per app</h3>{_app_table(gs)}<h3>By app count</h3>{_count_table(gs)}"
            f"<div class='plots'>{plots}</div>"
        )
    labels = sorted(
        {
            p.get("describe", {}).get("profile", {}).get("name", n)
            for n, p in manifest.get("phones", {}).items()
        }
    )
    git = manifest.get("git", {})
    commit, host = str(git.get("commit", ""))[:12], manifest["host"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>fleet report {html.escape(manifest["run_id"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child, th:first-child {{ text-align: left; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 1.5em; }}
figure {{ margin: 0; }} figcaption {{ font-weight: 600; margin-bottom: .3em; }}
.note {{ color: #555; max-width: 60em; }}
</style></head><body>
<h1>Paradigm comparison: {html.escape(exp["name"])}</h1>
<p class="note">Run <code>{html.escape(manifest["run_id"])}</code>, {exp["repetitions"]}
repetition(s); phones: {html.escape(", ".join(labels))}; git {html.escape(commit)}
{"(dirty)" if git.get("dirty") else ""}; torch {html.escape(manifest["software"].get("torch", ""))};
host {html.escape(str(host.get("cpu_model", "")))}, {host.get("cpu_count")} CPUs.
Models use <b>random weights</b> of the named shape unless a local path was given: latency and
memory depend on shapes and dtype, not on weight values.</p>
<p class="note">Figures are medians over repetitions with [min-max]. Slowdown = co-run / solo of
the same repetition. Jain's index is over the apps' p50 TTFT slowdowns (1 = equally slowed).
SLO met counts unserved and failed requests as misses. Memory is the summed PSS of the phone's
SLM processes (model processes and services; app processes without a model are not counted).</p>
{"".join(sections)}
</body></html>
"""


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    manifest, groups = load(run_dir)
    out = out or run_dir / "report.html"
    out.write_text(render_html(manifest, groups), encoding="utf-8")
    return out
