"""A simulated phone's paradigm: replays a measured profile (``fleet.sim_profile``) instead of
running models, so one machine can drive a thousand phones through the real coordinator.

It is a stand-in, and says so: every record it makes comes from a deployment whose weights
label is the profile's ("simulated: profile builtin (smollm-135m, <run>)"), and the run's
phones table and report mark the phone ``simulated``. What it replays:

- **time**: each request's prefill (per uncached prompt token) and inter-token gap are drawn
  from the profile's measured distributions of that paradigm; requests queue first come, first
  served on the paradigm's servers (per-app: one model per app, one request at a time; a shared
  service: one model, up to ``max_batch_size`` requests at once). Arrivals are the trace's own
  (open loop) or follow each response by the think time (closed loop); the trial's duration,
  drain and ``max_outstanding`` apply as on a real phone. Contention beyond that queue is only
  what the measured distributions already hold: this is a replay, not a model of the engine.
- **memory**: each SLM process holds the sizing rule's weights and KV (fleet/sizing.py) plus the
  profile's measured runtime bytes; model loads take a drawn measured load time. Nothing is
  killed: per-app's low-memory killer, swaps and preemption are not replayed.

Draws come from a generator seeded by the trial's seed and the phone's name, so a trial replays
the same way twice. Records are emitted in real time, as each request ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from agents.paradigms.base import Emit, ParadigmHost
from fleet.records import (
    AppDeployment,
    DeployResult,
    DeploySpec,
    Paradigm,
    PhoneProfile,
    RequestRecord,
    RequestStatus,
    ResourceSample,
    ServiceFacts,
    Slice,
    TraceRequest,
    WorkloadRun,
)
from fleet.sim_profile import SimProfile
from fleet.sizing import footprints

NS = 1_000_000_000
FAKE_PID_BASE = 1 << 22  # above Linux's largest pid: a replayed process is never a real one
MAX_LOAD_S = 30.0  # a drawn load time is capped (a profile's outlier must not stall a fleet)


@dataclass
class Replayed:
    """One request's replayed life, in seconds after the workload's start."""

    req: TraceRequest
    submit: float
    scheduled: float = -1.0  # -1: never scheduled
    tokens: list[float] = field(default_factory=list)
    end: float = 0.0
    status: RequestStatus = RequestStatus.OK

    def record(self, t0_ns: int, prefill_tokens: int) -> RequestRecord:
        def ns(s: float) -> int:
            return t0_ns + int(s * NS)

        scheduled = ns(self.scheduled) if self.scheduled >= 0 else 0
        sent = ns(self.submit) if self.status is not RequestStatus.DROPPED else 0
        slices = (
            (Slice(scheduled, ns(self.end), prefill_tokens, len(self.tokens)),) if scheduled else ()
        )
        return RequestRecord(
            request_id=f"{self.req.app}/{self.req.index}",
            app=self.req.app,
            status=self.status,
            prompt_tokens=self.req.prompt_tokens,
            submit_ns=ns(self.submit),
            scheduled_ns=scheduled,
            token_ns=[ns(t) for t in self.tokens],
            turn=self.req.turn,
            service=ServiceFacts(slices=slices),
            sent_ns=sent,
            end_ns=ns(self.end),
        )


def _rng(seed: int, *parts: str) -> random.Random:
    digest = hashlib.sha256("/".join((str(seed), *parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def replay_schedule(
    spec: DeploySpec, run: WorkloadRun, sim: SimProfile, phone: str
) -> list[Replayed]:
    """Every trace request's replayed life, ordered by when it ends (its record's time)."""
    prof = sim.paradigm(spec.paradigm.value)
    rng = _rng(run.seed, phone, run.trial_id)
    apps = {a.name: a for a in spec.apps}
    per_app = spec.paradigm is Paradigm.PER_APP
    slots: dict[str, list[float]] = {}  # server -> when each of its slots is next free
    for a in spec.apps:
        server = a.name if per_app else "service"
        slots.setdefault(server, [0.0] * (1 if per_app else max(1, spec.service.max_batch_size)))
    deadline = run.duration_s + run.drain_s
    queue: list[tuple[float, int, TraceRequest]] = []
    order = itertools.count()  # ties in arrival time go in trace order
    closed: dict[str, list[TraceRequest]] = {}
    for req in run.trace:
        if req.at_s is None:
            closed.setdefault(req.app, []).append(req)
        elif req.at_s < run.duration_s:
            heapq.heappush(queue, (req.at_s, next(order), req))
    for reqs in closed.values():
        reqs.sort(key=lambda r: r.index)
        heapq.heappush(queue, (0.0, next(order), reqs.pop(0)))
    out: list[Replayed] = []
    in_flight: dict[str, list[float]] = {}  # app -> end times of its open-loop requests
    while queue:
        at, _, req = heapq.heappop(queue)
        app = apps[req.app]
        life = Replayed(req, submit=at)
        cap = app.max_outstanding if req.at_s is not None else 0
        ends = in_flight.setdefault(req.app, [])
        ends[:] = [e for e in ends if e > at]
        if cap and len(ends) >= cap:
            life.status, life.end = RequestStatus.DROPPED, at
            out.append(life)
            continue
        free = slots[req.app if per_app else "service"]
        start = max(at, heapq.heappop(free))
        if start >= deadline:
            life.status, life.end = RequestStatus.CANCELLED, deadline
            heapq.heappush(free, start)
        else:
            life.scheduled = start
            uncached = req.prompt_tokens + (app.system_prompt_tokens if per_app else 0)
            t = start + prof.prefill_s_per_token.draw(rng.random()) * max(1, uncached)
            gap = prof.itl_s.draw(rng.random())
            for _ in range(req.output_tokens):
                if t > deadline:
                    break
                life.tokens.append(t)
                t += gap
            life.end = life.tokens[-1] if life.tokens else deadline
            if len(life.tokens) < req.output_tokens:
                life.status, life.end = RequestStatus.CANCELLED, deadline
            heapq.heappush(free, life.end)
        ends.append(life.end)
        out.append(life)
        following = closed.get(req.app)
        if req.at_s is None and following:
            nxt = life.end + app.think_time_s
            if nxt < run.duration_s and life.status is RequestStatus.OK:
                heapq.heappush(queue, (nxt, next(order), following.pop(0)))
    out.sort(key=lambda r: r.end)
    return out


class SimulatedParadigm(ParadigmHost):
    """Any paradigm, replayed from ``sim``; see the module docstring."""

    def __init__(self, paradigm: Paradigm, profile: PhoneProfile, sim: SimProfile):
        super().__init__(profile)
        self.paradigm = paradigm
        self.sim = sim
        self._spec: DeploySpec | None = None
        self._memory: dict[int, tuple[str, int, int]] = {}  # pid -> (component, weights, KV)

    @property
    def weights_label(self) -> str:
        return self.sim.label

    def deploy(self, spec: DeploySpec) -> DeployResult:
        planned = self.plan_bytes(spec)
        prof = self.sim.paradigm(spec.paradigm.value)  # ProfileError: not measured
        need = footprints(spec, self.profile)
        rng = _rng(0, self.profile.name, spec.paradigm.value, spec.phase)
        if spec.paradigm is Paradigm.PER_APP:
            parts = [(a.name, need[a.name].weight_bytes, need[a.name].kv_bytes) for a in spec.apps]
        else:
            weights = next(iter(need.values())).weight_bytes
            parts = [("service", weights, sum(f.kv_bytes for f in need.values()))]
        loads = [min(MAX_LOAD_S, prof.load_s.draw(rng.random())) for _ in parts]
        time.sleep(max(loads))  # the processes load side by side
        self._spec = spec
        self._memory = {FAKE_PID_BASE + i: p for i, p in enumerate(parts)}
        return DeployResult(
            apps=tuple(
                AppDeployment(
                    app=name, pid=pid, cold_start_s=load, weight_bytes=w, kv_cache_bytes=kv
                )
                for (pid, (name, w, kv)), load in zip(self._memory.items(), loads)
            ),
            weights_label=self.sim.label,
            planned_bytes=planned,
            memory_budget_bytes=self.profile.memory_budget_bytes,
        )

    on_loop = True  # the replay and its sampler only compute: no thread of their own

    def run(self, run: WorkloadRun, emit: Emit, stop: threading.Event) -> list[str]:
        """The replay on a thread of the caller's (the trial runner uses ``run_on_loop``)."""
        replay = self._replay(run)
        if replay is None:
            return ["nothing is deployed"]
        for life, wait in replay:
            if wait > 0 and stop.wait(wait) or stop.is_set():
                break
            emit(replay.record(life))
        if stop.is_set():
            replay.cut(emit)
        return []

    async def run_on_loop(self, run: WorkloadRun, emit: Emit, stop: asyncio.Event) -> list[str]:
        replay = self._replay(run)
        if replay is None:
            return ["nothing is deployed"]
        for life, wait in replay:
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await stop.wait()
            if stop.is_set():
                break
            emit(replay.record(life))
        if stop.is_set():
            replay.cut(emit)
        return []

    def _replay(self, run: WorkloadRun) -> _Replay | None:
        spec = self._spec
        if spec is None:
            return None
        return _Replay(spec, replay_schedule(spec, run, self.sim, self.profile.name))

    def processes(self) -> dict[int, str]:
        return {pid: name for pid, (name, _w, _kv) in self._memory.items()}

    def memory_split(self) -> dict[int, tuple[int, int, int]]:
        return {pid: (w, kv, 0) for pid, (_name, w, kv) in self._memory.items()}

    def resource_sampler(self) -> ReplaySampler:
        return ReplaySampler(self)

    def device_probe(self) -> NoDevice:
        return NoDevice()

    def shutdown(self) -> int:
        n = len(self._memory)
        self._memory, self._spec = {}, None
        return n


class _Replay:
    """A trial's replay from its start: iterated, (each request's life, seconds until its
    record is due), in the order of their ends."""

    def __init__(self, spec: DeploySpec, schedule: list[Replayed]):
        self.schedule = schedule
        self.per_app = spec.paradigm is Paradigm.PER_APP
        self.apps = {a.name: a for a in spec.apps}
        self.t0_ns = time.monotonic_ns()

    def __iter__(self) -> Iterator[tuple[Replayed, float]]:
        for life in self.schedule:
            yield life, self.t0_ns / NS + life.end - time.monotonic()

    def record(self, life: Replayed) -> RequestRecord:
        prefill = life.req.prompt_tokens + (
            self.apps[life.req.app].system_prompt_tokens if self.per_app else 0
        )
        return life.record(self.t0_ns, prefill)

    def cut(self, emit: Emit) -> None:
        """A stop: what had arrived by now and not ended ends unserved, as a stopped phone's
        would."""
        now = (time.monotonic_ns() - self.t0_ns) / NS
        for life in self.schedule:
            if life.submit <= now < life.end:
                life.tokens = [t for t in life.tokens if t <= now]
                life.status, life.end = RequestStatus.CANCELLED, now
                emit(life.record(self.t0_ns, life.req.prompt_tokens))


class ReplaySampler:
    """The memory sampler of a simulated phone: each replayed process holds its weights, its
    KV cache and the profile's measured runtime bytes."""

    def __init__(self, host: SimulatedParadigm):
        self.host = host

    def sample(self, processes: dict[int, str]) -> list[ResourceSample]:
        spec = self.host._spec
        runtime = self.host.sim.paradigm(spec.paradigm.value).runtime_bytes if spec else 0
        t = time.monotonic_ns()
        return [
            ResourceSample(t, name, pid, w + kv + runtime, w + kv + runtime, 0.0)
            for pid, (name, w, kv) in self.host._memory.items()
            if pid in processes
        ]


class NoDevice:
    """A simulated phone has no battery, thermal zones or clocks of its own to read."""

    def read(self) -> list:
        return []

    def lmk_kills(self) -> list:
        return []
