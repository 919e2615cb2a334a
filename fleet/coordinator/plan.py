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
    AppConfig, Experiment, ModelConfig, ParadigmConfig, VirtualPhone, WorkloadConfig,
)
from fleet.records import DeploySpec, Paradigm, WorkloadRun

CORUN = "corun"


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
        return DeploySpec(paradigm=Paradigm(self.paradigm.kind), model=self.model.spec(),
                          apps=tuple(a.workload() for a in self.apps),
                          max_context_tokens=self.workload.max_context_tokens,
                          threads_per_process=self.paradigm.threads_per_process,
                          service=self.paradigm.service_options())

    def workload_run(self, sample_interval_s: float) -> WorkloadRun:
        return WorkloadRun(trial_id=self.trial_id, duration_s=self.duration_s,
                           seed=self.seed, sample_interval_s=sample_interval_s)


def app_mixes(exp: Experiment, workload: WorkloadConfig):
    """(mix, apps, duration) of one workload under the contention methodology."""
    c = exp.contention
    if c.solo_baselines:
        for app in workload.apps:
            yield f"solo:{app.name}", (app,), c.solo_duration_s or workload.duration_s
    if c.corun:
        yield CORUN, tuple(workload.apps), workload.duration_s
    for k in c.app_counts:
        apps = []
        for i, app in enumerate(islice(cycle(workload.apps), k)):
            copy = i // len(workload.apps)
            apps.append(app if copy == 0 else app.renamed(f"{app.name}-{copy + 1}"))
        yield f"apps:{k}", tuple(apps), workload.duration_s


def plan_trials(exp: Experiment) -> list[Trial]:
    trials = []
    for rep in range(exp.repetitions):
        for paradigm in exp.paradigms:
            for model in exp.models:
                for workload in exp.workloads:
                    for mix, apps, duration in app_mixes(exp, workload):
                        for phone in exp.phones:
                            tid = (f"{paradigm.label}.{workload.name}.{model.label}.{phone.name}"
                                   f".{mix.replace(':', '-')}.r{rep}")
                            trials.append(Trial(tid, phone.name, paradigm, workload, model, rep,
                                                exp.seed + rep, mix, apps, duration))
    return trials


def check_budgets(exp: Experiment, trials: list[Trial]) -> list[str]:
    """Problems that make trials impossible before anything starts: a model (weights + one
    context's KV cache) larger than a virtual phone's budget under any paradigm, or an app that
    brings its own model to a shared service. Local-path models are checked on the phone."""
    from agents.llm.transformer import DTYPES, ModelArgs

    budgets = {p.name: p.memory_budget_mb * 2**20 for p in exp.phones
               if isinstance(p, VirtualPhone)}
    problems: set[str] = set()
    for t in trials:
        for app in t.apps:
            model = app.model or t.model
            if app.model and t.paradigm.kind != "per_app":
                problems.add(f"paradigm {t.paradigm.label}: app {app.name} brings its own model; "
                             "only per_app can host apps with different models")
            if model.path or t.phone not in budgets:
                continue
            args, dtype = ModelArgs.from_name(model.preset), DTYPES[model.dtype]
            a = app.workload()
            if a.system_prompt_tokens + a.prompt_tokens + a.output_tokens > args.max_position:
                problems.add(f"app {app.name}: system prompt + prompt + output tokens exceed "
                             f"model {model.label}'s {args.max_position} positions")
                continue
            ctx = min(args.max_position, max(a.system_prompt_tokens + a.prompt_tokens
                                             + a.output_tokens, t.workload.max_context_tokens))
            need = args.weight_bytes(dtype) + args.kv_cache_bytes(ctx, dtype)
            if need > budgets[t.phone]:
                problems.add(
                    f"phone {t.phone} ({budgets[t.phone] / 2**20:.0f} MiB) cannot hold model "
                    f"{model.label} ({model.dtype}) for app {app.name} under any paradigm: "
                    f"weights {args.weight_bytes(dtype) / 2**20:.1f} MiB + KV cache "
                    f"{args.kv_cache_bytes(ctx, dtype) / 2**20:.1f} MiB")
    return sorted(problems)


def core_domain(exp: Experiment, phone_name: str) -> str:
    """Phones in one domain share a host's cores: their trials are serialized unless allowed."""
    phone = next(p for p in exp.phones if p.name == phone_name)
    if exp.allow_shared_cores:
        return f"phone:{phone.name}"
    if isinstance(phone, VirtualPhone):
        return f"host:{phone.host}"
    return f"phone:{phone.name}"  # a real phone has cores of its own
