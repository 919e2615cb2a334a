"""A process serving many simulated phones (up to 250 each; a host starts as many as it
needs): a PhoneAgentService per phone behind one gRPC port, each call routed by its
``fleet-phone`` metadata, and each phone's /metrics at ``/metrics/<phone>`` on one HTTP port.

Each phone is the real agent's servicer (the same Deploy, RunWorkload, Stop and Reset, the same
checks and the same metrics exporter), with its paradigms replayed from a profile
(agents/simulated/replay.py) instead of run. So a thousand phones cost four processes and a few
hundred kilobytes each, and the coordinator reaches them by exactly the code that reaches a real
agent (one AgentClient per phone; gRPC shares the connection).

    server, router, port, metrics_port, exporter = await serve_fleet(phones, sim, token="...")
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from prometheus_client import CollectorRegistry

from agents.agent_metrics import AgentMetrics
from agents.agent_server import AGENT_SOFTWARE, PHONE_METADATA, PhoneAgentServicer, start_server
from agents.simulated.replay import SimulatedParadigm
from fleet.exporter import text_app
from fleet.hostinfo import software_versions
from fleet.records import Paradigm, PhoneProfile
from fleet.sim_profile import SimProfile
from fleet.v1 import agent_pb2_grpc as pb_grpc


class PhoneRouter(pb_grpc.PhoneAgentServiceServicer):
    """Hands each call to the servicer of the phone its metadata names (NOT_FOUND otherwise)."""

    def __init__(self, phones: dict[str, PhoneAgentServicer]):
        self.phones = phones

    async def _phone(self, context) -> PhoneAgentServicer:
        name = str(dict(context.invocation_metadata() or ()).get(PHONE_METADATA, ""))
        servicer = self.phones.get(name)
        if servicer is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no simulated phone {name[:64]!r} here (say which in '{PHONE_METADATA}' metadata)",
            )
        assert servicer is not None  # abort() raised otherwise
        return servicer

    async def Describe(self, request, context):
        return await (await self._phone(context)).Describe(request, context)

    async def Deploy(self, request, context):
        return await (await self._phone(context)).Deploy(request, context)

    async def RunWorkload(self, request, context) -> AsyncIterator[Any]:
        phone = await self._phone(context)
        async for message in phone.RunWorkload(request, context):
            yield message

    async def Stop(self, request, context):
        return await (await self._phone(context)).Stop(request, context)

    async def Reset(self, request, context):
        return await (await self._phone(context)).Reset(request, context)

    async def close(self) -> None:
        for servicer in self.phones.values():
            await servicer.close()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _MetricsServer(WSGIServer):
    """Serves one scrape at a time on one thread: a thread per scrape (as prometheus_client's
    own server does) cost a thread start each, 100 a second at 1,000 phones, on a host whose
    cores the phones share with the coordinator; an exposition takes a millisecond or two."""

    request_queue_size = 1024  # a burst of scrapes waits in the backlog, not refused


class MetricsByPhone:
    """/metrics/<phone>: that phone's own registry (as its own agent would serve it)."""

    def __init__(self, registries: dict[str, CollectorRegistry]):
        self.apps = {name: text_app(r) for name, r in registries.items()}
        self._server: WSGIServer | None = None

    def __call__(self, environ: dict, start_response: Any) -> Any:
        prefix, _, phone = environ.get("PATH_INFO", "").rpartition("/")
        app = self.apps.get(phone) if prefix == "/metrics" else None
        if app is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"no such phone: GET /metrics/<phone>\n"]
        environ = dict(environ, PATH_INFO="/metrics")
        return app(environ, start_response)

    def serve(self, host: str, port: int) -> int:
        self._server = make_server(host, port, self, _MetricsServer, _QuietHandler)
        threading.Thread(target=self._server.serve_forever, daemon=True, name="metrics").start()
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


async def serve_fleet(
    phones: list[PhoneProfile],
    sim: SimProfile,
    *,
    token: str,
    host: str = "127.0.0.1",
    port: int = 0,
    metrics_host: str = "127.0.0.1",
    metrics_port: int = 0,
) -> tuple[grpc.aio.Server, PhoneRouter, int, int, MetricsByPhone]:
    """Serve every phone of ``phones``; returns (server, router, port, metrics port, metrics)."""
    import asyncio

    if not token:
        raise ValueError("a token is required: the agent refuses to run unauthenticated")
    # every phone's deploy and workload runs on a worker thread of its own at the same time
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=2 * len(phones) + 8, thread_name_prefix="phone")
    )
    versions = software_versions(AGENT_SOFTWARE)
    offered = tuple(Paradigm(k) for k in sorted(sim.paradigms) if k in Paradigm._value2member_map_)
    facts = {
        "simulated": sim.label,
        "profile_source": ", ".join(f"{k}={v}" for k, v in sorted(sim.source.items())),
    }
    registries = {p.name: CollectorRegistry() for p in phones}
    servicers = {}
    for p in phones:
        metrics = AgentMetrics(p, registries[p.name])
        metrics.info(versions)
        servicers[p.name] = PhoneAgentServicer(
            p,
            metrics,
            paradigms=lambda kind, profile: SimulatedParadigm(kind, profile, sim),
            offered=offered,
            facts=facts,
        )
    exporter = MetricsByPhone(registries)
    bound_metrics = exporter.serve(metrics_host, metrics_port)
    for s in servicers.values():
        s.metrics_port = bound_metrics
    router = PhoneRouter(servicers)
    server, bound = await start_server(
        router, token=token, phones=frozenset(servicers), host=host, port=port
    )
    return server, router, bound, bound_metrics, exporter
