"""Shared model service paradigms: one SLM process serves every app over local IPC.

- ``SlmaasParadigm`` (SLM as a service): one copy of the weights, continuous batching across
  apps, shared-prefix KV reuse, first come first served and app-agnostic.
- ``AgentOsParadigm`` (agent-refined OS): the same service as an OS subsystem: a pluggable
  scheduler (priority-preemptive by default), persistent per-app contexts, and contexts swapped
  out to storage or dropped for recompute under the KV budget.

Apps are separate client processes (agents/apps/app_process.py). A service process that dies fails
its in-flight requests (the apps record why) and the run reports it.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from agents.apps.app_process import ModelEndpoint
from agents.llm.weights import model_args, torch_dtype
from agents.apps.supervisor import AppsHost
from agents.paradigms.base import DeployError, ParadigmHost
from agents.paradigms.per_app import check_fits_one, context_tokens
from agents.modelservice.model_process import ServiceError, ServiceProcess
from fleet.records import (
    AppDeployment, DeployResult, DeploySpec, Paradigm, PhoneEvent, SchedulerPolicy,
)


STATS_INTERVAL_S = 1.0


class SharedServiceParadigm(ParadigmHost):
    def __init__(self, profile):
        super().__init__(profile)
        self.apps = AppsHost()
        self.service: ServiceProcess | None = None
        self._label = ""
        self._dir: tempfile.TemporaryDirectory | None = None
        self._died_reported = False

    @property
    def weights_label(self) -> str:
        return self._label

    def options(self, spec: DeploySpec):
        return spec.service

    def plan_bytes(self, spec: DeploySpec) -> int:
        own = [a.name for a in spec.apps if a.model and a.model != spec.model]
        if own:
            raise ValueError(f"apps {own} bring their own model: only per_app can host that; "
                             f"{self.paradigm.value} serves every app with one model")
        need = check_fits_one(spec, self.profile, self.paradigm.value)
        weights = next(iter(need.values()))[0]
        return weights + sum(kv for _, kv in need.values())

    def deploy(self, spec: DeploySpec) -> DeployResult:
        planned = self.plan_bytes(spec)
        self.shutdown()
        self._dir = tempfile.TemporaryDirectory(prefix=f"slm-{self.paradigm.value}-")
        args = model_args(spec.model)
        weights = args.weight_bytes(torch_dtype(spec.model.dtype))
        budget = self.profile.memory_budget_bytes
        self.service = ServiceProcess(
            Path(self._dir.name) / "service.sock", spec.model, self.options(spec),
            threads=spec.threads_per_process,
            kv_budget_bytes=max(0, budget - weights) if budget else 0,
            swap_dir=Path(self._dir.name) / "swap")
        try:
            info = self.service.start()
            self._label = info["weights_label"]
            self._died_reported = False
            endpoint = ModelEndpoint(socket=str(self.service.socket_path), own=False)
            self.apps.start(spec.apps, lambda app: endpoint, lambda app: args,
                            lambda app: context_tokens(spec, app, args.max_position))
        except ServiceError as exc:
            self.shutdown()
            raise DeployError(f"{self.paradigm.value} service failed to start: {exc}") from None
        except BaseException:
            self.shutdown()  # whatever did start must not linger into later trials
            raise
        return DeployResult(
            apps=(AppDeployment(app="service", pid=self.service.pid,
                                cold_start_s=info["cold_start_s"],
                                weight_bytes=info["weight_bytes"], kv_cache_bytes=0),),
            weights_label=self._label, planned_bytes=planned, memory_budget_bytes=budget)

    def run(self, run, emit, stop) -> list[str]:
        next_stats = [time.monotonic() + STATS_INTERVAL_S]

        def tick() -> None:
            self._watch(emit, stop)
            if time.monotonic() >= next_stats[0]:  # live running/waiting/batch for exporters
                next_stats[0] = time.monotonic() + STATS_INTERVAL_S
                self._emit_stats(emit)

        problems = self.apps.run(run, emit, stop, on_tick=tick)
        self._watch(emit, stop)
        if self._died_reported:
            problems.append(f"{self.paradigm.value} service process {self.service.pid} died "
                            f"(exit code {self.service.proc.returncode}); its in-flight requests "
                            "failed")
        self._emit_stats(emit)
        return problems

    def _emit_stats(self, emit) -> None:
        stats = self.service.stats() if self.service else None
        if stats:
            for e in stats.pop("events", []):
                emit(PhoneEvent(**e))
            stats.pop("event", None)
            emit(PhoneEvent(time.monotonic_ns(), "service_stats", "", json.dumps(stats)))

    def _watch(self, emit, stop) -> None:
        if self.service is not None and not self.service.alive() and not self._died_reported:
            self._died_reported = True
            emit(PhoneEvent(time.monotonic_ns(), "service_died", "",
                            f"exit code {self.service.proc.returncode}"))
            stop.set()  # every later request would fail the same way: end the trial now

    def processes(self) -> dict[int, str]:
        if self.service is not None and self.service.alive():
            return {self.service.pid: "service"}
        return {}

    def shutdown(self) -> int:
        n = self.apps.shutdown()
        if self.service is not None:
            n += self.service.alive()
            self.service.stop()
            self.service = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
        return n


class SlmaasParadigm(SharedServiceParadigm):
    paradigm = Paradigm.SLMAAS

    def options(self, spec: DeploySpec):
        # SLM as a service is app-agnostic: FCFS, nothing kept per app between requests.
        return replace(spec.service, scheduler=SchedulerPolicy.FCFS, persistent_contexts=False)


class AgentOsParadigm(SharedServiceParadigm):
    paradigm = Paradigm.AGENT_OS
