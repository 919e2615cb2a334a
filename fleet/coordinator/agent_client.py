"""A client for one phone agent: the coordinator's side of fleet.v1.

Blocking calls for setup, tools and tests; the same calls from an event loop (``*_async``, over
``grpc.aio``) for the phone-host actor, which runs every trial of its host as a coroutine on
one loop. Every call has a deadline; errors surface as ``AgentError`` carrying the gRPC status
and a reason.

    client = AgentClient("127.0.0.1:50123", token="...")
    client.wait_healthy(timeout_s=30)
    result = client.deploy(spec)            # or: await client.deploy_async(spec)
    for event in client.run_workload(run):   # records, samples, events, stats; then a summary
        ...
    async for batch in client.workload_batches(run, lambda: 0.2):  # the same, batched
        ...
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fleet import wire
from fleet.coordinator.stream_pump import (
    ChannelArgs,
    aio_channel,
    close_channel,
    retain_channel,
    stream_batches,
)
from fleet.records import AgentDescription, DeployResult, DeploySpec, RejectedEvent, WorkloadRun
from fleet.v1 import agent_pb2 as pb
from fleet.v1 import agent_pb2_grpc as pb_grpc

DEPLOY_TIMEOUT_S = 600.0
CALL_TIMEOUT_S = 30.0
STREAM_MARGIN_S = 120.0  # a workload stream may outlive its duration and drain by this much
# No bandwidth-delay probing: it may grow each stream's receive window to megabytes, which a host
# with a thousand workload streams open does not need; the streams carry small messages and the
# default 64 KiB window is plenty.
CHANNEL_OPTIONS = [("grpc.http2.bdp_probe", 0)]
HEALTH_REQUEST = health_pb2.HealthCheckRequest(service="fleet.v1.PhoneAgentService")


class AgentError(Exception):
    def __init__(self, code: grpc.StatusCode | None, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason

    @classmethod
    def from_rpc(cls, what: str, err: grpc.RpcError) -> AgentError:
        code = err.code() if hasattr(err, "code") else None
        name = code.name if code else "UNKNOWN"
        return cls(code, f"{what}: {name}: {err.details() if hasattr(err, 'details') else err}")


class AgentClient:
    def __init__(
        self,
        address: str,
        token: str,
        *,
        root_cert: bytes | None = None,
        client_cert: bytes | None = None,
        client_key: bytes | None = None,
        phone: str = "",
    ):
        """``phone``: the phone the agent must be (sent as ``fleet-phone`` metadata: an agent
        serving another phone refuses with NOT_FOUND; one process serving many simulated
        phones routes by it). Empty for an agent whose name the experiment does not set."""
        self.address = f"{address} ({phone})" if phone else address
        self._channel_args = ChannelArgs(
            address, root_cert, client_cert, client_key, tuple(CHANNEL_OPTIONS)
        )
        retain_channel(self._channel_args)
        self._closed = False
        credentials = self._channel_args.credentials()
        if credentials is not None:
            self._channel = grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
        else:
            self._channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.PhoneAgentServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._phone: tuple[tuple[str, str], ...] = ((wire.PHONE_METADATA, phone),) if phone else ()
        self._auth = (("authorization", f"Bearer {token}"), *self._phone)

    @property
    def endpoint(self) -> ChannelArgs:
        """The agent's server as its channel reaches it (many simulated phones share one)."""
        return self._channel_args

    def close(self) -> None:
        self._channel.close()
        if not self._closed:
            self._closed = True
            close_channel(self._channel_args)

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                resp = self._health.Check(HEALTH_REQUEST, timeout=_check_timeout(deadline))
                if (last := _not_serving(resp)) == "":
                    return
            except grpc.RpcError as err:
                last = f"{err.code().name}: {err.details()}"
            time.sleep(0.2)
        raise self._unhealthy(timeout_s, last)

    async def wait_healthy_async(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                resp = await self._aio_health().Check(
                    HEALTH_REQUEST, timeout=_check_timeout(deadline)
                )
                if (last := _not_serving(resp)) == "":
                    return
            except grpc.RpcError as err:
                last = f"{err.code().name}: {err.details()}"
            await asyncio.sleep(0.2)
        raise self._unhealthy(timeout_s, last)

    def _unhealthy(self, timeout_s: float, last: str) -> AgentError:
        return AgentError(
            grpc.StatusCode.UNAVAILABLE,
            f"agent at {self.address} not healthy after {timeout_s:.0f} s ({last})",
        )

    def describe(self) -> AgentDescription:
        try:
            resp = self._stub.Describe(
                pb.DescribeRequest(), timeout=CALL_TIMEOUT_S, metadata=self._phone
            )
        except grpc.RpcError as err:
            raise AgentError.from_rpc(f"Describe {self.address}", err) from None
        return wire.describe_from_pb(resp)

    def deploy(self, spec: DeploySpec) -> DeployResult:
        try:
            resp = self._stub.Deploy(
                wire.deploy_to_pb(spec), timeout=DEPLOY_TIMEOUT_S, metadata=self._auth
            )
        except grpc.RpcError as err:
            raise AgentError.from_rpc(f"Deploy {self.address}", err) from None
        return wire.deploy_result_from_pb(resp)

    def run_workload(self, run: WorkloadRun) -> Iterator[wire.StreamEvent | RejectedEvent]:
        stream = self._stub.RunWorkload(
            wire.run_to_pb(run),
            metadata=self._auth,
            timeout=run.duration_s + run.drain_s + STREAM_MARGIN_S,
        )
        try:
            for msg in stream:
                try:
                    yield wire.event_from_pb(msg)
                except wire.WireError as exc:  # this one message is refused, noted, not fatal
                    kind, ident = wire.event_ident(msg)
                    yield RejectedEvent(kind, ident, str(exc))
        except grpc.RpcError as err:
            raise AgentError.from_rpc(f"RunWorkload {self.address}", err) from None
        finally:
            stream.cancel()

    async def workload_batches(
        self, run: WorkloadRun, interval_s: Callable[[], float]
    ) -> AsyncIterator[list[wire.StreamEvent | RejectedEvent]]:
        """The workload's events in batches, read on the running loop with its other streams
        (``stream_pump``): a batch each ``interval_s()`` while events flow, a full one sooner,
        the summary's at once. Raises AgentError as ``run_workload`` does."""
        request = wire.run_to_pb(run)
        timeout_s = run.duration_s + run.drain_s + STREAM_MARGIN_S

        def open_call(channel: Any) -> Any:
            stub = pb_grpc.PhoneAgentServiceStub(channel)
            return stub.RunWorkload(request, metadata=self._auth, timeout=timeout_s)

        async for events, error in stream_batches(self._channel_args, open_call, interval_s):
            if events:
                yield events
            if isinstance(error, grpc.RpcError):
                raise AgentError.from_rpc(f"RunWorkload {self.address}", error)
            if error is not None:
                what = f"{type(error).__name__}: {error}"
                raise AgentError(None, f"RunWorkload {self.address}: {what}")

    def stop(self, reason: str = "") -> bool:
        try:
            return self._stub.Stop(
                pb.StopRequest(reason=reason), timeout=CALL_TIMEOUT_S, metadata=self._auth
            ).was_running
        except grpc.RpcError as err:
            raise AgentError.from_rpc(f"Stop {self.address}", err) from None

    def reset(self) -> int:
        try:
            return self._stub.Reset(
                pb.ResetRequest(), timeout=CALL_TIMEOUT_S, metadata=self._auth
            ).processes_stopped
        except grpc.RpcError as err:
            raise AgentError.from_rpc(f"Reset {self.address}", err) from None

    # -- the same calls from an event loop, over grpc.aio ----------------------------------------
    def _aio_stub(self) -> Any:
        return pb_grpc.PhoneAgentServiceStub(aio_channel(self._channel_args))

    def _aio_health(self) -> Any:
        return health_pb2_grpc.HealthStub(aio_channel(self._channel_args))

    async def _aio_unary(self, rpc: str, request: Any, timeout_s: float) -> Any:
        try:
            call = getattr(self._aio_stub(), rpc)
            return await call(request, timeout=timeout_s, metadata=self._auth)
        except grpc.RpcError as err:
            raise AgentError.from_rpc(f"{rpc} {self.address}", err) from None

    async def deploy_async(self, spec: DeploySpec) -> DeployResult:
        resp = await self._aio_unary("Deploy", wire.deploy_to_pb(spec), DEPLOY_TIMEOUT_S)
        return wire.deploy_result_from_pb(resp)

    async def stop_async(self, reason: str = "") -> bool:
        resp = await self._aio_unary("Stop", pb.StopRequest(reason=reason), CALL_TIMEOUT_S)
        return bool(resp.was_running)

    async def reset_async(self) -> int:
        resp = await self._aio_unary("Reset", pb.ResetRequest(), CALL_TIMEOUT_S)
        return int(resp.processes_stopped)


def _check_timeout(deadline: float) -> float:
    return min(2.0, max(0.1, deadline - time.monotonic()))


def _not_serving(resp: Any) -> str:
    """ "" when the agent serves, else its status's name."""
    if resp.status == health_pb2.HealthCheckResponse.SERVING:
        return ""
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
