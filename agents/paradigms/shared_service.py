"""Shared model service paradigms: one SLM process serves every app over local IPC.

- ``SlmaasParadigm`` (SLM as a service): one copy of the weights, continuous batching across
  apps, shared-prefix KV reuse, first come first served and app-agnostic.
- ``AgentOsParadigm`` (agent-refined OS): the same service as an OS subsystem: a pluggable
  scheduler (priority-preemptive by default), persistent per-app contexts, and contexts swapped
  out to storage or dropped for recompute under the KV budget.

How each runs its service (FCFS for SLMaaS, ...) is ``fleet.records.effective_service_options``.
Apps are separate processes (agents/apps/app_process.py). A service process that dies fails its
in-flight requests (the apps record why) and the run reports it.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from agents.apps.app_process import ModelEndpoint
from agents.apps.supervisor import AppSupervisor
from agents.errors import DeployError
from agents.modelservice.model_process import ModelProcess, ModelProcessError
from agents.paradigms.base import Emit, ParadigmHost
from fleet.records import (
    AppDeployment,
    DeployResult,
    DeploySpec,
    Paradigm,
    PhoneEvent,
    WorkloadRun,
    effective_service_options,
)
from fleet.shapes import model_args
from fleet.sizing import context_tokens

STATS_INTERVAL_S = 1.0


class SharedServiceParadigm(ParadigmHost):
    def __init__(self, profile):
        super().__init__(profile)
        self.apps = AppSupervisor()
        self.service: ModelProcess | None = None
        self._label = ""
        self._dir: tempfile.TemporaryDirectory | None = None
        self._died_reported = False
        self._split = (0, 0, 0)  # (weights, KV allocated, KV used) the service last reported

    @property
    def weights_label(self) -> str:
        return self._label

    def deploy(self, spec: DeploySpec) -> DeployResult:
        planned = self.plan_bytes(spec)
        self.shutdown()
        self._dir = tempfile.TemporaryDirectory(prefix=f"slm-{self.paradigm.value}-")
        workdir = Path(self._dir.name)
        args = model_args(spec.model)
        budget = self.profile.memory_budget_bytes
        self.service = ModelProcess(
            workdir / "service.sock",
            self.launch(
                spec.model,
                effective_service_options(self.paradigm, spec.service),
                spec,
                memory_budget_bytes=budget,  # the service measures its own PSS against it
                swap_dir=str(workdir / "swap"),
            ),
        )
        try:
            ready = self.service.start()
            self._label = ready.weights_label
            self._died_reported = False
            self._split = (0, 0, 0)
            endpoint = ModelEndpoint(socket=str(self.service.socket_path))
            self.apps.start(
                spec.apps,
                lambda app: endpoint,
                lambda app: args.vocab_size,
                lambda app: context_tokens(spec, app, args.max_position),
            )
        except ModelProcessError as exc:
            self.shutdown()
            raise DeployError(f"{self.paradigm.value} service failed to start: {exc}") from None
        except BaseException:
            self.shutdown()  # whatever did start must not linger into later trials
            raise
        return DeployResult(
            apps=(
                AppDeployment(
                    app="service",
                    pid=self.service.pid,
                    cold_start_s=ready.cold_start_s,
                    weight_bytes=ready.weight_bytes,
                    kv_cache_bytes=0,
                ),
            ),
            weights_label=self._label,
            planned_bytes=planned,
            memory_budget_bytes=budget,
        )

    def interrupt(self) -> None:
        self.apps.stop_all()

    def run(self, run: WorkloadRun, emit: Emit, stop: threading.Event) -> list[str]:
        next_stats = time.monotonic() + STATS_INTERVAL_S

        def tick() -> None:
            nonlocal next_stats
            self._watch(emit, stop)
            if time.monotonic() >= next_stats:  # live running/waiting/batch for exporters
                next_stats = time.monotonic() + STATS_INTERVAL_S
                self._emit_stats(emit)

        problems = self.apps.run(run, emit, stop, on_tick=tick)
        self._watch(emit, stop)
        if self._died_reported and self.service is not None:
            problems.append(
                f"{self.paradigm.value} service process {self.service.pid} died "
                f"(exit code {self.service.returncode}); its in-flight requests "
                "failed"
            )
        self._emit_stats(emit)  # the last statistics of a trial cover all of it
        return problems

    def _emit_stats(self, emit: Emit) -> None:
        got = self.service.stats() if self.service else None
        if got is not None:
            stats, events = got
            self._split = (stats.weight_bytes, stats.kv_held_bytes, stats.kv_used_bytes)
            for e in events:
                emit(e)
            emit(stats)

    def _watch(self, emit: Emit, stop: threading.Event) -> None:
        if self.service is not None and not self.service.alive() and not self._died_reported:
            self._died_reported = True
            emit(
                PhoneEvent(
                    time.monotonic_ns(), "service_died", "", f"exit code {self.service.returncode}"
                )
            )
            stop.set()  # every later request would fail the same way: end the trial now

    def memory_split(self) -> dict[int, tuple[int, int, int]]:
        if self.service is None or not self._split[0]:
            return {}
        return {self.service.pid: self._split}

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


class AgentOsParadigm(SharedServiceParadigm):
    paradigm = Paradigm.AGENT_OS
