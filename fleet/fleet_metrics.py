"""The coordinator's Prometheus exporter: fleet-level state of a run.

    metrics = FleetMetrics(run_id=..., experiment=...)
    port = metrics.serve("127.0.0.1", 0)
    metrics.phone_up("phone-a", True); metrics.trial_state(None, "pending"); ...
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import start_http_server

from agents.metrics import build
from fleet.metric_names import COORDINATOR_METRICS

TRIAL_STATES = ("pending", "running", "completed", "failed", "stopped")


class FleetMetrics:
    def __init__(self, *, run_id: str, experiment: str, git: str = "",
                 registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.m = build(self.registry, COORDINATOR_METRICS)
        self.m["run"].info({"run_id": run_id, "experiment": experiment, "git": git})
        self._trials = {s: 0 for s in TRIAL_STATES}
        self._lock = threading.Lock()
        for state in TRIAL_STATES:
            self.m["trials"].labels(state).set(0)
        self._server = None

    def serve(self, host: str, port: int) -> int:
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._server.server_port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def phone_up(self, phone: str, up: bool) -> None:
        self.m["phone_up"].labels(phone).set(1 if up else 0)
        self.m["records_stored_total"].labels(phone)  # a series from the start, at 0

    def trial_state(self, old: str | None, new: str) -> None:
        with self._lock:
            if old is not None:
                self._trials[old] -= 1
                self.m["trials"].labels(old).set(self._trials[old])
            self._trials[new] += 1
            self.m["trials"].labels(new).set(self._trials[new])

    def records_stored(self, phone: str, n: int) -> None:
        if n:
            self.m["records_stored_total"].labels(phone).inc(n)
