"""The coordinator (Ray driver): plans an experiment, brings up the fleet, dispatches trials and
persists what streams back.

One ``PhoneHost`` actor per host holds that host's phones: the local fleet's virtual phones are
started by the actor on the driver's node; a virtual phone with ``host: <ip>`` gets an actor
pinned to that Ray node. Trials of phones that share a host's cores run one after another unless
the experiment allows sharing (and then every trial row says so). A phone that fails marks its
trials failed with the reason; the rest of the experiment goes on.

    result = Coordinator(experiment, runs_dir=Path("runs")).run()
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fleet.coordinator.config import Experiment, RemotePhone, VirtualPhone
from fleet.coordinator.manifest import Manifest
from fleet.coordinator.phone_host import PhoneHost
from fleet.coordinator.plan import Trial, core_domain, plan_trials
from fleet.records import TrialStatus
from fleet.results.store import ResultStore

LOCAL = "local"


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    num_trials: int
    statuses: dict[str, str] = field(default_factory=dict)  # trial_id -> status

    @property
    def num_failed(self) -> int:
        """Trials that did not complete, including any that never got a status."""
        return self.num_trials - sum(s == TrialStatus.COMPLETED.value
                                     for s in self.statuses.values())


def new_run_id(name: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-{secrets.token_hex(2)}"


class Coordinator:
    def __init__(self, exp: Experiment, *, runs_dir: Path, source: str = "",
                 address: str | None = None, run_id: str | None = None, progress=None,
                 prometheus: str = "embedded", keep_prometheus: bool = False,
                 announce=print):
        self.exp = exp
        self.address = address
        self.run_id = run_id or new_run_id(exp.name)
        self.run_dir = Path(runs_dir) / self.run_id
        self.source = source
        self.progress = progress  # a rich Progress, or None
        self._token = secrets.token_urlsafe(24)  # virtual phones' token, never written to disk
        self._hosts: dict[str, object] = {}  # host key -> actor handle
        self._phone_host: dict[str, str] = {}  # phone -> host key
        self._phone_error: dict[str, str] = {}
        self.prometheus_mode = prometheus  # "embedded", "off", or the URL of an existing one
        self.keep_prometheus = keep_prometheus
        self.announce = announce
        self.prometheus_url = ""
        self._prometheus = None
        self._stop_heartbeat = threading.Event()

    # -- fleet -------------------------------------------------------------------------------

    def _start_ray(self) -> None:
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        self.manifest.data["ray"] = {"address": self.address or "local",
                                     "nodes": [n["NodeManagerAddress"] for n in ray.nodes()
                                               if n.get("Alive")]}

    def _host_actor(self, host: str):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if host in self._hosts:
            return self._hosts[host]
        if host == LOCAL:
            node_id = ray.get_runtime_context().get_node_id()
        else:
            nodes = [n for n in ray.nodes() if n.get("Alive") and n["NodeManagerAddress"] == host]
            if not nodes:
                raise RuntimeError(f"no live Ray node at host {host}")
            node_id = nodes[0]["NodeID"]
        actor_cls = ray.remote(num_cpus=0, max_concurrency=64)(PhoneHost)
        actor = actor_cls.options(
            name=f"phone-host:{self.run_id}:{host}",
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote(self._token)
        self._hosts[host] = actor
        return actor

    def _bring_up(self, phone) -> None:
        import os

        import ray

        host = phone.host if isinstance(phone, VirtualPhone) else LOCAL
        self._phone_host[phone.name] = host
        try:
            actor = self._host_actor(host)
            if isinstance(phone, VirtualPhone):
                info = ray.get(actor.start_virtual_phone.remote(phone))
            else:
                token = os.environ.get(phone.token_env, "")
                if not token:
                    raise RuntimeError(f"${phone.token_env} is not set (token for {phone.name})")
                cert = Path(phone.tls_ca_file).read_bytes() if phone.tls_ca_file else None
                ray.get(actor.connect.remote(phone.name, phone.address, token, cert))
                info = {"address": phone.address, "pid": 0}
            describe = ray.get(actor.describe.remote(phone.name))
        except Exception as exc:  # a phone that cannot come up fails its trials, not the run
            reason = f"phone {phone.name} did not come up: {_reason(exc)}"
            self._phone_error[phone.name] = reason
            self.store.upsert_phone(phone.name, kind=phone.kind, host=host, status="down",
                                    error=reason, address=getattr(phone, "address", ""))
            self.metrics.phone_up(phone.name, False)
            self.manifest.data["phones"][phone.name] = {"status": "down", "error": reason}
            return
        pid = int(describe.get("agentPid", 0)) or info["pid"]
        metrics_port = int(describe.get("metricsPort", 0))
        if metrics_port and host != LOCAL and info["address"].startswith("127."):
            self.manifest.data["notes"].append(
                f"phone {phone.name}: its /metrics is on {host}'s loopback; not scraped here")
        elif metrics_port:
            host_part = info["address"].rsplit(":", 1)[0]
            self.targets.set(phone.name, f"{host_part}:{metrics_port}", job="phone-agent",
                             phone=phone.name)
        self.metrics.phone_up(phone.name, True)
        self.store.upsert_phone(phone.name, kind=phone.kind, address=info["address"],
                                agent_pid=pid, host=host, status="up", describe=describe)
        self.manifest.data["phones"][phone.name] = {"status": "up", "address": info["address"],
                                                    "agent_pid": pid, "describe": describe}

    # -- trials ------------------------------------------------------------------------------

    def _run_trial(self, trial: Trial, task) -> str:
        import ray

        store = self.store
        self.metrics.trial_state("pending", "running")
        store.start_trial(trial.trial_id)
        if trial.phone in self._phone_error:
            store.finish_trial(trial.trial_id, TrialStatus.FAILED, self._phone_error[trial.phone])
            self.metrics.trial_state("running", "failed")
            return TrialStatus.FAILED.value
        actor = self._hosts[self._phone_host[trial.phone]]
        n_records = 0
        status, reason, summary = TrialStatus.FAILED, "no result", None
        try:
            stream = actor.run_trial.remote(trial.phone, trial.deploy_spec(),
                                            trial.workload_run(self.exp.sample_interval_s))
            for ref in stream:
                kind, payload = ray.get(ref)
                if kind == "deployed":
                    store.set_deploy(trial.trial_id, payload)
                elif kind == "events":
                    stored = store.add_events(trial.trial_id, payload)[0]
                    n_records += stored
                    self.metrics.records_stored(trial.phone, stored)
                    self._advance(task, trial, n_records)
                elif kind == "summary":
                    summary = payload
                    status, reason = summary.status, summary.reason
                elif kind == "failed":
                    status, reason = TrialStatus.FAILED, payload
        except Exception as exc:  # the host actor itself died: records stored so far stay
            status, reason = TrialStatus.FAILED, f"phone host died: {_reason(exc)}"
        store.finish_trial(trial.trial_id, status, reason, summary)
        self.metrics.trial_state("running", status.value)
        return status.value

    def _advance(self, task, trial: Trial, n_records: int) -> None:
        if self.progress is not None and task is not None:
            self.progress.update(task, description=f"{trial.trial_id}: {n_records} requests")

    def _run_domain(self, domain: str, trials: list[Trial], statuses: dict[str, str]) -> None:
        task = None
        if self.progress is not None:
            task = self.progress.add_task(domain, total=len(trials))
        for trial in trials:
            self._advance(task, trial, 0)
            try:
                statuses[trial.trial_id] = self._run_trial(trial, task)
            except Exception as exc:  # a bug or a store error fails this trial, not the domain
                reason = f"coordinator error: {_reason(exc)}"
                self.store.finish_trial(trial.trial_id, TrialStatus.FAILED, reason)
                self.metrics.trial_state("running", "failed")
                statuses[trial.trial_id] = TrialStatus.FAILED.value
            if task is not None:
                self.progress.advance(task)

    # -- run ---------------------------------------------------------------------------------

    def run(self) -> RunResult:
        self.run_dir.mkdir(parents=True, exist_ok=False)
        self.store = ResultStore(self.run_dir / "results.sqlite")
        self.manifest = Manifest(self.run_dir / "manifest.json", run_id=self.run_id,
                                 experiment=self.exp.model_dump(mode="json"), source=self.source)
        trials = plan_trials(self.exp)
        for t in trials:
            self.store.add_trial(t.trial_id, phone=t.phone, paradigm=t.paradigm.label,
                                 workload=t.workload.name, model=t.model.label,
                                 repetition=t.repetition,
                                 shared_cores=self.exp.allow_shared_cores, mix=t.mix,
                                 num_apps=len(t.apps))
        if self.exp.allow_shared_cores:
            self.manifest.data["notes"].append(
                "allow_shared_cores: trials of phones on one host ran at once and shared its "
                "cores; their latencies include that contention")
        statuses: dict[str, str] = {}
        self.metrics = None
        try:
            self._start_observability(len(trials))
            self._start_ray()
            for phone in self.exp.phones:
                self._bring_up(phone)
            self.manifest.write()
            threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()
            domains: dict[str, list[Trial]] = {}
            for t in trials:
                domains.setdefault(core_domain(self.exp, t.phone), []).append(t)
            threads = [threading.Thread(target=self._run_domain, args=(d, ts, statuses),
                                        name=f"domain-{d}") for d, ts in domains.items()]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            self.manifest.update(status="finished")
        except BaseException:
            self.manifest.update(status="aborted")
            raise
        finally:
            self.manifest.update(ended_at=time.time())
            self._stop_heartbeat.set()
            self._shutdown()
            if self.metrics is not None:
                self._stop_observability()
            self.store.close()  # checkpoints the WAL: the run directory is one SQLite file
        return RunResult(self.run_id, self.run_dir, len(trials), statuses)

    # -- observability -----------------------------------------------------------------------

    def _start_observability(self, num_trials: int) -> None:
        from fleet.observe.coordinator_metrics import FleetMetrics
        from fleet.observe.prometheus import EmbeddedPrometheus, PrometheusError, TargetsFile

        git = self.manifest.data["git"].get("commit", "")
        self.metrics = FleetMetrics(run_id=self.run_id, experiment=self.exp.name, git=git[:12])
        for _ in range(num_trials):
            self.metrics.trial_state(None, "pending")
        port = self.metrics.serve("127.0.0.1", 0)
        self.targets = TargetsFile(self.run_dir / "prometheus" / "targets.json")
        self.targets.set("coordinator", f"127.0.0.1:{port}", job="coordinator")
        self.manifest.data["prometheus"] = {"targets_file": str(self.targets.path.resolve()),
                                            "coordinator_metrics": f"127.0.0.1:{port}"}
        if self.prometheus_mode == "off":
            return
        if self.prometheus_mode != "embedded":
            self.prometheus_url = self.prometheus_mode
            self.announce(f"Prometheus: {self.prometheus_url} (it must read the file_sd targets "
                          f"in {self.targets.path.resolve()})")
            return
        self._prometheus = EmbeddedPrometheus(self.run_dir / "prometheus", self.targets.path)
        try:
            self.prometheus_url = self._prometheus.start()
            self.announce(f"Prometheus: {self.prometheus_url} (embedded; scraping this run)")
        except PrometheusError as exc:
            self._prometheus = None
            self.announce(f"Prometheus: not started: {exc}")
        self.manifest.data["prometheus"]["url"] = self.prometheus_url

    def _stop_observability(self) -> None:
        for phone in self.exp.phones:
            self.targets.remove(phone.name)
        self.targets.remove("coordinator")  # its endpoint closes with this run
        if self._prometheus is not None:
            if self.keep_prometheus:
                self.announce(f"Prometheus kept running at {self.prometheus_url} "
                              f"(pid {self._prometheus.proc.pid})")
            else:
                self._prometheus.stop()
        self.metrics.close()

    def _heartbeat(self) -> None:
        """Health-check every phone each heartbeat: a silent phone shows as down, not a gap."""
        import ray

        while not self._stop_heartbeat.wait(self.exp.heartbeat_s):
            for phone, host in list(self._phone_host.items()):
                if phone in self._phone_error or host not in self._hosts:
                    continue
                try:
                    up = ray.get(self._hosts[host].health.remote(phone),
                                 timeout=self.exp.heartbeat_s)
                except Exception:
                    up = False
                self.metrics.phone_up(phone, bool(up))

    def _shutdown(self) -> None:
        try:
            import ray

            for actor in self._hosts.values():
                try:
                    ray.get(actor.shutdown.remote(), timeout=30)
                except Exception:
                    pass
                ray.kill(actor)
        finally:
            self._hosts.clear()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:500]
