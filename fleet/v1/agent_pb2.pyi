from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Paradigm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PARADIGM_UNSPECIFIED: _ClassVar[Paradigm]
    PARADIGM_PER_APP: _ClassVar[Paradigm]
    PARADIGM_SLMAAS: _ClassVar[Paradigm]
    PARADIGM_AGENT_OS: _ClassVar[Paradigm]

class ArrivalPattern(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARRIVAL_PATTERN_UNSPECIFIED: _ClassVar[ArrivalPattern]
    ARRIVAL_PATTERN_POISSON: _ClassVar[ArrivalPattern]
    ARRIVAL_PATTERN_CLOSED_LOOP: _ClassVar[ArrivalPattern]
    ARRIVAL_PATTERN_TRACE: _ClassVar[ArrivalPattern]

class RequestStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REQUEST_STATUS_UNSPECIFIED: _ClassVar[RequestStatus]
    REQUEST_STATUS_OK: _ClassVar[RequestStatus]
    REQUEST_STATUS_FAILED: _ClassVar[RequestStatus]
    REQUEST_STATUS_CANCELLED: _ClassVar[RequestStatus]
    REQUEST_STATUS_DROPPED: _ClassVar[RequestStatus]

class TrialStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRIAL_STATUS_UNSPECIFIED: _ClassVar[TrialStatus]
    TRIAL_STATUS_COMPLETED: _ClassVar[TrialStatus]
    TRIAL_STATUS_FAILED: _ClassVar[TrialStatus]
    TRIAL_STATUS_STOPPED: _ClassVar[TrialStatus]

class ContextPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTEXT_POLICY_UNSPECIFIED: _ClassVar[ContextPolicy]
    CONTEXT_POLICY_SWAP: _ClassVar[ContextPolicy]
    CONTEXT_POLICY_RECOMPUTE: _ClassVar[ContextPolicy]

class SchedulerPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCHEDULER_POLICY_UNSPECIFIED: _ClassVar[SchedulerPolicy]
    SCHEDULER_POLICY_FCFS: _ClassVar[SchedulerPolicy]
    SCHEDULER_POLICY_PRIORITY: _ClassVar[SchedulerPolicy]
    SCHEDULER_POLICY_ROUND_ROBIN: _ClassVar[SchedulerPolicy]
PARADIGM_UNSPECIFIED: Paradigm
PARADIGM_PER_APP: Paradigm
PARADIGM_SLMAAS: Paradigm
PARADIGM_AGENT_OS: Paradigm
ARRIVAL_PATTERN_UNSPECIFIED: ArrivalPattern
ARRIVAL_PATTERN_POISSON: ArrivalPattern
ARRIVAL_PATTERN_CLOSED_LOOP: ArrivalPattern
ARRIVAL_PATTERN_TRACE: ArrivalPattern
REQUEST_STATUS_UNSPECIFIED: RequestStatus
REQUEST_STATUS_OK: RequestStatus
REQUEST_STATUS_FAILED: RequestStatus
REQUEST_STATUS_CANCELLED: RequestStatus
REQUEST_STATUS_DROPPED: RequestStatus
TRIAL_STATUS_UNSPECIFIED: TrialStatus
TRIAL_STATUS_COMPLETED: TrialStatus
TRIAL_STATUS_FAILED: TrialStatus
TRIAL_STATUS_STOPPED: TrialStatus
CONTEXT_POLICY_UNSPECIFIED: ContextPolicy
CONTEXT_POLICY_SWAP: ContextPolicy
CONTEXT_POLICY_RECOMPUTE: ContextPolicy
SCHEDULER_POLICY_UNSPECIFIED: SchedulerPolicy
SCHEDULER_POLICY_FCFS: SchedulerPolicy
SCHEDULER_POLICY_PRIORITY: SchedulerPolicy
SCHEDULER_POLICY_ROUND_ROBIN: SchedulerPolicy

class PhoneProfile(_message.Message):
    __slots__ = ("name", "kind", "memory_budget_bytes", "cpu_threads", "host", "cpus", "storage_dir", "storage_model")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPU_THREADS_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    STORAGE_DIR_FIELD_NUMBER: _ClassVar[int]
    STORAGE_MODEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    memory_budget_bytes: int
    cpu_threads: int
    host: str
    cpus: _containers.RepeatedScalarFieldContainer[int]
    storage_dir: str
    storage_model: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., memory_budget_bytes: _Optional[int] = ..., cpu_threads: _Optional[int] = ..., host: _Optional[str] = ..., cpus: _Optional[_Iterable[int]] = ..., storage_dir: _Optional[str] = ..., storage_model: _Optional[str] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("preset", "path", "dtype", "seed")
    PRESET_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    preset: str
    path: str
    dtype: str
    seed: int
    def __init__(self, preset: _Optional[str] = ..., path: _Optional[str] = ..., dtype: _Optional[str] = ..., seed: _Optional[int] = ...) -> None: ...

class AppWorkload(_message.Message):
    __slots__ = ("name", "pattern", "rate_per_s", "burst_size", "think_time_s", "prompt_tokens", "output_tokens", "multi_turn", "turns_per_session", "system_prompt_tokens", "model", "max_requests", "foreground", "slo_ttft_s", "max_outstanding")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    RATE_PER_S_FIELD_NUMBER: _ClassVar[int]
    BURST_SIZE_FIELD_NUMBER: _ClassVar[int]
    THINK_TIME_S_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MULTI_TURN_FIELD_NUMBER: _ClassVar[int]
    TURNS_PER_SESSION_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    FOREGROUND_FIELD_NUMBER: _ClassVar[int]
    SLO_TTFT_S_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTSTANDING_FIELD_NUMBER: _ClassVar[int]
    name: str
    pattern: ArrivalPattern
    rate_per_s: float
    burst_size: int
    think_time_s: float
    prompt_tokens: int
    output_tokens: int
    multi_turn: bool
    turns_per_session: int
    system_prompt_tokens: int
    model: ModelRef
    max_requests: int
    foreground: bool
    slo_ttft_s: float
    max_outstanding: int
    def __init__(self, name: _Optional[str] = ..., pattern: _Optional[_Union[ArrivalPattern, str]] = ..., rate_per_s: _Optional[float] = ..., burst_size: _Optional[int] = ..., think_time_s: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., multi_turn: _Optional[bool] = ..., turns_per_session: _Optional[int] = ..., system_prompt_tokens: _Optional[int] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., max_requests: _Optional[int] = ..., foreground: _Optional[bool] = ..., slo_ttft_s: _Optional[float] = ..., max_outstanding: _Optional[int] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("profile", "paradigms", "model_presets", "versions", "host_facts", "agent_pid", "metrics_port")
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class HostFactsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    PARADIGMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_PRESETS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    HOST_FACTS_FIELD_NUMBER: _ClassVar[int]
    AGENT_PID_FIELD_NUMBER: _ClassVar[int]
    METRICS_PORT_FIELD_NUMBER: _ClassVar[int]
    profile: PhoneProfile
    paradigms: _containers.RepeatedScalarFieldContainer[Paradigm]
    model_presets: _containers.RepeatedScalarFieldContainer[str]
    versions: _containers.ScalarMap[str, str]
    host_facts: _containers.ScalarMap[str, str]
    agent_pid: int
    metrics_port: int
    def __init__(self, profile: _Optional[_Union[PhoneProfile, _Mapping]] = ..., paradigms: _Optional[_Iterable[_Union[Paradigm, str]]] = ..., model_presets: _Optional[_Iterable[str]] = ..., versions: _Optional[_Mapping[str, str]] = ..., host_facts: _Optional[_Mapping[str, str]] = ..., agent_pid: _Optional[int] = ..., metrics_port: _Optional[int] = ...) -> None: ...

class ServiceOptions(_message.Message):
    __slots__ = ("scheduler", "max_batch_size", "prefill_chunk_tokens", "prefix_cache", "persistent_contexts", "context_policy", "kv_budget_bytes", "quantum_tokens", "priority_aging_s")
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PREFILL_CHUNK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_FIELD_NUMBER: _ClassVar[int]
    PERSISTENT_CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_POLICY_FIELD_NUMBER: _ClassVar[int]
    KV_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    QUANTUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_AGING_S_FIELD_NUMBER: _ClassVar[int]
    scheduler: SchedulerPolicy
    max_batch_size: int
    prefill_chunk_tokens: int
    prefix_cache: bool
    persistent_contexts: bool
    context_policy: ContextPolicy
    kv_budget_bytes: int
    quantum_tokens: int
    priority_aging_s: float
    def __init__(self, scheduler: _Optional[_Union[SchedulerPolicy, str]] = ..., max_batch_size: _Optional[int] = ..., prefill_chunk_tokens: _Optional[int] = ..., prefix_cache: _Optional[bool] = ..., persistent_contexts: _Optional[bool] = ..., context_policy: _Optional[_Union[ContextPolicy, str]] = ..., kv_budget_bytes: _Optional[int] = ..., quantum_tokens: _Optional[int] = ..., priority_aging_s: _Optional[float] = ...) -> None: ...

class DeployRequest(_message.Message):
    __slots__ = ("paradigm", "model", "apps", "max_context_tokens", "threads_per_process", "service", "paradigm_label", "phase")
    PARADIGM_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    APPS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    THREADS_PER_PROCESS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PARADIGM_LABEL_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    paradigm: Paradigm
    model: ModelRef
    apps: _containers.RepeatedCompositeFieldContainer[AppWorkload]
    max_context_tokens: int
    threads_per_process: int
    service: ServiceOptions
    paradigm_label: str
    phase: str
    def __init__(self, paradigm: _Optional[_Union[Paradigm, str]] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., apps: _Optional[_Iterable[_Union[AppWorkload, _Mapping]]] = ..., max_context_tokens: _Optional[int] = ..., threads_per_process: _Optional[int] = ..., service: _Optional[_Union[ServiceOptions, _Mapping]] = ..., paradigm_label: _Optional[str] = ..., phase: _Optional[str] = ...) -> None: ...

class AppDeployment(_message.Message):
    __slots__ = ("app", "pid", "cold_start_s", "weight_bytes", "kv_cache_bytes")
    APP_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    COLD_START_S_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    app: str
    pid: int
    cold_start_s: float
    weight_bytes: int
    kv_cache_bytes: int
    def __init__(self, app: _Optional[str] = ..., pid: _Optional[int] = ..., cold_start_s: _Optional[float] = ..., weight_bytes: _Optional[int] = ..., kv_cache_bytes: _Optional[int] = ...) -> None: ...

class DeployResponse(_message.Message):
    __slots__ = ("apps", "weights_label", "planned_bytes", "memory_budget_bytes")
    APPS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_LABEL_FIELD_NUMBER: _ClassVar[int]
    PLANNED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    apps: _containers.RepeatedCompositeFieldContainer[AppDeployment]
    weights_label: str
    planned_bytes: int
    memory_budget_bytes: int
    def __init__(self, apps: _Optional[_Iterable[_Union[AppDeployment, _Mapping]]] = ..., weights_label: _Optional[str] = ..., planned_bytes: _Optional[int] = ..., memory_budget_bytes: _Optional[int] = ...) -> None: ...

class RunWorkloadRequest(_message.Message):
    __slots__ = ("trial_id", "duration_s", "seed", "sample_interval_s", "trace", "drain_s")
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    DRAIN_S_FIELD_NUMBER: _ClassVar[int]
    trial_id: str
    duration_s: float
    seed: int
    sample_interval_s: float
    trace: _containers.RepeatedCompositeFieldContainer[TraceRequest]
    drain_s: float
    def __init__(self, trial_id: _Optional[str] = ..., duration_s: _Optional[float] = ..., seed: _Optional[int] = ..., sample_interval_s: _Optional[float] = ..., trace: _Optional[_Iterable[_Union[TraceRequest, _Mapping]]] = ..., drain_s: _Optional[float] = ...) -> None: ...

class TraceRequest(_message.Message):
    __slots__ = ("app", "index", "at_s", "prompt_tokens", "output_tokens", "session", "turn")
    APP_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    AT_S_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    app: str
    index: int
    at_s: float
    prompt_tokens: int
    output_tokens: int
    session: str
    turn: int
    def __init__(self, app: _Optional[str] = ..., index: _Optional[int] = ..., at_s: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., session: _Optional[str] = ..., turn: _Optional[int] = ...) -> None: ...

class RequestRecord(_message.Message):
    __slots__ = ("request_id", "app", "status", "error", "prompt_tokens", "submit_ns", "scheduled_ns", "sent_ns", "end_ns", "token_ns", "cold_start_s", "turn", "service")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    APP_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SUBMIT_NS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_NS_FIELD_NUMBER: _ClassVar[int]
    SENT_NS_FIELD_NUMBER: _ClassVar[int]
    END_NS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_NS_FIELD_NUMBER: _ClassVar[int]
    COLD_START_S_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    app: str
    status: RequestStatus
    error: str
    prompt_tokens: int
    submit_ns: int
    scheduled_ns: int
    sent_ns: int
    end_ns: int
    token_ns: _containers.RepeatedScalarFieldContainer[int]
    cold_start_s: float
    turn: int
    service: ServiceFacts
    def __init__(self, request_id: _Optional[str] = ..., app: _Optional[str] = ..., status: _Optional[_Union[RequestStatus, str]] = ..., error: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., submit_ns: _Optional[int] = ..., scheduled_ns: _Optional[int] = ..., sent_ns: _Optional[int] = ..., end_ns: _Optional[int] = ..., token_ns: _Optional[_Iterable[int]] = ..., cold_start_s: _Optional[float] = ..., turn: _Optional[int] = ..., service: _Optional[_Union[ServiceFacts, _Mapping]] = ...) -> None: ...

class ServiceFacts(_message.Message):
    __slots__ = ("slices", "context_switch_s", "context_switch_bytes", "context_restore", "cached_prompt_tokens", "max_batch_size")
    SLICES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_SWITCH_S_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_SWITCH_BYTES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_RESTORE_FIELD_NUMBER: _ClassVar[int]
    CACHED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    slices: _containers.RepeatedCompositeFieldContainer[Slice]
    context_switch_s: float
    context_switch_bytes: int
    context_restore: str
    cached_prompt_tokens: int
    max_batch_size: int
    def __init__(self, slices: _Optional[_Iterable[_Union[Slice, _Mapping]]] = ..., context_switch_s: _Optional[float] = ..., context_switch_bytes: _Optional[int] = ..., context_restore: _Optional[str] = ..., cached_prompt_tokens: _Optional[int] = ..., max_batch_size: _Optional[int] = ...) -> None: ...

class ServiceStats(_message.Message):
    __slots__ = ("t_ns", "num_running", "num_waiting", "last_batch_size", "kv_held_bytes", "num_steps", "mean_batch_size", "max_batch_size", "num_preemptions", "prefix_hits", "context_hits", "swap_outs", "swap_ins", "recomputes", "drops", "swap_bytes", "num_promotions", "weight_bytes", "admission_waits", "kv_used_bytes")
    T_NS_FIELD_NUMBER: _ClassVar[int]
    NUM_RUNNING_FIELD_NUMBER: _ClassVar[int]
    NUM_WAITING_FIELD_NUMBER: _ClassVar[int]
    LAST_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    KV_HELD_BYTES_FIELD_NUMBER: _ClassVar[int]
    NUM_STEPS_FIELD_NUMBER: _ClassVar[int]
    MEAN_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_PREEMPTIONS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_HITS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_HITS_FIELD_NUMBER: _ClassVar[int]
    SWAP_OUTS_FIELD_NUMBER: _ClassVar[int]
    SWAP_INS_FIELD_NUMBER: _ClassVar[int]
    RECOMPUTES_FIELD_NUMBER: _ClassVar[int]
    DROPS_FIELD_NUMBER: _ClassVar[int]
    SWAP_BYTES_FIELD_NUMBER: _ClassVar[int]
    NUM_PROMOTIONS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    ADMISSION_WAITS_FIELD_NUMBER: _ClassVar[int]
    KV_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    t_ns: int
    num_running: int
    num_waiting: int
    last_batch_size: int
    kv_held_bytes: int
    num_steps: int
    mean_batch_size: float
    max_batch_size: int
    num_preemptions: int
    prefix_hits: int
    context_hits: int
    swap_outs: int
    swap_ins: int
    recomputes: int
    drops: int
    swap_bytes: int
    num_promotions: int
    weight_bytes: int
    admission_waits: int
    kv_used_bytes: int
    def __init__(self, t_ns: _Optional[int] = ..., num_running: _Optional[int] = ..., num_waiting: _Optional[int] = ..., last_batch_size: _Optional[int] = ..., kv_held_bytes: _Optional[int] = ..., num_steps: _Optional[int] = ..., mean_batch_size: _Optional[float] = ..., max_batch_size: _Optional[int] = ..., num_preemptions: _Optional[int] = ..., prefix_hits: _Optional[int] = ..., context_hits: _Optional[int] = ..., swap_outs: _Optional[int] = ..., swap_ins: _Optional[int] = ..., recomputes: _Optional[int] = ..., drops: _Optional[int] = ..., swap_bytes: _Optional[int] = ..., num_promotions: _Optional[int] = ..., weight_bytes: _Optional[int] = ..., admission_waits: _Optional[int] = ..., kv_used_bytes: _Optional[int] = ...) -> None: ...

class Slice(_message.Message):
    __slots__ = ("start_ns", "end_ns", "prefill_tokens", "output_tokens")
    START_NS_FIELD_NUMBER: _ClassVar[int]
    END_NS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    start_ns: int
    end_ns: int
    prefill_tokens: int
    output_tokens: int
    def __init__(self, start_ns: _Optional[int] = ..., end_ns: _Optional[int] = ..., prefill_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ...) -> None: ...

class PhoneEvent(_message.Message):
    __slots__ = ("t_ns", "kind", "app", "detail", "bytes", "duration_s")
    T_NS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    APP_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    t_ns: int
    kind: str
    app: str
    detail: str
    bytes: int
    duration_s: float
    def __init__(self, t_ns: _Optional[int] = ..., kind: _Optional[str] = ..., app: _Optional[str] = ..., detail: _Optional[str] = ..., bytes: _Optional[int] = ..., duration_s: _Optional[float] = ...) -> None: ...

class ResourceSample(_message.Message):
    __slots__ = ("t_ns", "component", "pid", "rss_bytes", "pss_bytes", "cpu_percent", "weights_bytes", "kv_bytes", "kv_used_bytes")
    T_NS_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    PSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    t_ns: int
    component: str
    pid: int
    rss_bytes: int
    pss_bytes: int
    cpu_percent: float
    weights_bytes: int
    kv_bytes: int
    kv_used_bytes: int
    def __init__(self, t_ns: _Optional[int] = ..., component: _Optional[str] = ..., pid: _Optional[int] = ..., rss_bytes: _Optional[int] = ..., pss_bytes: _Optional[int] = ..., cpu_percent: _Optional[float] = ..., weights_bytes: _Optional[int] = ..., kv_bytes: _Optional[int] = ..., kv_used_bytes: _Optional[int] = ...) -> None: ...

class DeviceReading(_message.Message):
    __slots__ = ("t_ns", "kind", "name", "value")
    T_NS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    t_ns: int
    kind: str
    name: str
    value: float
    def __init__(self, t_ns: _Optional[int] = ..., kind: _Optional[str] = ..., name: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class TrialSummary(_message.Message):
    __slots__ = ("status", "reason", "num_requests", "num_failed", "output_tokens", "duration_s", "peak_pss_bytes", "peak_rss_bytes", "weights_label")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NUM_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    NUM_FAILED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    PEAK_PSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_LABEL_FIELD_NUMBER: _ClassVar[int]
    status: TrialStatus
    reason: str
    num_requests: int
    num_failed: int
    output_tokens: int
    duration_s: float
    peak_pss_bytes: int
    peak_rss_bytes: int
    weights_label: str
    def __init__(self, status: _Optional[_Union[TrialStatus, str]] = ..., reason: _Optional[str] = ..., num_requests: _Optional[int] = ..., num_failed: _Optional[int] = ..., output_tokens: _Optional[int] = ..., duration_s: _Optional[float] = ..., peak_pss_bytes: _Optional[int] = ..., peak_rss_bytes: _Optional[int] = ..., weights_label: _Optional[str] = ...) -> None: ...

class RunWorkloadResponse(_message.Message):
    __slots__ = ("record", "sample", "summary", "phone_event", "service_stats", "device")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    PHONE_EVENT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_STATS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    record: RequestRecord
    sample: ResourceSample
    summary: TrialSummary
    phone_event: PhoneEvent
    service_stats: ServiceStats
    device: DeviceReading
    def __init__(self, record: _Optional[_Union[RequestRecord, _Mapping]] = ..., sample: _Optional[_Union[ResourceSample, _Mapping]] = ..., summary: _Optional[_Union[TrialSummary, _Mapping]] = ..., phone_event: _Optional[_Union[PhoneEvent, _Mapping]] = ..., service_stats: _Optional[_Union[ServiceStats, _Mapping]] = ..., device: _Optional[_Union[DeviceReading, _Mapping]] = ...) -> None: ...

class StopRequest(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class StopResponse(_message.Message):
    __slots__ = ("was_running",)
    WAS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    was_running: bool
    def __init__(self, was_running: _Optional[bool] = ...) -> None: ...

class ResetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResetResponse(_message.Message):
    __slots__ = ("processes_stopped",)
    PROCESSES_STOPPED_FIELD_NUMBER: _ClassVar[int]
    processes_stopped: int
    def __init__(self, processes_stopped: _Optional[int] = ...) -> None: ...
