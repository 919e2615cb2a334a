"""Per-app SLMs: every app is its own OS process that loads its own model and serves only itself.

Memory grows with the app count (N copies of weights plus N KV caches) and there is no batching,
caching or scheduling across apps: the OS sees N unrelated processes competing for cores.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Callable

from agents.app_process import app_main
from agents.engine.weights import model_args, torch_dtype
from agents.paradigms.base import BudgetError, DeployError, ParadigmHost, fmt_mib
from fleet.records import (
    AppDeployment, AppWorkload, DeployResult, DeploySpec, Paradigm, RequestRecord, WorkloadRun,
)

READY_TIMEOUT_S = 300.0


@dataclass
class _AppProc:
    app: AppWorkload
    proc: mp.process.BaseProcess
    cmd: Connection  # agent -> app
    evt: Connection  # app -> agent
    deployment: AppDeployment | None = None


DEFAULT_CONTEXT_TOKENS = 2048  # an unbounded multi-turn app's window when none is configured


def context_tokens(spec: DeploySpec, app: AppWorkload, max_position: int) -> int:
    """KV cache positions one app's process reserves."""
    wanted = spec.max_context_tokens or app.max_context_tokens()
    if app.multi_turn and not app.max_requests and not spec.max_context_tokens:
        wanted = DEFAULT_CONTEXT_TOKENS
    return max(app.prompt_tokens + app.output_tokens, min(wanted, max_position))


class PerAppParadigm(ParadigmHost):
    paradigm = Paradigm.PER_APP

    def __init__(self, profile):
        super().__init__(profile)
        self._apps: list[_AppProc] = []
        self._label = ""

    @property
    def weights_label(self) -> str:
        return self._label

    def plan_bytes(self, spec: DeploySpec) -> int:
        args = model_args(spec.model)
        dtype = torch_dtype(spec.model.dtype)
        weights = args.weight_bytes(dtype)
        per_app = {a.name: weights + args.kv_cache_bytes(context_tokens(spec, a, args.max_position),
                                                         dtype) for a in spec.apps}
        for app in spec.apps:
            if app.prompt_tokens + app.output_tokens > args.max_position:
                raise BudgetError(f"app {app.name}: {app.prompt_tokens} + {app.output_tokens} "
                                  f"tokens exceed the model's {args.max_position} positions")
        total = sum(per_app.values())
        budget = self.profile.memory_budget_bytes
        largest = max(per_app.values())
        if budget and largest > budget:
            raise BudgetError(
                f"model {args.name} ({spec.model.dtype}) cannot fit phone {self.profile.name}: "
                f"one instance needs {fmt_mib(largest)} (weights {fmt_mib(weights)} + KV cache "
                f"{fmt_mib(largest - weights)}) > budget {fmt_mib(budget)}")
        if budget and total > budget:
            raise BudgetError(
                f"per-app deployment of {len(spec.apps)} x {args.name} ({spec.model.dtype}) needs "
                f"{fmt_mib(total)} (weights {fmt_mib(weights)} each + KV caches) > budget "
                f"{fmt_mib(budget)} of phone {self.profile.name}")
        return total

    def deploy(self, spec: DeploySpec) -> DeployResult:
        planned = self.plan_bytes(spec)
        self.shutdown()
        max_position = model_args(spec.model).max_position
        ctx = mp.get_context("spawn")
        started: dict[str, float] = {}
        for app in spec.apps:
            cmd_r, cmd_w = ctx.Pipe(duplex=False)
            evt_r, evt_w = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=app_main, name=f"slm-app-{app.name}", daemon=True,
                               args=(cmd_r, evt_w, app, spec.model, spec.threads_per_process,
                                     context_tokens(spec, app, max_position)))
            started[app.name] = time.perf_counter()
            proc.start()
            cmd_r.close()
            evt_w.close()  # keep only our ends, so a dead app reads as EOF
            self._apps.append(_AppProc(app, proc, cmd_w, evt_r))
        pending = {a.evt: a for a in self._apps}
        deadline = time.monotonic() + READY_TIMEOUT_S
        while pending:
            ready = wait(list(pending), timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                self.shutdown()
                raise DeployError(f"apps {sorted(a.app.name for a in pending.values())} did not "
                                  f"load within {READY_TIMEOUT_S:.0f} s")
            for conn in ready:
                a = pending.pop(conn)
                try:
                    kind, payload = conn.recv()
                except (EOFError, OSError):
                    kind, payload = "error", f"process exited with code {a.proc.exitcode}"
                if kind != "ready":
                    self.shutdown()
                    raise DeployError(f"app {a.app.name} failed to load its model: {payload}")
                self._label = payload["weights_label"]
                a.deployment = AppDeployment(
                    app=a.app.name, pid=a.proc.pid,
                    cold_start_s=time.perf_counter() - started[a.app.name],
                    weight_bytes=payload["weight_bytes"], kv_cache_bytes=payload["kv_cache_bytes"])
        return DeployResult(apps=tuple(a.deployment for a in self._apps),
                            weights_label=self._label, planned_bytes=planned,
                            memory_budget_bytes=self.profile.memory_budget_bytes)

    def run(self, run: WorkloadRun, emit: Callable[[RequestRecord], None],
            stop: threading.Event) -> list[str]:
        if not self._apps:
            raise DeployError("nothing is deployed")
        problems: list[str] = []
        pending = {}
        for a in self._apps:
            if self._send(a, ("run", run)):
                pending[a.evt] = a
            else:
                problems.append(f"app {a.app.name} process {a.proc.pid} was dead at the start "
                                f"(exit code {a.proc.exitcode})")
        stop_sent = False
        while pending:
            if stop.is_set() and not stop_sent:
                for a in pending.values():
                    self._send(a, ("stop",))
                stop_sent = True
            for conn in wait(list(pending), timeout=0.1):
                a = pending[conn]
                try:
                    kind, payload = conn.recv()
                except (EOFError, OSError):
                    a.proc.join(timeout=1.0)
                    problems.append(f"app {a.app.name} process {a.proc.pid} died "
                                    f"(exit code {a.proc.exitcode})")
                    del pending[conn]
                    continue
                if kind == "record":
                    emit(payload)
                elif kind == "done":
                    del pending[conn]
                elif kind == "error":
                    problems.append(f"app {a.app.name}: {payload}")
                    del pending[conn]
        return problems

    @staticmethod
    def _send(a: _AppProc, cmd: tuple) -> bool:
        try:
            a.cmd.send(cmd)
            return True
        except (BrokenPipeError, OSError):
            return False

    def processes(self) -> dict[int, str]:
        return {a.proc.pid: a.app.name for a in self._apps if a.proc.is_alive()}

    def shutdown(self) -> int:
        n = 0
        for a in self._apps:
            if a.proc.is_alive():
                self._send(a, ("exit",))
                a.proc.join(timeout=5.0)
                if a.proc.is_alive():
                    a.proc.kill()
                    a.proc.join(timeout=5.0)
                n += 1
            a.cmd.close()
            a.evt.close()
        self._apps = []
        return n
