"""Schedulers of a shared model service: which requests run in the next forward pass.

A scheduler sees the service's unfinished requests and returns the ones to run this step; the
engine does the rest (vLLM's schedule -> execute -> update). Requests that were running and are
not picked are preempted at token granularity: their KV stays, and their slice ends.

- ``FcfsScheduler``: continuous batching in arrival order, app-agnostic, never preempts (SLMaaS).
- ``PriorityScheduler``: foreground requests first; while any foreground request is unfinished,
  background ones are preempted (agent-OS). With aging (``aging_s`` > 0), a background request
  that has waited that long since it arrived or last ran is promoted to the foreground until it
  finishes, so none starves; ``aging_s`` = 0 is strict priority.
- ``RoundRobinScheduler``: the apps take turns: every step takes one request of each app in ring
  order (then a second of each, ...) up to the batch size, and the ring turns every ``quantum``
  steps, so apps share the batch slots in turn when there are fewer slots than apps. Scheduling
  is orthogonal to batching: with ``max_batch_size`` 1 it is classic one-at-a-time round robin.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING

from fleet.records import SchedulerPolicy, ServeCall, ServiceFacts, Slice

if TYPE_CHECKING:  # the scheduler itself needs no torch
    from agents.llm.kv_context import KVContext


class RequestState(IntEnum):
    """The request lifecycle, in order."""

    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED = 3
    CANCELLED = 4
    FAILED = 5


@dataclass(eq=False)
class ServiceRequest:
    request_id: str
    app: str
    prompt: list[int]
    max_new_tokens: int
    foreground: bool = False
    session: str = ""  # key of a persistent context
    shared_prefix_tokens: int = 0
    seq: int = 0  # arrival order, set by the engine
    arrived_ns: int = 0  # when the engine got it
    promoted: bool = False  # aged into the foreground (priority with aging)
    admission_waited: bool = False  # held back once because its KV would exceed the budget
    restoring: bool = False  # its context is being read back from storage (not schedulable)
    recompute_tokens: int = 0  # a dropped context being rebuilt by its own chunked prefill
    restore_started_ns: int = 0
    state: RequestState = RequestState.WAITING
    ctx: KVContext | None = None  # once first scheduled
    prefilled: int = 0  # prompt tokens whose KV the context holds
    generated: list[int] = field(default_factory=list)
    pending_token: int | None = None  # sampled, not yet fed back through the model
    scheduled_ns: int = 0
    slices: list[Slice] = field(default_factory=list)
    slice_start_ns: int = 0
    slice_prefill: int = 0
    slice_output: int = 0
    cached_prompt_tokens: int = 0
    context_switch_s: float = 0.0
    context_switch_bytes: int = 0
    context_restore: str = ""
    max_batch_size: int = 0
    sink: object = None  # callable(item): a token id, or the finished request itself
    cancelled: bool = False

    @classmethod
    def from_call(cls, call: ServeCall) -> ServiceRequest:
        return cls(
            call.request_id,
            call.app,
            list(call.prompt),
            call.output_tokens,
            foreground=call.foreground,
            session=call.session,
            shared_prefix_tokens=call.shared_prefix_tokens,
        )

    def facts(self) -> ServiceFacts:
        """What the service tells the app about how this request ran."""
        return ServiceFacts(
            slices=tuple(self.slices),
            context_switch_s=self.context_switch_s,
            context_switch_bytes=self.context_switch_bytes,
            context_restore=self.context_restore,
            cached_prompt_tokens=self.cached_prompt_tokens,
            max_batch_size=self.max_batch_size,
        )

    @property
    def needs_prefill(self) -> bool:
        return self.prefilled < len(self.prompt)

    @property
    def done(self) -> bool:
        return self.state >= RequestState.FINISHED

    def next_chunk(self, chunk_limit: int) -> list[int]:
        if self.needs_prefill:
            return self.prompt[self.prefilled : self.prefilled + chunk_limit]
        assert self.pending_token is not None  # sampled by the previous step
        return [self.pending_token]

    def start_slice(self, now_ns: int) -> None:
        self.state = RequestState.RUNNING
        self.slice_start_ns, self.slice_prefill, self.slice_output = now_ns, 0, 0
        if not self.scheduled_ns:
            self.scheduled_ns = now_ns

    def end_slice(self, now_ns: int, state: RequestState) -> None:
        if self.state == RequestState.RUNNING:
            self.slices.append(
                Slice(self.slice_start_ns, now_ns, self.slice_prefill, self.slice_output)
            )
        self.state = state


class Scheduler:
    policy: SchedulerPolicy

    def __init__(self, max_batch_size: int):
        self.max_batch_size = max(1, max_batch_size)
        self.promotions = 0  # background requests aged into the foreground

    def schedule(self, active: list[ServiceRequest]) -> list[ServiceRequest]:
        """active: unfinished requests in arrival order -> the batch for the next step."""
        raise NotImplementedError


def _running_first(pool: list[ServiceRequest]) -> list[ServiceRequest]:
    return [r for r in pool if r.state == RequestState.RUNNING] + [
        r for r in pool if r.state != RequestState.RUNNING
    ]


class FcfsScheduler(Scheduler):
    policy = SchedulerPolicy.FCFS

    def schedule(self, active):
        running = [r for r in active if r.state == RequestState.RUNNING]
        waiting = [r for r in active if r.state != RequestState.RUNNING]
        return (running + waiting)[: self.max_batch_size]


class PriorityScheduler(Scheduler):
    policy = SchedulerPolicy.PRIORITY

    def __init__(self, max_batch_size: int, aging_s: float = 0.0):
        super().__init__(max_batch_size)
        self.aging_ns = int(aging_s * 1e9)

    def _age(self, active: list[ServiceRequest]) -> None:
        now = time.monotonic_ns()
        for r in active:
            if r.foreground or r.promoted or r.state == RequestState.RUNNING:
                continue
            since = r.slices[-1].end_ns if r.slices else r.arrived_ns
            if since and now - since >= self.aging_ns:
                r.promoted = True  # until it finishes: demoting it would thrash
                self.promotions += 1

    def schedule(self, active):
        if self.aging_ns:
            self._age(active)
        urgent = [r for r in active if r.foreground or r.promoted]
        pool = urgent or active  # background runs when nothing urgent is left
        return _running_first(pool)[: self.max_batch_size]


class RoundRobinScheduler(Scheduler):
    policy = SchedulerPolicy.ROUND_ROBIN

    def __init__(self, max_batch_size: int, quantum: int):
        super().__init__(max_batch_size)
        self.quantum = max(1, quantum)
        self._ring: deque[str] = deque()  # apps, the one at the head goes first
        self._steps = 0

    def schedule(self, active):
        by_app: dict[str, list[ServiceRequest]] = {}
        for r in active:
            by_app.setdefault(r.app, []).append(r)
        self._ring = deque(a for a in self._ring if a in by_app)
        self._ring.extend(a for a in by_app if a not in self._ring)
        if self._steps >= self.quantum and len(self._ring) > 1:
            self._ring.rotate(-1)  # the head's quantum is used up: the next app leads
            self._steps = 0
        queues = [_running_first(by_app[a]) for a in self._ring]
        batch: list[ServiceRequest] = []
        for depth in range(max((len(q) for q in queues), default=0)):
            for q in queues:  # one of each app per round, in ring order
                if depth < len(q) and len(batch) < self.max_batch_size:
                    batch.append(q[depth])
        self._steps += 1
        return batch


def make_scheduler(
    policy: SchedulerPolicy, max_batch_size: int, quantum: int, aging_s: float = 0.0
) -> Scheduler:
    if policy is SchedulerPolicy.FCFS:
        return FcfsScheduler(max_batch_size)
    if policy is SchedulerPolicy.PRIORITY:
        return PriorityScheduler(max_batch_size, aging_s)
    return RoundRobinScheduler(max_batch_size, quantum)
