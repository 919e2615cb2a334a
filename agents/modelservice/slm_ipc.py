"""The app <-> model IPC of a phone: fleet.v1 SlmCall / SlmReply frames over a Unix socket.

Every message is framed as a 4-byte little-endian length and the serialized message. On a
connection, calls follow one another: the caller sends one ``SlmCall``, the model process
answers with ``SlmReply`` frames (a generate call: token chunks, then a completion; a stats
call: one statistics message; either: a ``CallError`` instead, after which the connection is
not reused: the service closes it after a malformed or refused call, the caller after any
error). A caller that closes the connection during a call cancels it. Callers keep idle
connections for their next calls, as a Binder client keeps its service handle.

Why not gRPC: a gRPC stream costs ~0.6 ms of Python per request on a 2-core machine even with no
work behind it, more than the instrument's whole per-request budget, while an app on a phone
reaches a system service with a Binder transaction of tens of microseconds. A framed stream over
a Unix socket costs ~0.1 ms and keeps the same messages (``protos/fleet/v1/slm_service.proto``).

    client = SlmClient(socket_path)
    completion = client.generate(call_pb, on_tokens, should_stop, timeout_s)  # None: stopped
    stats = client.stats(timeout_s)                                  # fleet.v1 StatsResponse
    client.close()                                                   # its idle connections

The server side (``recv_call``, ``reply_frame``) runs in ``slm_server``'s connection threads.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable

from fleet.v1 import slm_service_pb2 as spb

HEADER = struct.Struct("<I")
MAX_FRAME_BYTES = 64 * 2**20  # a prompt of millions of tokens is a malformed call
POLL_S = 0.1  # how often a waiting caller checks whether it should stop


class SlmCallError(RuntimeError):
    """A call the model process refused or failed (``code`` in gRPC's status vocabulary), or
    could not be reached (UNAVAILABLE)."""

    def __init__(self, code: str, details: str):
        super().__init__(f"{code}: {details}")
        self.code, self.details = code, details


class FrameError(ValueError):
    pass


class CallerGone(EOFError):
    """The caller closed its connection between calls."""


def frame(msg) -> bytes:
    body = msg.SerializeToString()
    return HEADER.pack(len(body)) + body


def reply_frame(**field) -> bytes:
    """One SlmReply frame, e.g. ``reply_frame(tokens=spb.TokenChunk(ids=[1]))``."""
    return frame(spb.SlmReply(**field))


def error_frame(code: str, details: str) -> bytes:
    return reply_frame(error=spb.CallError(code=code, details=details))


# -- server side (a thread per connection) ----------------------------------------------------


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            data = sock.recv(n - len(buf))
        except OSError:
            data = b""  # reset, or shut down by the engine thread: the same as a close
        if not data:
            break
        buf += data
    return bytes(buf)


def recv_call(sock: socket.socket) -> spb.SlmCall:
    """The caller's next call (blocking); CallerGone at a clean end of the connection,
    FrameError when what came is not a well-formed SlmCall."""
    header = _recv_exact(sock, HEADER.size)
    if not header:
        raise CallerGone()
    if len(header) < HEADER.size:
        raise FrameError("the connection closed within a call's header")
    (size,) = HEADER.unpack(header)
    if size > MAX_FRAME_BYTES:
        raise FrameError(f"a call of {size} B exceeds {MAX_FRAME_BYTES} B")
    body = _recv_exact(sock, size)
    if len(body) < size:
        raise FrameError("the connection closed before a whole call arrived")
    call = spb.SlmCall()
    try:
        call.ParseFromString(body)
    except Exception as exc:  # protobuf's DecodeError
        raise FrameError(f"not a fleet.v1.SlmCall: {exc}") from None
    if call.WhichOneof("call") is None:
        raise FrameError("an SlmCall names neither generate nor stats")
    return call


# -- client side (blocking; any thread) --------------------------------------------------------


class _Replies:
    """SlmReply messages from a blocking socket, with a deadline and a stop check."""

    def __init__(self, sock: socket.socket, deadline: float, should_stop: Callable[[], bool]):
        self.sock, self.deadline, self.should_stop = sock, deadline, should_stop
        self.buf = bytearray()

    def _fill(self) -> bool:
        """Read what has arrived; False when the caller should stop first."""
        while True:
            if self.should_stop():
                return False
            if time.monotonic() > self.deadline:
                raise SlmCallError("DEADLINE_EXCEEDED", "the model process did not finish in time")
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError as exc:
                raise SlmCallError("UNAVAILABLE", f"connection lost: {exc}") from None
            if not data:
                raise SlmCallError("UNAVAILABLE", "the model process closed the connection")
            self.buf += data
            return True

    def batch(self) -> list[spb.SlmReply] | None:
        """The replies that arrived together (at least one); None when stopped first."""
        while True:
            out = []
            while len(self.buf) >= HEADER.size:
                (size,) = HEADER.unpack_from(self.buf)
                if len(self.buf) < HEADER.size + size:
                    break
                msg = spb.SlmReply()
                msg.ParseFromString(bytes(self.buf[HEADER.size : HEADER.size + size]))
                del self.buf[: HEADER.size + size]
                out.append(msg)
            if out:
                return out
            if not self._fill():
                return None


class SlmClient:
    """Calls on one model process's socket, from any thread: each call takes an idle
    connection (or opens one) and gives it back when the call ended cleanly."""

    def __init__(self, path: str):
        self.path = path
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False  # calls still in flight then close their connections

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(POLL_S)
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise SlmCallError("UNAVAILABLE", f"cannot reach the model process: {exc}") from None
        return sock

    def _send(self, call: spb.SlmCall) -> socket.socket:
        data = frame(call)
        with self._lock:
            sock = self._idle.pop() if self._idle else None
        if sock is not None:
            try:
                sock.sendall(data)
                return sock
            except OSError:  # the process that held it is gone (relaunched, stopped)
                sock.close()
        sock = self._connect()
        try:
            sock.sendall(data)
        except OSError as exc:
            sock.close()
            raise SlmCallError("UNAVAILABLE", f"cannot reach the model process: {exc}") from None
        return sock

    def _release(self, sock: socket.socket, replies: _Replies, clean: bool) -> None:
        with self._lock:
            if clean and not replies.buf and not self._closed:
                self._idle.append(sock)
                return
        sock.close()

    def generate(
        self,
        request: spb.GenerateRequest,
        on_tokens: Callable[[list[int]], None],
        should_stop: Callable[[], bool],
        timeout_s: float,
    ) -> spb.Completion | None:
        """Stream one request's tokens to ``on_tokens``; its completion, or None when
        ``should_stop()`` turned true first (the connection closes: the service cancels it)."""
        sock = self._send(spb.SlmCall(generate=request))
        replies = _Replies(sock, time.monotonic() + timeout_s, should_stop)
        done = False
        try:
            while (batch := replies.batch()) is not None:
                for msg in batch:
                    kind = msg.WhichOneof("reply")
                    if kind == "tokens":
                        on_tokens(list(msg.tokens.ids))
                    elif kind == "completion":
                        done = True
                        return msg.completion
                    elif kind == "error":
                        raise SlmCallError(msg.error.code, msg.error.details)
                    else:
                        raise SlmCallError("INTERNAL", f"a generate call got a {kind} reply")
            return None
        finally:
            self._release(sock, replies, done)

    def stats(self, timeout_s: float) -> spb.StatsResponse:
        sock = self._send(spb.SlmCall(stats=spb.StatsRequest()))
        replies = _Replies(sock, time.monotonic() + timeout_s, lambda: False)
        msg, kind = spb.SlmReply(), None
        try:
            batch = replies.batch()
            msg = batch[0] if batch else msg
            kind = msg.WhichOneof("reply")
        finally:
            self._release(sock, replies, kind == "stats")
        if kind == "error":
            raise SlmCallError(msg.error.code, msg.error.details)
        if kind != "stats":
            raise SlmCallError("INTERNAL", "a stats call got no statistics")
        return msg.stats

    def close(self) -> None:
        """Close the idle connections; calls in flight close theirs when they end, and any
        later call uses a connection of its own, closed after it."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()
