"""Grafana dashboards, built from one source: this module.

Every panel's PromQL is written with ``m(name)``, which only accepts names in
``fleet.metric_names``; a test also checks every metric name in every expression against the
names the code registers. ``fleet dashboards build`` writes dashboards/*.json (committed, and
provisioned by deploy/grafana); ``fleet dashboards push`` sends them to a Grafana.

    for uid, dashboard in all_dashboards().items(): ...
"""

from __future__ import annotations

import json
from pathlib import Path

from fleet.metric_names import AGENT_METRICS, COORDINATOR_METRICS, full_name

DATASOURCE_UID = "slmfleet-prometheus"
FOLDER_UID = "slmfleet"
FOLDER_TITLE = "SLM fleet"
_DS = {"type": "prometheus", "uid": DATASOURCE_UID}


def m(name: str, suffix: str = "") -> str:
    """The full name of an exported metric (with a histogram suffix); unknown names fail."""
    table = AGENT_METRICS.get(name) or COORDINATOR_METRICS.get(name)
    if table is None:
        raise KeyError(f"{name} is not an exported metric")
    kind = table[0]
    if suffix and kind != "histogram":
        raise KeyError(f"{name} is a {kind}, not a histogram")
    if kind == "info":
        return full_name(name) + "_info"
    return full_name(name) + suffix


def quantile(q: float, name: str, by: str, flt: str = "") -> str:
    sel = f"{{{flt}}}" if flt else ""
    return (
        f"histogram_quantile({q}, sum by (le, {by}) "
        f"(rate({m(name, '_bucket')}{sel}[$__rate_interval])))"
    )


class Board:
    def __init__(self, uid: str, title: str, tags: list[str], variables: list[dict] | None = None):
        self.uid, self.title, self.tags = uid, title, tags
        self.variables = variables or []
        self.panels: list[dict] = []
        self._y = 0
        self._x = 0

    def panel(
        self,
        title: str,
        exprs: list[tuple[str, str]],
        *,
        unit: str = "short",
        kind: str = "timeseries",
        width: int = 12,
        height: int = 8,
    ) -> Board:
        if self._x + width > 24:
            self._x, self._y = 0, self._y + height
        self.panels.append(
            {
                "id": len(self.panels) + 1,
                "type": kind,
                "title": title,
                "datasource": _DS,
                "gridPos": {"x": self._x, "y": self._y, "w": width, "h": height},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}}
                if kind == "timeseries"
                else {},
                "targets": [
                    {
                        "refId": chr(ord("A") + i),
                        "datasource": _DS,
                        "expr": expr,
                        "legendFormat": legend,
                    }
                    for i, (expr, legend) in enumerate(exprs)
                ],
            }
        )
        self._x += width
        return self

    def json(self) -> dict:
        return {
            "uid": self.uid,
            "title": self.title,
            "tags": ["slmfleet", *self.tags],
            "schemaVersion": 39,
            "version": 1,
            "editable": True,
            "refresh": "5s",
            "time": {"from": "now-15m", "to": "now"},
            "timezone": "browser",
            "templating": {"list": self.variables},
            "panels": self.panels,
            "annotations": {"list": []},
        }


def _phone_variable() -> dict:
    return {
        "name": "phone",
        "label": "phone",
        "type": "query",
        "datasource": _DS,
        "query": {"query": f"label_values({m('memory_budget_bytes')}, phone)", "refId": "phone"},
        "definition": f"label_values({m('memory_budget_bytes')}, phone)",
        "refresh": 2,
        "includeAll": False,
        "multi": False,
        "sort": 1,
    }


def fleet_overview() -> Board:
    b = Board("slmfleet-overview", "SLM fleet: overview", ["overview"])
    b.panel(
        "Phones up",
        [
            (f"sum({m('phone_up')})", "up"),
            (f"count({m('phone_up')}) - sum({m('phone_up')})", "down"),
        ],
        kind="stat",
        width=6,
    )
    b.panel(
        "Trials by state",
        [(f"sum by (state) ({m('trials')})", "{{state}}")],
        kind="bargauge",
        width=6,
    )
    b.panel("Phones up (per phone)", [(m("phone_up"), "{{phone}}")], width=12)
    b.panel(
        "Output tokens/s by phone",
        [(f"sum by (phone) (rate({m('output_tokens_total')}[$__rate_interval]))", "{{phone}}")],
        unit="short",
    )
    b.panel(
        "Requests/s by status",
        [(f"sum by (status) (rate({m('requests_total')}[$__rate_interval]))", "{{status}}")],
        unit="reqps",
    )
    b.panel(
        "Errors: failed and cancelled requests/s",
        [
            (
                f'sum by (phone) (rate({m("requests_total")}{{status!="ok"}}[$__rate_interval]))',
                "{{phone}}",
            )
        ],
        unit="reqps",
    )
    b.panel(
        "Records stored/s",
        [(f"sum by (phone) (rate({m('records_stored_total')}[$__rate_interval]))", "{{phone}}")],
        unit="reqps",
    )
    return b


def paradigm_comparison() -> Board:
    b = Board("slmfleet-paradigms", "SLM fleet: paradigm comparison", ["paradigms"])
    for name, title in (
        ("request_ttft_seconds", "TTFT"),
        ("request_itl_seconds", "ITL"),
        ("request_e2e_seconds", "e2e"),
    ):
        b.panel(
            f"{title} p50 / p99 by paradigm and app",
            [
                (quantile(0.5, name, "paradigm, app"), "p50 {{paradigm}} {{app}}"),
                (quantile(0.99, name, "paradigm, app"), "p99 {{paradigm}} {{app}}"),
            ],
            unit="s",
        )
    b.panel(
        "Queue wait p50 by paradigm",
        [(quantile(0.5, "request_queue_wait_seconds", "paradigm"), "{{paradigm}}")],
        unit="s",
    )
    b.panel(
        "SLM memory by phone and component",
        [(f"sum by (phone, component) ({m('memory_bytes')})", "{{phone}} {{component}}")],
        unit="bytes",
    )
    b.panel(
        "LMK kills and cold starts",
        [
            (
                f"sum by (paradigm) (increase({m('lmk_kills_total')}[$__range]))",
                "kills {{paradigm}}",
            ),
            (
                f"sum by (paradigm) (increase({m('cold_starts_total')}[$__range]))",
                "cold starts {{paradigm}}",
            ),
        ],
        kind="bargauge",
        width=12,
    )
    b.panel(
        "Context swaps by kind",
        [
            (
                f"sum by (paradigm, kind) (increase({m('context_swaps_total')}[$__range]))",
                "{{paradigm}} {{kind}}",
            )
        ],
        kind="bargauge",
        width=12,
    )
    b.panel(
        "Cold start p50",
        [(quantile(0.5, "cold_start_seconds", "paradigm"), "{{paradigm}}")],
        unit="s",
    )
    b.panel(
        "SLO attainment by paradigm and app",
        [
            (
                f"1 - (sum by (paradigm, app) (increase({m('slo_misses_total')}[$__range])) "
                f"/ sum by (paradigm, app) (increase({m('requests_total')}[$__range])))",
                "{{paradigm}} {{app}}",
            )
        ],
        unit="percentunit",
        kind="bargauge",
        width=12,
    )
    b.panel(
        "Output tokens/s by paradigm",
        [
            (
                f"sum by (paradigm) (rate({m('output_tokens_total')}[$__rate_interval]))",
                "{{paradigm}}",
            )
        ],
    )
    return b


def phone_drilldown() -> Board:
    b = Board("slmfleet-phone", "SLM fleet: phone", ["phone"], [_phone_variable()])
    ph = 'phone="$phone"'
    b.panel(
        "PSS per SLM process",
        [(f"{m('process_pss_bytes')}{{{ph}}}", "{{component}}")],
        unit="bytes",
    )
    b.panel(
        "Memory vs budget",
        [
            (f"sum({m('memory_bytes')}{{{ph}}})", "SLM memory"),
            (f"{m('memory_budget_bytes')}{{{ph}}}", "budget"),
        ],
        unit="bytes",
    )
    b.panel(
        "Running and waiting requests",
        [
            (f"sum({m('running_requests')}{{{ph}}})", "running"),
            (f"sum({m('waiting_requests')}{{{ph}}})", "waiting"),
        ],
    )
    b.panel("Batch size", [(f"max({m('batch_size')}{{{ph}}})", "batch")])
    b.panel(
        "TTFT p50 by app", [(quantile(0.5, "request_ttft_seconds", "app", ph), "{{app}}")], unit="s"
    )
    b.panel(
        "Preemptions/s",
        [(f"sum(rate({m('preemptions_total')}{{{ph}}}[$__rate_interval]))", "preemptions")],
    )
    b.panel(
        "Context switch p50",
        [(quantile(0.5, "context_switch_seconds", "kind", ph), "{{kind}}")],
        unit="s",
    )
    b.panel("Workload running", [(f"{m('workload_running')}{{{ph}}}", "running")])
    return b


def all_dashboards() -> dict[str, dict]:
    return {b.uid: b.json() for b in (fleet_overview(), paradigm_comparison(), phone_drilldown())}


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for uid, board in all_dashboards().items():
        path = directory / f"{uid}.json"
        path.write_text(json.dumps(board, indent=2, sort_keys=True) + "\n")
        out.append(path)
    return out
