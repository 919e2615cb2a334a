"""The phones of one host: starts its virtual phones as agent processes, holds every phone's gRPC
client, and runs trials on them as streams of event batches.

A plain class: the coordinator wraps it with ``ray.remote`` at the edge and places one per host,
so a lab host's actor runs next to the phones plugged into it, and unit tests need no Ray. The
calls made while trials run (``run_trial``, ``health_many``, ``stop_trial``) are coroutines,
which makes the actor an asyncio actor: every trial of the host is a coroutine on one loop,
talking to its agent over ``grpc.aio``. A thousand trials cost no thread each, and wake no
herd of threads for one interpreter lock. What blocks (adb, a cooldown, waiting for an
unplugged phone) runs in a thread of its own. The other calls set up or tear down; they run
on the loop while no trial runs.
Virtual phones are real ``fleet-agent`` processes; each is started with a pipe on its stdin and
exits when the pipe closes, so no agent outlives the host that started it. Each gets cores of its
own: the host hands out disjoint sets of its cores (``cpu_threads`` each) and the agent pins
itself and every process it starts to them, so phones on one host never share a core and may run
trials at the same time. A phone that asks for more cores than are left is refused with the
numbers, unless the experiment allows sharing (then it gets cores already given, and says so).

    host = PhoneHost()
    host.start_virtual_phone(VirtualPhone(name="phone-a"))  # -> {"address", "pid", "cpus", ...}
    async for kind, payload in host.run_trial("phone-a", deploy_spec, workload_run): ...
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc

from fleet.coordinator import heap
from fleet.coordinator.agent_client import AgentClient, AgentError
from fleet.records import AgentDescription, TrialSummary

AGENT_START_TIMEOUT_S = 60.0
REJOIN_EVERY_S = 5.0  # how often a lost Android phone is looked for again
COOLDOWN_POLL_S = 5.0
LOG_LINES = 5000  # of each agent's output, kept for the run's agents/<phone>.log
LOST_PHONE_WAIT_S = 60.0  # how long a trial waits for its unplugged Android phone to return
BATCH_INTERVAL_S = 0.2  # ship at least this often while events flow (a full batch ships sooner)
# a host ships about this many batches a second in all: with many phones running at once, each
# ships less often (1,000 phones: every 10 s), so the coordinator's cost stays flat per record
HOST_BATCHES_PER_S = 100.0
# simulated phones one process serves: a process is one interpreter (one GIL, one event loop), so
# a thousand phones are served by four, side by side on the host's cores
SIM_PHONES_PER_PROCESS = 250
BLOCKING_THREADS = 256  # at most this many phones of a host in adb waits or cooldowns at once


@dataclass(frozen=True)
class TrialEnd:
    """A trial's last item from its host, one Ray hop after the summary arrives: the coordinator
    stores it all in one transaction (at a thousand phones, each further hop and commit after the
    summary cost milliseconds of the coordinator's time on every trial)."""

    summary: TrialSummary | None  # None: the workload failed
    failed: str  # why the workload failed ("" with a summary)
    events: list  # the events that came in the summary's batch, not yet shipped
    thermal: tuple[str, float, float] | None  # ("end", battery C, 0.0): Android phones only
    deploy_sent: float  # wall clock when the Deploy was sent
    summary_got: float  # wall clock when the summary reached the host (0.0: it never did)
    phone_wait_s: float = 0.0  # before the Deploy, waiting for a lost phone or its cooldown


class CoreError(RuntimeError):
    """A phone asked for more cores than its host has left."""


def allocate_cores(
    name: str, want: int, host_cores: list[int], given: dict[str, tuple[int, ...]], shared: bool
) -> tuple[tuple[int, ...], bool]:
    """(cores, shares_cores) for a phone wanting ``want`` cores; raises CoreError."""
    taken = {c for cs in given.values() for c in cs}
    free = [c for c in host_cores if c not in taken]
    if want <= len(free):
        return tuple(free[:want]), False
    others = ", ".join(f"{p} {_fmt_cores(cs)}" for p, cs in sorted(given.items())) or "none"
    if want > len(host_cores) or not shared:
        raise CoreError(
            f"phone {name} asks for {want} cores; this host has {len(host_cores)} "
            f"({_fmt_cores(host_cores)}), {len(free)} not given to other phones (given: {others}). "
            "Lower cpu_threads, or set allow_shared_cores: true to let phones share cores "
            "(their results are then marked shared)"
        )
    used = [c for c in host_cores if c in taken]
    return tuple(sorted(free + used[: want - len(free)])), True


def _fmt_cores(cores) -> str:
    return "cores " + ",".join(str(c) for c in cores) if cores else "no cores"


class Secret:
    """A token on its way to a host actor: its repr never shows it (Ray and logs print args)."""

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__


@dataclass
class AndroidAgent:
    phone: Any  # config.AndroidPhone
    serial: str
    launcher: Any  # devices.launcher.ShellLauncher
    agent: Any  # devices.launcher.AgentOnPhone
    log: deque  # every agent's output on this phone, across rejoins
    next_rejoin: float = 0.0
    why_lost: str = ""  # why the last rejoin did not bring it back
    rejoining: threading.Lock = field(default_factory=threading.Lock)


class PhoneHost:
    def __init__(self) -> None:
        # The virtual phones' token: made here, handed to each agent on its stdin, never put
        # in an environment, a command line, an actor argument or a file.
        self._token = secrets.token_urlsafe(24)
        self._clients: dict[str, AgentClient] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._cores: dict[str, tuple[int, ...]] = {}  # virtual phone -> its cores
        self._lock = threading.Lock()
        self._provider: Any = None  # this host's adb devices, made on first use
        self._android: dict[str, AndroidAgent] = {}
        self._relay: Any = None  # this host's /metrics relay, made on first use
        self._logs: dict[str, deque] = {}  # virtual phone -> its agent's last output lines
        self._stop_flags: dict[str, threading.Event] = {}  # phone -> a stop was asked for
        self._slot_waits: dict[str, asyncio.Future] = {}  # phone -> its trial's wait to start
        self._streaming = 0  # trials of this host streaming now
        self._blocking: ThreadPoolExecutor | None = None  # for adb and waits, made on first use
        self._heap: heap.Settled | None = None  # once the run's phones are up

    def node_ip(self) -> str:
        try:
            import ray

            return ray.util.get_node_ip_address()
        except Exception:  # outside Ray
            return "127.0.0.1"

    def start_virtual_phone(self, phone, allow_shared_cores: bool = False) -> dict:
        """Start ``fleet-agent`` for a VirtualPhone config on cores of its own; returns its
        address, pid, cores and whether it shares them. Raises CoreError when none are left."""
        with self._lock:
            cpus, shared = allocate_cores(
                phone.name,
                phone.cpu_threads,
                sorted(os.sched_getaffinity(0)),
                self._cores,
                allow_shared_cores,
            )
            self._cores[phone.name] = cpus
        try:
            return self._start_agent(phone, cpus) | {"cpus": list(cpus), "shared": shared}
        except BaseException:
            with self._lock:
                self._cores.pop(phone.name, None)
            raise

    def _start_agent(self, phone, cpus: tuple[int, ...]) -> dict:
        cmd = [
            sys.executable,
            "-m",
            "agents.main",
            "--name",
            phone.name,
            "--memory-budget-mb",
            str(phone.memory_budget_mb),
            "--cpu-threads",
            str(phone.cpu_threads),
            "--cpus",
            ",".join(str(c) for c in cpus),
            "--storage-model",
            phone.storage,
            *(["--storage-dir", phone.storage_dir] if phone.storage_dir else []),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--exit-on-stdin-eof",
            "--token-stdin",
        ]
        logged = self._logs[phone.name] = deque(maxlen=LOG_LINES)
        proc, ready = _spawn(cmd, [self._token], logged)
        address = f"127.0.0.1:{ready['port']}"
        with self._lock:
            self._procs[phone.name] = proc
        self._connect(phone.name, address, self._token, phone=phone.name)
        self._clients[phone.name].wait_healthy(timeout_s=AGENT_START_TIMEOUT_S)
        return {"address": address, "pid": proc.pid}

    def start_simulated_phones(self, phones: list, profile: str) -> dict[str, dict]:
        """Serve the SimulatedPhone configs ``phones`` (replaying ``profile``) from processes of
        up to SIM_PHONES_PER_PROCESS phones each, and connect each phone; returns {phone:
        {address, pid, metrics_address, metrics_path}}. A process's output is the agent log of
        each of its phones."""
        out: dict[str, dict] = {}
        for i in range(0, len(phones), SIM_PHONES_PER_PROCESS):
            out |= self._start_simulated(phones[i : i + SIM_PHONES_PER_PROCESS], profile)
        return out

    def _start_simulated(self, phones: list, profile: str) -> dict[str, dict]:
        cmd = [
            sys.executable,
            "-m",
            "agents.simulated.main",
            "--profile",
            profile,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--token-stdin",
            "--exit-on-stdin-eof",
        ]
        listing = [
            {"name": p.name, "memory_budget_mb": p.memory_budget_mb, "cpu_threads": p.cpu_threads}
            for p in phones
        ]
        logged: deque = deque(maxlen=LOG_LINES)
        proc, ready = _spawn(cmd, [self._token, json.dumps(listing)], logged)
        address = f"127.0.0.1:{ready['port']}"
        with self._lock:
            self._procs[f"simulated:{proc.pid}"] = proc
        out = {}
        for p in phones:
            self._logs[p.name] = logged
            self._connect(p.name, address, self._token, phone=p.name)
            out[p.name] = {
                "address": address,
                "pid": proc.pid,
                "metrics_address": f"127.0.0.1:{ready['metrics_port']}",
                "metrics_path": f"/metrics/{p.name}",
            }
        self._clients[phones[0].name].wait_healthy(timeout_s=AGENT_START_TIMEOUT_S)
        return out

    def connect(self, name: str, address: str, token: Secret, tls: dict | None = None) -> None:
        """Reach an agent started elsewhere; ``tls``: PEM bytes of "ca" (verify it) and, for
        mutual TLS, "cert" and "key" (this host's client certificate)."""
        self._connect(name, address, token.reveal(), tls)

    def _connect(
        self, name: str, address: str, token: str, tls: dict | None = None, phone: str = ""
    ) -> None:
        tls = tls or {}
        client = AgentClient(
            address,
            token,
            root_cert=tls.get("ca"),
            client_cert=tls.get("cert"),
            client_key=tls.get("key"),
            phone=phone,
        )
        with self._lock:
            self._clients[name] = client

    def health(self, name: str, timeout_s: float = 2.0) -> bool:
        if name in self._android and not self._rejoin(name):
            return False
        client = self._clients.get(name)
        if client is None:
            return False
        try:
            client.wait_healthy(timeout_s=timeout_s)
            return True
        except AgentError:
            return False

    async def health_many(self, names: list[str], timeout_s: float = 2.0) -> dict[str, bool]:
        """{phone: up} for the heartbeat: one actor call for all of this host's phones, checked
        side by side (a silent phone costs its timeout once, not once per phone after it).
        Phones served by one agent server (the simulated phones of one process) share its
        health: it is checked once for all of them (at 1,000 phones, 4 calls, not 1,000, every
        heartbeat: the thousand took a tenth of this actor's interpreter and stalled trial
        starts behind them)."""
        if not names:
            return {}
        by_server: dict[object, list[str]] = {}
        for name in names:
            client = self._clients.get(name)
            server: object = name  # an Android phone is checked (and rejoined) on its own
            if client is not None and name not in self._android:
                server = client.endpoint
            by_server.setdefault(server, []).append(name)
        firsts = [phones[0] for phones in by_server.values()]
        answers = await asyncio.gather(*(self._health_async(n, timeout_s) for n in firsts))
        up = dict(zip(firsts, answers))
        return {name: up[phones[0]] for phones in by_server.values() for name in phones}

    async def _health_async(self, name: str, timeout_s: float) -> bool:
        if name in self._android:  # a rejoin talks to adb: in a thread
            return await self._in_thread(self.health, name, timeout_s)
        client = self._clients.get(name)
        if client is None:
            return False
        try:
            await client.wait_healthy_async(timeout_s=timeout_s)
            return True
        except AgentError:
            return False

    async def _in_thread(self, fn: Callable, *args: Any) -> Any:
        """``fn(*args)`` in a thread of this host's own pool: a blocking wait (adb, a cooldown,
        an unplugged phone) holds a thread, not the loop every trial runs on."""
        if self._blocking is None:
            self._blocking = ThreadPoolExecutor(BLOCKING_THREADS, thread_name_prefix="phone")
        return await asyncio.get_running_loop().run_in_executor(self._blocking, fn, *args)

    def clock(self) -> float:
        """This host's wall clock (``host_clock.clock_offset`` compares it with the
        coordinator's)."""
        return time.time()

    def settle_heap(self) -> None:
        """The run's phones are up: this actor's long-lived heap is frozen and its automatic
        garbage collections stop until shutdown (``heap.Settled``). At 1,000 phones its
        automatic ones found no garbage, yet paused it 54 times over 3 ms after the bring-up
        (up to 0.28 s), and the trials' Deploys waited behind them: dispatch p90 76 ms, 26
        without."""
        if self._heap is None:
            self._heap = heap.Settled()

    def describe(self, name: str) -> AgentDescription:
        return self._clients[name].describe()

    async def run_trial(
        self, name: str, deploy_spec, workload_run, start_at: float = 0.0
    ) -> AsyncIterator[tuple[str, object]]:
        """At ``start_at`` (wall clock; the coordinator calls ahead of a trial's paced start,
        so that the call's trip here does not delay its Deploy) deploy, run the workload,
        reset; yields ("deployed", DeployResult), ("events", [..]) while the workload runs,
        then ("end", TrialEnd): the summary (or why the workload failed) with the events that
        came with it, in one item. A trial that never deployed yields ("failed", reason)
        instead. An Android phone also yields ("thermal", ("start", battery C, cooldown s))
        before deploying. Never raises for agent faults; a stop before ``start_at`` ends the
        wait."""
        await self._start_at(name, start_at)
        android = name in self._android
        ready_at = time.time()
        if android and (lost := await self._in_thread(self._await_phone, name, LOST_PHONE_WAIT_S)):
            yield "failed", lost
            return
        client = self._clients.get(name)
        if client is None:
            yield "failed", f"phone {name} has no agent"
            return
        if android and (thermal := await self._in_thread(self._thermal, name, "start")):
            yield "thermal", thermal
        phone_wait_s = time.time() - ready_at if android else 0.0
        if self._stopping(name).is_set():
            self._stopping(name).clear()
            yield "failed", "the run was stopped before the trial deployed"
            return
        deploy_sent = time.time()
        try:
            try:
                deployed = await client.deploy_async(deploy_spec)
            except AgentError as err:  # unreachable: a moment to come back, then "not healthy"
                if err.code is not grpc.StatusCode.UNAVAILABLE:
                    raise
                try:
                    await client.wait_healthy_async(timeout_s=5.0)
                except AgentError:
                    if not android:
                        raise
                    # its cable was pulled as the last trial ended, before its agent's end was
                    # seen: by now it is, and the phone gets the lost phone's bounded wait
                    waited = time.time()
                    lost = await self._in_thread(self._await_phone, name, LOST_PHONE_WAIT_S)
                    phone_wait_s += time.time() - waited
                    if lost:
                        raise AgentError(None, lost) from None
                    client = self._clients.get(name, client)  # a rejoined agent's new client
                deployed = await client.deploy_async(deploy_spec)
        except AgentError as err:
            yield "failed", err.reason
            return
        yield "deployed", deployed
        summary: TrialSummary | None = None
        last: list = []  # the summary's batch: it travels with the end
        summary_got, failed = 0.0, ""
        self._streaming += 1
        try:
            try:
                if self._stopping(name).is_set():  # asked while it deployed: the agent had no
                    raise AgentError(None, "the run was stopped before the workload started")
                async for events in client.workload_batches(workload_run, self._batch_interval):
                    if isinstance(end := events[-1], TrialSummary):
                        summary, last, summary_got = end, events[:-1], time.time()
                    elif events:
                        yield "events", events
            except AgentError as err:
                failed = err.reason
            finally:
                self._streaming -= 1
            if not failed and summary is None:
                failed = f"phone {name}: workload stream ended without a summary"
            thermal = None
            if android:  # its battery is read over adb first: what arrived ships now, lest
                if last:  # the read outlast this host
                    yield "events", last
                    last = []
                thermal = await self._in_thread(self._thermal, name, "end")
            yield (
                "end",
                TrialEnd(
                    summary=None if failed else summary,
                    failed=failed,
                    events=last,
                    thermal=thermal,
                    deploy_sent=deploy_sent,
                    summary_got=summary_got,
                    phone_wait_s=phone_wait_s,
                ),
            )
        finally:  # after the trial's last item: the coordinator stores it meanwhile, and starts
            await _reset_quietly(client)  # the phone's next trial once this stream has ended
            self._stopping(name).clear()  # asked of this trial; it has ended

    async def _start_at(self, name: str, start_at: float) -> None:
        """Wait until ``start_at`` (wall clock) or a stop of this phone (``stop_trial``)."""
        delay = start_at - time.time()
        if delay <= 0 or self._stopping(name).is_set():
            return
        loop = asyncio.get_running_loop()
        woken = self._slot_waits[name] = loop.create_future()
        timer = loop.call_later(delay, _settle, woken)
        try:
            await woken
        finally:
            timer.cancel()
            if self._slot_waits.get(name) is woken:
                del self._slot_waits[name]

    def _batch_interval(self) -> float:
        """How long a trial's events gather before they ship: the host ships about
        HOST_BATCHES_PER_S batches a second in all."""
        return max(BATCH_INTERVAL_S, self._streaming / HOST_BATCHES_PER_S)

    # -- Android phones over this host's adb server --------------------------------------------
    def _adb(self):
        if self._provider is None:
            from fleet.devices.provider import DeviceProvider

            self._provider = DeviceProvider(host=self.host_name())
            self._provider.track()
        return self._provider

    def host_name(self) -> str:
        """This host as experiments name it (see fleet.devices.hosts)."""
        try:
            import ray

            from fleet.devices.hosts import host_name

            if not ray.is_initialized():  # asking would start a cluster
                return self.node_ip()
            me = ray.get_runtime_context().get_node_id()
            return next(host_name(n) for n in ray.nodes() if n["NodeID"] == me)
        except Exception:  # outside Ray
            return self.node_ip()

    def adb_devices(self) -> list[dict]:
        """Every adb device of this host with its facts (``fleet devices``, placement)."""
        return [d.as_dict() for d in self._adb().devices()]

    def start_android_phone(self, phone, serial: str) -> dict:
        """Install (``phone.prepare``) and start the agent on the phone ``serial``, forward its
        ports here, connect. Raises DeviceError with the reason."""
        from fleet.devices.launcher import ShellLauncher

        launcher = ShellLauncher(self._adb(), python=phone.python)
        note = launcher.prepare(serial) if phone.prepare else "not prepared (prepare: false)"
        log: deque = deque(maxlen=LOG_LINES)
        agent = launcher.start(
            serial, phone.name, self._token, phone.memory_budget_mb, phone.cpu_threads, log=log
        )
        with self._lock:
            self._android[phone.name] = AndroidAgent(phone, serial, launcher, agent, log)
        self._connect(phone.name, agent.address, self._token)
        self._clients[phone.name].wait_healthy(timeout_s=AGENT_START_TIMEOUT_S)
        return {
            "address": agent.address,
            "pid": agent.pid,
            "serial": serial,
            "metrics_port": agent.metrics_port,
            "prepared": note,
        }

    def _rejoin(self, name: str) -> bool:
        """A lost Android phone that is back (adb lists it as "device") gets its agent again;
        one attempt at a time per phone, at most every REJOIN_EVERY_S."""
        a = self._android.get(name)
        if a is None:
            return False
        if a.agent.alive():
            return True
        if time.monotonic() < a.next_rejoin or not a.rejoining.acquire(blocking=False):
            return False
        try:
            if a.agent.alive():
                return True
            state = self._adb().tracked().get(a.serial)
            if state != "device":
                a.why_lost = f"adb lists it as {state}" if state else "adb does not list it"
                return False
            a.launcher.stop(a.agent)
            try:
                a.agent = a.launcher.start(
                    a.serial, name, self._token, a.phone.memory_budget_mb, a.phone.cpu_threads,
                    log=a.log,
                )  # fmt: skip
            except Exception as exc:  # tried again in REJOIN_EVERY_S; said, for the run's log
                a.why_lost = f"its agent did not start again: {exc}"
                print(f"phone {name}: {a.why_lost}", file=sys.stderr)
                return False
            old = self._clients.pop(name, None)
            if old is not None:
                old.close()
            self._connect(name, a.agent.address, self._token)
            if self._relay is not None and a.agent.metrics_port:
                self._relay.add(name, a.agent.metrics_port)  # its new forward
            a.why_lost = ""
            return True
        finally:
            a.next_rejoin = time.monotonic() + REJOIN_EVERY_S
            a.rejoining.release()

    def _await_phone(self, name: str, timeout_s: float) -> str:
        """Before a trial, give a lost Android phone a bounded while to come back, so that one
        pulled cable costs the trial it cut, not every trial queued behind it; "" when it is
        back (or a stop was asked for), else why the trial cannot run on it."""
        deadline = time.monotonic() + timeout_s
        while not self._rejoin(name):
            if time.monotonic() >= deadline:
                a = self._android.get(name)  # None: the phone was stopped meanwhile
                why = (a.why_lost if a else "") or "its agent is not running"
                return f"phone {name} did not come back within {timeout_s:.0f} s: {why}"
            if self._stopping(name).wait(1.0):
                return ""
        return ""

    def _stopping(self, name: str) -> threading.Event:
        with self._lock:
            return self._stop_flags.setdefault(name, threading.Event())

    def metrics_target(self, name: str, local_port: int) -> dict:
        """The address and path the run's Prometheus scrapes this phone at: through this host's
        relay (on the node's address), since the phone's own /metrics is on this host's
        loopback."""
        if self._relay is None:
            from fleet.coordinator.metrics_relay import MetricsRelay

            self._relay = MetricsRelay(self.node_ip())
        path = self._relay.add(name, local_port)
        return {"address": f"{self._relay.host}:{self._relay.port}", "path": path}

    def agent_log(self, name: str) -> list[str]:
        """What the phone's agent printed (stdout and stderr), newest last, the last
        ``LOG_LINES`` lines; empty for a remote phone (its log is where it runs)."""
        a = self._android.get(name)
        if a is not None:
            return list(a.log)
        return list(self._logs.get(name, ()))

    def battery_c(self, name: str) -> float | None:
        from fleet.devices.provider import DeviceError, parse_battery

        a = self._android.get(name)
        if a is None:
            return None
        try:
            return parse_battery(self._adb().shell(a.serial, "dumpsys battery")).get(
                "temperature_c"
            )
        except DeviceError:
            return None

    def _thermal(self, name: str, when: str) -> tuple[str, float, float] | None:
        """(when, battery C, cooldown s) at a trial's start or end, after an optional cooldown
        (before the start) until the battery is below the phone's threshold."""
        a = self._android.get(name)
        if a is None:
            return None
        t0 = time.monotonic()
        temp = self.battery_c(name)
        limit = a.phone.cooldown_below_c if when == "start" else 0.0
        while limit and temp is not None and temp >= limit:
            if time.monotonic() - t0 > a.phone.cooldown_timeout_s:
                break  # the trial runs warm; its record says how warm
            if self._stopping(name).wait(COOLDOWN_POLL_S):
                break
            temp = self.battery_c(name)
        if temp is None:
            return None
        return when, temp, time.monotonic() - t0 if limit else 0.0

    async def stop_trial(self, name: str) -> bool:
        """Ask the phone's agent to end its running workload early; True if one was running. A
        trial still cooling down or waiting for its phone does not deploy."""
        self._stopping(name).set()
        if (waiting := self._slot_waits.get(name)) is not None:
            _settle(waiting)  # its trial has not started: it ends now, undeployed
        client = self._clients.get(name)
        if client is None:
            return False
        try:
            return await client.stop_async("the coordinator is stopping the run")
        except AgentError:
            return False

    def stop_phone(self, name: str) -> None:
        with self._lock:
            client = self._clients.pop(name, None)
            proc = self._procs.pop(name, None)
            self._cores.pop(name, None)
            android = self._android.pop(name, None)
        if client:
            client.close()
        if android is not None:
            android.launcher.stop(android.agent)
        if proc and proc.poll() is None:
            if proc.stdin is not None:
                proc.stdin.close()  # the agent exits on EOF
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def shutdown(self) -> None:
        for name in list(self._clients) + list(self._procs) + list(self._android):
            self.stop_phone(name)
        if self._provider is not None:
            self._provider.close()
        if self._relay is not None:
            self._relay.close()
        if self._blocking is not None:
            self._blocking.shutdown(wait=False, cancel_futures=True)
        if self._heap is not None:
            self._heap.release()


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


async def _reset_quietly(client: AgentClient) -> None:
    try:
        await client.reset_async()
    except AgentError:
        pass  # a dead agent has nothing loaded; a live one resets on the next Deploy anyway


def _spawn(cmd: list[str], stdin_lines: list[str], logged: deque) -> tuple[subprocess.Popen, dict]:
    """Start an agent process (without the token in its environment), write ``stdin_lines``
    (the token first) and keep its stdin open (EOF tells it to exit); its output goes to
    ``logged``. Returns the process and its ready line."""
    env = {k: v for k, v in os.environ.items() if k != "FLEET_AGENT_TOKEN"}
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    threading.Thread(
        target=_keep_lines, args=(proc.stderr, logged), daemon=True, name="agent-stderr"
    ).start()
    assert proc.stdin is not None
    proc.stdin.write("".join(f"{line}\n" for line in stdin_lines))
    proc.stdin.flush()
    return proc, _read_ready_line(proc, AGENT_START_TIMEOUT_S, logged)


def _keep_lines(stream, lines: deque) -> None:
    for line in stream:
        lines.append(line.rstrip("\n"))


def _read_ready_line(proc: subprocess.Popen, timeout_s: float, lines: deque) -> dict:
    """Wait for the agent's ready line, then keep draining its stdout (into ``lines``) so it can
    never block."""
    result: dict = {}
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if ready.is_set():
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("event") == "ready":
                result.update(msg)
                ready.set()

    threading.Thread(target=read, daemon=True, name="agent-stdout").start()
    if not ready.wait(timeout_s):
        proc.kill()
        raise RuntimeError(
            f"agent did not report ready within {timeout_s:.0f} s (exit code {proc.poll()})"
        )
    return result
