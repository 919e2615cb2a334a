"""Grafana dashboards as code, built with Grafana's own ``grafana-foundation-sdk``.

Every panel's PromQL is written with ``m(name)``, which only accepts names in
``fleet.metric_names``; a test also checks every metric name in every expression against the
names the code registers. Panels select by the template variables (``$run``, ``$phone``,
``$paradigm``, ``$phase``, ``$app``, ``$model``) through ``sel()``, query the datasource picked
by ``$DS_PROMETHEUS``, and each carries a description and a unit. ``fleet dashboards build``
writes dashboards/*.json (committed, and provisioned by deploy/grafana); ``fleet dashboards
push`` sends them to a Grafana.

    for uid, dashboard in all_dashboards().items(): ...
"""

from __future__ import annotations

import json
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, stat, timeseries
from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus as gp
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as md

from fleet.metric_names import AGENT_METRICS, COORDINATOR_METRICS, full_name

DATASOURCE_UID = "slmfleet-prometheus"  # the datasource deploy/grafana and `push` create
DATASOURCE_NAME = "SLM fleet Prometheus"
DATASOURCE_VARIABLE = "DS_PROMETHEUS"
FOLDER_UID = "slmfleet"
FOLDER_TITLE = "SLM fleet"
_DS = md.DataSourceRef(type_val="prometheus", uid="${" + DATASOURCE_VARIABLE + "}")

# Which template variables select each kind of series (agent request series carry all of them;
# the coordinator's only run and phone)
_REQUEST = ("run", "phone", "paradigm", "phase", "app", "model")
_DEPLOYMENT = ("run", "phone", "paradigm", "phase", "model")
_PHONE = ("run", "phone")
_RUN = ("run",)


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


def sel(labels: tuple[str, ...], extra: str = "") -> str:
    """A selector by the dashboard's variables: the run exactly, the others as regexes (so a
    multi-value or All selection works)."""
    parts = [f'{v}="${v}"' if v == "run" else f'{v}=~"${v}"' for v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}"


def quantile(q: float, name: str, by: str, labels: tuple[str, ...] = _REQUEST) -> str:
    return (
        f"histogram_quantile({q}, sum by (le, {by}) "
        f"(rate({m(name, '_bucket')}{sel(labels)}[$__rate_interval])))"
    )


def _target(i: int, expr: str, legend: str) -> gp.Dataquery:
    return gp.Dataquery().ref_id(chr(ord("A") + i)).expr(expr).legend_format(legend)


def panel(
    kind: str,
    title: str,
    description: str,
    exprs: list[tuple[str, str]],
    *,
    unit: str,
    width: int = 12,
    height: int = 8,
):
    """One panel: a title, what it shows (its description), a unit and its queries."""
    kinds: dict[str, type[timeseries.Panel | stat.Panel | bargauge.Panel]] = {
        "timeseries": timeseries.Panel,
        "stat": stat.Panel,
        "bargauge": bargauge.Panel,
    }
    builder = kinds[kind]()
    builder = (
        builder.title(title)
        .description(description)
        .unit(unit)
        .datasource(_DS)
        .span(width)
        .height(height)
    )
    for i, (expr, legend) in enumerate(exprs):
        builder = builder.with_target(_target(i, expr, legend))
    return builder


def _variable_query(expr: str, label: str) -> str:
    return f"label_values({expr}, {label})"


def _variables(names: tuple[str, ...], *, multi_phone: bool = True) -> list:
    """The datasource variable and the label variables, each narrowed by the ones before it."""
    out: list = [
        gd.DatasourceVariable(DATASOURCE_VARIABLE)
        .label("Prometheus")
        .type("prometheus")
        .current(md.VariableOption(text=DATASOURCE_NAME, value=DATASOURCE_UID))
        .description("The Prometheus that scraped the run (fleet run prints its URL)."),
        gd.QueryVariable("run")
        .label("run")
        .datasource(_DS)
        .query(_variable_query(m("run"), "run"))
        .refresh(md.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(md.VariableSort.ALPHABETICAL_DESC)  # run ids start with their time: newest first
        .description("One run: runs sharing a Prometheus never mix."),
    ]
    if "phone" in names:
        out.append(
            gd.QueryVariable("phone")
            .label("phone")
            .datasource(_DS)
            .query(_variable_query(f'{m("phone_up")}{{run="$run"}}', "phone"))
            .refresh(md.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(md.VariableSort.ALPHABETICAL_ASC)
            .multi(multi_phone)
            .include_all(multi_phone)
            .all_value(".*")
        )
    narrowed = 'run="$run"'
    for name, what in (
        ("paradigm", "The experiment's name for each paradigm."),
        ("phase", "solo: each app alone; corun: all apps together; sweep: the app-count sweep."),
        ("app", "The workload's apps."),
        ("model", "The model each app used."),
    ):
        if name not in names:
            continue
        variable = (
            gd.QueryVariable(name)
            .label(name)
            .datasource(_DS)
            .query(_variable_query(f"{m('requests_total')}{{{narrowed}}}", name))
            .refresh(md.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(md.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .description(what)
        )
        if name == "phase":  # the contention comparison is the co-run
            variable = variable.current(md.VariableOption(text="corun", value="corun"))
        out.append(variable)
        narrowed += f',{name}=~"${name}"'
    return out


# Grafana's Prometheus annotation fields that the SDK's generic AnnotationQuery model lacks
_ANNOTATION_EXTRA = {
    "trial workloads": {
        "titleFormat": "{{phase}} {{paradigm}} on {{phone}}",
        "tagKeys": "phone,paradigm,phase",
        "step": "1s",
    },
    "phone down": {"titleFormat": "{{phone}} down", "tagKeys": "phone", "step": "1s"},
}


def _annotations(variables: tuple[str, ...]) -> list:
    """Trial workloads as regions (start to end of each trial's workload) and phones down,
    selected by those of the board's variables the series carry."""
    workload = tuple(v for v in ("run", "phone", "paradigm", "phase") if v in variables)
    return [
        gd.AnnotationQuery()
        .name("trial workloads")
        .datasource(_DS)
        .enable(True)
        .icon_color("rgba(0, 211, 255, 0.5)")
        .expr(f"max by (phone, paradigm, phase) ({m('workload_running')}{sel(workload)}) == 1"),
        gd.AnnotationQuery()
        .name("phone down")
        .datasource(_DS)
        .enable(True)
        .icon_color("red")
        .expr(f"{m('phone_up')}{sel(('run', 'phone') if 'phone' in variables else _RUN)} == 0"),
    ]


def _board(uid: str, title: str, description: str, tags: list[str], names: tuple[str, ...], **kw):
    """A dashboard with the datasource, run and ``names`` variables, and the annotations."""
    variables = _variables(names, **kw)
    b = (
        gd.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["slmfleet", *tags])
        .editable()
        .refresh("5s")
        .time("now-15m", "now")
        .timezone("browser")
    )
    for variable in variables:
        b = b.with_variable(variable)
    for annotation in _annotations(("run", *names)):
        b = b.annotation(annotation)
    return b


def fleet_overview():
    b = _board(
        "slmfleet-overview",
        "SLM fleet: overview",
        "One run at a glance: phones, trials, throughput and errors.",
        ["overview"],
        ("phone",),
    )
    ph = sel(_PHONE)
    dep = sel(("run", "phone"))
    failed = sel(("run", "phone"), 'status!="ok"')
    for p in (
        panel(
            "stat",
            "Phones up",
            "Phones whose agent answered the coordinator's last health check, and those that "
            "did not.",
            [
                (f"sum({m('phone_up')}{ph})", "up"),
                (f"count({m('phone_up')}{ph}) - sum({m('phone_up')}{ph})", "down"),
            ],
            unit="short",
            width=6,
        ),
        panel(
            "bargauge",
            "Trials by state",
            "The run's trials: pending, running, completed, failed.",
            [(f"sum by (state) ({m('trials')}{sel(_RUN)})", "{{state}}")],
            unit="short",
            width=6,
        ),
        panel(
            "timeseries",
            "Phones up (per phone)",
            "1 while the phone's agent answers its health checks.",
            [(f"{m('phone_up')}{ph}", "{{phone}}")],
            unit="bool_yes_no",
        ),
        panel(
            "timeseries",
            "Output tokens/s by phone",
            "Output tokens delivered to apps per second, every phase and paradigm.",
            [
                (
                    f"sum by (phone) (rate({m('output_tokens_total')}{dep}[$__rate_interval]))",
                    "{{phone}}",
                )
            ],
            unit="short",
        ),
        panel(
            "timeseries",
            "Requests/s by status",
            "Arrivals ended per second: ok, cancelled (at the end of a trial), failed.",
            [
                (
                    f"sum by (status) (rate({m('requests_total')}{dep}[$__rate_interval]))",
                    "{{status}}",
                )
            ],
            unit="reqps",
        ),
        panel(
            "timeseries",
            "Errors: failed and cancelled requests/s",
            "Arrivals that did not end ok, per phone.",
            [
                (
                    f"sum by (phone) (rate({m('requests_total')}{failed}[$__rate_interval]))",
                    "{{phone}}",
                )
            ],
            unit="reqps",
        ),
        panel(
            "timeseries",
            "Records stored/s",
            "Request records the coordinator committed to the run's store per second.",
            [
                (
                    f"sum by (phone) (rate({m('records_stored_total')}{ph}[$__rate_interval]))",
                    "{{phone}}",
                )
            ],
            unit="reqps",
        ),
    ):
        b = b.with_panel(p)
    return b


def paradigm_comparison():
    b = _board(
        "slmfleet-paradigms",
        "SLM fleet: paradigm comparison",
        "The paradigms side by side, for one run and one phase (the co-run by default).",
        ["paradigms"],
        _REQUEST,
    )
    panels = []
    for name, title, what in (
        ("request_ttft_seconds", "TTFT", "Arrival to first output token, at the app"),
        ("request_itl_seconds", "ITL", "Mean gap between output tokens after the first"),
        ("request_e2e_seconds", "e2e", "Submit to last output token"),
    ):
        panels.append(
            panel(
                "timeseries",
                f"{title} p50 / p99 by paradigm and app",
                f"{what}, served requests; quantiles of the histogram over the rate interval.",
                [
                    (quantile(0.5, name, "paradigm, app"), "p50 {{paradigm}} {{app}}"),
                    (quantile(0.99, name, "paradigm, app"), "p99 {{paradigm}} {{app}}"),
                ],
                unit="s",
            )
        )
    dep = sel(_DEPLOYMENT)
    req = sel(_REQUEST)
    panels += [
        panel(
            "timeseries",
            "Queue wait p50 by paradigm",
            "Sent by the app to first scheduled on the model.",
            [(quantile(0.5, "request_queue_wait_seconds", "paradigm"), "{{paradigm}}")],
            unit="s",
        ),
        panel(
            "timeseries",
            "SLM memory by phone and component",
            "Memory of the SLM processes: weights, KV cache and runtime.",
            [(f"sum by (phone, component) ({m('memory_bytes')}{dep})", "{{phone}} {{component}}")],
            unit="bytes",
        ),
        panel(
            "bargauge",
            "LMK kills and cold starts",
            "Model processes killed by the low-memory killer, and models (re)started to serve "
            "a request, over the time range.",
            [
                (
                    f"sum by (paradigm) (increase({m('lmk_kills_total')}{req}[$__range]))",
                    "kills {{paradigm}}",
                ),
                (
                    f"sum by (paradigm) (increase({m('cold_starts_total')}{req}[$__range]))",
                    "cold starts {{paradigm}}",
                ),
            ],
            unit="short",
        ),
        panel(
            "bargauge",
            "Context swaps by kind",
            "Contexts evicted (swap_out, drop) and made usable again (swap_in, recompute).",
            [
                (
                    f"sum by (paradigm, kind) (increase({m('context_swaps_total')}{dep}"
                    "[$__range]))",
                    "{{paradigm}} {{kind}}",
                )
            ],
            unit="short",
        ),
        panel(
            "timeseries",
            "Cold start p50",
            "Process start and weight load of a model.",
            [(quantile(0.5, "cold_start_seconds", "paradigm"), "{{paradigm}}")],
            unit="s",
        ),
        panel(
            "bargauge",
            "SLO attainment by paradigm and app",
            "Share of arrivals whose first token came within their app's TTFT SLO (apps with "
            "an SLO; unserved arrivals miss it).",
            [
                (
                    f"1 - (sum by (paradigm, app) (increase({m('slo_misses_total')}{req}"
                    f"[$__range])) / sum by (paradigm, app) (increase({m('requests_total')}"
                    f"{req}[$__range])))",
                    "{{paradigm}} {{app}}",
                )
            ],
            unit="percentunit",
        ),
        panel(
            "timeseries",
            "Output tokens/s by paradigm",
            "Output tokens delivered to apps per second.",
            [
                (
                    f"sum by (paradigm) (rate({m('output_tokens_total')}{req}[$__rate_interval]))",
                    "{{paradigm}}",
                )
            ],
            unit="short",
        ),
    ]
    for p in panels:
        b = b.with_panel(p)
    return b


def phone_drilldown():
    b = _board(
        "slmfleet-phone",
        "SLM fleet: phone",
        "One phone of one run: memory, scheduling and latency.",
        ["phone"],
        ("phone", "paradigm", "phase"),
        multi_phone=False,
    )
    dep = sel(("run", "phone", "paradigm", "phase"))
    req = ("run", "phone", "paradigm", "phase")
    for p in (
        panel(
            "timeseries",
            "PSS per SLM process",
            "Proportional set size of each SLM process (an app's own model, or the service).",
            [(f"{m('process_pss_bytes')}{dep}", "{{component}}")],
            unit="bytes",
        ),
        panel(
            "timeseries",
            "Memory vs budget",
            "SLM memory against the phone's SLM memory budget.",
            [
                (f"sum({m('memory_bytes')}{dep})", "SLM memory"),
                (f"{m('memory_budget_bytes')}{sel(_PHONE)}", "budget"),
            ],
            unit="bytes",
        ),
        panel(
            "timeseries",
            "Running and waiting requests",
            "Requests on a shared model service: in its batch, and queued.",
            [
                (f"sum({m('running_requests')}{dep})", "running"),
                (f"sum({m('waiting_requests')}{dep})", "waiting"),
            ],
            unit="short",
        ),
        panel(
            "timeseries",
            "Batch size",
            "Sequences in the service's last forward pass.",
            [(f"max({m('batch_size')}{dep})", "batch")],
            unit="short",
        ),
        panel(
            "timeseries",
            "TTFT p50 by app",
            "Arrival to first output token, at the app.",
            [(quantile(0.5, "request_ttft_seconds", "app", req), "{{app}}")],
            unit="s",
        ),
        panel(
            "timeseries",
            "Preemptions/s",
            "Requests preempted at token granularity (agent-OS).",
            [(f"sum(rate({m('preemptions_total')}{dep}[$__rate_interval]))", "preemptions")],
            unit="short",
        ),
        panel(
            "timeseries",
            "Context switch p50",
            "Making an evicted context usable again, by swap or recompute.",
            [(quantile(0.5, "context_switch_seconds", "kind", req), "{{kind}}")],
            unit="s",
        ),
        panel(
            "timeseries",
            "Workload running",
            "1 while a trial's workload runs, by paradigm and phase.",
            [
                (
                    f"max by (paradigm, phase) ({m('workload_running')}{dep})",
                    "{{paradigm}} {{phase}}",
                )
            ],
            unit="short",
        ),
    ):
        b = b.with_panel(p)
    return b


def _json(builder) -> dict:
    board = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    for annotation in board["annotations"]["list"]:
        annotation.update(_ANNOTATION_EXTRA.get(annotation["name"], {}))
    return board


def all_dashboards() -> dict[str, dict]:
    return {
        board["uid"]: board
        for board in (
            _json(b) for b in (fleet_overview(), paradigm_comparison(), phone_drilldown())
        )
    }


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for uid, board in all_dashboards().items():
        path = directory / f"{uid}.json"
        path.write_text(json.dumps(board, indent=2, sort_keys=True) + "\n")
        out.append(path)
    return out
