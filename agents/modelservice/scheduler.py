"""Schedulers of a shared model service: which requests run in the next forward pass.

A scheduler sees the service's unfinished requests and returns the ones to run this step; the
engine does the rest (vLLM's schedule -> execute -> update). Requests that were running and are
not picked are preempted at token granularity: their KV stays, and their slice ends.

- ``FcfsScheduler``: continuous batching in arrival order, app-agnostic, never preempts (SLMaaS).
- ``PriorityScheduler``: foreground requests first; while any foreground request is unfinished,
  background ones are preempted (agent-OS).
- ``RoundRobinScheduler``: one request at a time for ``quantum`` steps, then the next in turn.
"""

from __future__ import annotations

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

    def schedule(self, active: list[ServiceRequest]) -> list[ServiceRequest]:
        """active: unfinished requests in arrival order -> the batch for the next step."""
        raise NotImplementedError


class FcfsScheduler(Scheduler):
    policy = SchedulerPolicy.FCFS

    def schedule(self, active):
        running = [r for r in active if r.state == RequestState.RUNNING]
        waiting = [r for r in active if r.state != RequestState.RUNNING]
        return (running + waiting)[: self.max_batch_size]


class PriorityScheduler(Scheduler):
    policy = SchedulerPolicy.PRIORITY

    def schedule(self, active):
        foreground = [r for r in active if r.foreground]
        pool = foreground or active  # strict priority: background runs only when no foreground
        running = [r for r in pool if r.state == RequestState.RUNNING]
        others = [r for r in pool if r.state != RequestState.RUNNING]
        return (running + others)[: self.max_batch_size]


class RoundRobinScheduler(Scheduler):
    policy = SchedulerPolicy.ROUND_ROBIN

    def __init__(self, max_batch_size: int, quantum: int):
        super().__init__(1)
        self.quantum = max(1, quantum)
        self._queue: deque[ServiceRequest] = deque()
        self._current: ServiceRequest | None = None
        self._steps = 0

    def schedule(self, active):
        live = set(active)
        for r in active:
            if r not in self._queue and r is not self._current:
                self._queue.append(r)
        self._queue = deque(r for r in self._queue if r in live)
        if self._current is not None and (self._current not in live or self._steps >= self.quantum):
            if self._current in live:
                self._queue.append(self._current)  # quantum used up: to the back of the line
            self._current = None
        if self._current is None and self._queue:
            self._current, self._steps = self._queue.popleft(), 0
        if self._current is None:
            return []
        self._steps += 1
        return [self._current]


def make_scheduler(policy: SchedulerPolicy, max_batch_size: int, quantum: int) -> Scheduler:
    if policy is SchedulerPolicy.FCFS:
        return FcfsScheduler(max_batch_size)
    if policy is SchedulerPolicy.PRIORITY:
        return PriorityScheduler(max_batch_size)
    return RoundRobinScheduler(max_batch_size, quantum)
