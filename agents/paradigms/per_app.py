"""Per-app SLMs: every app loads its own model in its own process and is its only user.

Memory grows with the app count (N copies of weights plus N KV caches) and nothing is batched,
cached or scheduled across apps: the OS sees N unrelated processes competing for cores. Within
its own process an app does what a real app's runtime does (``OWN_MODEL``): it keeps its
conversation's KV between turns and reuses its system prompt's KV, within one context's memory. A
low-memory killer emulation watches the summed PSS of the model processes: over the phone's
budget, it SIGKILLs the least recently used background app's model (foreground last, idle
before busy), as Android's lmkd does, and records the kill. That app's next request relaunches
its model and pays the cold start.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path

from agents.apps.app_process import ModelEndpoint
from agents.apps.supervisor import AppSupervisor
from agents.modelservice.model_process import StatsReader
from agents.paradigms.base import Emit, ParadigmHost
from agents.probes import ProcessSampler
from fleet.records import (
    AppDeployment,
    AppWorkload,
    DeployResult,
    DeploySpec,
    Paradigm,
    PhoneEvent,
    WorkloadRun,
    effective_service_options,
)
from fleet.shapes import model_args
from fleet.sizing import app_model, context_tokens, fmt_mib, footprints

LMK_INTERVAL_S = 0.2
SPLIT_INTERVAL_S = 1.0  # how often the own models are asked for their weights and KV


class PerAppParadigm(ParadigmHost):
    paradigm = Paradigm.PER_APP

    def __init__(self, profile):
        super().__init__(profile)
        self.apps = AppSupervisor()
        self._label = ""
        self._dir: tempfile.TemporaryDirectory | None = None
        self._sampler = ProcessSampler()
        self._next_lmk = 0.0
        self._next_split = 0.0
        self._readers: dict[int, StatsReader] = {}
        self._split: dict[int, tuple[int, int, int]] = {}

    @property
    def weights_label(self) -> str:
        return self._label

    def deploy(self, spec: DeploySpec) -> DeployResult:
        planned = self.plan_bytes(spec)
        self.shutdown()
        self._dir = tempfile.TemporaryDirectory(prefix="slm-per-app-")
        need = footprints(spec, self.profile)
        workdir = Path(self._dir.name)
        options = effective_service_options(Paradigm.PER_APP, spec.service)

        def endpoint(app: AppWorkload) -> ModelEndpoint:
            own = self.launch(  # its KV within its own means: its context (with room to grow)
                app_model(spec, app), options, spec, kv_budget_bytes=2 * need[app.name].kv_bytes
            )
            return ModelEndpoint(socket=str(workdir / f"{app.name}.sock"), own=own)

        def shape(app: AppWorkload):
            return model_args(app_model(spec, app))

        try:
            self.apps.start(
                spec.apps,
                endpoint,
                lambda app: shape(app).vocab_size,
                lambda app: context_tokens(spec, app, shape(app).max_position),
            )
        except BaseException:
            self.shutdown()  # whatever did start must not linger into later trials
            raise
        self._label = "; ".join(
            sorted({a.ready.weights_label for a in self.apps.apps if a.ready is not None})
        )
        return DeployResult(
            apps=tuple(
                AppDeployment(
                    app=a.app.name,
                    pid=a.model_pid,
                    cold_start_s=a.ready.cold_start_s if a.ready else 0.0,
                    weight_bytes=a.ready.weight_bytes if a.ready else 0,
                    kv_cache_bytes=need[a.app.name].kv_bytes,
                )
                for a in self.apps.apps
            ),
            weights_label=self._label,
            planned_bytes=planned,
            memory_budget_bytes=self.profile.memory_budget_bytes,
        )

    def interrupt(self) -> None:
        self.apps.stop_all()

    def run(self, run: WorkloadRun, emit: Emit, stop: threading.Event) -> list[str]:
        def tick() -> None:
            self._low_memory_killer(emit)
            if time.monotonic() >= self._next_split:
                self._next_split = time.monotonic() + SPLIT_INTERVAL_S
                self._read_split(emit)

        self._read_split(emit)  # known from the start: a peak at deploy is split too
        problems = self.apps.run(run, emit, stop, on_tick=tick)
        self._read_split(emit)
        return problems

    def _read_split(self, emit: Emit) -> None:
        """Each own model's KV, as it reports it, and the context drops it made."""
        live = {a.model_pid for a in self.apps.apps if a.model_pid}
        for pid in [p for p in self._readers if p not in live]:  # killed: its channel goes
            self._readers.pop(pid).close()
        for a in self.apps.apps:
            if not a.model_pid:
                continue
            if a.model_starting:
                continue
            reader = self._readers.get(a.model_pid)  # per process: a relaunch gets a new one
            if reader is None:
                reader = self._readers[a.model_pid] = StatsReader(self._socket(a.app.name))
            got = reader.read()
            if got is None:
                continue
            stats, events = got
            self._split[a.model_pid] = (
                stats.weight_bytes,
                stats.kv_held_bytes,
                stats.kv_used_bytes,
            )
            for e in events:
                emit(e)

    def memory_split(self) -> dict[int, tuple[int, int, int]]:
        live = {a.model_pid for a in self.apps.apps if a.model_pid}
        return {pid: split for pid, split in self._split.items() if pid in live}

    def _socket(self, app: str) -> Path:
        assert self._dir is not None
        return Path(self._dir.name) / f"{app}.sock"

    def _low_memory_killer(self, emit: Emit) -> None:
        budget = self.profile.memory_budget_bytes
        if not budget or time.monotonic() < self._next_lmk:
            return
        self._next_lmk = time.monotonic() + LMK_INTERVAL_S
        samples = {s.pid: s for s in self._sampler.sample(self.processes())}
        total = sum(s.pss_bytes for s in samples.values())
        if total <= budget:
            return
        # a model still starting counts towards the total but is not killed mid-load: lmkd
        # spares an app being brought up for a request; it is a candidate once it serves
        candidates = [a for a in self.apps.apps if a.model_pid in samples and not a.model_starting]
        if len(candidates) < 2:
            return  # the last model standing is never killed: one instance fits (checked)
        # lmkd's order: background before foreground, idle before busy, least recently used first
        victim = min(candidates, key=lambda a: (a.app.foreground, a.busy, a.last_used_ns))
        try:
            os.kill(victim.model_pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        freed = samples[victim.model_pid].pss_bytes
        emit(
            PhoneEvent(
                time.monotonic_ns(),
                "lmk_kill",
                victim.app.name,
                f"SLM PSS {fmt_mib(total)} > budget {fmt_mib(budget)}; killed pid "
                f"{victim.model_pid} ({'busy' if victim.busy else 'idle'})",
                freed,
                0.0,
            )
        )
        victim.model_pid = 0

    def processes(self) -> dict[int, str]:
        return {a.model_pid: a.app.name for a in self.apps.apps if a.model_pid}

    def shutdown(self) -> int:
        for reader in self._readers.values():
            reader.close()
        self._readers, self._split = {}, {}
        n = self.apps.shutdown()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
        return n
