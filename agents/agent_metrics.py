"""The phone agent's Prometheus exporter: consumes the records, samples, events and service
statistics the paradigms produce (they never import it) and serves them on /metrics.

    metrics = AgentMetrics(profile)                   # its own registry
    port = metrics.serve("127.0.0.1", 0)              # HTTP /metrics, bound like the gRPC port
    metrics.deployed(paradigm, model, deploy_result, apps, phase="corun")
    metrics.observe(event)                 # RequestRecord | PhoneEvent | ServiceStats
    metrics.observe_tick(samples)                     # one sampler tick of ResourceSamples
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from fleet.exporter import Exporter
from fleet.metric_names import AGENT_METRICS
from fleet.records import (
    DeployResult,
    PhoneEvent,
    PhoneProfile,
    RequestRecord,
    RequestStatus,
    ResourceSample,
    ServiceStats,
)


class AgentMetrics(Exporter):
    def __init__(self, profile: PhoneProfile, registry: CollectorRegistry | None = None):
        super().__init__(AGENT_METRICS, registry)
        self.profile = profile
        self.m["memory_budget_bytes"].labels(profile.name).set(profile.memory_budget_bytes)
        self._labels: tuple[str, str, str] = ("", "", "")  # (paradigm, phase, model) deployed
        self._apps: dict[str, dict] = {}  # app -> {"slo_s", "model"}
        self._weights: dict[str, int] = {}
        self._kv_reserved: dict[str, int] = {}
        self._kv_live: int | None = None
        self._last_stats: ServiceStats | None = None
        self._components: set[str] = set()

    def info(self, versions: dict[str, str]) -> None:
        p = self.profile
        self.m["agent"].labels(p.name).info(
            {
                "kind": p.kind,
                "host": p.host,
                "cpu_threads": str(p.cpu_threads),
                **{k: v for k, v in versions.items() if k in ("python", "torch", "grpcio")},
            }
        )

    PER_DEPLOYMENT_GAUGES = (
        "memory_bytes",
        "process_pss_bytes",
        "running_requests",
        "waiting_requests",
        "batch_size",
        "workload_running",
    )

    def undeployed(self) -> None:
        """Drop the gauges of a deployment that is gone (counters keep their history)."""
        for name in self.PER_DEPLOYMENT_GAUGES:
            self.m[name].clear()
        self._components = set()

    def deployed(
        self, paradigm: str, model: str, result: DeployResult, apps, phase: str = "adhoc"
    ) -> None:
        """A deployment's series carry its paradigm (the experiment's name for it), the
        trial's phase (solo, corun, sweep) and the model; the run comes from the target."""
        self.undeployed()
        self._labels = (paradigm, phase, model)
        self._apps = {
            a.name: {"slo_s": a.slo_ttft_s, "model": (a.model.preset if a.model else model)}
            for a in apps
        }
        # per SLM process (an app's own model, or "service"): weights and reserved KV
        self._weights = {a.app: a.weight_bytes for a in result.apps}
        self._kv_reserved = {a.app: a.kv_cache_bytes for a in result.apps}
        self._kv_live = None  # a shared service reports the KV it holds
        self._last_stats = None
        self._initialize_series()

    def _initialize_series(self) -> None:
        """Create every label set of the deployment at zero, so a counter that never moves is
        a 0 on the dashboards, not a missing series."""
        phone_labels = (self.profile.name, *self._labels)
        for app in self._apps:
            labels = self._req_labels(app)
            for name in (
                "request_queue_wait_seconds",
                "request_ttft_seconds",
                "request_itl_seconds",
                "request_e2e_seconds",
                "cold_start_seconds",
                "output_tokens_total",
                "lmk_kills_total",
                "cold_starts_total",
            ):
                self.m[name].labels(*labels)
            if self._apps[app]["slo_s"]:  # apps without an SLO have no attainment to show
                self.m["slo_misses_total"].labels(*labels)
            for status in ("ok", "failed", "cancelled"):
                self.m["requests_total"].labels(*labels, status)
            for kind in ("swap", "recompute"):
                self.m["context_switch_seconds"].labels(*labels, kind)
        for kind in ("swap_out", "swap_in", "recompute", "drop"):
            self.m["context_swaps_total"].labels(*phone_labels, kind)
        for name in (
            "preemptions_total",
            "running_requests",
            "waiting_requests",
            "batch_size",
            "workload_running",
        ):
            self.m[name].labels(*phone_labels)

    def running(self, on: bool) -> None:
        self.m["workload_running"].labels(self.profile.name, *self._labels).set(1 if on else 0)

    def _req_labels(self, app: str) -> tuple[str, ...]:
        paradigm, phase, model = self._labels
        return (
            self.profile.name,
            paradigm,
            phase,
            app,
            self._apps.get(app, {}).get("model", model),
        )

    def observe(self, event: RequestRecord | PhoneEvent | ServiceStats) -> None:
        if isinstance(event, RequestRecord):
            self._record(event)
        elif isinstance(event, PhoneEvent):
            self._event(event)
        elif isinstance(event, ServiceStats):
            self._stats(event)

    def _record(self, r: RequestRecord) -> None:
        labels = self._req_labels(r.app)
        self.m["requests_total"].labels(*labels, r.status.value).inc()
        if r.cold_start_s:
            self.m["cold_start_seconds"].labels(*labels).observe(r.cold_start_s)
        if r.service.context_restore:
            self.m["context_switch_seconds"].labels(*labels, r.service.context_restore).observe(
                r.service.context_switch_s
            )
        slo = self._apps.get(r.app, {}).get("slo_s", 0.0)
        # one SLO rule everywhere (fleet/results/stats.py): an arrival meets it when its first
        # token came within the SLO; unserved, dropped and failed arrivals miss it
        if slo and (not r.token_ns or r.ttft_s > slo):
            self.m["slo_misses_total"].labels(*labels).inc()
        if r.status is not RequestStatus.OK:
            return
        self.m["output_tokens_total"].labels(*labels).inc(r.output_tokens)
        self.m["request_queue_wait_seconds"].labels(*labels).observe(r.queue_wait_s)
        self.m["request_ttft_seconds"].labels(*labels).observe(r.ttft_s)
        self.m["request_e2e_seconds"].labels(*labels).observe(r.e2e_s)
        if r.output_tokens > 1:
            self.m["request_itl_seconds"].labels(*labels).observe(r.itl_s)

    def _event(self, e: PhoneEvent) -> None:
        phone_labels = (self.profile.name, *self._labels)
        if e.kind == "lmk_kill":
            self.m["lmk_kills_total"].labels(*self._req_labels(e.app)).inc()
        elif e.kind == "cold_start":
            self.m["cold_starts_total"].labels(*self._req_labels(e.app)).inc()
        elif e.kind in ("swap_out", "swap_in", "recompute", "drop"):
            self.m["context_swaps_total"].labels(*phone_labels, e.kind).inc()

    def _stats(self, s: ServiceStats) -> None:
        phone_labels = (self.profile.name, *self._labels)
        prev = self._last_stats.num_preemptions if self._last_stats else 0
        self.m["preemptions_total"].labels(*phone_labels).inc(max(0, s.num_preemptions - prev))
        self.m["running_requests"].labels(*phone_labels).set(s.num_running)
        self.m["waiting_requests"].labels(*phone_labels).set(s.num_waiting)
        self.m["batch_size"].labels(*phone_labels).set(s.last_batch_size)
        self._kv_live = s.kv_held_bytes
        self._last_stats = s

    def observe_tick(self, samples: list[ResourceSample]) -> None:
        phone_labels = (self.profile.name, *self._labels)
        total = 0
        for s in samples:
            self.m["process_pss_bytes"].labels(*phone_labels, s.component).set(s.pss_bytes)
            total += s.pss_bytes
        live = {s.component for s in samples}  # a killed app's model holds nothing any more
        for gone in self._components - live:
            self.m["process_pss_bytes"].remove(*phone_labels, gone)
        self._components = live
        reported = [s for s in samples if s.weights_bytes]  # the model processes' own split
        if reported and len(reported) == len(samples):
            weights = min(total, sum(s.weights_bytes for s in samples))
            kv = min(sum(s.kv_bytes for s in samples), total - weights)
        else:  # not reported yet: the deployment's weights, the KV held or reserved
            weights = min(total, sum(self._weights.get(c, 0) for c in live))
            kv = (
                self._kv_live
                if self._kv_live is not None
                else sum(self._kv_reserved.get(c, 0) for c in live)
            )
            kv = min(kv, total - weights)
        for component, value in (
            ("weights", weights),
            ("kv", kv),
            ("runtime", total - weights - kv),
        ):
            self.m["memory_bytes"].labels(*phone_labels, component).set(value)
