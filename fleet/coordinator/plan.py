"""The plan: an experiment expanded into trials.

paradigm x workload x model x phone x repetition, and within each, the app mixes of the
contention methodology: every app alone (its solo baseline), all apps together (the co-run), and
an app-count sweep (the first k apps, cycled and renamed when k exceeds the workload's apps).
Repetitions are the outer loop so that repeated trials spread over the run's time instead of
running back to back, which keeps slow drift of a shared machine out of a single configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import cycle, islice

from fleet.coordinator.config import (
    AppConfig,
    Experiment,
    ModelConfig,
    ParadigmConfig,
    VirtualPhone,
    WorkloadConfig,
)
from fleet.records import DeploySpec, PhoneProfile, WorkloadRun
from fleet.results.store import CORUN, count_mix, solo_mix
from fleet.sizing import BudgetError, ServingError, app_model, check_servable, footprints


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

    def deploy_spec(self) -> DeploySpec:
        return DeploySpec(
            paradigm=self.paradigm.paradigm,
            model=self.model.spec(),
            apps=tuple(a.workload() for a in self.apps),
            max_context_tokens=self.workload.max_context_tokens,
            threads_per_process=self.paradigm.threads_per_process,
            service=self.paradigm.service_options(),
        )

    def workload_run(self, sample_interval_s: float) -> WorkloadRun:
        return WorkloadRun(
            trial_id=self.trial_id,
            duration_s=self.duration_s,
            seed=self.seed,
            sample_interval_s=sample_interval_s,
        )


def app_mixes(exp: Experiment, workload: WorkloadConfig):
    """(mix, apps, duration) of one workload under the contention methodology."""
    c = exp.contention
    if c.solo_baselines:
        for app in workload.apps:
            yield solo_mix(app.name), (app,), c.solo_duration_s or workload.duration_s
    if c.corun:
        yield CORUN, tuple(workload.apps), workload.duration_s
    for k in c.app_counts:
        apps = []
        for i, app in enumerate(islice(cycle(workload.apps), k)):
            copy = i // len(workload.apps)
            apps.append(app if copy == 0 else app.renamed(f"{app.name}-{copy + 1}"))
        yield count_mix(k), tuple(apps), workload.duration_s


def plan_trials(exp: Experiment) -> list[Trial]:
    trials = []
    for rep in range(exp.repetitions):
        for paradigm in exp.paradigms:
            for model in exp.models:
                for workload in exp.workloads:
                    for mix, apps, duration in app_mixes(exp, workload):
                        for phone in exp.phones:
                            tid = (
                                f"{paradigm.label}.{workload.name}.{model.label}.{phone.name}"
                                f".{mix.replace(':', '-')}.r{rep}"
                            )
                            trials.append(
                                Trial(
                                    tid,
                                    phone.name,
                                    paradigm,
                                    workload,
                                    model,
                                    rep,
                                    exp.seed + rep,
                                    mix,
                                    apps,
                                    duration,
                                )
                            )
    return trials


def check_budgets(exp: Experiment, trials: list[Trial]) -> list[str]:
    """Problems that make trials impossible before anything starts, by the phones' own rule
    (``fleet.sizing``): a model (weights + one context's KV cache) larger than a virtual phone's
    budget under any paradigm, a request longer than the model's positions, or an app that
    brings its own model to a shared service. Local-path models are checked on the phone."""
    profiles = {
        p.name: PhoneProfile(p.name, memory_budget_bytes=p.memory_budget_mb * 2**20)
        for p in exp.phones
        if isinstance(p, VirtualPhone)
    }
    problems: set[str] = set()
    for t in trials:
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


def core_domain(exp: Experiment, phone_name: str) -> str:
    """Phones in one domain share a host's cores: their trials are serialized unless allowed."""
    phone = next(p for p in exp.phones if p.name == phone_name)
    if exp.allow_shared_cores:
        return f"phone:{phone.name}"
    if isinstance(phone, VirtualPhone):
        return f"host:{phone.host}"
    return f"phone:{phone.name}"  # a real phone has cores of its own
