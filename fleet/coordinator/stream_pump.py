"""Workload streams of many phones read by one event loop, handed over in batches.

A host reading a thousand phones' workload streams with grpc's blocking client keeps a thousand
threads, each woken by every message it reads (and by grpc's own polling), all fighting for one
interpreter lock. Here one asyncio loop (one thread per process, started on first use) reads
every stream with ``grpc.aio`` and converts its messages; the thread that asked for a stream
wakes once a batch is due (its interval passed, it is full, or the stream ended), not per
message. A workload stream's summary is its last message: its batch is due at once, and the
thread goes on without waiting for the stream to close (at a thousand phones the agents'
teardown after the summary took a third of a second).

    for events, error in pump_stream(channel_args, open_call, interval_s):
        ...   # a list of events (records, samples, ...); the stream's error with the last

``AgentClient.run_workload_batches`` turns the error into an ``AgentError``. Channels are
shared by the clients of one agent address and closed with the last of them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
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


_users: dict[ChannelArgs, int] = {}  # clients holding each address's channel
_users_lock = threading.Lock()


def retain_channel(channel: ChannelArgs) -> None:
    """A client of this agent exists (its channel is opened on first use)."""
    with _users_lock:
        _users[channel] = _users.get(channel, 0) + 1


class _Loop:
    """The process's stream loop: a daemon thread running asyncio, and each agent's channel."""

    _lock = threading.Lock()
    _instance: _Loop | None = None

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.channels: dict[ChannelArgs, Any] = {}
        threading.Thread(target=self.loop.run_forever, name="stream-pump", daemon=True).start()

    @classmethod
    def get(cls) -> _Loop:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def channel(self, args: ChannelArgs) -> Any:  # on the loop
        ch = self.channels.get(args)
        if ch is None:
            creds, options = args.credentials(), list(args.options)
            if creds is not None:
                ch = grpc.aio.secure_channel(args.address, creds, options=options)
            else:
                ch = grpc.aio.insecure_channel(args.address, options=options)
            self.channels[args] = ch
        return ch


def close_channel(channel: ChannelArgs) -> None:
    """A client of this agent is closing: the last one closes the loop's channel to it."""
    with _users_lock:
        left = _users.get(channel, 1) - 1
        if left > 0:
            _users[channel] = left
            return
        _users.pop(channel, None)
    pump = _Loop._instance
    if pump is None:
        return

    def close() -> None:  # on the loop
        ch = pump.channels.pop(channel, None)
        if ch is not None:
            pump.loop.create_task(ch.close())

    pump.loop.call_soon_threadsafe(close)


@dataclass
class _Batches:
    """One stream's events between the loop (appends) and its reader's thread (takes)."""

    events: list = field(default_factory=list)
    done: bool = False
    error: BaseException | None = None
    forced: bool = False  # a batch is due now (a summary), whether or not the reader waits
    due: threading.Condition = field(default_factory=threading.Condition)

    def put(self, event: Any, force: bool) -> None:
        with self.due:
            self.events.append(event)
            self.forced |= force
            if self._is_due():
                self.due.notify()

    def end(self, error: BaseException | None) -> None:
        with self.due:
            self.done, self.error = True, error
            self.due.notify()

    def _is_due(self) -> bool:
        return self.done or self.forced or len(self.events) >= BATCH_MAX

    def take(self, wait_s: float) -> tuple[list, bool]:
        """(events so far, ended) once a batch is due or ``wait_s`` has passed."""
        with self.due:
            if not self._is_due():
                self.due.wait(wait_s)
            out, self.events, self.forced = self.events, [], False
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


def pump_stream(
    channel: ChannelArgs, open_call: Callable[[Any], Any], interval_s: Callable[[], float]
) -> Iterator[tuple[list, BaseException | None]]:
    """Read one server stream on the process's loop (``open_call(aio_channel)`` starts it);
    yields (events, error) batches: each due batch, then a last one with the stream's error
    (None when it ended cleanly)."""
    pump = _Loop.get()
    batches = _Batches()
    calls: list[Any] = []

    def start() -> None:  # on the loop
        try:
            call = open_call(pump.channel(channel))
        except Exception as exc:  # the stream never started: its reader must not wait on
            batches.end(exc)
            return
        calls.append(call)
        pump.loop.create_task(_read(call, batches))

    pump.loop.call_soon_threadsafe(start)
    summarized = False
    try:
        while True:
            events, ended = batches.take(interval_s())
            if ended:
                yield events, batches.error
                return
            if events:
                summarized = isinstance(events[-1], TrialSummary)
                yield events, None
                if summarized:  # the trial's last message: the stream's end (the agent's
                    return  # teardown) is not waited for; the loop reads it meanwhile
    finally:
        if not batches.done and not summarized:  # the reader went away early: cancel the
            pump.loop.call_soon_threadsafe(lambda: [c.cancel() for c in calls])  # call
