"""The phone agent served over real gRPC on 127.0.0.1, in its own process, with the tiny model."""

import os
import signal
import time
from dataclasses import replace

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import TOKEN, agent_process
from fleet.coordinator.agent_client import AgentClient, AgentError
from fleet.records import (
    AppWorkload,
    ArrivalPattern,
    DeploySpec,
    ModelSpec,
    Paradigm,
    RequestRecord,
    RequestStatus,
    ResourceSample,
    TrialStatus,
    TrialSummary,
    WorkloadRun,
)
from fleet.shapes import ModelArgs
from fleet.v1 import agent_pb2 as pb
from fleet.v1 import agent_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

APPS = (
    AppWorkload(
        "keyboard",
        ArrivalPattern.POISSON,
        rate_per_s=4.0,
        prompt_tokens=16,
        output_tokens=4,
        foreground=True,
        slo_ttft_s=0.15,
    ),
    AppWorkload(
        "chat",
        ArrivalPattern.CLOSED_LOOP,
        think_time_s=0.05,
        prompt_tokens=24,
        output_tokens=8,
        multi_turn=True,
        max_requests=4,
    ),
)
TINY = DeploySpec(Paradigm.PER_APP, ModelSpec(preset="tiny"), APPS, max_context_tokens=256)


def stub(address):
    return pb_grpc.PhoneAgentServiceStub(grpc.insecure_channel(address))


def test_health_and_reflection(agent):
    channel = grpc.insecure_channel(agent[0])
    resp = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="fleet.v1.PhoneAgentService"), timeout=5
    )
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(
        refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
    )
    names = {s.name for s in answer.list_services_response.service}
    assert {"fleet.v1.PhoneAgentService", "grpc.health.v1.Health"} <= names


def test_describe_needs_no_token_and_reports_the_profile(agent):
    resp = stub(agent[0]).Describe(pb.DescribeRequest(), timeout=10)
    assert resp.profile.name == "test-phone"
    assert resp.profile.memory_budget_bytes == 1024 * 2**20
    assert resp.profile.cpu_threads == 2
    assert pb.PARADIGM_PER_APP in resp.paradigms
    assert "smollm-135m" in resp.model_presets and resp.versions["torch"].startswith("2.13")
    assert resp.agent_pid == agent[1].pid


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer wrong"),)])
def test_state_changing_calls_without_the_token_are_unauthenticated(agent, metadata):
    s = stub(agent[0])
    from fleet import wire

    for call in (
        lambda: s.Deploy(wire.deploy_to_pb(TINY), metadata=metadata, timeout=10),
        lambda: list(
            s.RunWorkload(pb.RunWorkloadRequest(duration_s=1), metadata=metadata, timeout=10)
        ),
        lambda: s.Stop(pb.StopRequest(), metadata=metadata, timeout=10),
        lambda: s.Reset(pb.ResetRequest(), metadata=metadata, timeout=10),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_bad_requests_are_invalid_argument_with_a_reason(agent):
    client = AgentClient(agent[0], TOKEN)
    s, auth = stub(agent[0]), (("authorization", f"Bearer {TOKEN}"),)
    cases = {
        "paradigm is unspecified": pb.DeployRequest(
            model=pb.ModelRef(preset="tiny"),
            apps=[
                pb.AppWorkload(name="a", pattern=1, rate_per_s=1, prompt_tokens=1, output_tokens=1)
            ],
        ),
        "needs 1 to 64 apps": pb.DeployRequest(
            paradigm=pb.PARADIGM_PER_APP, model=pb.ModelRef(preset="tiny")
        ),
        "rate_per_s must be finite and in": pb.DeployRequest(
            paradigm=pb.PARADIGM_PER_APP,
            model=pb.ModelRef(preset="tiny"),
            apps=[pb.AppWorkload(name="a", pattern=1, prompt_tokens=1, output_tokens=1)],
        ),
        "unknown preset 'gpt-9'": pb.DeployRequest(
            paradigm=pb.PARADIGM_PER_APP,
            model=pb.ModelRef(preset="gpt-9"),
            apps=[pb.AppWorkload(name="a", pattern=2, prompt_tokens=1, output_tokens=1)],
        ),
    }
    for reason, request in cases.items():
        with pytest.raises(grpc.RpcError) as err:
            s.Deploy(request, metadata=auth, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        list(s.RunWorkload(pb.RunWorkloadRequest(duration_s=0), metadata=auth, timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for method in ("Deploy", "RunWorkload", "Reset"):  # bytes that are no protobuf at all
        raw = grpc.insecure_channel(agent[0])
        path = f"/fleet.v1.PhoneAgentService/{method}"
        fn = raw.unary_stream(path) if method == "RunWorkload" else raw.unary_unary(path)
        with pytest.raises(grpc.RpcError) as err:
            answer = fn(b"\xff\xff\xff\x0f", metadata=auth, timeout=10)
            list(answer) if method == "RunWorkload" else answer
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        assert "malformed request" in err.value.details()
        raw.close()
    client.reset()
    with pytest.raises(AgentError) as err:
        list(client.run_workload(WorkloadRun("t", 1.0)))
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_model_that_cannot_fit_is_refused_before_loading(agent):
    client = AgentClient(agent[0], TOKEN)
    spec = DeploySpec(Paradigm.PER_APP, ModelSpec(preset="tinyllama-1.1b"), APPS[:1])
    t0 = time.monotonic()
    with pytest.raises(AgentError) as err:
        client.deploy(spec)
    assert time.monotonic() - t0 < 5  # no 4 GB of weights were materialized
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    weights = ModelArgs.from_name("tinyllama-1.1b").weight_bytes("fp32")
    assert f"weights {weights / 2**20:.1f} MiB" in err.value.reason
    assert "budget 1024.0 MiB" in err.value.reason
    assert "under any paradigm" in err.value.reason
    for paradigm in (Paradigm.SLMAAS, Paradigm.AGENT_OS):  # one copy is one copy in any paradigm
        with pytest.raises(AgentError) as err:
            client.deploy(replace(spec, paradigm=paradigm))
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.reset() == 0  # nothing was started


def test_deploy_and_run_workload_streams_well_formed_records(agent):
    client = AgentClient(agent[0], TOKEN)
    deployed = client.deploy(TINY)
    assert [a.app for a in deployed.apps] == ["keyboard", "chat"]
    assert deployed.weights_label == "random weights"
    pids = {a.pid for a in deployed.apps}
    assert len(pids) == 2 and agent[1].pid not in pids  # one OS process per app
    for a in deployed.apps:
        assert a.cold_start_s > 0 and a.weight_bytes == 362752
        app_process = psutil.Process(psutil.Process(a.pid).ppid())  # the app owns its model
        assert app_process.ppid() == agent[1].pid

    events = list(client.run_workload(WorkloadRun("trial-1", 2.0, seed=5, sample_interval_s=0.1)))
    records = [e for e in events if isinstance(e, RequestRecord)]
    samples = [e for e in events if isinstance(e, ResourceSample)]
    assert isinstance(events[-1], TrialSummary)
    summary = events[-1]
    assert summary.status is TrialStatus.COMPLETED, summary.reason
    assert summary.num_requests == len(records)
    assert summary.weights_label == "random weights"
    chat = [r for r in records if r.app == "chat"]
    assert len(chat) == 4 and [r.turn for r in chat] == [0, 1, 2, 3]
    assert any(r.app == "keyboard" for r in records)
    for r in records:
        assert r.request_id.startswith(f"{r.app}/")  # the trace's id: <app>/<index>
        if r.status is RequestStatus.OK:
            expected = 4 if r.app == "keyboard" else 8
            assert r.output_tokens == expected
            assert 0 <= r.queue_wait_s <= r.ttft_s <= r.e2e_s
            assert r.itl_s == pytest.approx(
                (r.token_ns[-1] - r.token_ns[0]) / (len(r.token_ns) - 1) / 1e9
            )
    assert {s.pid for s in samples} == pids
    assert all(s.pss_bytes > 0 and s.rss_bytes >= s.pss_bytes for s in samples)
    assert summary.peak_pss_bytes >= max(s.pss_bytes for s in samples)
    assert len(samples) >= 2 * 2 * 5  # 2 processes, every 0.1 s, for about 2 s
    assert client.reset() == 2
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_stop_ends_a_running_workload(agent):
    client = AgentClient(agent[0], TOKEN)
    long_chat = AppWorkload(
        "chat", ArrivalPattern.CLOSED_LOOP, prompt_tokens=8, output_tokens=480, think_time_s=0.0
    )
    client.deploy(
        DeploySpec(Paradigm.PER_APP, ModelSpec(preset="tiny"), (long_chat,), max_context_tokens=256)
    )
    stream = client.run_workload(WorkloadRun("stop-me", 60.0))
    next(e for e in stream if isinstance(e, RequestRecord))
    stopped_ns = time.monotonic_ns()
    assert client.stop("test") is True
    acked_ns = time.monotonic_ns()  # the apps were told: none starts a request from here on
    rest = list(stream)
    summary = rest[-1]
    assert isinstance(summary, TrialSummary) and summary.status is TrialStatus.STOPPED
    assert summary.duration_s < 30
    later = [e for e in rest if isinstance(e, RequestRecord)]
    new = [(r.request_id, r.status, r.submit_ns - acked_ns) for r in later]
    assert all(r.submit_ns < acked_ns for r in later), new  # nothing new after the stop
    # a request caught mid-generation ends as cancelled, with the tokens it had
    assert all(
        r.status is RequestStatus.CANCELLED and r.output_tokens < 480
        for r in later
        if r.last_token_ns > stopped_ns + 200_000_000
    )
    client.reset()


def test_agent_refuses_to_run_without_a_token():
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "FLEET_AGENT_TOKEN"}
    proc = subprocess.run(
        [sys.executable, "-m", "agents.main"], env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode != 0 and "no token" in proc.stderr


def test_a_killed_agent_leaves_no_app_processes():
    with agent_process("--name", "doomed") as (address, proc):
        client = AgentClient(address, TOKEN)
        client.wait_healthy()
        pids = [a.pid for a in client.deploy(TINY).apps]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_tls_agent_serves_tls_clients_only(tmp_path):
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    with agent_process("--name", "tls-phone", "--tls-cert", str(cert), "--tls-key", str(key)) as (
        address,
        _,
    ):
        client = AgentClient(address, TOKEN, root_cert=cert.read_bytes())
        client.wait_healthy(timeout_s=10)
        assert client.describe().profile.name == "tls-phone"
        assert client.reset() == 0  # an authenticated call over TLS
        plain = AgentClient(address, TOKEN)
        with pytest.raises(AgentError) as err:
            plain.describe()
        assert err.value.code == grpc.StatusCode.UNAVAILABLE


def test_per_app_apps_may_use_different_models_and_services_refuse_them(agent):
    client = AgentClient(agent[0], TOKEN)
    own = replace(APPS[0], model=ModelSpec(preset="tiny", dtype="bf16"))
    spec = DeploySpec(
        Paradigm.PER_APP, ModelSpec(preset="tiny"), (own, APPS[1]), max_context_tokens=256
    )
    deployed = {a.app: a for a in client.deploy(spec).apps}
    assert deployed["keyboard"].weight_bytes * 2 == deployed["chat"].weight_bytes
    client.reset()
    with pytest.raises(AgentError) as err:
        client.deploy(replace(spec, paradigm=Paradigm.SLMAAS))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "only per_app can host" in err.value.reason


def test_software_versions_are_read_once_a_process_and_handed_out_as_copies(monkeypatch):
    """A Describe reads them on every call: from every distribution's metadata, about 4 ms."""
    from fleet import hostinfo

    hostinfo._software_versions.cache_clear()
    reads: list[str] = []
    monkeypatch.setattr(hostinfo.metadata, "version", lambda d: reads.append(d) or "1.0")
    try:
        first = hostinfo.software_versions(("x", "y"))
        first["x"] = "changed by a caller"
        assert hostinfo.software_versions(("x", "y"))["x"] == "1.0"
        assert reads == ["x", "y"]
        facts = hostinfo.host_facts()
        facts["hostname"] = "changed by a caller"
        assert hostinfo.host_facts()["hostname"] != "changed by a caller"
    finally:
        hostinfo._software_versions.cache_clear()
