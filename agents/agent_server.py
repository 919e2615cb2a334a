"""The phone agent's gRPC server: fleet.v1.PhoneAgentService plus health and reflection.

A thin shell: each call is converted with ``fleet.wire``, handed to a paradigm host (deploy,
reset) or a ``TrialRunner`` (RunWorkload), and the plain records that come back are converted
on the way out. It binds to loopback unless told otherwise, and every state-changing call needs
the shared token.

    server, servicer, port = await serve(profile, token="...", host="127.0.0.1", port=0)
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agents.agent_metrics import AgentMetrics
from agents.errors import DeployError
from agents.paradigms.base import ParadigmHost
from agents.paradigms.registry import implemented_paradigms, make_paradigm
from agents.trial_runner import TrialRunner
from fleet import wire
from fleet.hostinfo import host_facts, software_versions
from fleet.records import AgentDescription, Paradigm, PhoneProfile
from fleet.shapes import PRESETS, model_label
from fleet.sizing import BudgetError
from fleet.v1 import agent_pb2 as pb
from fleet.v1 import agent_pb2_grpc as pb_grpc

SERVICE = "fleet.v1.PhoneAgentService"
PROTECTED_METHODS = {f"/{SERVICE}/{m}" for m in ("Deploy", "RunWorkload", "Stop", "Reset")}
AGENT_SOFTWARE = ("torch", "grpcio", "protobuf", "psutil", "slm-fleet")


MAX_MESSAGE_BYTES = 32 * 2**20  # a RunWorkload carrying a trace of up to 100k requests
PHONE_METADATA = wire.PHONE_METADATA  # the phone a call is for


class _Malformed:
    """Stands in for a request protobuf could not parse, so the call is refused with a reason."""

    def __init__(self, reason: str):
        self.reason = reason


def _tolerant(deserializer):
    def parse(data: bytes):
        try:
            return deserializer(data)
        except Exception as exc:  # protobuf's DecodeError, or anything a parser raises
            return _Malformed(f"malformed request: {type(exc).__name__}: {exc}"[:300])

    return parse


class GuardInterceptor(grpc.aio.ServerInterceptor):
    """The door of the agent's own service: state-changing calls without ``authorization:
    Bearer <token>`` get UNAUTHENTICATED, bytes that do not parse get INVALID_ARGUMENT (not
    UNKNOWN), both with the reason; a call naming another phone in its ``fleet-phone`` metadata
    gets NOT_FOUND (an address that now leads to another phone). Health and reflection pass
    through untouched. ``phones``: the phones this process serves (empty: any)."""

    def __init__(self, token: str, phones: frozenset[str] = frozenset()):
        self._expected = f"Bearer {token}".encode()
        self._phones = phones

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(f"/{SERVICE}/"):
            return handler
        metadata = dict(details.invocation_metadata or ())
        authorized = details.method not in PROTECTED_METHODS or hmac.compare_digest(
            str(metadata.get("authorization", "")).encode(), self._expected
        )
        phone = str(metadata.get(PHONE_METADATA, ""))
        stranger = bool(phone and self._phones and phone not in self._phones)

        async def refuse(request, context) -> None:
            if not authorized:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "missing or wrong token in 'authorization' metadata",
                )
            if stranger:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"this agent serves phone {', '.join(sorted(self._phones)[:3])}, "
                    f"not {phone[:64]}",
                )
            if isinstance(request, _Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)

        deserializer = _tolerant(handler.request_deserializer)
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def stream(request, context):
                await refuse(request, context)
                async for item in inner_stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        inner = handler.unary_unary

        async def unary(request, context):
            await refuse(request, context)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary,
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )


class PhoneAgentServicer(pb_grpc.PhoneAgentServiceServicer):
    """One phone's service. ``paradigms`` makes its paradigm hosts (default: the real ones of
    agents/paradigms; a simulated phone replays a profile) and ``facts`` joins its Describe's
    host facts."""

    def __init__(
        self,
        profile: PhoneProfile,
        metrics: AgentMetrics | None = None,
        metrics_port: int = 0,
        *,
        paradigms: Callable[[Paradigm, PhoneProfile], ParadigmHost] = make_paradigm,
        offered: tuple[Paradigm, ...] = (),
        facts: dict[str, str] | None = None,
    ):
        self.profile = profile
        self.metrics = metrics
        self.metrics_port = metrics_port
        self._make = paradigms
        self._offered = offered or tuple(implemented_paradigms())
        self._facts = facts or {}
        self._host: ParadigmHost | None = None
        self._apps: set[str] = set()  # names of the deployed apps
        self._lock = asyncio.Lock()  # one Deploy/RunWorkload/Reset at a time
        self._runner: TrialRunner | None = None

    def _storage_facts(self) -> dict[str, str]:
        if not self.profile.storage_dir:
            return {"storage_dir": "none (models generated in memory)"}
        from agents.storage import PhoneStorage
        from fleet.storage_models import storage_model

        storage = PhoneStorage(
            Path(self.profile.storage_dir), storage_model(self.profile.storage_model)
        )
        return storage.describe()

    def description(self) -> AgentDescription:
        return AgentDescription(
            profile=self.profile,
            paradigms=self._offered,
            model_presets=tuple(sorted(PRESETS)),
            versions=software_versions(AGENT_SOFTWARE),
            host_facts={k: str(v) for k, v in host_facts().items()}
            | self._storage_facts()
            | self._facts,
            agent_pid=os.getpid(),
            metrics_port=self.metrics_port,
        )

    async def Describe(self, request, context):
        return wire.describe_to_pb(self.description())

    async def Deploy(self, request, context):
        try:
            spec = wire.deploy_from_pb(request)
        except wire.WireError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if self._lock.locked():
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "a workload is running")
        async with self._lock:
            try:
                host = self._make(spec.paradigm, self.profile)
            except NotImplementedError as exc:
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, str(exc))
            try:
                host.plan_bytes(spec)  # refuse before touching the current deployment
            except BudgetError as exc:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            except (ValueError, OSError, KeyError, TypeError) as exc:  # e.g. a bad config.json
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"model: {type(exc).__name__}: {exc}"[:500]
                )
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
            self._apps = {a.name for a in spec.apps}
            if self.metrics is not None:
                self.metrics.deployed(
                    spec.paradigm_label or spec.paradigm.value,
                    model_label(spec.model),
                    result,
                    spec.apps,
                    phase=spec.phase or "adhoc",
                )
            return wire.deploy_result_to_pb(result)

    async def RunWorkload(self, request, context) -> AsyncIterator[pb.RunWorkloadResponse]:
        try:
            run = wire.run_from_pb(request)
        except wire.WireError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if self._lock.locked():
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "a workload is running")
        async with self._lock:
            if self._host is None:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "nothing is deployed")
            assert self._host is not None  # abort() raised otherwise
            strangers = sorted({t.app for t in run.trace} - self._apps)
            if strangers:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the trace names apps that are not deployed: {', '.join(strangers[:5])}",
                )
            runner = self._runner = TrialRunner(self._host, run, self.metrics)
            try:
                async for event in runner.events():
                    yield wire.event_to_pb(event)
            finally:
                self._runner = None

    async def Stop(self, request, context):
        runner = self._runner
        if runner is not None:
            await asyncio.to_thread(runner.stop)  # it tells the apps through their pipes
        return pb.StopResponse(was_running=runner is not None)

    async def Reset(self, request, context):
        if self._runner is not None:
            self._runner.stop()
        async with self._lock:
            return pb.ResetResponse(processes_stopped=await self._reset())

    async def _reset(self) -> int:
        host, self._host = self._host, None
        if self.metrics is not None:
            self.metrics.undeployed()
        return await asyncio.to_thread(host.shutdown) if host else 0

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.stop()
        await self._reset()
        if self.metrics is not None:
            self.metrics.close()


async def serve(
    profile: PhoneProfile,
    *,
    token: str,
    host: str = "127.0.0.1",
    port: int = 0,
    tls_cert: bytes | None = None,
    tls_key: bytes | None = None,
    tls_client_ca: bytes | None = None,
    metrics_port: int | None = 0,
    metrics_host: str = "127.0.0.1",
):
    """Start the agent; returns (server, servicer, bound port). /metrics is served on
    metrics_host at metrics_port (0: any free port; None: no metrics endpoint). With a
    certificate and key it serves TLS only; with a client CA too, clients must present a
    certificate that CA signed (mutual TLS)."""
    if not token:
        raise ValueError("a token is required: the agent refuses to run unauthenticated")
    if bool(tls_cert) != bool(tls_key) or (tls_client_ca and not tls_cert):
        raise ValueError("TLS needs a certificate and its key (and both for mutual TLS)")
    metrics, bound_metrics = None, 0
    if metrics_port is not None:
        metrics = AgentMetrics(profile)
        bound_metrics = metrics.serve(metrics_host, metrics_port)
        metrics.info(software_versions(AGENT_SOFTWARE))
    servicer = PhoneAgentServicer(profile, metrics, bound_metrics)
    server, bound = await start_server(
        servicer,
        token=token,
        phones=frozenset({profile.name}),
        host=host,
        port=port,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
    )
    return server, servicer, bound


async def start_server(
    servicer: pb_grpc.PhoneAgentServiceServicer,
    *,
    token: str,
    phones: frozenset[str],
    host: str,
    port: int,
    tls_cert: bytes | None = None,
    tls_key: bytes | None = None,
    tls_client_ca: bytes | None = None,
) -> tuple[grpc.aio.Server, int]:
    """The agent's gRPC server around ``servicer``, with the guard, health and reflection,
    started; returns it and its bound port."""
    server = grpc.aio.server(
        interceptors=[GuardInterceptor(token, phones)],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.http2.bdp_probe", 0),  # see fleet/coordinator/agent_client.py
        ],
    )
    pb_grpc.add_PhoneAgentServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (
        pb.DESCRIPTOR.services_by_name["PhoneAgentService"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    address = f"{host}:{port}"
    if tls_cert and tls_key:
        credentials = grpc.ssl_server_credentials(
            [(tls_key, tls_cert)],
            root_certificates=tls_client_ca,
            require_client_auth=bool(tls_client_ca),
        )
        bound = server.add_secure_port(address, credentials)
    else:
        bound = server.add_insecure_port(address)
    await server.start()
    await health_servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, bound
