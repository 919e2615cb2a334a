"""Plain data shared by the coordinator and the phone agent: specs going down, records coming up.

Only ``fleet.wire`` converts these to and from protobuf messages; everything else (engine, apps,
paradigms, store, analysis) works with these dataclasses. No torch, gRPC or Ray imports here.
Times are CLOCK_MONOTONIC nanoseconds on the phone; durations carry a unit suffix.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum

NS_PER_S = 1_000_000_000


class Paradigm(str, Enum):
    PER_APP = "per_app"
    SLMAAS = "slmaas"
    AGENT_OS = "agent_os"


class ArrivalPattern(str, Enum):
    POISSON = "poisson"
    CLOSED_LOOP = "closed_loop"
    TRACE = "trace"  # open loop, arrival times and sizes replayed from a trace


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
    CANCELLED = "cancelled"  # the workload ended before it was served whole (censored)
    DROPPED = "dropped"  # never sent: the app's cap on outstanding requests was reached


@dataclass(frozen=True)
class RejectedEvent:
    """A streamed message the coordinator could not take (a number out of range): kept as a
    note with its reason, in place of the record, so nothing is dropped silently."""

    kind: str  # record, sample, ...
    ident: str  # its request id or component@time
    reason: str


class TrialStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"
    # Coordinator-side only (never on the wire): a stopped or crashed run's trials.
    INTERRUPTED = "interrupted"  # cut short; ``fleet run --resume`` runs it again
    NOT_RUN = "not_run"  # never started; ``--resume`` runs it


@dataclass(frozen=True)
class ModelSpec:
    preset: str = "tiny"  # named shape with random weights; ignored when path is set
    path: str = ""  # local Hugging Face format directory with real weights
    dtype: str = "fp32"  # fp32 | bf16
    seed: int = 0  # seed of the random weights


@dataclass(frozen=True)
class PhoneProfile:
    name: str
    kind: str = "virtual"  # virtual | android | simulated (replays a profile: agents/simulated)
    memory_budget_bytes: int = 0
    cpu_threads: int = 1
    host: str = ""
    cpus: tuple[int, ...] = ()  # cores every process of the phone is confined to (() = unpinned)
    storage_dir: str = ""  # where its model files and swapped contexts live ("" = none)
    storage_model: str = "none"  # how fast that storage reads and writes (fleet.storage_models)


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
    turns_per_session: int = (
        0  # multi-turn: a new conversation after this many turns (0 = when full)
    )
    system_prompt_tokens: int = 0  # a fixed prefix of every prompt (shared-prefix reuse)
    model: ModelSpec | None = None  # per-app: the app's own model, when not the deployment's
    max_outstanding: int = 0  # open loop: most requests in flight; over it, dropped (0 = no cap)

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
    prefill_chunk_tokens: int = 64  # most prompt tokens of one sequence per step (see bench/)
    prefix_cache: bool = True  # reuse KV of an app's system prompt
    persistent_contexts: bool = False  # keep multi-turn contexts between turns
    context_policy: ContextPolicy = ContextPolicy.SWAP
    kv_budget_bytes: int = 0  # 0 = phone budget less the service's own PSS after loading
    quantum_tokens: int = 16  # round robin: steps before the next app leads
    priority_aging_s: float = 0.0  # priority: a background request waiting this long is promoted


# A per-app app's own model process serves that app alone, as an app's own runtime would: one
# request at a time, its conversation's KV kept between turns and its system prompt's KV reused,
# within its own memory (an older conversation is dropped when a new one starts). Nothing shared.
OWN_MODEL = ServiceOptions(
    max_batch_size=1,
    prefill_chunk_tokens=512,  # no other app to protect: prefill in big steps
    prefix_cache=True,
    persistent_contexts=True,
    context_policy=ContextPolicy.RECOMPUTE,
)


def effective_service_options(paradigm: Paradigm, requested: ServiceOptions) -> ServiceOptions:
    """How a paradigm runs its model processes, decided here and nowhere else: per-app's own
    models are ``OWN_MODEL``; SLM-as-a-service is app-agnostic (FCFS, nothing kept per app
    between requests); agent-OS runs what was asked."""
    if paradigm is Paradigm.PER_APP:
        return OWN_MODEL
    if paradigm is Paradigm.SLMAAS:
        return replace(requested, scheduler=SchedulerPolicy.FCFS, persistent_contexts=False)
    return requested


@dataclass(frozen=True)
class DeploySpec:
    paradigm: Paradigm
    model: ModelSpec
    apps: tuple[AppWorkload, ...]
    max_context_tokens: int = 0  # 0 = derive from the apps
    threads_per_process: int = 0  # torch threads per SLM process; 0 = the phone's cores
    service: ServiceOptions = ServiceOptions()
    # How the agent labels this deployment's metric series: the experiment's name for the
    # paradigm ("" = the paradigm's kind) and the trial's phase (PHASES; "" = "adhoc")
    paradigm_label: str = ""
    phase: str = ""


# The phases of the contention methodology (fleet/coordinator/plan.py): an app alone, all apps
# together, and the app-count sweep; "adhoc" labels a deployment made outside a plan.
PHASES = ("solo", "corun", "sweep")


def phase_of_mix(mix: str) -> str:
    """The phase of an app mix ("solo:<app>", "corun", "apps:<k>")."""
    if mix.startswith("solo:"):
        return "solo"
    if mix.startswith("apps:"):
        return "sweep"
    return "corun"


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
class AgentDescription:
    """What a phone agent says of itself (Describe)."""

    profile: PhoneProfile
    paradigms: tuple[Paradigm, ...] = ()
    model_presets: tuple[str, ...] = ()
    versions: dict[str, str] = field(default_factory=dict)  # python, torch, grpcio, ...
    host_facts: dict[str, str] = field(default_factory=dict)  # cpu_count, memory_total_bytes, ...
    agent_pid: int = 0
    metrics_port: int = 0  # its /metrics port on the gRPC address's host (0: none)


@dataclass(frozen=True)
class TraceRequest:
    """One request of an app's trace (``fleet.traces``): what the app will send, and when."""

    app: str
    index: int  # position in the app's trace; the request id is ``<app>/<index>``
    at_s: float | None  # arrival, seconds after the start (open loop); None: closed loop
    prompt_tokens: int  # new prompt tokens (after the system prompt and the conversation)
    output_tokens: int
    session: str = ""  # conversation it belongs to ("" = none)
    turn: int = 0  # index of the turn in its session

    @property
    def request_id(self) -> str:
        return f"{self.app}/{self.index}"


@dataclass(frozen=True)
class WorkloadRun:
    trial_id: str
    duration_s: float
    seed: int = 0
    sample_interval_s: float = 0.25
    # Every request of every app (fleet.traces); empty: the phone generates them from the seed
    trace: tuple[TraceRequest, ...] = ()
    drain_s: float = 30.0  # after the duration, in-flight requests get this long, then cancelled


@dataclass(frozen=True)
class ServeCall:
    """One request as an app hands it to its model (a fleet.v1 SlmCall's GenerateRequest)."""

    request_id: str
    app: str
    prompt: list[int]
    output_tokens: int
    foreground: bool = False
    session: str = ""  # the app's conversation, for a service that keeps contexts
    shared_prefix_tokens: int = 0  # the app's fixed system prompt


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


@dataclass(frozen=True)
class ServiceFacts:
    """What only the model side sees of one request: how it ran, what it reused, what it cost.

    Filled by the model service's engine, carried to the app in the completion, kept whole in
    the request's record."""

    slices: tuple[Slice, ...] = ()  # every stretch it ran without preemption, in order
    context_switch_s: float = 0.0  # making its evicted context usable again
    context_switch_bytes: int = 0
    context_restore: str = ""  # swap | recompute | "" (no evicted context to restore)
    cached_prompt_tokens: int = 0  # prompt tokens whose KV came from a cache, not prefill
    max_batch_size: int = 0  # largest batch it ran in


@dataclass(frozen=True)
class Latencies:
    """A request's derived durations in seconds; None where it never got that far."""

    app_delay_s: float | None
    queue_wait_s: float | None
    ttft_s: float | None
    itl_s: float | None  # needs two output tokens
    e2e_s: float | None
    waiting_s: float | None


@dataclass
class RequestRecord:
    """One request as its app experienced it: raw CLOCK_MONOTONIC timestamps, and what the model
    side reported. Every duration is derived here, from the timestamps, and nowhere else."""

    request_id: str
    app: str
    status: RequestStatus
    prompt_tokens: int
    submit_ns: int  # the arrival's scheduled time (open loop) or when it was sent (closed loop)
    scheduled_ns: int = 0  # first scheduled on the model (the send time without a service)
    token_ns: list[int] = field(default_factory=list)  # every output token, first included
    error: str = ""
    cold_start_s: float = 0.0  # model relaunch this request paid (also inside its TTFT)
    turn: int = 0  # multi-turn: index of the turn in its conversation
    service: ServiceFacts = ServiceFacts()
    sent_ns: int = 0  # when the app sent it to its model (0: never sent)
    end_ns: int = 0  # when the app stopped waiting: last token, failure or cancel

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
    def app_delay_s(self) -> float:
        """Arrival to send, inside the app (a turn waiting for its previous turn, a late
        thread); 0 for a request never sent."""
        return (self.sent_ns - self.submit_ns) / NS_PER_S if self.sent_ns else 0.0

    @property
    def queue_wait_s(self) -> float:
        """Sent to first scheduled on the model: the service's queue, less the time its context
        was being read back from storage (that is ``service.context_switch_s``, its own field;
        a recompute happens after scheduling, as prefill)."""
        if not self.scheduled_ns:
            return 0.0
        wait = (self.scheduled_ns - (self.sent_ns or self.submit_ns)) / NS_PER_S
        if self.service.context_restore == "swap":
            wait = max(0.0, wait - self.service.context_switch_s)
        return wait

    @property
    def waited_s(self) -> float:
        """Arrival to when the app stopped waiting: the lower bound of an unserved request's
        latency (its censoring time)."""
        end = self.end_ns or self.last_token_ns
        return max(0, end - self.submit_ns) / NS_PER_S if end else 0.0

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
        """Time from arrival not running on the model: before its first slice and between
        slices (a preempted request waits again); arrival to first scheduled without slices."""
        slices = self.service.slices
        if not slices:
            return (self.scheduled_ns - self.submit_ns) / NS_PER_S if self.scheduled_ns else 0.0
        gaps = sum(b.start_ns - a.end_ns for a, b in zip(slices, slices[1:]))
        return (slices[0].start_ns - self.submit_ns + gaps) / NS_PER_S

    @property
    def e2e_s(self) -> float:
        return (self.last_token_ns - self.submit_ns) / NS_PER_S if self.token_ns else 0.0

    def latencies(self) -> Latencies:
        """The derived durations, None where the request never got that far."""
        scheduled = self.scheduled_ns > 0
        delay = self.app_delay_s if self.sent_ns else None
        if not self.token_ns:
            return Latencies(
                delay,
                self.queue_wait_s if scheduled else None,
                None,
                None,
                None,
                self.waiting_s if scheduled else None,
            )
        return Latencies(
            delay,
            self.queue_wait_s,
            self.ttft_s,
            self.itl_s if len(self.token_ns) > 1 else None,
            self.e2e_s,
            self.waiting_s if scheduled else None,
        )


@dataclass(frozen=True)
class ServiceStats:
    """A shared model service's engine, scheduler and context counters at one moment (vLLM's
    SchedulerStats). Counters are totals since the service started; gauges are current."""

    t_ns: int
    num_running: int = 0  # gauge: requests in the last forward pass
    num_waiting: int = 0  # gauge: submitted, not running
    last_batch_size: int = 0  # gauge
    kv_held_bytes: int = 0  # gauge: KV of running requests, kept contexts and prefixes
    num_steps: int = 0
    mean_batch_size: float = 0.0
    max_batch_size: int = 0
    num_preemptions: int = 0
    num_promotions: int = 0  # background requests aged into the foreground
    weight_bytes: int = 0  # gauge: the model's weights
    admission_waits: int = 0  # requests the memory budget held back until their KV could fit
    kv_used_bytes: int = 0  # gauge: of kv_held_bytes, the positions filled
    prefix_hits: int = 0
    context_hits: int = 0
    swap_outs: int = 0
    swap_ins: int = 0
    recomputes: int = 0
    drops: int = 0
    swap_bytes: int = 0


@dataclass(frozen=True)
class ResourceSample:
    t_ns: int
    component: str  # the app (per-app) or service component the process belongs to
    pid: int
    rss_bytes: int
    pss_bytes: int
    cpu_percent: float = 0.0
    weights_bytes: int = 0  # of its PSS: model weights (model processes report them)
    kv_bytes: int = 0  # of its PSS: KV cache allocated; the rest is runtime
    kv_used_bytes: int = 0  # of the KV allocated, the positions filled


@dataclass(frozen=True)
class DeviceReading:
    """One reading of the phone's own state (agents/device_probe.py): battery, a thermal zone,
    a CPU cluster's frequency, free memory. Base units: C, A, V, Hz, bytes, %."""

    t_ns: int
    kind: str  # battery | thermal | cpufreq | memory
    name: str
    value: float


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
