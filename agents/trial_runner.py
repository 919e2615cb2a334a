"""One trial on the phone: run the deployed paradigm's workload, sample its processes' memory,
and yield everything as it happens, then the trial's summary. Plain Python: the agent's gRPC
server iterates it and converts each event at the wire; tests can drive it directly.

    runner = TrialRunner(host, run, observer=agent_metrics)   # observer may be None
    async for event in runner.events(): ...   # RequestRecord | PhoneEvent | ServiceStats |
                                              # ResourceSample | DeviceReading, then one
                                              # TrialSummary
    runner.stop()                             # from any thread: ends the workload early
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, Protocol

from agents.paradigms.base import Emitted, ParadigmHost
from fleet.records import (
    NS_PER_S,
    DeviceReading,
    RequestRecord,
    RequestStatus,
    ResourceSample,
    TrialStatus,
    TrialSummary,
    WorkloadRun,
)

TrialEvent = Emitted | ResourceSample | DeviceReading | TrialSummary
DEVICE_INTERVAL_S = 1.0  # the phone's battery, temperatures and clocks: at most this often


class Observer(Protocol):
    """Sees every event of a trial as it happens (the agent's metrics exporter)."""

    def observe(self, event: Emitted) -> None: ...

    def observe_tick(self, samples: list[ResourceSample]) -> None: ...

    def running(self, on: bool) -> None: ...


class _Flag:
    """A fact set once, from any thread (a Stop, the end of sampling). Threads wait on it as
    a ``threading.Event``; once ``bind`` has given it the trial's event loop, coroutines on that
    loop wait on ``on_loop``, an ``asyncio.Event`` set with it."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.on_loop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called on ``loop``: from now on ``set`` also sets ``on_loop``."""
        self._loop, self._loop_thread = loop, threading.get_ident()
        if self._event.is_set():  # set before the trial began
            self.on_loop.set()

    def set(self) -> None:
        self._event.set()
        if self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self.on_loop.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing waits
                self._loop.call_soon_threadsafe(self.on_loop.set)

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout_s: float) -> bool:
        """On a thread: True once set, False after ``timeout_s``."""
        return self._event.wait(timeout_s)

    @property
    def event(self) -> threading.Event:
        """The thread side, for a paradigm host's blocking ``run``."""
        return self._event


class _Tally:
    def __init__(self) -> None:
        self.requests = self.failed = self.tokens = 0
        self.peak_pss = self.peak_rss = 0

    def record(self, r: RequestRecord) -> None:
        self.requests += 1
        self.failed += r.status is not RequestStatus.OK
        self.tokens += r.output_tokens

    def tick(self, samples: list[ResourceSample]) -> None:
        self.peak_pss = max(self.peak_pss, sum(s.pss_bytes for s in samples))
        self.peak_rss = max(self.peak_rss, sum(s.rss_bytes for s in samples))


class TrialRunner:
    def __init__(self, host: ParadigmHost, run: WorkloadRun, observer: Observer | None = None):
        self.host = host
        self.run = run
        self.observer = observer
        self._stop = _Flag()
        self._sampling_done = _Flag()
        self._tally = _Tally()

    def stop(self) -> None:
        self._stop.set()
        self.host.interrupt()  # the apps hear it now: none starts a request after the Stop

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    async def events(self) -> AsyncIterator[TrialEvent]:
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()
        queue: asyncio.Queue[TrialEvent] = asyncio.Queue()

        def put(event: TrialEvent) -> None:
            if threading.get_ident() == loop_thread:
                queue.put_nowait(event)
            else:
                loop.call_soon_threadsafe(queue.put_nowait, event)

        start_ns = time.monotonic_ns()
        if self.observer is not None:
            self.observer.running(True)
        emit = functools.partial(self._emit, put=put)
        sampler: threading.Thread | asyncio.Future[None]
        if self.host.on_loop:  # the paradigm and the sampler run as tasks on this loop
            self._stop.bind(loop)
            self._sampling_done.bind(loop)
            sampler = asyncio.ensure_future(self._sample_on_loop(put))
            work = asyncio.ensure_future(self.host.run_on_loop(self.run, emit, self._stop.on_loop))
        else:  # each on a thread of its own (both block)
            sampler = threading.Thread(
                target=self._sample_loop, args=(put,), name="sampler", daemon=True
            )
            sampler.start()
            work = asyncio.ensure_future(
                asyncio.to_thread(self.host.run, self.run, emit, self._stop.event)
            )
        try:
            async for event in _drain(queue, work):
                yield event
            self._sampling_done.set()
            await _ended(sampler)
            while not queue.empty():
                yield queue.get_nowait()
            yield self._summary(work, start_ns)
        finally:
            # A consumer that went away mid-stream stops the workload instead of leaving it
            # running, and this returns only once the paradigm has: no second trial can read
            # its processes' pipes while this one still does.
            self._stop.set()
            self._sampling_done.set()
            with contextlib.suppress(BaseException):
                await asyncio.shield(work)
            if self.observer is not None:
                self.observer.running(False)

    def _emit(self, event: Emitted, put) -> None:  # on the paradigm's threads (or its loop)
        if self.observer is not None:
            self.observer.observe(event)
        if isinstance(event, RequestRecord):
            self._tally.record(event)
        put(event)

    def _sample_loop(self, put) -> None:  # on a thread of its own
        sampler, device = self._probes()
        next_device = 0.0
        while True:
            next_device = self._tick(sampler, device, put, next_device)
            if self._sampling_done.wait(self.run.sample_interval_s):
                self._last_readings(device, put)
                return

    async def _sample_on_loop(self, put) -> None:  # the same, for a host on the event loop
        sampler, device = self._probes()
        next_device = 0.0
        while True:
            next_device = self._tick(sampler, device, put, next_device)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.run.sample_interval_s):
                    await self._sampling_done.on_loop.wait()
            if self._sampling_done.is_set():
                self._last_readings(device, put)
                return

    def _probes(self) -> tuple[Any, Any]:
        sampler = self.host.resource_sampler()
        device = self.host.device_probe()
        device.lmk_kills()  # takes note of the kills logged before this trial
        return sampler, device

    def _tick(self, sampler, device, put, next_device: float) -> float:
        """One memory sample of the phone's processes (and its device readings when due);
        returns when the device is next due."""
        if time.monotonic() >= next_device:
            next_device = time.monotonic() + max(DEVICE_INTERVAL_S, self.run.sample_interval_s)
            for reading in device.read():
                put(reading)
        tick = sampler.sample(self.host.processes())
        split = self.host.memory_split()
        tick = [
            replace(
                s,
                weights_bytes=split[s.pid][0],
                kv_bytes=split[s.pid][1],
                kv_used_bytes=split[s.pid][2],
            )
            if s.pid in split
            else s
            for s in tick
        ]
        if self.observer is not None:
            self.observer.observe_tick(tick)
        self._tally.tick(tick)
        for s in tick:
            put(s)
        return next_device

    @staticmethod
    def _last_readings(device, put) -> None:
        for reading in device.read():  # the phone as the trial leaves it
            put(reading)
        for event in device.lmk_kills():  # the system's own, next to the emulated ones
            put(event)

    def _summary(self, work: asyncio.Future[list[str]], start_ns: int) -> TrialSummary:
        try:
            problems, error = work.result(), None
        except Exception as exc:  # the paradigm itself broke
            problems, error = [], f"{type(exc).__name__}: {exc}"
        status = TrialStatus.COMPLETED
        if error or problems:
            status = TrialStatus.FAILED
        elif self._stop.is_set():
            status = TrialStatus.STOPPED
        t = self._tally
        return TrialSummary(
            status=status,
            reason="; ".join(([error] if error else []) + problems),
            num_requests=t.requests,
            num_failed=t.failed,
            output_tokens=t.tokens,
            duration_s=(time.monotonic_ns() - start_ns) / NS_PER_S,
            peak_pss_bytes=t.peak_pss,
            peak_rss_bytes=t.peak_rss,
            weights_label=self.host.weights_label,
        )


async def _ended(sampler: threading.Thread | asyncio.Future[None]) -> None:
    """Wait, without blocking the loop, for the sampler (a thread or a task) to end."""
    if isinstance(sampler, threading.Thread):
        await asyncio.to_thread(sampler.join)
    else:
        await sampler


async def _drain(
    queue: asyncio.Queue[TrialEvent], work: asyncio.Future[list[str]]
) -> AsyncIterator[TrialEvent]:
    """Events as they arrive, until the work is done and nothing is queued."""
    while not (work.done() and queue.empty()):
        getter = asyncio.ensure_future(queue.get())
        waiters: set[asyncio.Future[Any]] = {getter, work}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            yield getter.result()
        else:
            getter.cancel()
