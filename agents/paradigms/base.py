"""The paradigm interface: how a phone hosts SLMs for its apps (per-app, SLMaaS, agent-OS).

A paradigm host is plain Python: it deploys models in processes, runs the apps' workloads and
hands back records through a callback. It knows nothing of gRPC, Ray or Prometheus; the agent's
trial runner drives it from a worker thread and the agent's server ships what it emits.
Implementations are chosen by name in ``registry.py``; this module imports none of them.

    host = make_paradigm(Paradigm.PER_APP, profile)    # registry.py
    result = host.deploy(spec)                  # raises BudgetError before loading if it can't fit
    host.run(workload_run, emit, stop_event)    # blocks until every app's workload has ended
    host.processes()                            # {pid: component} for the memory sampler
    host.shutdown()
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from agents.modelservice.launch_spec import LaunchSpec
from fleet.records import (
    DeployResult,
    DeploySpec,
    ModelSpec,
    Paradigm,
    PhoneEvent,
    PhoneProfile,
    RequestRecord,
    ServiceOptions,
    ServiceStats,
    WorkloadRun,
)
from fleet.sizing import planned_bytes

Emitted = RequestRecord | PhoneEvent | ServiceStats
Emit = Callable[[Emitted], None]


class ParadigmHost(ABC):
    paradigm: Paradigm
    # True: ``run_on_loop`` and the resource sampler never block, and the trial runner runs
    # both on the agent's event loop, not on threads of their own (a simulated phone: one
    # process serves 250, and two threads each cost more than their replay)
    on_loop: bool = False

    def __init__(self, profile: PhoneProfile):
        self.profile = profile

    def launch(
        self, model: ModelSpec, options: ServiceOptions, spec: DeploySpec, **kw
    ) -> LaunchSpec:
        """How an SLM process of this phone is started: the phone's threads and storage."""
        return LaunchSpec(
            model,
            options,
            threads=self.threads(spec),
            storage_dir=self.profile.storage_dir,
            storage_model=self.profile.storage_model,
            **kw,
        )

    def threads(self, spec: DeploySpec) -> int:
        """Torch threads of each SLM process: the phone's cores unless the spec says otherwise.
        The same rule for every paradigm: a per-app model process, like the shared service, may
        use all of the phone's cores (as an app's inference runtime does on a phone)."""
        return spec.threads_per_process or self.profile.cpu_threads

    def plan_bytes(self, spec: DeploySpec) -> int:
        """Bytes the deployment will hold (weights + KV caches); raises BudgetError when no
        paradigm could fit it and ServingError when this paradigm cannot serve it."""
        return planned_bytes(spec, self.profile)

    @abstractmethod
    def deploy(self, spec: DeploySpec) -> DeployResult: ...

    @abstractmethod
    def run(self, run: WorkloadRun, emit: Emit, stop: threading.Event) -> list[str]:
        """Run every app's workload, emitting records, phone events (kills, swaps, cold
        starts) and service statistics as they happen; returns problems seen (e.g. a process
        that died)."""

    async def run_on_loop(self, run: WorkloadRun, emit: Emit, stop: asyncio.Event) -> list[str]:
        """``run`` on the agent's event loop, for a host whose ``on_loop`` is True."""
        raise NotImplementedError(f"{type(self).__name__} runs on a thread of its own")

    def interrupt(self) -> None:
        """A Stop arrived (any thread): tell the apps now, not at the run loop's next turn.
        The run's stop event is set as well; a host with nothing to tell ignores this."""
        return None

    @abstractmethod
    def processes(self) -> dict[int, str]:
        """The phone's SLM processes now, {pid: component}, for the memory sampler."""

    def memory_split(self) -> dict[int, tuple[int, int, int]]:
        """{pid: (weights bytes, KV bytes allocated, KV bytes used)} of the SLM processes, as they
        last reported (the rest of their PSS is runtime); empty when unknown."""
        return {}

    def resource_sampler(self) -> Any:
        """What samples the memory of ``processes()`` (``.sample(processes)``): the real one."""
        from agents.probes import ProcessSampler

        return ProcessSampler()

    def device_probe(self) -> Any:
        """What reads the phone's battery, thermal zones, clocks and kills: the real one."""
        from agents.device_probe import DeviceProbe

        return DeviceProbe()

    @abstractmethod
    def shutdown(self) -> int:
        """Stop every process; returns how many were stopped."""

    @property
    @abstractmethod
    def weights_label(self) -> str: ...
