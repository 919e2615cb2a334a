"""Plain data shared by the coordinator and the phone agent: specs going down, records coming up.

Only ``fleet.wire`` converts these to and from protobuf messages; everything else (engine, apps,
paradigms, store, analysis) works with these dataclasses. No torch, gRPC or Ray imports here.
Times are CLOCK_MONOTONIC nanoseconds on the phone; durations carry a unit suffix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

NS_PER_S = 1_000_000_000


class Paradigm(str, Enum):
    PER_APP = "per_app"
    SLMAAS = "slmaas"
    AGENT_OS = "agent_os"


class ArrivalPattern(str, Enum):
    POISSON = "poisson"
    CLOSED_LOOP = "closed_loop"


class SchedulerPolicy(str, Enum):
    FCFS = "fcfs"
    PRIORITY = "priority"
    ROUND_ROBIN = "round_robin"


class ContextPolicy(str, Enum):
    SWAP = "swap"
    RECOMPUTE = "recompute"


class RequestStatus(str, Enum):
    OK = "ok"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TrialStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ModelSpec:
    preset: str = "tiny"  # named shape with random weights; ignored when path is set
    path: str = ""  # local Hugging Face format directory with real weights
    dtype: str = "fp32"  # fp32 | bf16
    seed: int = 0  # seed of the random weights


@dataclass(frozen=True)
class PhoneProfile:
    name: str
    kind: str = "virtual"  # virtual | android
    memory_budget_bytes: int = 0
    cpu_threads: int = 1
    host: str = ""


@dataclass(frozen=True)
class AppWorkload:
    name: str
    pattern: ArrivalPattern = ArrivalPattern.CLOSED_LOOP
    rate_per_s: float = 0.0  # poisson: mean arrivals per second
    burst_size: int = 1  # poisson: requests per arrival event
    think_time_s: float = 0.0  # closed loop: pause after a response
    prompt_tokens: int = 32
    output_tokens: int = 8
    multi_turn: bool = False  # closed loop: each turn's prompt carries the previous turns
    max_requests: int = 0  # 0 = until the workload's duration ends
    foreground: bool = False
    slo_ttft_s: float = 0.0
    turns_per_session: int = 0  # multi-turn: a new conversation after this many turns (0 = when full)
    system_prompt_tokens: int = 0  # a fixed prefix of every prompt (shared-prefix reuse)
    model: ModelSpec | None = None  # per-app: the app's own model, when not the deployment's

    def max_context_tokens(self) -> int:
        """Longest prompt + output a request of this app can reach (0 = unbounded)."""
        turn = self.prompt_tokens + self.output_tokens
        if not self.multi_turn:
            return self.system_prompt_tokens + turn
        turns = self.turns_per_session or self.max_requests
        return self.system_prompt_tokens + turns * turn if turns else 0


@dataclass(frozen=True)
class ServiceOptions:
    """How a shared model service runs (SLMaaS and agent-OS)."""
    scheduler: SchedulerPolicy = SchedulerPolicy.FCFS
    max_batch_size: int = 8  # most sequences in one forward pass
    prefill_chunk_tokens: int = 512  # most prompt tokens of one sequence per step
    prefix_cache: bool = True  # reuse KV of an app's system prompt
    persistent_contexts: bool = False  # keep multi-turn contexts between turns
    context_policy: ContextPolicy = ContextPolicy.SWAP
    kv_budget_bytes: int = 0  # 0 = phone budget - weights
    quantum_tokens: int = 16  # round robin: decode steps per slice


@dataclass(frozen=True)
class DeploySpec:
    paradigm: Paradigm
    model: ModelSpec
    apps: tuple[AppWorkload, ...]
    max_context_tokens: int = 0  # 0 = derive from the apps
    threads_per_process: int = 1
    service: ServiceOptions = ServiceOptions()


@dataclass(frozen=True)
class AppDeployment:
    app: str
    pid: int
    cold_start_s: float
    weight_bytes: int
    kv_cache_bytes: int


@dataclass(frozen=True)
class DeployResult:
    apps: tuple[AppDeployment, ...]
    weights_label: str
    planned_bytes: int
    memory_budget_bytes: int


@dataclass(frozen=True)
class WorkloadRun:
    trial_id: str
    duration_s: float
    seed: int = 0
    sample_interval_s: float = 0.25


@dataclass(frozen=True)
class Slice:
    """One uninterrupted stretch of a request on the model."""
    start_ns: int
    end_ns: int
    prefill_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class PhoneEvent:
    """Something that happened to the phone's SLMs: an LMK kill, a cold start, a swap."""
    t_ns: int
    kind: str  # lmk_kill | cold_start | swap_out | swap_in | recompute | drop | service_died
    app: str = ""
    detail: str = ""
    bytes: int = 0
    duration_s: float = 0.0


@dataclass
class RequestRecord:
    request_id: str
    app: str
    status: RequestStatus
    prompt_tokens: int
    submit_ns: int
    scheduled_ns: int = 0
    token_ns: list[int] = field(default_factory=list)
    error: str = ""
    cold_start_s: float = 0.0
    turn: int = 0
    slices: list[Slice] = field(default_factory=list)
    context_switch_s: float = 0.0
    context_switch_bytes: int = 0
    context_restore: str = ""  # swap | recompute | "" (no evicted context to restore)
    cached_prompt_tokens: int = 0
    max_batch_size: int = 0

    @property
    def output_tokens(self) -> int:
        return len(self.token_ns)

    @property
    def first_token_ns(self) -> int:
        return self.token_ns[0] if self.token_ns else 0

    @property
    def last_token_ns(self) -> int:
        return self.token_ns[-1] if self.token_ns else 0

    @property
    def queue_wait_s(self) -> float:
        return (self.scheduled_ns - self.submit_ns) / NS_PER_S if self.scheduled_ns else 0.0

    @property
    def ttft_s(self) -> float:
        return (self.first_token_ns - self.submit_ns) / NS_PER_S if self.token_ns else 0.0

    @property
    def itl_s(self) -> float:
        """Mean gap between consecutive output tokens; TTFT is not part of it."""
        if len(self.token_ns) < 2:
            return 0.0
        return (self.token_ns[-1] - self.token_ns[0]) / (len(self.token_ns) - 1) / NS_PER_S

    @property
    def waiting_s(self) -> float:
        """Time submitted but not running on the model: before its first slice and between
        slices (a preempted request waits again). Queue wait when no slices were recorded."""
        if not self.slices:
            return self.queue_wait_s
        gaps = sum(b.start_ns - a.end_ns for a, b in zip(self.slices, self.slices[1:]))
        return (self.slices[0].start_ns - self.submit_ns + gaps) / NS_PER_S

    @property
    def e2e_s(self) -> float:
        return (self.last_token_ns - self.submit_ns) / NS_PER_S if self.token_ns else 0.0


@dataclass(frozen=True)
class ResourceSample:
    t_ns: int
    component: str  # the app (per-app) or service component the process belongs to
    pid: int
    rss_bytes: int
    pss_bytes: int
    cpu_percent: float = 0.0


@dataclass(frozen=True)
class TrialSummary:
    status: TrialStatus
    reason: str = ""
    num_requests: int = 0
    num_failed: int = 0
    output_tokens: int = 0
    duration_s: float = 0.0
    peak_pss_bytes: int = 0
    peak_rss_bytes: int = 0
    weights_label: str = ""
