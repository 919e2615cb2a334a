"""The phone agent's gRPC server: fleet.v1.PhoneAgentService plus health and reflection.

The servicer is the protocol edge of the phone: it converts messages with ``fleet.wire``, drives
the paradigm host in worker threads, and streams records and memory samples as they happen. It
binds to loopback unless told otherwise, and every state-changing call needs the shared token.

    server, port = await serve(profile, token="...", host="127.0.0.1", port=0)
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import platform
import threading
import time
from typing import AsyncIterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agents.paradigms.base import (
    BudgetError, DeployError, ParadigmHost, implemented_paradigms, make_paradigm,
)
from agents.probes import ProcessSampler
from fleet import wire
from fleet.records import NS_PER_S, PhoneEvent, PhoneProfile, TrialStatus, TrialSummary
from fleet.v1 import agent_pb2 as pb
from fleet.v1 import agent_pb2_grpc as pb_grpc

SERVICE = "fleet.v1.PhoneAgentService"
PROTECTED_METHODS = {f"/{SERVICE}/{m}" for m in ("Deploy", "RunWorkload", "Stop", "Reset")}


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects state-changing calls without ``authorization: Bearer <token>`` (UNAUTHENTICATED)."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details):
        if details.method not in PROTECTED_METHODS:
            return await continuation(details)
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(str(given).encode(), self._expected):
            return await continuation(details)
        handler = await continuation(details)

        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing or wrong token in 'authorization' metadata")

        async def deny_stream(request, context):
            await deny(request, context)
            yield  # pragma: no cover - makes this an async generator

        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                deny_stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return grpc.unary_unary_rpc_method_handler(
            deny, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


def software_versions() -> dict[str, str]:
    import google.protobuf
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "grpcio": grpc.__version__, "protobuf": google.protobuf.__version__,
            "platform": platform.platform()}


def host_facts() -> dict[str, str]:
    import psutil

    return {"hostname": platform.node(), "cpu_count": str(os.cpu_count()),
            "machine": platform.machine(),
            "memory_total_bytes": str(psutil.virtual_memory().total)}


def model_label(spec) -> str:
    return spec.model.preset if not spec.model.path else os.path.basename(spec.model.path)


class PhoneAgentServicer(pb_grpc.PhoneAgentServiceServicer):
    def __init__(self, profile: PhoneProfile, metrics=None, metrics_port: int = 0):
        self.profile = profile
        self.metrics = metrics  # an AgentMetrics, or None
        self.metrics_port = metrics_port
        self._host: ParadigmHost | None = None
        self._lock = asyncio.Lock()  # one Deploy/RunWorkload/Reset at a time
        self._stop: threading.Event | None = None

    async def Describe(self, request, context):
        from agents.llm.transformer import PRESETS

        return pb.DescribeResponse(
            profile=wire.profile_to_pb(self.profile),
            paradigms=[wire.paradigm_to_pb(p) for p in implemented_paradigms()],
            model_presets=sorted(PRESETS), versions=software_versions(),
            host_facts=host_facts(), agent_pid=os.getpid(), metrics_port=self.metrics_port)

    async def Deploy(self, request, context):
        try:
            spec = wire.deploy_from_pb(request)
        except wire.WireError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if self._lock.locked():
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "a workload is running")
        async with self._lock:
            try:
                host = make_paradigm(spec.paradigm, self.profile)
            except NotImplementedError as exc:
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, str(exc))
            try:
                host.plan_bytes(spec)  # refuse before touching the current deployment
            except BudgetError as exc:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            except (ValueError, FileNotFoundError) as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            await self._reset()
            loading = asyncio.ensure_future(asyncio.to_thread(host.deploy, spec))
            try:
                result = await asyncio.shield(loading)
            except DeployError as exc:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            except asyncio.CancelledError:
                # The caller went away mid-load: finish, then unload, before releasing the lock,
                # so no app process outlives the deployment that nobody owns.
                with contextlib.suppress(Exception):
                    await loading
                await asyncio.to_thread(host.shutdown)
                raise
            self._host = host
            if self.metrics is not None:
                self.metrics.deployed(spec.paradigm.value, model_label(spec), result, spec.apps)
            return wire.deploy_result_to_pb(result)

    async def RunWorkload(self, request, context) -> AsyncIterator[pb.RunWorkloadResponse]:
        try:
            run = wire.run_from_pb(request)
        except wire.WireError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if self._lock.locked():
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "a workload is running")
        async with self._lock:
            host = self._host
            if host is None:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "nothing is deployed")
            async for event in self._run(host, run):
                yield event

    async def _run(self, host: ParadigmHost, run) -> AsyncIterator[pb.RunWorkloadResponse]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        stop = self._stop = threading.Event()
        done = threading.Event()
        counts = {"requests": 0, "failed": 0, "tokens": 0}
        peak = {"pss": 0, "rss": 0}

        metrics = self.metrics

        def emit(item) -> None:
            if metrics is not None:
                metrics.observe(item)
            if isinstance(item, PhoneEvent):
                loop.call_soon_threadsafe(events.put_nowait, wire.phone_event_to_pb(item))
                return
            record = item
            counts["requests"] += 1
            counts["failed"] += record.status.value != "ok"
            counts["tokens"] += record.output_tokens
            loop.call_soon_threadsafe(events.put_nowait, wire.record_to_pb(record))

        def sample_loop() -> None:
            sampler = ProcessSampler()
            while True:
                tick = sampler.sample(host.processes())
                if metrics is not None:
                    metrics.observe_tick(tick)
                peak["pss"] = max(peak["pss"], sum(s.pss_bytes for s in tick))
                peak["rss"] = max(peak["rss"], sum(s.rss_bytes for s in tick))
                for s in tick:
                    loop.call_soon_threadsafe(events.put_nowait, wire.sample_to_pb(s))
                if done.wait(run.sample_interval_s):
                    return

        start_ns = time.monotonic_ns()
        if metrics is not None:
            metrics.running(True)
        sampler = threading.Thread(target=sample_loop, name="sampler", daemon=True)
        sampler.start()
        work = asyncio.ensure_future(asyncio.to_thread(host.run, run, emit, stop))
        try:
            while not (work.done() and events.empty()):
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait({getter, work}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            done.set()
            await asyncio.to_thread(sampler.join)
            while not events.empty():
                yield events.get_nowait()
            try:
                problems = work.result()
                error = None
            except Exception as exc:  # the paradigm itself broke
                problems, error = [], f"{type(exc).__name__}: {exc}"
            status = TrialStatus.COMPLETED
            if error or problems:
                status = TrialStatus.FAILED
            elif stop.is_set():
                status = TrialStatus.STOPPED
            yield wire.summary_to_pb(TrialSummary(
                status=status, reason="; ".join(([error] if error else []) + problems),
                num_requests=counts["requests"], num_failed=counts["failed"],
                output_tokens=counts["tokens"],
                duration_s=(time.monotonic_ns() - start_ns) / NS_PER_S,
                peak_pss_bytes=peak["pss"], peak_rss_bytes=peak["rss"],
                weights_label=host.weights_label))
        finally:
            # A client that went away mid-stream stops the workload instead of leaving it running,
            # and the lock is held until the paradigm has returned: no second run can read its
            # processes' pipes while this one still does.
            stop.set()
            done.set()
            with contextlib.suppress(BaseException):
                await asyncio.shield(work)
            self._stop = None
            if metrics is not None:
                metrics.running(False)

    async def Stop(self, request, context):
        stop = self._stop
        if stop is not None:
            stop.set()
        return pb.StopResponse(was_running=stop is not None)

    async def Reset(self, request, context):
        if self._stop is not None:
            self._stop.set()
        async with self._lock:
            return pb.ResetResponse(processes_stopped=await self._reset())

    async def _reset(self) -> int:
        host, self._host = self._host, None
        if self.metrics is not None:
            self.metrics.undeployed()
        return await asyncio.to_thread(host.shutdown) if host else 0

    async def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
        await self._reset()
        if self.metrics is not None:
            self.metrics.close()


async def serve(profile: PhoneProfile, *, token: str, host: str = "127.0.0.1", port: int = 0,
                tls_cert: bytes | None = None, tls_key: bytes | None = None,
                metrics_port: int | None = 0):
    """Start the agent; returns (server, servicer, bound port). /metrics is served on the same
    host at metrics_port (0: any free port; None: no metrics endpoint)."""
    if not token:
        raise ValueError("a token is required: the agent refuses to run unauthenticated")
    server = grpc.aio.server(interceptors=[TokenAuthInterceptor(token)])
    metrics, bound_metrics = None, 0
    if metrics_port is not None:
        from agents.agent_metrics import AgentMetrics

        metrics = AgentMetrics(profile)
        bound_metrics = metrics.serve(host, metrics_port)
        metrics.info(software_versions())
    servicer = PhoneAgentServicer(profile, metrics, bound_metrics)
    pb_grpc.add_PhoneAgentServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (pb.DESCRIPTOR.services_by_name["PhoneAgentService"].full_name,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    address = f"{host}:{port}"
    if tls_cert and tls_key:
        bound = server.add_secure_port(address, grpc.ssl_server_credentials([(tls_key, tls_cert)]))
    else:
        bound = server.add_insecure_port(address)
    await server.start()
    await health_servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, servicer, bound
