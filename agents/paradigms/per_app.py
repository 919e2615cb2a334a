"""Per-app SLMs: every app loads its own model in its own process and is its only user.

Memory grows with the app count (N copies of weights plus N KV caches) and nothing is batched,
cached or scheduled across apps: the OS sees N unrelated processes competing for cores. A
low-memory killer emulation watches the summed PSS of the model processes: over the phone's
budget, it SIGKILLs the least recently used background app's model (foreground last, idle
before busy), as Android's lmkd does, and records the kill. That app's next request relaunches
its model and pays the cold start.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

from agents.apps.app_process import ModelEndpoint
from agents.llm.weights import model_args, torch_dtype
from agents.apps.supervisor import AppsHost
from agents.paradigms.base import BudgetError, ParadigmHost, fmt_mib
from agents.probes import ProcessSampler
from fleet.records import (
    AppDeployment, AppWorkload, DeployResult, DeploySpec, Paradigm, PhoneEvent, ServiceOptions,
)

DEFAULT_CONTEXT_TOKENS = 2048  # an unbounded multi-turn app's window when none is configured
LMK_INTERVAL_S = 0.2
OWN_MODEL = ServiceOptions(max_batch_size=1, prefix_cache=False, persistent_contexts=False)


def context_tokens(spec: DeploySpec, app: AppWorkload, max_position: int) -> int:
    """KV positions one app's context may reach."""
    wanted = spec.max_context_tokens or app.max_context_tokens() or DEFAULT_CONTEXT_TOKENS
    return max(app.system_prompt_tokens + app.prompt_tokens + app.output_tokens,
               min(wanted, max_position))


def app_model(spec: DeploySpec, app: AppWorkload):
    return app.model or spec.model


def check_fits_one(spec: DeploySpec, profile, what: str) -> dict[str, tuple[int, int]]:
    """{app: (weight bytes, KV bytes)} of each app's model; raises BudgetError when even one
    model instance with one context cannot fit the phone."""
    need = {}
    for app in spec.apps:
        model = app_model(spec, app)
        args, dtype = model_args(model), torch_dtype(model.dtype)
        if app.system_prompt_tokens + app.prompt_tokens + app.output_tokens > args.max_position:
            raise BudgetError(f"app {app.name}: prompt + output tokens exceed the model's "
                              f"{args.max_position} positions")
        weights = args.weight_bytes(dtype)
        kv = args.kv_cache_bytes(context_tokens(spec, app, args.max_position), dtype)
        budget = profile.memory_budget_bytes
        if budget and weights + kv > budget:
            raise BudgetError(
                f"{what}: model {args.name} ({model.dtype}) of app {app.name} cannot fit phone "
                f"{profile.name} under any paradigm: weights {fmt_mib(weights)} + one context's "
                f"KV cache {fmt_mib(kv)} = {fmt_mib(weights + kv)} > budget {fmt_mib(budget)}")
        need[app.name] = (weights, kv)
    return need


class PerAppParadigm(ParadigmHost):
    paradigm = Paradigm.PER_APP

    def __init__(self, profile):
        super().__init__(profile)
        self.apps = AppsHost()
        self._label = ""
        self._dir: tempfile.TemporaryDirectory | None = None
        self._sampler = ProcessSampler()
        self._next_lmk = 0.0

    @property
    def weights_label(self) -> str:
        return self._label

    def plan_bytes(self, spec: DeploySpec) -> int:
        need = check_fits_one(spec, self.profile, "per-app")
        return sum(w + kv for w, kv in need.values())  # over the budget, the LMK will act

    def deploy(self, spec: DeploySpec) -> DeployResult:
        planned = self.plan_bytes(spec)
        self.shutdown()
        self._dir = tempfile.TemporaryDirectory(prefix="slm-per-app-")
        need = check_fits_one(spec, self.profile, "per-app")

        def endpoint(app: AppWorkload) -> ModelEndpoint:
            return ModelEndpoint(socket=str(Path(self._dir.name) / f"{app.name}.sock"), own=True,
                                 model=app_model(spec, app), threads=spec.threads_per_process,
                                 options=OWN_MODEL)

        try:
            self.apps.start(spec.apps, endpoint, lambda app: model_args(app_model(spec, app)),
                            lambda app: context_tokens(
                                spec, app, model_args(app_model(spec, app)).max_position))
        except BaseException:
            self.shutdown()  # whatever did start must not linger into later trials
            raise
        self._label = "; ".join(sorted({a.ready.get("weights_label", "")
                                        for a in self.apps.apps}))
        return DeployResult(
            apps=tuple(AppDeployment(
                app=a.app.name, pid=a.model_pid, cold_start_s=a.ready["cold_start_s"],
                weight_bytes=a.ready["weight_bytes"], kv_cache_bytes=need[a.app.name][1])
                for a in self.apps.apps),
            weights_label=self._label, planned_bytes=planned,
            memory_budget_bytes=self.profile.memory_budget_bytes)

    def run(self, run, emit, stop) -> list[str]:
        return self.apps.run(run, emit, stop, on_tick=lambda: self._low_memory_killer(emit))

    def _low_memory_killer(self, emit) -> None:
        budget = self.profile.memory_budget_bytes
        if not budget or time.monotonic() < self._next_lmk:
            return
        self._next_lmk = time.monotonic() + LMK_INTERVAL_S
        samples = {s.pid: s for s in self._sampler.sample(self.processes())}
        total = sum(s.pss_bytes for s in samples.values())
        if total <= budget:
            return
        candidates = [a for a in self.apps.apps if a.model_pid in samples]
        if len(candidates) < 2:
            return  # the last model standing is never killed: one instance fits (checked)
        # lmkd's order: background before foreground, idle before busy, least recently used first
        victim = min(candidates, key=lambda a: (a.app.foreground, a.busy, a.last_used_ns))
        try:
            os.kill(victim.model_pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        freed = samples[victim.model_pid].pss_bytes
        emit(PhoneEvent(time.monotonic_ns(), "lmk_kill", victim.app.name,
                        f"SLM PSS {fmt_mib(total)} > budget {fmt_mib(budget)}; killed pid "
                        f"{victim.model_pid} ({'busy' if victim.busy else 'idle'})", freed, 0.0))
        victim.model_pid = 0

    def processes(self) -> dict[int, str]:
        return {a.model_pid: a.app.name for a in self.apps.apps if a.model_pid}

    def shutdown(self) -> int:
        n = self.apps.shutdown()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
        return n
