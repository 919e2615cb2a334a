"""The protocol edge: converts between fleet.v1 protobuf messages and fleet.records dataclasses.

This is the only module (with the generated stubs) that creates or reads ``*_pb2`` messages; the
agent's server, the model service's server, the app processes and the coordinator's client call
these functions at their edges. Decoding checks what protobuf cannot (enums left unspecified,
empty names, non-positive counts) and raises ``WireError`` (-> INVALID_ARGUMENT).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import Enum
from typing import TypeVar

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from fleet import limits as L
from fleet.records import (
    PHASES,
    AgentDescription,
    AppDeployment,
    AppWorkload,
    ArrivalPattern,
    ContextPolicy,
    DeployResult,
    DeploySpec,
    DeviceReading,
    ModelSpec,
    Paradigm,
    PhoneEvent,
    PhoneProfile,
    RequestRecord,
    RequestStatus,
    ResourceSample,
    SchedulerPolicy,
    ServeCall,
    ServiceFacts,
    ServiceOptions,
    ServiceStats,
    Slice,
    TraceRequest,
    TrialStatus,
    TrialSummary,
    WorkloadRun,
)
from fleet.shapes import DTYPE_BYTES, PRESETS
from fleet.v1 import agent_pb2 as pb
from fleet.v1 import slm_service_pb2 as spb

E = TypeVar("E", bound=Enum)

# gRPC metadata naming the phone a call is for: an agent refuses a call for another phone, and
# one process serving many simulated phones routes by it
PHONE_METADATA = "fleet-phone"

_PARADIGM = {
    Paradigm.PER_APP: pb.PARADIGM_PER_APP,
    Paradigm.SLMAAS: pb.PARADIGM_SLMAAS,
    Paradigm.AGENT_OS: pb.PARADIGM_AGENT_OS,
}
_PATTERN = {
    ArrivalPattern.POISSON: pb.ARRIVAL_PATTERN_POISSON,
    ArrivalPattern.CLOSED_LOOP: pb.ARRIVAL_PATTERN_CLOSED_LOOP,
    ArrivalPattern.TRACE: pb.ARRIVAL_PATTERN_TRACE,
}
_REQUEST_STATUS = {
    RequestStatus.OK: pb.REQUEST_STATUS_OK,
    RequestStatus.FAILED: pb.REQUEST_STATUS_FAILED,
    RequestStatus.CANCELLED: pb.REQUEST_STATUS_CANCELLED,
    RequestStatus.DROPPED: pb.REQUEST_STATUS_DROPPED,
}
_SCHEDULER = {
    SchedulerPolicy.FCFS: pb.SCHEDULER_POLICY_FCFS,
    SchedulerPolicy.PRIORITY: pb.SCHEDULER_POLICY_PRIORITY,
    SchedulerPolicy.ROUND_ROBIN: pb.SCHEDULER_POLICY_ROUND_ROBIN,
}
_CONTEXT_POLICY = {
    ContextPolicy.SWAP: pb.CONTEXT_POLICY_SWAP,
    ContextPolicy.RECOMPUTE: pb.CONTEXT_POLICY_RECOMPUTE,
}
_TRIAL_STATUS = {
    TrialStatus.COMPLETED: pb.TRIAL_STATUS_COMPLETED,
    TrialStatus.FAILED: pb.TRIAL_STATUS_FAILED,
    TrialStatus.STOPPED: pb.TRIAL_STATUS_STOPPED,
}

StreamEvent = (
    RequestRecord | ResourceSample | PhoneEvent | ServiceStats | DeviceReading | TrialSummary
)


class WireError(ValueError):
    """A message that is well-formed protobuf but not a valid request (-> INVALID_ARGUMENT)."""


def _inverse(table: Mapping[E, int], value: int, what: str) -> E:
    for key, wire in table.items():
        if wire == value:
            return key
    raise WireError(f"{what} is unspecified or unknown ({value})")


def _bounded(v: int, lo: int, hi: int, what: str) -> int:
    if not lo <= v <= hi:
        raise WireError(f"{what} must be in [{lo}, {hi}], got {v}")
    return v


def _finite(v: float, lo: float, hi: float, what: str) -> float:
    if not L.finite_in(v, lo, hi):
        raise WireError(f"{what} must be finite and in [{lo:g}, {hi:g}], got {v}")
    return v


def _name(v: str, what: str) -> str:
    if not L.valid_name(v):
        raise WireError(f"{what} {v[:80]!r} must match {L.NAME_PATTERN}")
    return v


def _text(v: str, what: str, limit: int = L.MAX_TEXT) -> str:
    if len(v) > limit:
        raise WireError(f"{what} is longer than {limit} characters")
    return v


INT64_MAX = 2**63 - 1


def check_numbers(m: Message, what: str) -> None:
    """Every number of a decoded message finite and storable (integers fit 64 signed bits);
    raises WireError naming the field. The coordinator runs it on everything a phone sends, so
    only the fields that can fail are looked at (floats; unsigned 64-bit integers) and a
    field's path is only spelled out for a failure (spelling it for every nested message took
    6 of the 42 us that decoding a request's record took here)."""
    bad = _first_bad_number(m)
    if bad is not None:
        steps, problem = bad
        raise WireError(what + "".join(reversed(steps)) + problem)


def _first_bad_number(m: Message) -> tuple[list[str], str] | None:
    """The first number that fails: its path's steps, innermost first, and what is wrong."""
    for fd, value in m.ListFields():
        cpp = fd.cpp_type
        if cpp == _MESSAGE:
            for i, v in enumerate(value if fd.is_repeated else (value,)):
                bad = _first_bad_number(v)
                if bad is not None:
                    bad[0].append(_step(fd, i))
                    return bad
        elif cpp in _FLOATS:
            for i, v in enumerate(value if fd.is_repeated else (value,)):
                if not math.isfinite(v):
                    return [_step(fd, i)], f" is {v}, not a finite number"
        elif cpp == _UINT64:
            for i, v in enumerate(value if fd.is_repeated else (value,)):
                if v > INT64_MAX:
                    return [_step(fd, i)], f" = {v} does not fit 64 signed bits"
    return None


_MESSAGE = FieldDescriptor.CPPTYPE_MESSAGE
_FLOATS = (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT)
_UINT64 = FieldDescriptor.CPPTYPE_UINT64


def _step(fd: FieldDescriptor, i: int) -> str:
    return f".{fd.name}" + (f"[{i}]" if fd.is_repeated else "")


def paradigm_from_pb(value: int) -> Paradigm:
    return _inverse(_PARADIGM, value, "paradigm")


def paradigm_to_pb(value: Paradigm) -> int:
    return _PARADIGM[value]


# -- describe --------------------------------------------------------------------------------


def profile_to_pb(p: PhoneProfile) -> pb.PhoneProfile:
    return pb.PhoneProfile(
        name=p.name,
        kind=p.kind,
        memory_budget_bytes=p.memory_budget_bytes,
        cpu_threads=p.cpu_threads,
        host=p.host,
        cpus=list(p.cpus),
        storage_dir=p.storage_dir,
        storage_model=p.storage_model,
    )


def profile_from_pb(m: pb.PhoneProfile) -> PhoneProfile:
    return PhoneProfile(
        name=m.name,
        kind=m.kind,
        memory_budget_bytes=m.memory_budget_bytes,
        cpu_threads=m.cpu_threads,
        host=m.host,
        cpus=tuple(m.cpus),
        storage_dir=m.storage_dir,
        storage_model=m.storage_model or "none",
    )


def describe_to_pb(d: AgentDescription) -> pb.DescribeResponse:
    return pb.DescribeResponse(
        profile=profile_to_pb(d.profile),
        paradigms=[_PARADIGM[p] for p in d.paradigms],
        model_presets=list(d.model_presets),
        versions=d.versions,
        host_facts=d.host_facts,
        agent_pid=d.agent_pid,
        metrics_port=d.metrics_port,
    )


def describe_from_pb(m: pb.DescribeResponse) -> AgentDescription:
    known = set(_PARADIGM.values())
    return AgentDescription(
        profile=profile_from_pb(m.profile),
        paradigms=tuple(paradigm_from_pb(p) for p in m.paradigms if p in known),
        model_presets=tuple(m.model_presets),
        versions=dict(m.versions),
        host_facts=dict(m.host_facts),
        agent_pid=m.agent_pid,
        metrics_port=m.metrics_port,
    )


# -- deploy ----------------------------------------------------------------------------------


def app_to_pb(a: AppWorkload) -> pb.AppWorkload:
    return pb.AppWorkload(
        name=a.name,
        pattern=_PATTERN[a.pattern],
        rate_per_s=a.rate_per_s,
        burst_size=a.burst_size,
        think_time_s=a.think_time_s,
        prompt_tokens=a.prompt_tokens,
        output_tokens=a.output_tokens,
        multi_turn=a.multi_turn,
        max_requests=a.max_requests,
        foreground=a.foreground,
        slo_ttft_s=a.slo_ttft_s,
        turns_per_session=a.turns_per_session,
        system_prompt_tokens=a.system_prompt_tokens,
        model=model_to_pb(a.model) if a.model else None,
        max_outstanding=a.max_outstanding,
    )


def app_from_pb(m: pb.AppWorkload) -> AppWorkload:
    name = _name(m.name, "app name")
    what = f"app {name!r}"
    pattern = _inverse(_PATTERN, m.pattern, f"{what} arrival pattern")
    for field, v in (("prompt_tokens", m.prompt_tokens), ("output_tokens", m.output_tokens)):
        _bounded(v, 1, L.MAX_REQUEST_TOKENS, f"{what} {field}")
    lo_rate = 1e-6 if pattern is ArrivalPattern.POISSON else 0.0
    return AppWorkload(
        name=name,
        pattern=pattern,
        rate_per_s=_finite(m.rate_per_s, lo_rate, L.MAX_RATE_PER_S, f"{what} rate_per_s"),
        burst_size=max(1, _bounded(m.burst_size, 0, L.MAX_BURST, f"{what} burst_size")),
        think_time_s=_finite(m.think_time_s, 0, L.MAX_THINK_S, f"{what} think_time_s"),
        prompt_tokens=m.prompt_tokens,
        output_tokens=m.output_tokens,
        multi_turn=m.multi_turn,
        max_requests=_bounded(m.max_requests, 0, L.MAX_TRACE_REQUESTS, f"{what} max_requests"),
        foreground=m.foreground,
        slo_ttft_s=_finite(m.slo_ttft_s, 0, L.MAX_SLO_S, f"{what} slo_ttft_s"),
        turns_per_session=_bounded(m.turns_per_session, 0, L.MAX_TURNS, f"{what} turns"),
        system_prompt_tokens=_bounded(
            m.system_prompt_tokens, 0, L.MAX_REQUEST_TOKENS, f"{what} system_prompt_tokens"
        ),
        model=model_from_pb(m.model, f"{what} model") if m.HasField("model") else None,
        max_outstanding=_bounded(
            m.max_outstanding, 0, L.MAX_OUTSTANDING, f"{what} max_outstanding"
        ),
    )


def model_to_pb(s: ModelSpec) -> pb.ModelRef:
    return pb.ModelRef(preset=s.preset, path=s.path, dtype=s.dtype, seed=s.seed)


def model_from_pb(m: pb.ModelRef, what: str = "model") -> ModelSpec:
    if not m.preset and not m.path:
        raise WireError(f"{what} needs a preset or a path")
    if not m.path and m.preset not in PRESETS:
        raise WireError(
            f"{what}: unknown preset {m.preset[:80]!r} (known: {', '.join(sorted(PRESETS))})"
        )
    _text(m.path, f"{what} path", 4096)
    if "\0" in m.path:
        raise WireError(f"{what} path holds a NUL byte")
    dtype = m.dtype or "fp32"
    if dtype not in DTYPE_BYTES:
        raise WireError(f"{what} dtype must be one of {', '.join(DTYPE_BYTES)}, not {dtype!r}")
    return ModelSpec(preset=m.preset, path=m.path, dtype=dtype, seed=m.seed)


def service_to_pb(o: ServiceOptions) -> pb.ServiceOptions:
    return pb.ServiceOptions(
        scheduler=_SCHEDULER[o.scheduler],
        max_batch_size=o.max_batch_size,
        prefill_chunk_tokens=o.prefill_chunk_tokens,
        prefix_cache=o.prefix_cache,
        persistent_contexts=o.persistent_contexts,
        context_policy=_CONTEXT_POLICY[o.context_policy],
        kv_budget_bytes=o.kv_budget_bytes,
        quantum_tokens=o.quantum_tokens,
        priority_aging_s=o.priority_aging_s,
    )


def service_from_pb(m: pb.ServiceOptions) -> ServiceOptions:
    d = ServiceOptions()
    return ServiceOptions(
        scheduler=(
            _inverse(_SCHEDULER, m.scheduler, "scheduler policy") if m.scheduler else d.scheduler
        ),
        max_batch_size=_bounded(m.max_batch_size, 0, L.MAX_BATCH, "max_batch_size")
        or d.max_batch_size,
        prefill_chunk_tokens=_bounded(
            m.prefill_chunk_tokens, 0, L.MAX_CHUNK_TOKENS, "prefill_chunk_tokens"
        )
        or d.prefill_chunk_tokens,
        prefix_cache=m.prefix_cache,
        persistent_contexts=m.persistent_contexts,
        context_policy=(
            _inverse(_CONTEXT_POLICY, m.context_policy, "context policy")
            if m.context_policy
            else d.context_policy
        ),
        kv_budget_bytes=_bounded(m.kv_budget_bytes, 0, L.MAX_KV_BUDGET_BYTES, "kv_budget_bytes"),
        quantum_tokens=_bounded(m.quantum_tokens, 0, L.MAX_CHUNK_TOKENS, "quantum_tokens")
        or d.quantum_tokens,
        priority_aging_s=_finite(m.priority_aging_s, 0, 3600, "priority_aging_s"),
    )


def deploy_to_pb(d: DeploySpec) -> pb.DeployRequest:
    return pb.DeployRequest(
        service=service_to_pb(d.service),
        paradigm=_PARADIGM[d.paradigm],
        model=model_to_pb(d.model),
        apps=[app_to_pb(a) for a in d.apps],
        max_context_tokens=d.max_context_tokens,
        threads_per_process=d.threads_per_process,
        paradigm_label=d.paradigm_label,
        phase=d.phase,
    )


def deploy_from_pb(m: pb.DeployRequest) -> DeploySpec:
    if not 1 <= len(m.apps) <= L.MAX_APPS:
        raise WireError(f"deploy needs 1 to {L.MAX_APPS} apps, got {len(m.apps)}")
    apps = tuple(app_from_pb(a) for a in m.apps)
    names = [a.name for a in apps]
    if len(set(names)) != len(names):
        raise WireError(f"app names must be unique: {names}")
    return DeploySpec(
        paradigm=paradigm_from_pb(m.paradigm),
        model=model_from_pb(m.model),
        apps=apps,
        max_context_tokens=_bounded(
            m.max_context_tokens, 0, L.MAX_CONTEXT_TOKENS, "max_context_tokens"
        ),
        threads_per_process=_bounded(
            m.threads_per_process, 0, L.MAX_THREADS, "threads_per_process"
        ),
        service=service_from_pb(m.service),
        paradigm_label=_name(m.paradigm_label, "paradigm_label") if m.paradigm_label else "",
        phase=_phase(m.phase),
    )


def _phase(v: str) -> str:
    if v and v not in PHASES:
        raise WireError(f"phase {v[:80]!r} must be one of {', '.join(PHASES)} (or empty)")
    return v


def deploy_result_to_pb(r: DeployResult) -> pb.DeployResponse:
    return pb.DeployResponse(
        apps=[
            pb.AppDeployment(
                app=a.app,
                pid=a.pid,
                cold_start_s=a.cold_start_s,
                weight_bytes=a.weight_bytes,
                kv_cache_bytes=a.kv_cache_bytes,
            )
            for a in r.apps
        ],
        weights_label=r.weights_label,
        planned_bytes=r.planned_bytes,
        memory_budget_bytes=r.memory_budget_bytes,
    )


def deploy_result_from_pb(m: pb.DeployResponse) -> DeployResult:
    return DeployResult(
        apps=tuple(
            AppDeployment(a.app, a.pid, a.cold_start_s, a.weight_bytes, a.kv_cache_bytes)
            for a in m.apps
        ),
        weights_label=m.weights_label,
        planned_bytes=m.planned_bytes,
        memory_budget_bytes=m.memory_budget_bytes,
    )


# -- workload --------------------------------------------------------------------------------


MAX_TRACE_REQUESTS = L.MAX_TRACE_REQUESTS  # most requests one RunWorkload may carry
MAX_REQUEST_TOKENS = L.MAX_REQUEST_TOKENS


def trace_request_to_pb(t: TraceRequest) -> pb.TraceRequest:
    return pb.TraceRequest(
        app=t.app,
        index=t.index,
        at_s=t.at_s,
        prompt_tokens=t.prompt_tokens,
        output_tokens=t.output_tokens,
        session=t.session,
        turn=t.turn,
    )


def trace_request_from_pb(m: pb.TraceRequest, duration_s: float) -> TraceRequest:
    app = _name(m.app, "trace request app")
    where = f"trace request {app}/{m.index}"
    _bounded(m.index, 0, L.MAX_TRACE_REQUESTS, f"{where}: index")
    _bounded(m.turn, 0, L.MAX_TURNS, f"{where}: turn")
    _text(m.session, f"{where}: session", 200)
    at = m.at_s if m.HasField("at_s") else None
    if at is not None and not (0.0 <= at < duration_s):  # NaN fails too
        raise WireError(f"{where}: at_s must be in [0, duration_s), got {at}")
    for name, v in (("prompt_tokens", m.prompt_tokens), ("output_tokens", m.output_tokens)):
        if not 1 <= v <= MAX_REQUEST_TOKENS:
            raise WireError(f"{where}: {name} must be in [1, {MAX_REQUEST_TOKENS}], got {v}")
    return TraceRequest(m.app, m.index, at, m.prompt_tokens, m.output_tokens, m.session, m.turn)


def run_to_pb(r: WorkloadRun) -> pb.RunWorkloadRequest:
    return pb.RunWorkloadRequest(
        trial_id=r.trial_id,
        duration_s=r.duration_s,
        seed=r.seed,
        sample_interval_s=r.sample_interval_s,
        trace=[trace_request_to_pb(t) for t in r.trace],
        drain_s=r.drain_s,
    )


def run_from_pb(m: pb.RunWorkloadRequest) -> WorkloadRun:
    _text(m.trial_id, "trial_id", 200)
    _finite(m.duration_s, 1e-3, L.MAX_DURATION_S, "duration_s")
    if m.sample_interval_s:
        _finite(
            m.sample_interval_s,
            L.MIN_SAMPLE_INTERVAL_S,
            L.MAX_SAMPLE_INTERVAL_S,
            "sample_interval_s",
        )
    _finite(m.drain_s, 0, L.MAX_DRAIN_S, "drain_s")
    if len(m.trace) > MAX_TRACE_REQUESTS:
        raise WireError(f"a trace may hold at most {MAX_TRACE_REQUESTS} requests")
    trace = tuple(trace_request_from_pb(t, m.duration_s) for t in m.trace)
    if len({t.request_id for t in trace}) != len(trace):
        raise WireError("trace request ids (app/index) must be unique")
    return WorkloadRun(
        trial_id=m.trial_id,
        duration_s=m.duration_s,
        seed=m.seed,
        sample_interval_s=m.sample_interval_s or 0.25,
        trace=trace,
        drain_s=m.drain_s or 30.0,
    )


def slice_to_pb(s: Slice) -> pb.Slice:
    return pb.Slice(
        start_ns=s.start_ns,
        end_ns=s.end_ns,
        prefill_tokens=s.prefill_tokens,
        output_tokens=s.output_tokens,
    )


def slice_from_pb(m: pb.Slice) -> Slice:
    return Slice(m.start_ns, m.end_ns, m.prefill_tokens, m.output_tokens)


def facts_to_pb(f: ServiceFacts) -> pb.ServiceFacts:
    return pb.ServiceFacts(
        slices=[slice_to_pb(s) for s in f.slices],
        context_switch_s=f.context_switch_s,
        context_switch_bytes=f.context_switch_bytes,
        context_restore=f.context_restore,
        cached_prompt_tokens=f.cached_prompt_tokens,
        max_batch_size=f.max_batch_size,
    )


def facts_from_pb(m: pb.ServiceFacts) -> ServiceFacts:
    return ServiceFacts(
        slices=tuple(slice_from_pb(s) for s in m.slices),
        context_switch_s=m.context_switch_s,
        context_switch_bytes=m.context_switch_bytes,
        context_restore=m.context_restore,
        cached_prompt_tokens=m.cached_prompt_tokens,
        max_batch_size=m.max_batch_size,
    )


def record_to_pb(r: RequestRecord) -> pb.RequestRecord:
    return pb.RequestRecord(
        request_id=r.request_id,
        app=r.app,
        status=_REQUEST_STATUS[r.status],
        error=r.error,
        prompt_tokens=r.prompt_tokens,
        submit_ns=r.submit_ns,
        scheduled_ns=r.scheduled_ns,
        sent_ns=r.sent_ns,
        end_ns=r.end_ns,
        token_ns=r.token_ns,
        cold_start_s=r.cold_start_s,
        turn=r.turn,
        service=facts_to_pb(r.service),
    )


def record_from_pb(m: pb.RequestRecord) -> RequestRecord:
    return RequestRecord(
        request_id=m.request_id,
        app=m.app,
        status=_inverse(_REQUEST_STATUS, m.status, "request status"),
        prompt_tokens=m.prompt_tokens,
        submit_ns=m.submit_ns,
        scheduled_ns=m.scheduled_ns,
        sent_ns=m.sent_ns,
        end_ns=m.end_ns,
        token_ns=list(m.token_ns),
        error=m.error,
        cold_start_s=m.cold_start_s,
        turn=m.turn,
        service=facts_from_pb(m.service),
    )


def phone_event_to_pb(e: PhoneEvent) -> pb.PhoneEvent:
    return pb.PhoneEvent(
        t_ns=e.t_ns, kind=e.kind, app=e.app, detail=e.detail, bytes=e.bytes, duration_s=e.duration_s
    )


def phone_event_from_pb(m: pb.PhoneEvent) -> PhoneEvent:
    return PhoneEvent(
        t_ns=m.t_ns, kind=m.kind, app=m.app, detail=m.detail, bytes=m.bytes, duration_s=m.duration_s
    )


_STATS_FIELDS = (
    "t_ns",
    "num_running",
    "num_waiting",
    "last_batch_size",
    "kv_held_bytes",
    "num_steps",
    "mean_batch_size",
    "max_batch_size",
    "num_preemptions",
    "num_promotions",
    "weight_bytes",
    "admission_waits",
    "kv_used_bytes",
    "prefix_hits",
    "context_hits",
    "swap_outs",
    "swap_ins",
    "recomputes",
    "drops",
    "swap_bytes",
)  # the same names on both sides; a test holds them together


def stats_to_pb(s: ServiceStats) -> pb.ServiceStats:
    return pb.ServiceStats(**{name: getattr(s, name) for name in _STATS_FIELDS})


def stats_from_pb(m: pb.ServiceStats) -> ServiceStats:
    return ServiceStats(**{name: getattr(m, name) for name in _STATS_FIELDS})


def sample_to_pb(s: ResourceSample) -> pb.ResourceSample:
    return pb.ResourceSample(
        t_ns=s.t_ns,
        component=s.component,
        pid=s.pid,
        rss_bytes=s.rss_bytes,
        pss_bytes=s.pss_bytes,
        cpu_percent=s.cpu_percent,
        weights_bytes=s.weights_bytes,
        kv_bytes=s.kv_bytes,
        kv_used_bytes=s.kv_used_bytes,
    )


def sample_from_pb(m: pb.ResourceSample) -> ResourceSample:
    return ResourceSample(
        t_ns=m.t_ns,
        component=m.component,
        pid=m.pid,
        rss_bytes=m.rss_bytes,
        pss_bytes=m.pss_bytes,
        cpu_percent=m.cpu_percent,
        weights_bytes=m.weights_bytes,
        kv_bytes=m.kv_bytes,
        kv_used_bytes=m.kv_used_bytes,
    )


DEVICE_KINDS = ("battery", "thermal", "cpufreq", "memory")


def device_to_pb(r: DeviceReading) -> pb.DeviceReading:
    return pb.DeviceReading(t_ns=r.t_ns, kind=r.kind, name=r.name, value=r.value)


def device_from_pb(m: pb.DeviceReading) -> DeviceReading:
    if m.kind not in DEVICE_KINDS:
        raise WireError(f"device reading kind {m.kind[:40]!r} is not one of {DEVICE_KINDS}")
    return DeviceReading(m.t_ns, m.kind, _text(m.name, "device reading name", 64), m.value)


def summary_to_pb(s: TrialSummary) -> pb.TrialSummary:
    return pb.TrialSummary(
        status=_TRIAL_STATUS[s.status],
        reason=s.reason,
        num_requests=s.num_requests,
        num_failed=s.num_failed,
        output_tokens=s.output_tokens,
        duration_s=s.duration_s,
        peak_pss_bytes=s.peak_pss_bytes,
        peak_rss_bytes=s.peak_rss_bytes,
        weights_label=s.weights_label,
    )


def summary_from_pb(m: pb.TrialSummary) -> TrialSummary:
    return TrialSummary(
        status=_inverse(_TRIAL_STATUS, m.status, "trial status"),
        reason=m.reason,
        num_requests=m.num_requests,
        num_failed=m.num_failed,
        output_tokens=m.output_tokens,
        duration_s=m.duration_s,
        peak_pss_bytes=m.peak_pss_bytes,
        peak_rss_bytes=m.peak_rss_bytes,
        weights_label=m.weights_label,
    )


def event_to_pb(e: StreamEvent) -> pb.RunWorkloadResponse:
    """One event of the RunWorkload stream."""
    if isinstance(e, RequestRecord):
        return pb.RunWorkloadResponse(record=record_to_pb(e))
    if isinstance(e, ResourceSample):
        return pb.RunWorkloadResponse(sample=sample_to_pb(e))
    if isinstance(e, PhoneEvent):
        return pb.RunWorkloadResponse(phone_event=phone_event_to_pb(e))
    if isinstance(e, ServiceStats):
        return pb.RunWorkloadResponse(service_stats=stats_to_pb(e))
    if isinstance(e, DeviceReading):
        return pb.RunWorkloadResponse(device=device_to_pb(e))
    return pb.RunWorkloadResponse(summary=summary_to_pb(e))


def event_ident(m: pb.RunWorkloadResponse) -> tuple[str, str]:
    """(kind, identity) of a stream message, for a note on one that was refused."""
    kind = m.WhichOneof("event") or "empty"
    if kind == "record":
        return kind, m.record.request_id[:200]
    if kind == "sample":
        return kind, f"{m.sample.component[:80]}@{m.sample.t_ns}"
    return kind, ""


def event_from_pb(m: pb.RunWorkloadResponse) -> StreamEvent:
    """Decode one stream message; WireError when a number in it is not finite or not storable
    (the caller keeps a note of it and goes on with the next)."""
    check_numbers(m, "event")
    kind = m.WhichOneof("event")
    if kind == "record":
        return record_from_pb(m.record)
    if kind == "sample":
        return sample_from_pb(m.sample)
    if kind == "summary":
        return summary_from_pb(m.summary)
    if kind == "phone_event":
        return phone_event_from_pb(m.phone_event)
    if kind == "service_stats":
        return stats_from_pb(m.service_stats)
    if kind == "device":
        return device_from_pb(m.device)
    raise WireError("empty workload event")


# -- on-phone model service (fleet.v1 SlmCall / SlmReply) -----------------------------------


def serve_call_to_pb(c: ServeCall) -> spb.GenerateRequest:
    return spb.GenerateRequest(
        app=c.app,
        request_id=c.request_id,
        prompt_tokens=c.prompt,
        max_new_tokens=c.output_tokens,
        foreground=c.foreground,
        session=c.session,
        shared_prefix_tokens=c.shared_prefix_tokens,
    )


def serve_call_from_pb(m: spb.GenerateRequest) -> ServeCall:
    if not m.prompt_tokens or m.max_new_tokens < 1:
        raise WireError("need at least one prompt token and max_new_tokens >= 1")
    if m.shared_prefix_tokens > len(m.prompt_tokens):
        raise WireError("shared_prefix_tokens exceeds the prompt")
    return ServeCall(
        request_id=m.request_id,
        app=m.app,
        prompt=list(m.prompt_tokens),
        output_tokens=m.max_new_tokens,
        foreground=m.foreground,
        session=m.session,
        shared_prefix_tokens=m.shared_prefix_tokens,
    )


def completion_to_pb(scheduled_ns: int, facts: ServiceFacts) -> spb.Completion:
    return spb.Completion(scheduled_ns=scheduled_ns, service=facts_to_pb(facts))


def completion_from_pb(m: spb.Completion) -> tuple[int, ServiceFacts]:
    """(scheduled_ns, facts) of a finished request."""
    return m.scheduled_ns, facts_from_pb(m.service)


def stats_response_to_pb(stats: ServiceStats, events: list[PhoneEvent]) -> spb.StatsResponse:
    return spb.StatsResponse(
        stats=stats_to_pb(stats), events=[phone_event_to_pb(e) for e in events]
    )


def stats_response_from_pb(m: spb.StatsResponse) -> tuple[ServiceStats, list[PhoneEvent]]:
    return stats_from_pb(m.stats), [phone_event_from_pb(e) for e in m.events]
