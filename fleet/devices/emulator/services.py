"""The services an emulated device answers on a stream: ``shell:`` (v1), ``shell,v2:`` (the
framed protocol with exit codes), ``exec:``, ``sync:`` (STAT, LIST, SEND, RECV, QUIT) and
``tcp:PORT`` (what ``adb forward tcp:X tcp:PORT`` opens for each connection).

Commands run with ``/bin/sh -c`` inside the device's sandbox (see ``sandbox.Sandbox``): Android
paths (``/data/...``, ``/sdcard``) are mapped into it, and ``getprop``, ``dumpsys`` and the other
Android tools are on its PATH. Closing a shell stream hangs its process group up, as adbd does.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import struct
import subprocess
import threading
from typing import TYPE_CHECKING

from fleet.devices.emulator.transport import Closed, Stream

if TYPE_CHECKING:
    from fleet.devices.emulator.sandbox import Sandbox

# shell protocol v2 packet ids (adb's shell_protocol.h)
ID_STDIN, ID_STDOUT, ID_STDERR, ID_EXIT, ID_CLOSE_STDIN, ID_WINDOW = 0, 1, 2, 3, 4, 5
V2 = struct.Struct("<BI")
SYNC = struct.Struct("<4sI")
SYNC_DATA_MAX = 64 * 1024


def _start(sandbox: Sandbox, command: str, merge_stderr: bool) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["/bin/sh", "-c", sandbox.map_command(command) if command else "exit 0"],
        cwd=sandbox.root,
        env=sandbox.environment(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        start_new_session=True,
    )


def _hang_up(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGHUP)
        except ProcessLookupError:
            pass


def _pump(src, send) -> None:
    try:
        while chunk := os.read(src.fileno(), 64 * 1024):
            send(chunk)
    except (Closed, OSError, ValueError):
        pass


def _watch_close(stream: Stream, proc: subprocess.Popen[bytes], on_data=None) -> None:
    """Read the server's side until the stream closes, then hang the command up."""
    try:
        while True:
            data = stream.read()
            if not data:
                break
            if on_data is not None:
                on_data(data)
    except Closed:
        pass
    _hang_up(proc)


def shell_v1(sandbox: Sandbox, stream: Stream, command: str, merge_stderr: bool = True) -> None:
    """``shell:cmd`` (stdout and stderr as one stream, no exit code) and ``exec:cmd``."""
    proc = _start(sandbox, command, merge_stderr)
    assert proc.stdin is not None and proc.stdout is not None

    def to_stdin(data: bytes) -> None:
        try:
            proc.stdin.write(data)  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, ValueError):
            pass

    threading.Thread(target=_watch_close, args=(stream, proc, to_stdin), daemon=True).start()
    _pump(proc.stdout, stream.write)
    proc.wait()
    if not merge_stderr and proc.stderr is not None:
        proc.stderr.close()


def shell_v2(sandbox: Sandbox, stream: Stream, command: str) -> None:
    """``shell,v2:cmd``: stdin, stdout, stderr and the exit code as framed packets."""
    proc = _start(sandbox, command, merge_stderr=False)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    lock = threading.Lock()

    def send(kind: int, data: bytes) -> None:
        with lock:
            stream.write(V2.pack(kind, len(data)) + data)

    buf = bytearray()

    def from_server(data: bytes) -> None:
        buf.extend(data)
        while len(buf) >= V2.size:
            kind, length = V2.unpack_from(buf)
            if len(buf) < V2.size + length:
                return
            payload = bytes(buf[V2.size : V2.size + length])
            del buf[: V2.size + length]
            try:
                if kind == ID_STDIN:
                    proc.stdin.write(payload)  # type: ignore[union-attr]
                    proc.stdin.flush()  # type: ignore[union-attr]
                elif kind == ID_CLOSE_STDIN:
                    proc.stdin.close()  # type: ignore[union-attr]
            except (BrokenPipeError, ValueError, OSError):
                pass

    threading.Thread(target=_watch_close, args=(stream, proc, from_server), daemon=True).start()
    err = threading.Thread(
        target=_pump, args=(proc.stderr, lambda d: send(ID_STDERR, d)), daemon=True
    )
    err.start()
    _pump(proc.stdout, lambda d: send(ID_STDOUT, d))
    err.join()
    code = proc.wait()
    send(ID_EXIT, bytes([code & 0xFF if code >= 0 else 128 + (-code & 0x7F)]))


def sync(sandbox: Sandbox, stream: Stream) -> None:
    """``sync:``: the file transfer protocol (adb's file_sync_protocol.h, version 1)."""
    while True:
        try:
            ident, length = SYNC.unpack(stream.read_exact(SYNC.size))
        except Closed:
            return
        if ident == b"QUIT":
            return
        path = stream.read_exact(length).decode("utf-8", "replace") if length else ""
        if ident == b"STAT":
            try:
                st = os.stat(sandbox.map_path(path))
                stream.write(
                    b"STAT" + struct.pack("<III", st.st_mode, _u32(st.st_size), int(st.st_mtime))
                )
            except OSError:
                stream.write(b"STAT" + struct.pack("<III", 0, 0, 0))
        elif ident == b"LIST":
            _list(sandbox, stream, path)
        elif ident == b"SEND":
            if not _receive_file(sandbox, stream, path):
                return  # after a FAIL the server ends the session
        elif ident == b"RECV":
            _send_file(sandbox, stream, path)
        else:
            _fail(stream, f"unknown sync request {ident!r}")
            return


def _u32(n: int) -> int:
    return min(n, 0xFFFFFFFF)  # sync v1 has 32 bits for a size


def _fail(stream: Stream, message: str) -> None:
    data = message.encode()
    stream.write(SYNC.pack(b"FAIL", len(data)) + data)


def _list(sandbox: Sandbox, stream: Stream, path: str) -> None:
    real = sandbox.map_path(path)
    try:
        names = sorted(os.listdir(real))
    except OSError:
        names = []
    for name in names:
        try:
            st = os.lstat(os.path.join(real, name))
        except OSError:
            continue
        raw = name.encode()
        stream.write(
            b"DENT"
            + struct.pack("<IIII", st.st_mode, _u32(st.st_size), int(st.st_mtime), len(raw))
            + raw
        )
    stream.write(b"DONE" + struct.pack("<IIII", 0, 0, 0, 0))


def _receive_file(sandbox: Sandbox, stream: Stream, spec: str) -> bool:
    path, _, mode_text = spec.rpartition(",")
    if not path:
        path, mode_text = spec, "0644"
    try:
        mode = stat.S_IMODE(int(mode_text)) or 0o644
    except ValueError:
        mode = 0o644
    real = sandbox.map_path(path)
    tmp = f"{real}.adb-partial"
    ok, error = True, ""
    try:
        os.makedirs(os.path.dirname(real), exist_ok=True)
        out = open(tmp, "wb")
    except OSError as e:
        ok, error, out = False, f"{path}: {e.strerror}", None
    mtime = 0
    try:
        while True:
            ident, length = SYNC.unpack(stream.read_exact(SYNC.size))
            if ident == b"DATA" and length <= SYNC_DATA_MAX:
                chunk = stream.read_exact(length)
                if out is not None:
                    out.write(chunk)
            elif ident == b"DONE":
                mtime = length
                break
            else:  # the rest of the stream cannot be framed: fail it and end the session
                ok, error = False, f"unexpected {ident!r} ({length} bytes) in SEND"
                break
    except Closed:  # the cable: no half file is left under the name, nor the partial
        if out is not None:
            out.close()
            os.unlink(tmp)
        raise
    if out is not None:
        out.close()
        if ok:
            os.chmod(tmp, mode)
            os.replace(tmp, real)  # a cut transfer never leaves a half file under the name
            if mtime:
                os.utime(real, (mtime, mtime))
        else:
            os.unlink(tmp)
    if ok:
        stream.write(SYNC.pack(b"OKAY", 0))
    else:
        _fail(stream, error)
    return ok


def _send_file(sandbox: Sandbox, stream: Stream, path: str) -> None:
    try:
        with open(sandbox.map_path(path), "rb") as f:
            while chunk := f.read(SYNC_DATA_MAX):
                stream.write(SYNC.pack(b"DATA", len(chunk)) + chunk)
    except OSError as e:
        _fail(stream, f"{path}: {e.strerror}")
        return
    stream.write(SYNC.pack(b"DONE", 0))


def tcp(stream: Stream, port: int) -> None:
    """``tcp:PORT``: a connection to the device's own loopback port, both ways."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
    except OSError:
        return
    sock.settimeout(None)

    def up() -> None:
        try:
            while data := stream.read():
                sock.sendall(data)
        except (Closed, OSError):
            pass
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threading.Thread(target=up, daemon=True).start()
    try:
        while data := sock.recv(64 * 1024):
            stream.write(data)
    except (Closed, OSError):
        pass
    finally:
        sock.close()
