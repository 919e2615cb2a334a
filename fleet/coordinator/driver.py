"""The coordinator (Ray driver): plans an experiment, brings up the fleet, hands the trials to
the dispatcher and keeps the run's records, manifest and observability.

One ``PhoneHost`` actor per host holds that host's phones: the local fleet's virtual phones are
started by the actor on the driver's node; a virtual phone with ``host: <ip>`` gets an actor
pinned to that Ray node. Each virtual phone gets cores of its own on its host (the host refuses a
phone it has no cores left for, unless the experiment allows sharing, and then the phone's trial
rows say so), so every phone runs its trials, in the plan's order, at the same time as the
others. A phone that fails marks its trials failed with the reason; the rest goes on.

    result = Coordinator(experiment, runs_dir=Path("runs")).run()
    result = Coordinator(experiment, runs_dir=Path("runs"), run_id=old, resume=True).run()

A run holds an exclusive lock on its directory while it runs (``fleet.results.run_state``).
SIGINT or SIGTERM stops it cleanly: no further trial starts, running trials are asked to Stop
and end ``interrupted`` with their records, never-started ones are marked ``not_run``, the
manifest is written, and ``RunResult.stopped_by`` names the signal; a second signal stops at
once (the store is consistent after every transaction, so nothing committed is lost). A run
that was stopped or killed is finished by ``resume=True``: completed trials are kept, the rest
run again as new attempts that supersede the partial ones.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fleet.coordinator import heap
from fleet.coordinator.config import (
    AndroidPhone,
    Experiment,
    RemotePhone,
    SimulatedPhone,
    VirtualPhone,
)
from fleet.coordinator.dispatch import Dispatcher, reason_of
from fleet.coordinator.manifest import Manifest
from fleet.coordinator.phone_host import PhoneHost, Secret
from fleet.coordinator.plan import Trial, plan_trials
from fleet.coordinator.progress import RunProgress, open_run_log
from fleet.devices.hosts import host_name, names_of
from fleet.observe.run_observer import RunObserver
from fleet.records import AgentDescription, TrialStatus
from fleet.results.run_state import RunLock
from fleet.results.store import ResultStore

LOCAL = "local"
SCRAPES_PER_S = 100  # the run's Prometheus scrapes about this many phone targets a second


def scrape_interval_s(phones: int) -> int:
    """Each phone's scrape interval: 1 s up to 100 phones, then longer (1,000 phones: 10 s), so
    the phones' exporters and Prometheus do the same work per second at any fleet size."""
    return max(1, -(-phones // SCRAPES_PER_S))


log = logging.getLogger("fleet.run")


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    num_trials: int
    statuses: dict[str, str] = field(default_factory=dict)  # trial_id -> status
    stopped_by: str = ""  # the signal that stopped the run ("SIGINT", "SIGTERM"), if any
    skipped: int = 0  # trials a resumed run kept from before

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


class ForcedStop(BaseException):
    """A second SIGINT/SIGTERM: stop now, without waiting for the running trials."""


class ResumeError(Exception):
    """A run directory that cannot be resumed (its experiment plans other trials)."""


def _trace_mismatch(store: ResultStore, trials: list[Trial]) -> str:
    """Why the re-planned requests differ from the stored ones ("" when they are the same)."""
    stored = {
        (r["repetition"], r["workload"], r["request_id"]): (
            r["at_s"],
            r["prompt_tokens"],
            r["output_tokens"],
        )
        for r in store.query(
            "SELECT repetition, workload, request_id, at_s, prompt_tokens, output_tokens "
            "FROM trace_requests"
        )
    }
    planned = {
        (t.repetition, t.workload.name, r.request_id): (r.at_s, r.prompt_tokens, r.output_tokens)
        for t in trials
        for r in t.trace
    }
    if stored != planned:
        return (
            f"the experiment now generates other requests ({len(set(stored) ^ set(planned))} "
            "differ; a trace file or the seed changed)"
        )
    return ""


def new_run_id(name: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-{secrets.token_hex(2)}"


def core_sharers(cpus: dict[str, tuple[str, tuple[int, ...]]]) -> dict[str, list[str]]:
    """{phone: the other phones on its host pinned to one of its cores}, from {phone: (host,
    cores)}, in the order given. Indexed by (host, core): comparing every pair took 0.5 s at
    1,000 phones."""
    by_core: dict[tuple[str, int], list[str]] = {}
    for name, (host, cores) in cpus.items():
        for core in cores:
            by_core.setdefault((host, core), []).append(name)
    order = {name: i for i, name in enumerate(cpus)}
    out = {}
    for name, (host, cores) in cpus.items():
        sharing = {p for core in cores for p in by_core[(host, core)] if p != name}
        out[name] = sorted(sharing, key=order.__getitem__)
    return out


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
        targets_file: Path | None = None,
        targets_grace_s: float = 60.0,
        announce: Any = print,
        resume: bool = False,
        reaper: bool = False,
        base_dir: Path | None = None,
        lines: bool = False,
        verbose: bool = False,
        say: Any = None,
    ):
        self.exp = exp
        self.address = address
        self.run_id = run_id or new_run_id(exp.name)
        self.run_dir = Path(runs_dir) / self.run_id
        self.source = source
        self.progress = progress  # a rich Progress, or None
        self.prometheus_mode = prometheus  # "embedded", "off", or the URL of an existing one
        self.keep_prometheus = keep_prometheus
        self.targets_file = targets_file  # a standing Prometheus's file_sd (shared by runs)
        self.targets_grace_s = targets_grace_s
        self.announce = announce
        self.resume = resume
        self.base_dir = base_dir  # where the experiment's relative paths are read from
        self.lines = lines  # one plain line per trial start and end (output is not a terminal)
        self.say = say or announce  # prints those lines as they are (no markup)
        self.verbose = verbose  # the run log at DEBUG
        self.use_reaper = reaper  # a watchdog ends every child if this process is killed
        self.stop = threading.Event()
        self.stopped_by = ""
        self._forced = False
        self._hosts: dict[str, Any] = {}  # host key -> actor handle
        self._node_actors: dict[str, Any] = {}  # Ray node id -> its one PhoneHost actor
        self._adb_devices: dict[str, list[dict]] | None = None
        self._serials: dict[str, str] = {}  # Android phone -> the serial it was given
        self._aliases: dict[str, set[str]] = {}  # host key -> every name of its node
        self._phone_host: dict[str, str] = {}  # phone -> host key
        self._phone_error: dict[str, str] = {}
        self._cpus: dict[str, tuple[str, tuple[int, ...]]] = {}  # phone -> (host, its cores)
        self._simulated: dict[str, dict | str] = {}  # simulated phone -> started, or why not

    # -- fleet -------------------------------------------------------------------------------

    def _start_ray(self) -> None:
        import ray

        if not ray.is_initialized():
            ray.init(
                address=self.address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                # a local cluster advertises loopback only (see deploy/README.md on Ray's
                # listening sockets and firewalling a multi-host one)
                _node_ip_address=None if self.address else "127.0.0.1",
            )
        self.manifest.data["ray"] = {
            "address": self.address or "local",
            "nodes": [n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")],
        }

    def _node_id(self, host: str) -> str:
        """The Ray node a host name means: "local" (the driver's), a node's host name (see
        fleet.devices.hosts), or its address."""
        import ray

        if host == LOCAL:
            return ray.get_runtime_context().get_node_id()
        for n in ray.nodes():
            if n.get("Alive") and host in names_of(n):
                return n["NodeID"]
        raise RuntimeError(f"no live Ray node at host {host}")

    def _host_actor(self, host: str) -> Any:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if host in self._hosts:
            return self._hosts[host]
        node_id = self._node_id(host)
        actor = self._node_actors.get(node_id)
        if actor is None:  # one per node, whatever names it goes by
            # an asyncio actor: a coroutine per phone's running trial, as many for health
            # checks and stops
            calls = 64 + 2 * len(self.exp.phones)
            actor_cls = ray.remote(num_cpus=0, max_concurrency=calls)(PhoneHost)  # type: ignore[call-overload]
            actor = actor_cls.options(
                name=f"phone-host:{self.run_id}:{node_id[:12]}",
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            ).remote()
            self._node_actors[node_id] = actor
        self._hosts[host] = actor
        return actor

    def _adb_listing(self) -> dict[str, list[dict]]:
        """Every host's adb devices (asked once per run, when Android phones are wanted)."""
        import ray

        if self._adb_devices is None:
            driver = ray.get_runtime_context().get_node_id()
            listing: dict[str, list[dict]] = {}
            for n in ray.nodes():
                if not n.get("Alive"):
                    continue
                named = host_name(n) != n["NodeManagerAddress"]
                host = host_name(n) if named or n["NodeID"] != driver else LOCAL
                self._aliases[host] = set(names_of(n)) | (
                    {LOCAL} if n["NodeID"] == driver else set()
                )
                try:
                    listing[host] = ray.get(
                        self._host_actor(host).adb_devices.remote(), timeout=120
                    )
                except Exception as exc:  # that host's adb server: noted, others go on
                    self.manifest.data["notes"].append(f"host {host}: adb: {reason_of(exc)}")
                    listing[host] = []
            self._adb_devices = listing
        return self._adb_devices

    def _locate(self, phone: AndroidPhone) -> tuple[str, str]:
        """(host, serial) of an Android phone: the host whose adb server lists it ready."""
        seen = []
        for host, devices in sorted(self._adb_listing().items()):
            if phone.host and phone.host not in self._aliases.get(host, {host}):
                continue
            for d in devices:
                seen.append(f"{d['serial']} ({d['state']}, {d['model'] or '?'}) on {host}")
                if d["state"] != "device" or d["serial"] in self._serials.values():
                    continue
                if d["serial"] == phone.serial or (not phone.serial and d["model"] == phone.model):
                    self._serials[phone.name] = d["serial"]
                    return host, d["serial"]
        wanted = f"serial {phone.serial}" if phone.serial else f"a free {phone.model!r}"
        raise RuntimeError(
            f"no ready adb device with {wanted}; listed: {'; '.join(seen) or 'none'}"
        )

    def _start_simulated(self) -> None:
        """Processes on the driver's host serve the run's simulated phones (per profile, up to
        250 phones a process: PhoneHost.start_simulated_phones)."""
        import ray

        groups: dict[str, list[SimulatedPhone]] = {}
        for p in self.exp.phones:
            if isinstance(p, SimulatedPhone):
                groups.setdefault(p.profile, []).append(p)
        for profile, phones in groups.items():
            try:
                actor = self._host_actor(LOCAL)
                started = ray.get(actor.start_simulated_phones.remote(phones, profile))
                self._simulated.update(started)
                log.info("%d simulated phones replaying profile %s", len(phones), profile)
            except Exception as exc:  # their trials fail with the reason; the rest go on
                self._simulated.update({p.name: reason_of(exc) for p in phones})
                log.error("simulated phones of profile %s: %s", profile, reason_of(exc))

    def _connect(
        self, phone: VirtualPhone | RemotePhone | AndroidPhone | SimulatedPhone, actor: Any
    ) -> dict:
        """Start or reach the phone's agent through its host actor; returns its address and,
        for a virtual phone, its cores."""
        import ray

        if isinstance(phone, SimulatedPhone):
            started = self._simulated.get(phone.name, "its process was not started")
            if isinstance(started, str):
                raise RuntimeError(started)
            return started
        if isinstance(phone, VirtualPhone):
            return dict(
                ray.get(actor.start_virtual_phone.remote(phone, self.exp.allow_shared_cores))
            )
        if isinstance(phone, AndroidPhone):
            started = dict(
                ray.get(actor.start_android_phone.remote(phone, self._serials[phone.name]))
            )
            self.manifest.data["notes"].append(f"phone {phone.name}: {started['prepared']}")
            return started
        token = os.environ.get(phone.token_env, "")
        if not token:
            raise RuntimeError(f"${phone.token_env} is not set (token for {phone.name})")
        tls = {k: Path(v).read_bytes() for k, v in phone.tls_files().items()}
        if not tls:
            self.announce(
                f"[bold red]warning:[/] {phone.name}: plaintext gRPC to {phone.address}: "
                "its token crosses the network in the clear (insecure: true)"
            )
            self.manifest.data["notes"].append(f"phone {phone.name}: plaintext, insecure: true")
        ray.get(actor.connect.remote(phone.name, phone.address, Secret(token), tls))
        return {"address": phone.address}

    def _bring_up(self, phone: VirtualPhone | RemotePhone | AndroidPhone | SimulatedPhone) -> None:
        import ray

        host = phone.host if isinstance(phone, VirtualPhone) else LOCAL
        self._phone_host[phone.name] = host
        try:
            if isinstance(phone, AndroidPhone):
                host, _serial = self._locate(phone)
                self._phone_host[phone.name] = host
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
            log.error(reason)
            return
        metrics_address, metrics_path = "", ""
        if started.get("metrics_port"):  # an Android phone's, forwarded to its host's loopback
            desc = replace(desc, metrics_port=started["metrics_port"])
        relay = host != LOCAL or isinstance(phone, AndroidPhone)  # its forward may move
        if started.get("metrics_path"):  # a simulated phone: its own path on a shared port
            metrics_address, metrics_path = started["metrics_address"], started["metrics_path"]
        elif desc.metrics_port and relay and address.startswith("127."):
            # on a host's loopback (another host's, or an adb forward that a rejoin renews):
            # scraped through that host's relay
            target = ray.get(actor.metrics_target.remote(phone.name, desc.metrics_port))
            metrics_address, metrics_path = target["address"], target["path"]
        elif desc.metrics_port:
            metrics_address = f"{address.rsplit(':', 1)[0]}:{desc.metrics_port}"
        self.observer.phone_up(
            phone.name, metrics_address, metrics_path, host, scrape_interval_s(len(self.exp.phones))
        )
        log.info(
            "phone %s up on %s at %s (agent pid %s)", phone.name, host, address, desc.agent_pid
        )
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
        for name, others in core_sharers(self._cpus).items():
            cores = list(self._cpus[name][1])
            self.store.mark_shared_cores(name, bool(others))
            self.manifest.data["phones"][name]["shared_cores"] = bool(others)
            if others:
                self.manifest.data["notes"].append(
                    f"phone {name} shares cores {cores} with {', '.join(others)} "
                    "(allow_shared_cores): its latencies include their contention"
                )

    def _health(self, phones: list[str]) -> dict[str, bool]:
        """{phone: up}: one call per host actor, each checking its phones."""
        import ray

        by_host: dict[str, list[str]] = {}
        for p in phones:
            by_host.setdefault(self._phone_host[p], []).append(p)
        asks = {h: self._hosts[h].health_many.remote(names) for h, names in by_host.items()}
        up: dict[str, bool] = {}
        for host, ref in asks.items():
            try:
                up.update(ray.get(ref, timeout=self.exp.heartbeat_s))
            except Exception:  # a dead or stuck host: its phones are down
                up.update(dict.fromkeys(by_host[host], False))
        return up

    def _live_phones(self) -> list[str]:
        return [
            p
            for p, h in list(self._phone_host.items())
            if p not in self._phone_error and h in self._hosts
        ]

    # -- run ---------------------------------------------------------------------------------

    def _open_run(self) -> list[Trial]:
        """A new run: its directory, lock, store with every planned trial, and manifest."""
        self.run_dir.mkdir(parents=True, exist_ok=False)
        self._lock = RunLock(self.run_dir).acquire()
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
        self.manifest.data["experiment_dir"] = str(self.base_dir.resolve()) if self.base_dir else ""
        self.manifest.write()
        self._open_observer(len(trials))
        return trials

    def _reopen_run(self) -> tuple[list[Trial], int]:
        """A stopped or crashed run: the same plan, its completed trials kept; returns the
        trials still to run and how many were kept."""
        self._lock = RunLock(self.run_dir).acquire()
        self.store = ResultStore(self.run_dir / "results.sqlite")
        self.manifest = Manifest.load(self.run_dir / "manifest.json")
        trials = plan_trials(self.exp)
        stored = {
            r["trial_id"]: r["status"]
            for r in self.store.query("SELECT trial_id, status FROM trials")
        }
        planned = {t.trial_id for t in trials}
        if planned != set(stored):
            raise ResumeError(
                f"{self.run_dir}: the experiment no longer plans the trials this run holds "
                f"({len(planned ^ set(stored))} differ); it cannot be resumed"
            )
        mismatch = _trace_mismatch(self.store, trials)
        if mismatch:
            raise ResumeError(f"{self.run_dir}: {mismatch}; it cannot be resumed")
        # completed and failed trials are results; the rest (pending, running when the
        # coordinator died, interrupted, not_run) run again
        kept = (TrialStatus.COMPLETED.value, TrialStatus.FAILED.value)
        done = {tid for tid, st in stored.items() if st in kept}
        todo = [t for t in trials if t.trial_id not in done]
        self.manifest.data.setdefault("resumed", []).append(
            {"at": time.time(), "trials": len(todo), "kept": len(done)}
        )
        self.manifest.update(status="running", ended_at=None)
        self._open_observer(len(trials))
        return todo, len(done)

    def _open_observer(self, num_trials: int) -> None:
        git = str(self.manifest.data["git"].get("commit", ""))
        self.observer = RunObserver(
            self.run_dir,
            run_id=self.run_id,
            experiment=self.exp.name,
            git=git[:12],
            mode=self.prometheus_mode,
            keep_prometheus=self.keep_prometheus,
            announce=self.announce,
            shared_targets=self.targets_file,
            targets_grace_s=self.targets_grace_s,
        )

    # -- stopping ----------------------------------------------------------------------------

    def request_stop(self, signame: str) -> None:
        """First call: stop cleanly (no new trial, running ones asked to Stop). Second: at once."""
        if self.stop.is_set():
            self._forced = True
            raise ForcedStop(signame)
        self.stopped_by = signame
        self.stop.set()
        self.announce(
            f"[yellow]{signame}: stopping: no new trials; running ones are asked to stop "
            "(send it again to stop at once)[/]"
        )

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda n, _f: self.request_stop(signal.Signals(n).name))

    # -- run ---------------------------------------------------------------------------------

    def run(self) -> RunResult:
        reaper = None
        if self.use_reaper:
            from fleet.coordinator.reaper import start_reaper

            reaper = start_reaper()
        self._install_signal_handlers()
        skipped = 0
        if self.resume:
            trials, skipped = self._reopen_run()
        else:
            trials = self._open_run()
        log_handler = open_run_log(self.run_dir / "fleet.log", self.verbose)
        log.info(
            "%s %s: %d trials to run (%d kept), %d phones",
            "resume" if self.resume else "run", self.run_id, len(trials), skipped,
            len(self.exp.phones),
        )  # fmt: skip
        total = len(trials) + skipped
        final: dict[str, str] = {}
        observing = False
        try:
            self.manifest.data["prometheus"] = self.observer.start(
                total, scrape_interval_s(len(self.exp.phones))
            )
            observing = True
            self._start_ray()
            self._install_signal_handlers()  # after Ray's own
            self._start_simulated()
            with self.observer.targets_deferred():  # one targets write for the whole fleet
                for phone in self.exp.phones:
                    if not self.stop.is_set():
                        self._bring_up(phone)
            self._mark_shared_cores()
            self.manifest.write()
            self.observer.start_heartbeat(self._live_phones, self._health, self.exp.heartbeat_s)
            by_phone: dict[str, list[Trial]] = {}
            for t in trials:  # in the plan's order
                by_phone.setdefault(t.phone, []).append(t)
            hosts = {p: self._hosts[h] for p, h in self._phone_host.items() if h in self._hosts}
            offsets = self._host_clock_offsets()
            dispatcher = Dispatcher(
                self.store,
                self.observer,
                hosts,
                self._phone_error,
                self.exp.sample_interval_s,
                self.progress,
                cooldown_s=self.exp.cooldown_s,
                start_rate_per_s=self.exp.start_rate_per_s,
                drain_s=self.exp.drain_s,
                stop=self.stop,
                trial_log=RunProgress(trials, self.exp.drain_s, say=self.say, lines=self.lines),
                clock_offsets={p: offsets.get(id(a), 0.0) for p, a in hosts.items()},
            )
            dispatcher.stop_reason = "the run was stopped"
            if not self.stop.is_set():
                self._settle_host_heaps()
                with heap.settled():
                    dispatcher.run(by_phone)
        except ForcedStop:
            pass
        except BaseException:
            self.manifest.update(status="aborted")
            raise
        finally:
            try:
                self._settle(trials)
                self.manifest.update(
                    status="stopped" if self.stopped_by else self.manifest.data["status"],
                    ended_at=time.time(),
                    stopped_by=self.stopped_by or None,
                )
                if self.manifest.data["status"] == "running":
                    self.manifest.update(status="finished")
                if not self._forced:
                    try:
                        self._collect_agent_logs()
                    except Exception as exc:  # logs are a convenience: the run's end goes on
                        log.warning("agent logs not collected: %s", reason_of(exc))
                    self._shutdown()
                if observing:
                    self.observer.stop([p.name for p in self.exp.phones])
                final = {  # every trial of the run, a resumed one's kept trials too
                    r["trial_id"]: r["status"]
                    for r in self.store.query("SELECT trial_id, status FROM trials")
                }
                self.store.close()  # checkpoints the WAL: the run directory is one SQLite file
                self._lock.release()
                if reaper is not None:
                    if self._forced:  # leave it to end what a forced stop left running
                        reaper.stdin.close()  # type: ignore[union-attr]
                    else:
                        from fleet.coordinator.reaper import stop_reaper

                        stop_reaper(reaper)
            finally:  # the run log lets go of this run however its end went
                log.info("run %s ended: %s", self.run_id, self.manifest.data["status"])
                logging.getLogger("fleet").removeHandler(log_handler)
                log_handler.close()
        return RunResult(self.run_id, self.run_dir, total, final, self.stopped_by, skipped)

    def _settle(self, trials: list[Trial]) -> None:
        """Every trial of this session ends with a final status: never started -> not_run,
        cut short by a forced stop -> interrupted."""
        ids = {t.trial_id for t in trials}
        rows = self.store.query("SELECT trial_id, status FROM trials")
        why = f"stopped by {self.stopped_by}" if self.stopped_by else "the run ended early"
        pending = [
            r["trial_id"]
            for r in rows
            if r["trial_id"] in ids
            and r["status"] in (TrialStatus.PENDING.value, TrialStatus.NOT_RUN.value)
        ]
        running = [
            r["trial_id"]
            for r in rows
            if r["trial_id"] in ids and r["status"] == TrialStatus.RUNNING.value
        ]
        if pending:
            self.store.mark_trials(pending, TrialStatus.NOT_RUN, f"never started ({why})")
        if running:
            self.store.mark_trials(running, TrialStatus.INTERRUPTED, f"cut short ({why})")

    def _host_clock_offsets(self) -> dict[int, float]:
        """{id(host actor): its wall clock less this one's} for the actors on other nodes (the
        driver's own node shares its clock): a trial's start slot and the host's times in its
        dispatch figure are compared through it, so a host whose clock is off by milliseconds
        does not shift them."""
        import ray

        from fleet.coordinator.host_clock import clock_offset

        here = ray.get_runtime_context().get_node_id()
        out: dict[int, float] = {}
        for node_id, actor in self._node_actors.items():
            if node_id == here:
                continue
            try:
                offset, error = clock_offset(functools.partial(_read_clock, actor))
            except Exception as exc:  # a dead host's trials fail on their own
                log.warning("a phone host's clock not read: %s", reason_of(exc))
                continue
            out[id(actor)] = offset
            say = log.warning if abs(offset) > 1.0 else log.info
            say(
                "node %s: its clock is %+.1f ms from the coordinator's (+/- %.1f ms); "
                "dispatch times are corrected by it",
                node_id[:12],
                offset * 1e3,
                error * 1e3,
            )
        return out

    def _settle_host_heaps(self) -> None:
        """The phones are up: each host actor's long-lived heap is frozen out of later garbage
        collections, and its automatic collections stop (PhoneHost.settle_heap)."""
        import ray

        for actor in self._node_actors.values():
            try:
                ray.get(actor.settle_heap.remote(), timeout=30)
            except Exception as exc:  # a dead host's trials fail on their own
                log.warning("a phone host's heap not settled: %s", reason_of(exc))

    def _collect_agent_logs(self) -> None:
        """Each phone's agent log, from whichever host it ran on, into runs/<id>/agents/."""
        import ray

        out = self.run_dir / "agents"
        for phone, host in self._phone_host.items():
            actor = self._hosts.get(host)
            if actor is None:
                continue
            try:
                lines = ray.get(actor.agent_log.remote(phone), timeout=30)
            except Exception as exc:  # a dead host's agents' logs are gone with it
                log.warning("phone %s: no agent log (%s)", phone, reason_of(exc))
                continue
            out.mkdir(exist_ok=True)
            (out / f"{phone}.log").write_text("".join(f"{line}\n" for line in lines))

    def _shutdown(self) -> None:
        try:
            import ray

            for actor in self._node_actors.values():
                try:
                    ray.get(actor.shutdown.remote(), timeout=30)
                except Exception:
                    pass
                ray.kill(actor)
        finally:
            self._hosts.clear()
            self._node_actors.clear()


def _read_clock(actor: Any) -> float:
    import ray

    return ray.get(actor.clock.remote(), timeout=10)
