"""Every Prometheus metric the testbed exports, named once.

Agents and the coordinator register these (agents/agent_metrics.py and
fleet/observe/coordinator_metrics.py, both through fleet/exporter.py) and the dashboards
(fleet/observe/dashboards.py) query only these, so a panel cannot ask for a metric the code does
not export; a test holds the two together. Names follow Prometheus conventions: one
namespace, base units in the name, counters end in ``_total``. Labels come from bounded sets only
(phone, paradigm, phase, app, model, component, kind, status, state): never a request or trial id.
"""

from __future__ import annotations

NAMESPACE = "slmfleet"

# Buckets for on-device latencies: sub-millisecond token gaps up to minutes-long cold starts.
LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.15,
    0.25,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
    120.0,
    300.0,
)

# name (without namespace) -> (type, help, labels)
MetricTable = dict[str, tuple[str, str, tuple[str, ...]]]

# Labels of a deployment's series: the phone, the experiment's name for the paradigm, the
# trial's phase (solo, corun, sweep; "adhoc" outside a plan), the app and the model. Prometheus
# adds the target's labels (run, host, job, instance), so every agent series also carries its
# run. Per run, a request histogram has at most phones x paradigms x 3 phases x apps x models
# label sets (times its buckets); see dashboards/README.md for the count.
REQUEST_LABELS = ("phone", "paradigm", "phase", "app", "model")
PHONE_LABELS = ("phone", "paradigm", "phase", "model")

AGENT_METRICS: MetricTable = {
    "request_queue_wait_seconds": (
        "histogram",
        "Sent by the app to first scheduled on the model (served requests).",
        REQUEST_LABELS,
    ),
    "request_ttft_seconds": (
        "histogram",
        "Arrival to first output token, at the app (served requests).",
        REQUEST_LABELS,
    ),
    "request_itl_seconds": (
        "histogram",
        "Mean gap between output tokens after the first.",
        REQUEST_LABELS,
    ),
    "request_e2e_seconds": ("histogram", "Submit to last output token.", REQUEST_LABELS),
    "cold_start_seconds": ("histogram", "Process start + weight load of a model.", REQUEST_LABELS),
    "context_switch_seconds": (
        "histogram",
        "Making an evicted context usable again.",
        REQUEST_LABELS + ("kind",),
    ),
    "requests_total": (
        "counter",
        "Arrivals ended, by status (ok, cancelled, dropped, failed).",
        REQUEST_LABELS + ("status",),
    ),
    "output_tokens_total": ("counter", "Output tokens delivered to apps.", REQUEST_LABELS),
    "slo_misses_total": (
        "counter",
        "Arrivals without a first token within their app's TTFT SLO (unserved ones included).",
        REQUEST_LABELS,
    ),
    "lmk_kills_total": (
        "counter",
        "Model processes killed by the low-memory killer.",
        REQUEST_LABELS,
    ),
    "cold_starts_total": ("counter", "Models (re)started to serve a request.", REQUEST_LABELS),
    "context_swaps_total": (
        "counter",
        "Context evictions and restores, by kind.",
        PHONE_LABELS + ("kind",),
    ),
    "preemptions_total": ("counter", "Requests preempted at token granularity.", PHONE_LABELS),
    "memory_bytes": (
        "gauge",
        "SLM memory on the phone by component (weights, kv, runtime).",
        PHONE_LABELS + ("component",),
    ),
    "process_pss_bytes": (
        "gauge",
        "PSS of each SLM process (app or service).",
        PHONE_LABELS + ("component",),
    ),
    "memory_budget_bytes": ("gauge", "The phone's SLM memory budget.", ("phone",)),
    "running_requests": ("gauge", "Requests running on a shared model service.", PHONE_LABELS),
    "waiting_requests": ("gauge", "Requests waiting for a shared model service.", PHONE_LABELS),
    "batch_size": ("gauge", "Sequences in the service's last forward pass.", PHONE_LABELS),
    "workload_running": (
        "gauge",
        "1 while a trial's workload runs on the phone, 0 while it is deployed but idle.",
        PHONE_LABELS,
    ),
    "agent": ("info", "The phone agent's profile and software.", ("phone",)),
}

COORDINATOR_METRICS: MetricTable = {
    "phone_up": ("gauge", "1 when the phone's agent answered its last health check.", ("phone",)),
    "trials": ("gauge", "Trials of the run by state.", ("state",)),
    "records_stored_total": ("counter", "Request records committed to the store.", ("phone",)),
    "trial_dispatch_seconds": (
        "histogram",
        "The coordinator's own time per trial: deciding to run it until its Deploy is sent, and "
        "its summary's arrival until the trial is stored.",
        (),
    ),
    "run": ("info", "The running experiment.", ()),
}


def full_name(name: str) -> str:
    return f"{NAMESPACE}_{name}"
