"""The live observability of one run: the coordinator's /metrics, the file_sd targets file, the
embedded (or external) Prometheus, and a heartbeat that health-checks every phone.

Plain Python, driven by the coordinator; it knows phones only by name and address, and asks a
callable for their health, so it needs neither Ray nor the agents.

    observer = RunObserver(run_dir, run_id=..., experiment=..., git=..., mode="embedded")
    observer.start(num_trials)                    # -> facts for the manifest
    observer.phone_up("phone-a", "127.0.0.1:9101")
    observer.start_heartbeat(phones, health, interval_s)   # health(names) -> {name: up}
    observer.stop(phones)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from fleet.observe.coordinator_metrics import FleetMetrics
from fleet.observe.prometheus import SCRAPE_INTERVAL_S, EmbeddedPrometheus, PrometheusError
from fleet.observe.targets import SharedTargetsFile, TargetsFile


class RunObserver:
    def __init__(
        self,
        run_dir: Path,
        *,
        run_id: str,
        experiment: str,
        git: str = "",
        mode: str = "embedded",
        keep_prometheus: bool = False,
        announce: Callable[[str], object] = print,
        shared_targets: Path | None = None,
        targets_grace_s: float = 60.0,
    ):
        self.metrics = FleetMetrics(run_id=run_id, experiment=experiment, git=git)
        self.run_id = run_id
        self.targets = TargetsFile(run_dir / "prometheus" / "targets.json")
        # where a standing Prometheus reads (fleet run --targets-file), beside the run's own
        self.shared = (
            SharedTargetsFile(shared_targets, run_id, targets_grace_s) if shared_targets else None
        )
        self.workdir = run_dir / "prometheus"
        self.mode = mode  # "embedded", "off", or the URL of an existing Prometheus
        self.keep_prometheus = keep_prometheus
        self.announce = announce
        self.url = ""
        self._prometheus: EmbeddedPrometheus | None = None
        self._stop_heartbeat = threading.Event()

    def start(self, num_trials: int, scrape_interval_s: int = 0) -> dict[str, str]:
        """Serve the coordinator's metrics and bring up Prometheus; returns manifest facts.
        ``scrape_interval_s``: the coordinator's own, when longer than the run's (its /metrics
        holds series of every phone: at 1,000 phones an exposition took 56 ms of its
        interpreter, every second at the run's interval)."""
        for _ in range(num_trials):
            self.metrics.trial_state(None, "pending")
        port = self.metrics.serve("127.0.0.1", 0)
        self._set_target(
            "coordinator",
            f"127.0.0.1:{port}",
            job="coordinator",
            run=self.run_id,
            **_interval(scrape_interval_s),
        )
        facts = {
            "targets_file": str(self.targets.path.resolve()),
            "coordinator_metrics": f"127.0.0.1:{port}",
        }
        if self.shared is not None:
            facts["shared_targets_file"] = str(self.shared.path.resolve())
        if self.mode == "off":
            return facts
        if self.mode != "embedded":
            self.url = self.mode
            read = self.shared.path if self.shared is not None else self.targets.path
            self.announce(
                f"Prometheus: {self.url} (it must read the file_sd targets in {read.resolve()})"
            )
        else:
            self._start_embedded()
        facts["url"] = self.url
        return facts

    def _start_embedded(self) -> None:
        self._prometheus = EmbeddedPrometheus(self.workdir, self.targets.path)
        try:
            self.url = self._prometheus.start(die_with_parent=not self.keep_prometheus)
            self.announce(f"Prometheus: {self.url} (embedded; scraping this run)")
        except PrometheusError as exc:
            self._prometheus = None
            self.announce(f"Prometheus: not started: {exc}")

    def phone_up(
        self,
        phone: str,
        metrics_address: str = "",
        metrics_path: str = "",
        host: str = "",
        scrape_interval_s: int = 0,
    ) -> None:
        """A phone came up; its /metrics address joins the targets when it has one (with the
        path to it on its host's relay, when it is scraped through one, and its own scrape
        interval when it is not the run's)."""
        if metrics_address:
            extra = {"__metrics_path__": metrics_path} if metrics_path else {}
            extra |= _interval(scrape_interval_s)
            self._set_target(
                phone,
                metrics_address,
                job="phone-agent",
                phone=phone,
                host=host or "local",
                run=self.run_id,
                **extra,
            )
        self.metrics.phone_up(phone, True)

    @contextmanager
    def targets_deferred(self):
        """Phones coming up inside write the targets files once, at the end."""
        with self.targets.deferred():
            if self.shared is None:
                yield
            else:
                with self.shared.deferred():
                    yield

    def _set_target(self, name: str, address: str, *, job: str, **labels: str) -> None:
        self.targets.set(name, address, job=job, **labels)
        if self.shared is not None:
            self.shared.set(name, address, job=job, **labels)

    def phone_down(self, phone: str) -> None:
        self.metrics.phone_up(phone, False)

    def start_heartbeat(
        self,
        phones: Callable[[], list[str]],
        health: Callable[[list[str]], dict[str, bool]],
        interval_s: float,
    ) -> None:
        """Health-check every phone each interval (``health`` answers for many phones at once):
        a silent phone shows as down, not a gap."""

        def beat() -> None:
            while not self._stop_heartbeat.wait(interval_s):
                names = phones()
                try:
                    up = health(names)
                except Exception:
                    up = {}
                for phone in names:
                    self.metrics.phone_up(phone, bool(up.get(phone)))

        threading.Thread(target=beat, name="heartbeat", daemon=True).start()

    def stop(self, phones: list[str]) -> None:
        self._stop_heartbeat.set()
        self.targets.remove(*phones, "coordinator")  # the coordinator's closes with this run
        if self.shared is not None:  # a standing Prometheus keeps them for the grace period
            self.shared.retire()
        if self._prometheus is not None and self._prometheus.proc is not None:
            if self.keep_prometheus:
                self.announce(
                    f"Prometheus kept running at {self.url} (pid {self._prometheus.proc.pid})"
                )
            else:
                self._prometheus.stop()
        self.metrics.close()


def _interval(scrape_interval_s: int) -> dict[str, str]:
    """A target's own scrape interval (and timeout: a busy host answers late) when it is longer
    than the run's."""
    if scrape_interval_s <= SCRAPE_INTERVAL_S:
        return {}
    return {
        "__scrape_interval__": f"{scrape_interval_s}s",
        "__scrape_timeout__": f"{scrape_interval_s}s",
    }
