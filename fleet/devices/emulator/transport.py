"""The device side of the adb transport protocol over TCP, as adbd speaks it to an adb server
after ``adb connect HOST:PORT`` (AOSP ``packages/modules/adb/protocol.txt``).

A message is a 24-byte little-endian header (command, arg0, arg1, data length, data checksum,
magic = command ^ 0xffffffff) and its payload. The server opens with CNXN; the device answers
CNXN with its banner (``device::ro.product.name=...;features=...``), or with AUTH when it is
"unauthorized". Streams: OPEN(local, 0, "service\\0") -> OKAY(ours, theirs) or CLSE; data moves
as WRTE, each acknowledged by one OKAY before the next is sent; CLSE ends a stream.

Services are plain callables given a ``Stream``; they run in their own threads.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable

A_SYNC = 0x434E5953
A_CNXN = 0x4E584E43
A_OPEN = 0x4E45504F
A_OKAY = 0x59414B4F
A_CLSE = 0x45534C43
A_WRTE = 0x45545257
A_AUTH = 0x48545541
A_STLS = 0x534C5453
A_VERSION = 0x01000001  # no payload checksums from this version on (we still send them)
MAX_PAYLOAD = 256 * 1024
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
HEADER = struct.Struct("<6I")


class Closed(Exception):
    """The stream or the connection is gone."""


def pack(command: int, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    return (
        HEADER.pack(command, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF, command ^ 0xFFFFFFFF)
        + data
    )


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise Closed("connection closed")
        buf += chunk
    return bytes(buf)


def read_message(sock: socket.socket) -> tuple[int, int, int, bytes]:
    command, arg0, arg1, length, _checksum, magic = HEADER.unpack(_read_exact(sock, HEADER.size))
    if magic != command ^ 0xFFFFFFFF:
        raise Closed(f"bad magic in header {command:#x}")
    if length > 16 * 1024 * 1024:
        raise Closed(f"payload of {length} bytes refused")
    return command, arg0, arg1, _read_exact(sock, length) if length else b""


class Stream:
    """One open stream: ``read()`` what the server wrote, ``write()`` back (split to the
    negotiated payload size, each chunk waiting for the server's OKAY), ``close()``."""

    def __init__(self, conn: Connection, local_id: int, remote_id: int):
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self._inbox: list[bytes] = []
        self._buffer = b""
        self._cond = threading.Condition()
        self._acked = threading.Semaphore(1)
        self.closed = False

    # -- called by the connection's reader ----------------------------------------------------
    def _deliver(self, data: bytes) -> None:
        with self._cond:
            self._inbox.append(data)
            self._cond.notify_all()

    def _ack(self) -> None:
        self._acked.release()

    def _remote_closed(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self._acked.release()  # a writer waiting for an OKAY gives up

    # -- used by services ----------------------------------------------------------------------
    def read(self, timeout: float | None = None) -> bytes:
        """The next chunk the server wrote; b"" once the stream is closed."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._inbox or self.closed, timeout):
                raise TimeoutError("no data")
            if self._inbox:
                data = self._inbox.pop(0)
            else:
                return b""
        self.conn.send(A_OKAY, self.local_id, self.remote_id)
        return data

    def read_exact(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = self.read()
            if not chunk:
                raise Closed("stream closed")
            self._buffer += chunk
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def write(self, data: bytes) -> None:
        size = self.conn.max_payload
        for i in range(0, len(data), size):
            self._acked.acquire()
            if self.closed:
                raise Closed("stream closed")
            self.conn.send(A_WRTE, self.local_id, self.remote_id, data[i : i + size])

    def close(self) -> None:
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self._cond.notify_all()
        self.conn.send(A_CLSE, self.local_id, self.remote_id)
        self.conn.forget(self.local_id)


Service = Callable[[Stream, str], None]
Resolver = Callable[[str], Service | None]


class Connection:
    """One adb server's TCP connection to the device: handshake, then the stream multiplexer."""

    def __init__(self, sock: socket.socket, banner: bytes, resolve: Resolver, authorized: bool):
        self.sock = sock
        self.banner = banner
        self.resolve = resolve
        self.authorized = authorized
        self.max_payload = MAX_PAYLOAD
        self._send_lock = threading.Lock()
        self._streams: dict[int, Stream] = {}
        self._next_id = 1
        self._lock = threading.Lock()
        self.alive = True

    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        msg = pack(command, arg0, arg1, data)
        with self._send_lock:
            try:
                self.sock.sendall(msg)
            except OSError as e:
                raise Closed(str(e)) from e

    def forget(self, local_id: int) -> None:
        with self._lock:
            self._streams.pop(local_id, None)

    def serve(self) -> None:
        try:
            self._serve()
        except (Closed, OSError):
            pass
        finally:
            self.drop()

    def drop(self) -> None:
        """The cable is pulled: every stream ends, the socket closes."""
        self.alive = False
        with self._lock:
            streams, self._streams = list(self._streams.values()), {}
        for s in streams:
            s._remote_closed()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _serve(self) -> None:
        while True:
            command, arg0, arg1, data = read_message(self.sock)
            if command == A_CNXN:
                self.max_payload = max(4096, min(arg1 or MAX_PAYLOAD, MAX_PAYLOAD))
                if self.authorized:
                    self.send(A_CNXN, A_VERSION, self.max_payload, self.banner)
                else:  # a phone whose owner never tapped "allow": adb shows it unauthorized
                    self.send(A_AUTH, AUTH_TOKEN, 0, b"\x00" * 20)
            elif command == A_AUTH:
                # a signature with a key the phone does not know: a new token to sign; the
                # public key itself (the "allow USB debugging?" dialog) is never answered
                if not self.authorized and arg0 == AUTH_SIGNATURE:
                    self.send(A_AUTH, AUTH_TOKEN, 0, b"\x00" * 20)
            elif command == A_OPEN and self.authorized:
                self._open(arg0, data.rstrip(b"\x00").decode("utf-8", "replace"))
            elif command == A_WRTE:
                stream = self._streams.get(arg1)
                if stream is None:
                    self.send(A_CLSE, 0, arg0)
                else:
                    stream._deliver(data)
            elif command == A_OKAY:
                stream = self._streams.get(arg1)
                if stream is not None:
                    stream._ack()
            elif command == A_CLSE:
                with self._lock:
                    stream = self._streams.pop(arg1, None)
                if stream is not None:
                    stream._remote_closed()

    def _open(self, remote_id: int, name: str) -> None:
        service = self.resolve(name)
        if service is None:
            self.send(A_CLSE, 0, remote_id)
            return
        with self._lock:
            local_id = self._next_id
            self._next_id += 1
            stream = self._streams[local_id] = Stream(self, local_id, remote_id)
        self.send(A_OKAY, local_id, remote_id)

        def run() -> None:
            try:
                service(stream, name)
            except Closed:
                pass
            finally:
                try:
                    stream.close()
                except Closed:
                    pass

        threading.Thread(target=run, daemon=True, name=f"adb-{name.split(':')[0]}").start()
