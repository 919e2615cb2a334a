"""fleet.wire: every record survives the trip through protobuf, and bad messages are refused."""

from __future__ import annotations

import dataclasses

import pytest

from fleet import wire
from fleet.records import (
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
from fleet.v1 import agent_pb2 as pb
from fleet.v1 import slm_service_pb2 as spb

FACTS = ServiceFacts(
    slices=(Slice(10, 20, 5, 1), Slice(30, 45, 0, 3)),
    context_switch_s=0.25,
    context_switch_bytes=4096,
    context_restore="swap",
    cached_prompt_tokens=7,
    max_batch_size=3,
)
RECORD = RequestRecord(
    "t/a/0",
    "a",
    RequestStatus.OK,
    12,
    100,
    150,
    [200, 260, 330],
    cold_start_s=1.5,
    turn=2,
    service=FACTS,
    sent_ns=120,
    end_ns=330,
)
STATS = ServiceStats(
    t_ns=5,
    num_running=2,
    num_waiting=1,
    last_batch_size=2,
    kv_held_bytes=1 << 20,
    num_steps=40,
    mean_batch_size=1.75,
    max_batch_size=4,
    num_preemptions=3,
    prefix_hits=1,
    context_hits=2,
    swap_outs=3,
    swap_ins=4,
    recomputes=5,
    drops=6,
    swap_bytes=7,
)
APP = AppWorkload(
    "kb",
    ArrivalPattern.POISSON,
    rate_per_s=2.0,
    burst_size=2,
    prompt_tokens=16,
    output_tokens=4,
    foreground=True,
    slo_ttft_s=0.15,
    system_prompt_tokens=8,
    model=ModelSpec(preset="tiny", dtype="bf16", seed=3),
)
SPEC = DeploySpec(
    Paradigm.AGENT_OS,
    ModelSpec(preset="smollm-135m"),
    (APP,),
    max_context_tokens=512,
    threads_per_process=2,
    service=ServiceOptions(
        scheduler=SchedulerPolicy.ROUND_ROBIN,
        context_policy=ContextPolicy.RECOMPUTE,
        kv_budget_bytes=1 << 24,
        quantum_tokens=4,
        persistent_contexts=True,
    ),
    paradigm_label="agent-os-rr",
    phase="corun",
)


@pytest.mark.parametrize(
    "event",
    [
        RECORD,
        STATS,
        PhoneEvent(7, "lmk_kill", "a", "why", 123, 0.5),
        ResourceSample(8, "service", 42, 1000, 900, 12.5),
        DeviceReading(9, "thermal", "cpu-0-0-usr", 41.5),
        TrialSummary(TrialStatus.STOPPED, "r", 3, 1, 9, 2.5, 10, 11, "random weights"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_every_stream_event_round_trips(event):
    message = wire.event_to_pb(event)
    decoded = wire.event_from_pb(pb.RunWorkloadResponse.FromString(message.SerializeToString()))
    assert decoded == event


def test_the_record_carries_raw_timestamps_only_and_derives_the_rest():
    m = wire.record_to_pb(RECORD)
    assert not hasattr(m, "ttft_s") and not hasattr(m, "e2e_s")  # derived values left behind
    back = wire.record_from_pb(m)
    assert back.ttft_s == pytest.approx(100e-9)
    assert back.queue_wait_s == 0.0  # its 0.25 s swap-in is its own field, not queue wait
    assert dataclasses.replace(back, service=ServiceFacts()).queue_wait_s == pytest.approx(30e-9)
    assert back.app_delay_s == pytest.approx(20e-9) and back.waited_s == pytest.approx(230e-9)
    assert back.service == FACTS and back.waiting_s == pytest.approx((10 - 100 + 10) / 1e9)


def test_deploy_spec_keeps_every_setting_and_the_scheduler_enum():
    back = wire.deploy_from_pb(
        pb.DeployRequest.FromString(wire.deploy_to_pb(SPEC).SerializeToString())
    )
    assert back == SPEC
    assert back.service.scheduler is SchedulerPolicy.ROUND_ROBIN


def test_describe_and_deploy_result_round_trip():
    desc = AgentDescription(
        PhoneProfile("p", "virtual", 1 << 30, 2, "h", (0, 1)),
        (Paradigm.PER_APP, Paradigm.AGENT_OS),
        ("tiny",),
        {"torch": "2.13.0"},
        {"cpu_count": "2"},
        42,
        9100,
    )
    assert wire.describe_from_pb(wire.describe_to_pb(desc)) == desc
    result = DeployResult((AppDeployment("service", 7, 1.25, 100, 0),), "random weights", 5, 6)
    assert wire.deploy_result_from_pb(wire.deploy_result_to_pb(result)) == result


def test_model_service_messages_round_trip():
    call = ServeCall("r", "a", [1, 2, 3], 4, True, "a", 2)
    assert wire.serve_call_from_pb(wire.serve_call_to_pb(call)) == call
    assert wire.completion_from_pb(wire.completion_to_pb(99, FACTS)) == (99, FACTS)
    events = [PhoneEvent(1, "swap_out", "a", "", 10, 0.1)]
    assert wire.stats_response_from_pb(wire.stats_response_to_pb(STATS, events)) == (STATS, events)


def test_stats_fields_are_the_same_on_both_sides():
    assert set(wire._STATS_FIELDS) == {f.name for f in dataclasses.fields(ServiceStats)}
    assert set(wire._STATS_FIELDS) == set(pb.ServiceStats.DESCRIPTOR.fields_by_name)


@pytest.mark.parametrize(
    "mutate,reason",
    [
        (lambda m: m.ClearField("paradigm"), "paradigm is unspecified"),
        (lambda m: m.ClearField("apps"), "needs 1 to 64 apps, got 0"),
        (lambda m: m.apps.append(m.apps[0]), "unique"),
        (lambda m: setattr(m.apps[0], "name", ""), "app name '' must match"),
        (lambda m: setattr(m.apps[0], "name", "../../x"), "app name '../../x' must match"),
        (lambda m: setattr(m.apps[0], "rate_per_s", 0), "rate_per_s must be finite and in"),
        (lambda m: setattr(m.apps[0], "rate_per_s", float("nan")), "rate_per_s must be finite"),
        (lambda m: setattr(m.apps[0], "rate_per_s", 2e4), r"rate_per_s .* got 20000"),
        (lambda m: setattr(m.apps[0], "burst_size", 2**32 - 1), "burst_size must be in"),
        (lambda m: setattr(m.apps[0], "think_time_s", float("inf")), "think_time_s must be"),
        (lambda m: setattr(m.apps[0], "output_tokens", 0), "output_tokens must be in"),
        (lambda m: setattr(m.model, "preset", "gpt-5"), "unknown preset 'gpt-5'"),
        (lambda m: setattr(m, "threads_per_process", 10**6), "threads_per_process must be in"),
        (lambda m: setattr(m, "max_context_tokens", 2**31), "max_context_tokens must be in"),
        (lambda m: setattr(m.service, "max_batch_size", 10**6), "max_batch_size must be in"),
        (lambda m: setattr(m.model, "dtype", "fp8"), "dtype must be one of"),
        (lambda m: (m.model.ClearField("preset")), "needs a preset or a path"),
        (lambda m: setattr(m.service, "scheduler", 99), "scheduler policy"),
        (lambda m: setattr(m, "phase", "warmup"), "phase 'warmup' must be one of solo"),
        (lambda m: setattr(m, "paradigm_label", 'x"}'), "paradigm_label 'x\"}' must match"),
    ],
)
def test_bad_deploy_requests_name_the_problem(mutate, reason):
    m = wire.deploy_to_pb(SPEC)
    mutate(m)
    with pytest.raises(wire.WireError, match=reason):
        wire.deploy_from_pb(m)


def test_runs_carry_their_trace_and_bad_ones_are_refused():
    trace = (
        TraceRequest("kb", 0, 0.5, 32, 8),
        TraceRequest("chat", 0, None, 60, 40, "chat#0", 0),  # closed loop: no arrival time
    )
    run = WorkloadRun("t", 10.0, 3, 0.1, trace, drain_s=5.0)
    assert (
        wire.run_from_pb(pb.RunWorkloadRequest.FromString(wire.run_to_pb(run).SerializeToString()))
        == run
    )
    for bad, reason in (
        (TraceRequest("kb", 0, 10.0, 32, 8), "at_s must be in"),
        (TraceRequest("kb", 0, float("nan"), 32, 8), "at_s must be in"),
        (TraceRequest("kb", 0, 0.5, 0, 8), "prompt_tokens must be in"),
        (TraceRequest("", 0, 0.5, 1, 8), "trace request app .. must match"),
    ):
        with pytest.raises(wire.WireError, match=reason):
            wire.run_from_pb(wire.run_to_pb(WorkloadRun("t", 10.0, trace=(bad,))))
    with pytest.raises(wire.WireError, match="unique"):
        wire.run_from_pb(wire.run_to_pb(WorkloadRun("t", 10.0, trace=trace[:1] * 2)))
    with pytest.raises(wire.WireError, match="duration_s"):
        wire.run_from_pb(wire.run_to_pb(WorkloadRun("t", 0.0)))
    with pytest.raises(wire.WireError, match="at least one prompt token"):
        wire.serve_call_from_pb(spb.GenerateRequest(max_new_tokens=1))
    with pytest.raises(wire.WireError, match="empty workload event"):
        wire.event_from_pb(pb.RunWorkloadResponse())


@pytest.mark.parametrize(
    "mutate,reason",
    [
        (lambda m: setattr(m, "duration_s", float("nan")), "duration_s must be finite"),
        (lambda m: setattr(m, "duration_s", 1e300), "duration_s must be finite and in"),
        (lambda m: setattr(m, "sample_interval_s", float("nan")), "sample_interval_s"),
        (lambda m: setattr(m, "sample_interval_s", 1e-9), "sample_interval_s"),
        (lambda m: setattr(m, "drain_s", float("-inf")), "drain_s"),
        (lambda m: setattr(m.trace[0], "app", "../x"), "trace request app '../x' must match"),
        (lambda m: setattr(m.trace[0], "session", "s" * 500), "session is longer"),
    ],
)
def test_bad_workload_numbers_are_refused_by_name(mutate, reason):
    m = wire.run_to_pb(WorkloadRun("t", 10.0, 3, 0.1, (TraceRequest("kb", 0, 0.5, 32, 8),)))
    mutate(m)
    with pytest.raises(wire.WireError, match=reason):
        wire.run_from_pb(m)


def test_a_streamed_record_with_an_unstorable_number_is_refused_by_field():
    record = RequestRecord("t/kb/0", "kb", RequestStatus.OK, 1, 0, 1, [2])
    m = wire.event_to_pb(record)
    m.record.service.context_switch_bytes = 2**64 - 1
    with pytest.raises(wire.WireError) as err:
        wire.event_from_pb(m)
    assert str(err.value) == (
        f"event.record.service.context_switch_bytes = {2**64 - 1} does not fit 64 signed bits"
    )
    assert wire.event_ident(m) == ("record", "t/kb/0")
    m = wire.event_to_pb(record)
    m.record.service.context_switch_s = float("nan")
    with pytest.raises(wire.WireError, match="context_switch_s is nan"):
        wire.event_from_pb(m)
    # a repeated field's index is in the path; the first bad number (in field order) is named
    deploy = wire.deploy_to_pb(SPEC)
    deploy.apps.append(deploy.apps[0])
    deploy.apps[1].rate_per_s = float("inf")
    deploy.apps[1].think_time_s = float("nan")
    with pytest.raises(wire.WireError) as err:
        wire.check_numbers(deploy, "deploy")
    assert str(err.value) == "deploy.apps[1].rate_per_s is inf, not a finite number"
    wire.check_numbers(wire.deploy_to_pb(SPEC), "deploy")  # a good one passes


def test_a_device_reading_of_an_unknown_kind_or_a_long_name_is_refused():
    for bad in (
        pb.DeviceReading(kind="gpu", name="x"),
        pb.DeviceReading(kind="thermal", name="z" * 65),
    ):
        with pytest.raises(wire.WireError):
            wire.event_from_pb(pb.RunWorkloadResponse(device=bad))
    with pytest.raises(wire.WireError, match="finite"):
        wire.event_from_pb(
            pb.RunWorkloadResponse(
                device=pb.DeviceReading(kind="battery", name="t", value=float("nan"))
            )
        )
