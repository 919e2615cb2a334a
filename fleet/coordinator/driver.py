"""The coordinator (Ray driver): plans an experiment, brings up the fleet, hands the trials to
the dispatcher and keeps the run's records, manifest and observability.

One ``PhoneHost`` actor per host holds that host's phones: the local fleet's virtual phones are
started by the actor on the driver's node; a virtual phone with ``host: <ip>`` gets an actor
pinned to that Ray node. Each virtual phone gets cores of its own on its host (the host refuses a
phone it has no cores left for, unless the experiment allows sharing, and then the phone's trial
rows say so), so every phone runs its trials, in the plan's order, at the same time as the
others. A phone that fails marks its trials failed with the reason; the rest goes on.

    result = Coordinator(experiment, runs_dir=Path("runs")).run()
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fleet.coordinator.config import Experiment, RemotePhone, VirtualPhone
from fleet.coordinator.dispatch import Dispatcher, reason_of
from fleet.coordinator.manifest import Manifest
from fleet.coordinator.phone_host import PhoneHost
from fleet.coordinator.plan import Trial, plan_trials
from fleet.observe.run_observer import RunObserver
from fleet.records import AgentDescription, TrialStatus
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
        return self.num_trials - sum(
            s == TrialStatus.COMPLETED.value for s in self.statuses.values()
        )


def method_of(exp: Experiment) -> dict[str, Any]:
    """How the run measures, for the manifest and the report: order, pauses, threads, n."""
    threads = {
        p.label: (
            f"{p.threads_per_process} per SLM process (set in the experiment)"
            if p.threads_per_process
            else "the phone's cores, per SLM process"
        )
        for p in exp.paradigms
    }
    return {
        "trial_order": exp.trial_order,
        "cooldown_s": exp.cooldown_s,
        "drain_s": exp.drain_s,
        "min_samples": exp.min_samples,
        "threads": threads,
        "cores": "each virtual phone's processes pinned to cores of its own (sched_setaffinity)",
        "requests": "one trace per (workload, repetition); solo baselines replay it",
    }


def new_run_id(name: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-{secrets.token_hex(2)}"


class Coordinator:
    def __init__(
        self,
        exp: Experiment,
        *,
        runs_dir: Path,
        source: str = "",
        address: str | None = None,
        run_id: str | None = None,
        progress: Any = None,
        prometheus: str = "embedded",
        keep_prometheus: bool = False,
        announce: Any = print,
    ):
        self.exp = exp
        self.address = address
        self.run_id = run_id or new_run_id(exp.name)
        self.run_dir = Path(runs_dir) / self.run_id
        self.source = source
        self.progress = progress  # a rich Progress, or None
        self.prometheus_mode = prometheus  # "embedded", "off", or the URL of an existing one
        self.keep_prometheus = keep_prometheus
        self.announce = announce
        self._token = secrets.token_urlsafe(24)  # virtual phones' token, never written to disk
        self._hosts: dict[str, Any] = {}  # host key -> actor handle
        self._phone_host: dict[str, str] = {}  # phone -> host key
        self._phone_error: dict[str, str] = {}
        self._cpus: dict[str, tuple[str, tuple[int, ...]]] = {}  # phone -> (host, its cores)

    # -- fleet -------------------------------------------------------------------------------

    def _start_ray(self) -> None:
        import ray

        if not ray.is_initialized():
            ray.init(
                address=self.address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        self.manifest.data["ray"] = {
            "address": self.address or "local",
            "nodes": [n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")],
        }

    def _host_actor(self, host: str) -> Any:
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
        actor_cls = ray.remote(num_cpus=0, max_concurrency=64)(PhoneHost)  # type: ignore[call-overload]
        actor = actor_cls.options(
            name=f"phone-host:{self.run_id}:{host}",
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote(self._token)
        self._hosts[host] = actor
        return actor

    def _connect(self, phone: VirtualPhone | RemotePhone, actor: Any) -> dict:
        """Start or reach the phone's agent through its host actor; returns its address and,
        for a virtual phone, its cores."""
        import ray

        if isinstance(phone, VirtualPhone):
            return dict(
                ray.get(actor.start_virtual_phone.remote(phone, self.exp.allow_shared_cores))
            )
        token = os.environ.get(phone.token_env, "")
        if not token:
            raise RuntimeError(f"${phone.token_env} is not set (token for {phone.name})")
        cert = Path(phone.tls_ca_file).read_bytes() if phone.tls_ca_file else None
        ray.get(actor.connect.remote(phone.name, phone.address, token, cert))
        return {"address": phone.address}

    def _bring_up(self, phone: VirtualPhone | RemotePhone) -> None:
        import ray

        host = phone.host if isinstance(phone, VirtualPhone) else LOCAL
        self._phone_host[phone.name] = host
        try:
            actor = self._host_actor(host)
            started = self._connect(phone, actor)
            address = started["address"]
            desc: AgentDescription = ray.get(actor.describe.remote(phone.name))
        except Exception as exc:  # a phone that cannot come up fails its trials, not the run
            reason = f"phone {phone.name} did not come up: {reason_of(exc)}"
            self._phone_error[phone.name] = reason
            self.store.upsert_phone(
                phone.name,
                kind=phone.kind,
                host=host,
                status="down",
                error=reason,
                address=getattr(phone, "address", ""),
            )
            self.observer.phone_down(phone.name)
            self.manifest.data["phones"][phone.name] = {"status": "down", "error": reason}
            return
        metrics_address = ""
        if desc.metrics_port and host != LOCAL and address.startswith("127."):
            self.manifest.data["notes"].append(
                f"phone {phone.name}: its /metrics is on {host}'s loopback; not scraped here"
            )
        elif desc.metrics_port:
            metrics_address = f"{address.rsplit(':', 1)[0]}:{desc.metrics_port}"
        self.observer.phone_up(phone.name, metrics_address)
        cpus, shared = tuple(started.get("cpus", ())), bool(started.get("shared"))
        self.store.upsert_phone(
            phone.name,
            kind=phone.kind,
            address=address,
            agent_pid=desc.agent_pid,
            host=host,
            status="up",
            describe=desc,
            cpus=cpus,
            shared_cores=shared,
        )
        self._cpus[phone.name] = (host, cpus)
        self.manifest.data["phones"][phone.name] = {
            "status": "up",
            "address": address,
            "agent_pid": desc.agent_pid,
            "cpus": list(cpus),
            "shared_cores": shared,
            "describe": asdict(desc),
        }

    def _mark_shared_cores(self) -> None:
        """Every phone whose cores overlap another's on its host is marked, both sides."""
        for name, (host, cpus) in self._cpus.items():
            others = [
                p
                for p, (h, cs) in self._cpus.items()
                if p != name and h == host and set(cs) & set(cpus)
            ]
            self.store.mark_shared_cores(name, bool(others))
            self.manifest.data["phones"][name]["shared_cores"] = bool(others)
            if others:
                self.manifest.data["notes"].append(
                    f"phone {name} shares cores {list(cpus)} with {', '.join(others)} "
                    "(allow_shared_cores): its latencies include their contention"
                )

    def _health(self, phone: str) -> bool:
        import ray

        return bool(
            ray.get(
                self._hosts[self._phone_host[phone]].health.remote(phone),
                timeout=self.exp.heartbeat_s,
            )
        )

    def _live_phones(self) -> list[str]:
        return [
            p
            for p, h in list(self._phone_host.items())
            if p not in self._phone_error and h in self._hosts
        ]

    # -- run ---------------------------------------------------------------------------------

    def _open_run(self) -> list[Trial]:
        self.run_dir.mkdir(parents=True, exist_ok=False)
        self.store = ResultStore(self.run_dir / "results.sqlite")
        self.manifest = Manifest(
            self.run_dir / "manifest.json",
            run_id=self.run_id,
            experiment=self.exp.model_dump(mode="json"),
            source=self.source,
        )
        trials = plan_trials(self.exp)
        for t in trials:
            spec = t.deploy_spec()
            self.store.add_trial(
                t.trial_id,
                phone=t.phone,
                paradigm=t.paradigm.label,
                workload=t.workload.name,
                model=t.model.label,
                repetition=t.repetition,
                shared_cores=self.exp.allow_shared_cores,
                mix=t.mix,
                apps=spec.apps,
                seq=t.seq,
                trace=t.trace,
            )
        self.manifest.data["method"] = method_of(self.exp)
        git = str(self.manifest.data["git"].get("commit", ""))
        self.observer = RunObserver(
            self.run_dir,
            run_id=self.run_id,
            experiment=self.exp.name,
            git=git[:12],
            mode=self.prometheus_mode,
            keep_prometheus=self.keep_prometheus,
            announce=self.announce,
        )
        return trials

    def run(self) -> RunResult:
        trials = self._open_run()
        statuses: dict[str, str] = {}
        observing = False
        try:
            self.manifest.data["prometheus"] = self.observer.start(len(trials))
            observing = True
            self._start_ray()
            for phone in self.exp.phones:
                self._bring_up(phone)
            self._mark_shared_cores()
            self.manifest.write()
            self.observer.start_heartbeat(self._live_phones, self._health, self.exp.heartbeat_s)
            by_phone: dict[str, list[Trial]] = {}
            for t in trials:  # in the plan's order
                by_phone.setdefault(t.phone, []).append(t)
            hosts = {p: self._hosts[h] for p, h in self._phone_host.items() if h in self._hosts}
            statuses = Dispatcher(
                self.store,
                self.observer,
                hosts,
                self._phone_error,
                self.exp.sample_interval_s,
                self.progress,
                cooldown_s=self.exp.cooldown_s,
                drain_s=self.exp.drain_s,
            ).run(by_phone)
            self.manifest.update(status="finished")
        except BaseException:
            self.manifest.update(status="aborted")
            raise
        finally:
            self.manifest.update(ended_at=time.time())
            self._shutdown()
            if observing:
                self.observer.stop([p.name for p in self.exp.phones])
            self.store.close()  # checkpoints the WAL: the run directory is one SQLite file
        return RunResult(self.run_id, self.run_dir, len(trials), statuses)

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
