"""The coordinator's Prometheus exporter: fleet-level state of a run.

metrics = FleetMetrics(run_id=..., experiment=...)
port = metrics.serve("127.0.0.1", 0)
metrics.phone_up("phone-a", True); metrics.trial_state(None, "pending"); ...
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry

from fleet.exporter import Exporter
from fleet.metric_names import COORDINATOR_METRICS

TRIAL_STATES = ("pending", "running", "completed", "failed", "stopped", "interrupted")


class FleetMetrics(Exporter):
    def __init__(
        self,
        *,
        run_id: str,
        experiment: str,
        git: str = "",
        registry: CollectorRegistry | None = None,
    ):
        super().__init__(COORDINATOR_METRICS, registry)
        self.m["run"].info({"run_id": run_id, "experiment": experiment, "git": git})
        self._trials = {s: 0 for s in TRIAL_STATES}
        self._lock = threading.Lock()
        for state in TRIAL_STATES:
            self.m["trials"].labels(state).set(0)

    def phone_up(self, phone: str, up: bool) -> None:
        self.m["phone_up"].labels(phone).set(1 if up else 0)
        self.m["records_stored_total"].labels(phone)  # a series from the start, at 0

    def trial_state(self, old: str | None, new: str) -> None:
        with self._lock:
            if old is not None:
                self._trials[old] = self._trials.get(old, 0) - 1
                self.m["trials"].labels(old).set(self._trials[old])
            self._trials[new] = self._trials.get(new, 0) + 1  # a new state must not fail a trial
            self.m["trials"].labels(new).set(self._trials[new])

    def trial_dispatched(self, seconds: float) -> None:
        self.m["trial_dispatch_seconds"].observe(seconds)

    def records_stored(self, phone: str, n: int) -> None:
        if n:
            self.m["records_stored_total"].labels(phone).inc(n)
