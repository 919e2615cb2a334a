"""The plan: an experiment expanded into trials (paradigm x workload x model x phone x repetition).

Repetitions are the outer loop so that repeated trials spread over the run's time instead of
running back to back, which keeps slow drift of a shared machine out of a single configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.config import Experiment, ModelConfig, ParadigmConfig, VirtualPhone, WorkloadConfig
from fleet.records import DeploySpec, Paradigm, WorkloadRun


@dataclass(frozen=True)
class Trial:
    trial_id: str
    phone: str
    paradigm: ParadigmConfig
    workload: WorkloadConfig
    model: ModelConfig
    repetition: int
    seed: int

    def deploy_spec(self) -> DeploySpec:
        return DeploySpec(paradigm=Paradigm(self.paradigm.kind), model=self.model.spec(),
                          apps=tuple(a.workload() for a in self.workload.apps),
                          max_context_tokens=self.workload.max_context_tokens,
                          threads_per_process=self.paradigm.threads_per_process)

    def workload_run(self, sample_interval_s: float) -> WorkloadRun:
        return WorkloadRun(trial_id=self.trial_id, duration_s=self.workload.duration_s,
                           seed=self.seed, sample_interval_s=sample_interval_s)


def plan_trials(exp: Experiment) -> list[Trial]:
    trials = []
    for rep in range(exp.repetitions):
        for paradigm in exp.paradigms:
            for model in exp.models:
                for workload in exp.workloads:
                    for phone in exp.phones:
                        tid = f"{paradigm.kind}.{workload.name}.{model.label}.{phone.name}.r{rep}"
                        trials.append(Trial(tid, phone.name, paradigm, workload, model, rep,
                                            exp.seed + rep))
    return trials


def core_domain(exp: Experiment, phone_name: str) -> str:
    """Phones in one domain share a host's cores: their trials are serialized unless allowed."""
    phone = next(p for p in exp.phones if p.name == phone_name)
    if exp.allow_shared_cores:
        return f"phone:{phone.name}"
    if isinstance(phone, VirtualPhone):
        return f"host:{phone.host}"
    return f"phone:{phone.name}"  # a real phone has cores of its own
