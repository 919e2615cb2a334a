"""The agent on an Android phone: install it, start it, reach it.

The mechanism (``ShellLauncher``): a self-contained Python runtime lives under
``/data/local/tmp/slm-fleet/runtime`` (see ``docs/android.md`` for building it from Termux's
packages), the agent's own code is pushed next to it as ``app/``, and ``adb shell`` (protocol v2)
starts ``python -m agents.main`` as the shell user, the way scrcpy starts its server. The token
goes in on the shell's stdin (never on a command line the phone's ``ps`` shows), the stream stays
open as the agent's lifeline (``--exit-on-stdin-eof``: a closed stream or a pulled cable ends the
agent), and the agent's ready line gives its gRPC and metrics ports, which ``adb forward`` maps to
this host's loopback. Everything the agent prints is kept as its log.

Every argument that reaches the phone's shell goes through ``shlex.quote``: no serial, name,
path or option can run a command of its own.
"""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import socket
import struct
import tarfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from fleet.devices.provider import ADB_TIMEOUT_S, DeviceError, DeviceProvider

PHONE_DIR = "/data/local/tmp/slm-fleet"
RUNTIME_PYTHON = f"{PHONE_DIR}/runtime/bin/python3"
RUNTIME_MODULES = ("torch", "grpc", "google.protobuf", "numpy", "psutil", "prometheus_client")
PACKAGES = ("fleet", "agents")
START_TIMEOUT_S = 120.0
V2 = struct.Struct("<BI")
ID_STDIN, ID_STDOUT, ID_STDERR, ID_EXIT, ID_CLOSE_STDIN = 0, 1, 2, 3, 4


def bundle() -> tuple[bytes, str]:
    """The agent's code (the ``fleet`` and ``agents`` packages' sources) as a tar.gz, and its
    version: the sha256 of the sources, so an unchanged phone is left alone."""
    root = Path(__file__).resolve().parents[2]
    files = sorted(
        p
        for pkg in PACKAGES
        for p in (root / pkg).rglob("*")
        if p.is_file()
        and p.suffix in (".py", ".cpp", ".yaml", ".json")  # .cpp: the engine's native kernels
        and "__pycache__" not in p.parts
    )
    digest = hashlib.sha256()
    for p in files:
        digest.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    version = digest.hexdigest()[:16]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in files:
            info = tar.gettarinfo(str(p), arcname=str(p.relative_to(root)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with p.open("rb") as f:
                tar.addfile(info, f)
        data = version.encode() + b"\n"
        info = tarfile.TarInfo("VERSION")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), version


def free_kb(df_output: str) -> int:
    """Available KiB from ``df -k PATH`` (toybox and coreutils print the same columns)."""
    rows = [line.split() for line in df_output.strip().splitlines()[1:] if line.strip()]
    if not rows or len(rows[-1]) < 4:
        raise ValueError(f"cannot read df output: {df_output!r}")
    return int(rows[-1][-3])


@dataclass
class AgentOnPhone:
    """A started agent: its ports on the phone and on this host, its log, its lifeline."""

    serial: str
    pid: int
    phone_port: int
    metrics_phone_port: int
    port: int = 0  # this host's loopback, forwarded to phone_port
    metrics_port: int = 0
    log: deque[str] = field(default_factory=lambda: deque(maxlen=2000))
    exit_code: int | None = None
    _sock: socket.socket | None = None
    _forwards: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self._sock is not None and self.exit_code is None


class ShellLauncher:
    def __init__(
        self, provider: DeviceProvider, python: str = RUNTIME_PYTHON, phone_dir: str = PHONE_DIR
    ):
        self.provider = provider
        self.python = python
        self.phone_dir = phone_dir

    # -- install -------------------------------------------------------------------------------
    def installed_version(self, serial: str) -> str:
        q = shlex.quote(f"{self.phone_dir}/app/VERSION")
        try:
            return self.provider.shell(serial, f"cat {q} 2>/dev/null || true").strip()
        except DeviceError:
            return ""

    def prepare(self, serial: str, force: bool = False) -> str:
        """Install or update the agent's code on the phone (idempotent) and check its runtime;
        returns what was done. Raises DeviceError with the reason."""
        data, version = bundle()
        if not force and self.installed_version(serial) == version:
            self.check_runtime(serial)
            return f"{serial}: agent {version} already installed"
        d = shlex.quote(self.phone_dir)
        self.provider.shell(serial, f"mkdir -p {d}")
        free = free_kb(self.provider.shell(serial, f"df -k {d}"))
        need = 3 * len(data) // 1024 + 1024  # the archive, the unpacked code, a margin
        if free < need:
            raise DeviceError(f"{serial}: {free} KiB free under {self.phone_dir}, need {need}")
        archive = f"{self.phone_dir}/app.tgz"
        try:
            self.provider.device(serial).sync.push(data, archive, mode=0o600)
        except Exception as e:  # adbutils raises its own and OSError
            raise DeviceError(f"{serial}: push failed: {e}") from e
        a, new, app = (shlex.quote(f"{self.phone_dir}/{x}") for x in ("app.tgz", "app.new", "app"))
        self.provider.shell(
            serial,
            f"rm -rf {new} && mkdir -p {new} && tar -xzf {a} -C {new} && rm -rf {app} && "
            f"mv {new} {app} && rm -f {a} && chmod -R go-rwx {d}",
            timeout_s=60,
        )
        self.check_runtime(serial)
        return f"{serial}: agent {version} installed ({len(data) // 1024} KiB)"

    def check_runtime(self, serial: str) -> str:
        py = shlex.quote(self.python)
        probe = shlex.quote(
            "import " + ", ".join(RUNTIME_MODULES) + "; import torch; print(torch.__version__)"
        )
        try:
            return self.provider.shell(serial, f"{py} -c {probe}", timeout_s=60).strip()
        except DeviceError as e:
            raise DeviceError(
                f"{serial}: no usable Python runtime at {self.python} (it needs "
                f"{', '.join(RUNTIME_MODULES)}; see docs/android.md): {e}"
            ) from e

    # -- run -----------------------------------------------------------------------------------
    def command(
        self, name: str, memory_budget_mb: int, cpu_threads: int, extra: tuple[str, ...] = ()
    ) -> str:
        args = [
            "--kind",
            "android",
            "--name",
            name,
            "--memory-budget-mb",
            str(int(memory_budget_mb)),
            "--cpu-threads",
            str(int(cpu_threads)),
            "--storage-dir",
            f"{self.phone_dir}/storage",
            "--token-stdin",
            "--exit-on-stdin-eof",
            *extra,
        ]
        q = shlex.quote
        return (
            f"cd {q(self.phone_dir)} && PYTHONPATH={q(self.phone_dir + '/app')} "
            f"exec {q(self.python)} -m agents.main " + " ".join(q(a) for a in args)
        )

    def start(
        self,
        serial: str,
        name: str,
        token: str,
        memory_budget_mb: int,
        cpu_threads: int,
        timeout_s: float = START_TIMEOUT_S,
        log: deque[str] | None = None,
    ) -> AgentOnPhone:
        """Start the agent and forward its ports; raises DeviceError (with its output) when it
        does not come up."""
        cmd = self.command(name, memory_budget_mb, cpu_threads)
        try:
            conn = self.provider.device(serial).open_transport(timeout=ADB_TIMEOUT_S)
            conn.send_command(f"shell,v2:{cmd}")
            conn.check_okay()
        except Exception as e:
            raise DeviceError(f"{serial}: cannot start the agent: {e}") from e
        sock: socket.socket = conn.conn
        sock.settimeout(None)
        line = token.encode() + b"\n"
        sock.sendall(V2.pack(ID_STDIN, len(line)) + line)
        ready: dict = {}
        got = threading.Event()
        agent = AgentOnPhone(serial, 0, 0, 0, _sock=sock)
        if log is not None:  # the phone's log, kept across its agents (a rejoin starts anew)
            agent.log = log
        threading.Thread(
            target=self._read, args=(agent, ready, got), daemon=True, name=f"agent-{name}"
        ).start()
        if not got.wait(timeout_s) or not ready:
            self.stop(agent)
            tail = " | ".join(list(agent.log)[-8:])
            raise DeviceError(
                f"{serial}: the agent did not come up within {timeout_s:.0f} s: {tail}"
            )
        agent.pid, agent.phone_port = int(ready["pid"]), int(ready["port"])
        agent.metrics_phone_port = int(ready.get("metrics_port") or 0)
        device = self.provider.device(serial)
        try:
            agent.port = device.forward_port(agent.phone_port)
            agent._forwards.append(f"tcp:{agent.port}")
            if agent.metrics_phone_port:
                agent.metrics_port = device.forward_port(agent.metrics_phone_port)
                agent._forwards.append(f"tcp:{agent.metrics_port}")
        except Exception as e:
            self.stop(agent)
            raise DeviceError(f"{serial}: adb forward failed: {e}") from e
        return agent

    @staticmethod
    def _read(agent: AgentOnPhone, ready: dict, got: threading.Event) -> None:
        assert agent._sock is not None
        f = agent._sock.makefile("rb")
        partial = {ID_STDOUT: b"", ID_STDERR: b""}
        try:
            while header := f.read(V2.size):
                if len(header) < V2.size:
                    break
                kind, length = V2.unpack(header)
                data = f.read(length)
                if kind == ID_EXIT:
                    agent.exit_code = data[0] if data else 255
                    break
                if kind not in partial:
                    continue
                partial[kind] += data
                *lines, partial[kind] = partial[kind].split(b"\n")
                for raw in lines:
                    text = raw.decode("utf-8", "replace")
                    agent.log.append(text)
                    if kind == ID_STDOUT and not ready and text.startswith("{"):
                        try:
                            msg = json.loads(text)
                        except ValueError:
                            continue
                        if msg.get("event") == "ready":
                            ready.update(msg)
                            got.set()
        except (OSError, ValueError):
            pass
        finally:
            f.close()  # or the socket's close() waits for this file object
            if agent.exit_code is None:
                agent.exit_code = -1  # the stream broke: the cable, the adb server, or a kill
            got.set()

    def stop(self, agent: AgentOnPhone, timeout_s: float = 10.0) -> None:
        """Close the agent's stdin (it exits), drop its forwards and the stream."""
        sock, agent._sock = agent._sock, None
        if sock is not None:
            try:
                sock.sendall(V2.pack(ID_CLOSE_STDIN, 0))
            except OSError:
                pass
            deadline = time.monotonic() + timeout_s
            while agent.exit_code is None and time.monotonic() < deadline:
                time.sleep(0.05)
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the reader; the stream (lifeline) ends
            except OSError:
                pass
            sock.close()
        device = self.provider.device(agent.serial)
        for local in agent._forwards:
            try:
                device.forward_remove(local, raise_non_found=False)
            except Exception:  # the phone or the adb server is gone: so is the forward
                pass
        agent._forwards.clear()
