"""The paradigm interface: how a phone hosts SLMs for its apps (per-app, SLMaaS, agent-OS).

A paradigm host is plain Python: it deploys models in processes, runs the apps' workloads and
hands back records through a callback. It knows nothing of gRPC, Ray or Prometheus; the agent
server drives it from a worker thread and ships what it emits.

    host = make_paradigm(Paradigm.PER_APP, profile)
    result = host.deploy(spec)                  # raises BudgetError before loading if it can't fit
    host.run(workload_run, emit, stop_event)    # blocks until every app's workload has ended
    host.processes()                            # {pid: component} for the memory sampler
    host.shutdown()
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Callable

from fleet.records import (
    DeployResult, DeploySpec, Paradigm, PhoneEvent, PhoneProfile, RequestRecord, WorkloadRun,
)

MIB = 1024 * 1024


class BudgetError(Exception):
    """The deployment cannot fit the phone's memory budget (-> RESOURCE_EXHAUSTED)."""


class DeployError(Exception):
    """Loading the deployment failed (bad model path, a process that died while loading)."""


class ParadigmHost(ABC):
    paradigm: Paradigm

    def __init__(self, profile: PhoneProfile):
        self.profile = profile

    @abstractmethod
    def plan_bytes(self, spec: DeploySpec) -> int:
        """Bytes the deployment will hold (weights + KV caches); raises BudgetError if too many."""

    @abstractmethod
    def deploy(self, spec: DeploySpec) -> DeployResult: ...

    @abstractmethod
    def run(self, run: WorkloadRun, emit: Callable[[RequestRecord | PhoneEvent], None],
            stop: threading.Event) -> list[str]:
        """Run every app's workload, emitting records and phone events (kills, swaps, cold
        starts) as they happen; returns problems seen (e.g. a process that died)."""

    @abstractmethod
    def processes(self) -> dict[int, str]:
        """The phone's SLM processes now, {pid: component}, for the memory sampler."""

    @abstractmethod
    def shutdown(self) -> int:
        """Stop every process; returns how many were stopped."""

    @property
    @abstractmethod
    def weights_label(self) -> str: ...


def fmt_mib(num_bytes: int) -> str:
    return f"{num_bytes / MIB:.1f} MiB"


def make_paradigm(paradigm: Paradigm, profile: PhoneProfile) -> ParadigmHost:
    from agents.paradigms.per_app import PerAppParadigm
    from agents.paradigms.shared_service import AgentOsParadigm, SlmaasParadigm

    hosts: dict[Paradigm, type[ParadigmHost]] = {Paradigm.PER_APP: PerAppParadigm,
                                                 Paradigm.SLMAAS: SlmaasParadigm,
                                                 Paradigm.AGENT_OS: AgentOsParadigm}
    if paradigm not in hosts:
        raise NotImplementedError(f"paradigm {paradigm.value} is not implemented by this agent")
    return hosts[paradigm](profile)


def implemented_paradigms() -> list[Paradigm]:
    return [Paradigm.PER_APP, Paradigm.SLMAAS, Paradigm.AGENT_OS]
