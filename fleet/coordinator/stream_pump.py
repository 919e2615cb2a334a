"""Workload streams of many phones, read on one event loop and handed over in batches.

The phone-host actor runs on one asyncio loop: each trial is a coroutine there, and reads its
workload stream with ``grpc.aio``. A thousand trials are a thousand coroutines on one thread,
not a thousand threads that wake in herds for one interpreter lock. A trial wakes once a batch
is due (its interval passed, it is full, or the stream ended), not per message: a reader task
takes the messages as they come. A workload stream's summary is its last message: its batch is
due at once, and the trial goes on without waiting for the stream to close (at a thousand
phones the agents' teardown after the summary took a third of a second).

    async for events, error in stream_batches(channel_args, open_call, interval_s):
        ...   # a list of events (records, samples, ...); the stream's error with the last

``AgentClient.workload_batches`` turns the error into an ``AgentError``. Each loop keeps one
channel per agent address, shared by that address's clients and closed with the last of them
(a process of 250 simulated phones is one connection, not 250).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from fleet import wire
from fleet.records import RejectedEvent, TrialSummary

BATCH_MAX = 256  # a batch is due once it holds this many events


@dataclass(frozen=True)
class ChannelArgs:
    """How to reach one agent: its address and, with TLS, the PEM bytes."""

    address: str
    root_cert: bytes | None = None
    client_cert: bytes | None = None
    client_key: bytes | None = None
    options: tuple = ()

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials (mutual when a client certificate is given); None: plaintext."""
        if not self.root_cert:
            return None
        return grpc.ssl_channel_credentials(
            self.root_cert, private_key=self.client_key, certificate_chain=self.client_cert
        )


_users: dict[ChannelArgs, int] = {}  # clients holding each address's channels
# each loop's aio channels (an aio channel serves the loop it was made on only)
_channels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[ChannelArgs, Any]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()
_readers: set[asyncio.Task] = set()  # stream readers left to finish after their summary


def retain_channel(channel: ChannelArgs) -> None:
    """A client of this agent exists (its channel on a loop is opened on first use there)."""
    with _lock:
        _users[channel] = _users.get(channel, 0) + 1


def aio_channel(args: ChannelArgs) -> Any:
    """The running loop's ``grpc.aio`` channel to this agent (made on first use)."""
    loop = asyncio.get_running_loop()
    with _lock:
        on_loop = _channels.setdefault(loop, {})
        ch = on_loop.get(args)
        if ch is None:
            creds, options = args.credentials(), list(args.options)
            if creds is not None:
                ch = grpc.aio.secure_channel(args.address, creds, options=options)
            else:
                ch = grpc.aio.insecure_channel(args.address, options=options)
            on_loop[args] = ch
        return ch


def close_channel(channel: ChannelArgs) -> None:
    """A client of this agent is closing: the last one closes its channel on every loop."""
    with _lock:
        left = _users.get(channel, 1) - 1
        if left > 0:
            _users[channel] = left
            return
        _users.pop(channel, None)
        doomed = [(loop, on.pop(channel)) for loop, on in _channels.items() if channel in on]
    for loop, ch in doomed:
        try:
            asyncio.run_coroutine_threadsafe(ch.close(), loop)
        except RuntimeError:  # that loop is closed: its channel went with it
            pass


@dataclass
class _Batches:
    """One stream's events between its reader task (appends) and its trial (takes)."""

    events: list = field(default_factory=list)
    done: bool = False
    error: BaseException | None = None
    forced: bool = False  # a batch is due now (a summary), whether or not the trial waits
    due: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, event: Any, force: bool) -> None:
        self.events.append(event)
        self.forced |= force
        if self._is_due():
            self.due.set()

    def end(self, error: BaseException | None) -> None:
        self.done, self.error = True, error
        self.due.set()

    def _is_due(self) -> bool:
        return self.done or self.forced or len(self.events) >= BATCH_MAX

    async def take(self, wait_s: float) -> tuple[list, bool]:
        """(events so far, ended) once a batch is due or ``wait_s`` has passed."""
        if not self._is_due():
            try:
                async with asyncio.timeout(wait_s):
                    await self.due.wait()
            except TimeoutError:
                pass
        out, self.events, self.forced = self.events, [], False
        if not self.done:
            self.due.clear()
        return out, self.done


async def _read(stub_call: Any, batches: _Batches) -> None:
    error: BaseException | None = None
    try:
        async for msg in stub_call:
            try:
                event: Any = wire.event_from_pb(msg)
            except wire.WireError as exc:  # this one message is refused, noted, not fatal
                kind, ident = wire.event_ident(msg)
                event = RejectedEvent(kind, ident, str(exc))
            batches.put(event, force=isinstance(event, TrialSummary))
    except grpc.RpcError as err:
        error = err
    except asyncio.CancelledError:
        error = None
    except Exception as exc:  # a bug here must end the reader, not leave it waiting
        error = exc
    batches.end(error)


async def stream_batches(
    channel: ChannelArgs, open_call: Callable[[Any], Any], interval_s: Callable[[], float]
) -> AsyncIterator[tuple[list, BaseException | None]]:
    """Read one server stream on the running loop (``open_call(aio_channel)`` starts it);
    yields (events, error) batches: each due batch, then a last one with the stream's error
    (None when it ended cleanly)."""
    batches = _Batches()
    try:
        call = open_call(aio_channel(channel))
    except Exception as exc:  # the stream never started
        yield [], exc
        return
    reader = asyncio.get_running_loop().create_task(_read(call, batches))
    _readers.add(reader)
    reader.add_done_callback(_readers.discard)
    summarized = False
    try:
        while True:
            events, ended = await batches.take(interval_s())
            if ended:
                yield events, batches.error
                return
            if events:
                summarized = isinstance(events[-1], TrialSummary)
                yield events, None
                if summarized:  # the trial's last message: the stream's end (the agent's
                    return  # teardown) is not waited for; its reader reads it meanwhile
    finally:
        if not batches.done and not summarized:  # the trial went away early: cancel the call
            call.cancel()
