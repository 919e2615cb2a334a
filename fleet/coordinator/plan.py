"""The plan: an experiment expanded into trials.

paradigm x workload x model x phone x repetition, and within each, the app mixes of the
contention methodology: every app alone (its solo baseline), all apps together (the co-run), and
an app-count sweep (the first k apps, cycled and renamed when k exceeds the workload's apps).

Every app's requests are a trace (``fleet.traces``) generated once per (workload, repetition)
from the run's seed and carried by every trial of that repetition, so a solo baseline replays
exactly its app's co-run requests, over the same duration. Repetitions are the outer loop, so
repeated trials spread over the run's time; within a repetition the trials are shuffled with the
run's seed (``trial_order: shuffled``; or ``interleaved``: the paradigms take turns on each app
mix), so no paradigm always runs first, or last, on a machine that drifts. Each trial's
position is kept (``seq``).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, replace
from itertools import cycle, islice

from fleet.coordinator.config import (
    AndroidPhone,
    AppConfig,
    Experiment,
    ModelConfig,
    ParadigmConfig,
    TraceArrival,
    VirtualPhone,
    WorkloadConfig,
)
from fleet.records import DeploySpec, PhoneProfile, TraceRequest, WorkloadRun, phase_of_mix
from fleet.results.store import CORUN, count_mix, solo_mix
from fleet.sizing import BudgetError, ServingError, app_model, check_servable, footprints
from fleet.traces import generate_trace
from fleet.wire import MAX_TRACE_REQUESTS


@dataclass(frozen=True)
class Trial:
    trial_id: str
    phone: str
    paradigm: ParadigmConfig
    workload: WorkloadConfig
    model: ModelConfig
    repetition: int
    seed: int
    mix: str  # "solo:<app>", "corun" or "apps:<k>"
    apps: tuple[AppConfig, ...]
    duration_s: float
    trace: tuple[TraceRequest, ...] = ()  # every request of its apps (shared by the repetition)
    seq: int = 0  # position in the run's order

    def deploy_spec(self) -> DeploySpec:
        return DeploySpec(
            paradigm=self.paradigm.paradigm,
            model=self.model.spec(),
            apps=tuple(a.workload() for a in self.apps),
            max_context_tokens=self.workload.max_context_tokens,
            threads_per_process=self.paradigm.threads_per_process or 0,
            service=self.paradigm.service_options(),
            paradigm_label=self.paradigm.label,
            phase=phase_of_mix(self.mix),
        )

    def workload_run(self, sample_interval_s: float, drain_s: float = 30.0) -> WorkloadRun:
        return WorkloadRun(
            trial_id=self.trial_id,
            duration_s=self.duration_s,
            seed=self.seed,
            sample_interval_s=sample_interval_s,
            trace=self.trace,
            drain_s=drain_s,
        )


def app_mixes(exp: Experiment, workload: WorkloadConfig):
    """(mix, apps) of one workload under the contention methodology."""
    c = exp.contention
    if c.solo_baselines:
        for app in workload.apps:
            yield solo_mix(app.name), (app,)
    if c.corun:
        yield CORUN, tuple(workload.apps)
    for k in c.app_counts:
        apps = []
        for i, app in enumerate(islice(cycle(workload.apps), k)):
            copy = i // len(workload.apps)
            apps.append(app if copy == 0 else app.renamed(f"{app.name}-{copy + 1}"))
        yield count_mix(k), tuple(apps)


def app_trace(app: AppConfig, workload: WorkloadConfig, seed: int) -> tuple[TraceRequest, ...]:
    """One app's requests in a repetition: from its trace file, or generated from the seed."""
    if isinstance(app.arrival, TraceArrival):
        return app.arrival.requests(app.name, workload.duration_s)
    return generate_trace(app.workload(), workload.duration_s, seed, workload.max_context_tokens)


def plan_trials(exp: Experiment) -> list[Trial]:
    trials = []
    for rep in range(exp.repetitions):
        seed = exp.seed + rep
        traces: dict[tuple[str, str], tuple[TraceRequest, ...]] = {}
        in_rep = []
        for paradigm in exp.paradigms:
            for model in exp.models:
                for workload in exp.workloads:
                    for mix, apps in app_mixes(exp, workload):
                        trace: list[TraceRequest] = []
                        for app in apps:
                            key = (workload.name, app.name)
                            if key not in traces:
                                traces[key] = app_trace(app, workload, seed)
                            trace += traces[key]
                        for phone in exp.phones:
                            tid = (
                                f"{paradigm.label}.{workload.name}.{model.label}.{phone.name}"
                                f".{mix.replace(':', '-')}.r{rep}"
                            )
                            in_rep.append(
                                Trial(
                                    tid,
                                    phone.name,
                                    paradigm,
                                    workload,
                                    model,
                                    rep,
                                    seed,
                                    mix,
                                    apps,
                                    workload.duration_s,
                                    tuple(trace),
                                )
                            )
        if exp.trial_order == "shuffled":
            random.Random(f"order:{exp.seed}:{rep}").shuffle(in_rep)
        elif exp.trial_order == "interleaved":  # paradigms take turns on each mix
            mixes = list(dict.fromkeys(t.mix for t in in_rep))
            in_rep.sort(key=lambda t: mixes.index(t.mix))  # stable: paradigm order within
        trials += in_rep
    return [replace(t, seq=i) for i, t in enumerate(trials)]


def check_budgets(exp: Experiment, trials: list[Trial]) -> list[str]:
    """Problems that make trials impossible before anything starts, by the phones' own rule
    (``fleet.sizing``): a model (weights + one context's KV cache) larger than a virtual or
    Android phone's budget under any paradigm, a request longer than the model's positions, or
    an app that brings its own model to a shared service. Local-path models are checked on the
    phone."""
    profiles = {
        p.name: PhoneProfile(p.name, memory_budget_bytes=p.memory_budget_mb * 2**20)
        for p in exp.phones
        if isinstance(p, (VirtualPhone, AndroidPhone))  # the phones whose budget is known here
    }
    problems: set[str] = set(check_cores(exp))
    for t in trials:
        if len(t.trace) > MAX_TRACE_REQUESTS:
            problems.add(
                f"workload {t.workload.name}: {len(t.trace)} requests in one trial; at most "
                f"{MAX_TRACE_REQUESTS} (lower the rates, duration_s or max_requests)"
            )
        spec = t.deploy_spec()
        try:
            check_servable(spec)
        except ServingError as exc:
            problems.add(f"paradigm {t.paradigm.label}: {exc}")
        if t.phone not in profiles or any(app_model(spec, a).path for a in spec.apps):
            continue
        try:
            footprints(spec, profiles[t.phone])
        except BudgetError as exc:
            problems.add(str(exc))
    return sorted(problems)


def check_cores(exp: Experiment, host_cores: int | None = None) -> list[str]:
    """Local virtual phones asking for more cores than this host has (unless sharing is allowed);
    phones on other Ray hosts are checked by their host when they start."""
    if exp.allow_shared_cores:
        return []
    local = [p for p in exp.phones if isinstance(p, VirtualPhone) and p.host == "local"]
    have = host_cores if host_cores is not None else len(os.sched_getaffinity(0))
    want = sum(p.cpu_threads for p in local)
    if want <= have:
        return []
    asks = ", ".join(f"{p.name} {p.cpu_threads}" for p in local)
    return [
        f"the local virtual phones ask for {want} cores ({asks}) but this host has {have}; "
        "each phone gets cores of its own: lower cpu_threads, or set allow_shared_cores: true "
        "(results are then marked shared)"
    ]
