"""``fleet-agent``: run one phone agent (a virtual phone on this machine, or on a phone itself).

    FLEET_AGENT_TOKEN=secret fleet-agent --name pixel-a --memory-budget-mb 4096 --cpu-threads 2

Binds 127.0.0.1 on a free port unless told otherwise and prints one JSON line once it serves:
``{"event": "ready", "port": 50123, "pid": 4242}``. With ``--exit-on-stdin-eof`` it exits when its
stdin closes, which is how a launcher makes sure no agent outlives it; with ``--token-stdin`` the
first line of stdin is the token (it never appears in an environment or a command line).

Security: the token is removed from the environment once read, so no app or model process
inherits it. A bind beyond loopback needs TLS (``--tls-cert`` and ``--tls-key``; with
``--tls-client-ca`` clients must present a certificate signed by that CA) or an explicit
``--insecure``. /metrics stays on loopback unless ``--metrics-host`` says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading

from fleet.records import PhoneProfile
from fleet.storage_models import STORAGE_MODELS

TOKEN_ENV = "FLEET_AGENT_TOKEN"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from fleet import __version__

    p = argparse.ArgumentParser(
        prog="fleet-agent",
        description="Run a phone agent.",
        epilog="Exit codes: 0 stopped cleanly; 2 bad flags (security flags included).",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--name", default="virtual-phone", help="phone name")
    p.add_argument("--kind", default="virtual", choices=["virtual", "android"])
    p.add_argument(
        "--memory-budget-mb",
        type=int,
        default=4096,
        help="memory the SLM processes together may use",
    )
    p.add_argument(
        "--cpu-threads",
        type=int,
        default=0,
        help="CPU threads the phone offers SLM inference (default: its --cpus, or every core)",
    )
    p.add_argument(
        "--cpus",
        default="",
        help="cores to confine the agent and every process it starts to, e.g. 0-1 or 2,3 "
        "(sched_setaffinity; default: not pinned)",
    )
    p.add_argument(
        "--storage-dir",
        default="",
        help="the phone's storage: model files and swapped contexts, on a real disk "
        "(default: ~/.cache/slm-fleet/phones/NAME; 'none' keeps models in memory only)",
    )
    p.add_argument(
        "--storage-model",
        default="none",
        choices=sorted(STORAGE_MODELS),
        help="throttle storage I/O to a phone's flash (default: the host disk as it is)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=0, help="port to bind (0 = any free port)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="Prometheus /metrics port on the same host (0 = any free, -1 = none)",
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address /metrics binds (default loopback only, whatever --host is)",
    )
    p.add_argument("--token-file", help=f"file holding the shared token (default: ${TOKEN_ENV})")
    p.add_argument(
        "--token-stdin", action="store_true", help="read the token from stdin's first line"
    )
    p.add_argument("--tls-cert", help="PEM server certificate (needs --tls-key): serve TLS")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument(
        "--tls-client-ca",
        help="PEM CA: require every client to present a certificate it signed (mutual TLS)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host without TLS (the token then crosses the network "
        "in the clear)",
    )
    p.add_argument(
        "--exit-on-stdin-eof", action="store_true", help="exit when stdin closes (set by launchers)"
    )
    return p.parse_args(argv)


def parse_cpus(text: str) -> tuple[int, ...]:
    """``"0-2,5"`` -> (0, 1, 2, 5); raises ValueError on anything else."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        first, last = int(lo), int(hi or lo)
        if first < 0 or last < first:
            raise ValueError(f"bad core range {part!r}")
        out.update(range(first, last + 1))
    if not out:
        raise ValueError("no cores given")
    return tuple(sorted(out))


def pin_to(cpus: tuple[int, ...]) -> None:
    """Confine this process (and, by inheritance, every process it starts) to ``cpus``."""
    allowed = os.sched_getaffinity(0)
    missing = sorted(set(cpus) - allowed)
    if missing:
        raise ValueError(f"cores {missing} are not available here (allowed: {sorted(allowed)})")
    os.sched_setaffinity(0, cpus)


def read_token(ns: argparse.Namespace) -> str:
    """The shared token; removed from the environment so no child process inherits it."""
    from_env = os.environ.pop(TOKEN_ENV, "")
    if ns.token_stdin:
        return sys.stdin.readline().strip()
    if ns.token_file:
        with open(ns.token_file, encoding="utf-8") as f:
            return f.read().strip()
    return from_env


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_security(ns: argparse.Namespace) -> str:
    """Why these flags are refused ("" when they are fine)."""
    if bool(ns.tls_cert) != bool(ns.tls_key):
        return "--tls-cert and --tls-key go together (a certificate needs its key)"
    if ns.tls_client_ca and not ns.tls_cert:
        return "--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)"
    for flag in ("tls_cert", "tls_key", "tls_client_ca", "token_file"):
        path = getattr(ns, flag)
        if path and not os.path.isfile(path):
            return f"--{flag.replace('_', '-')} {path}: no such file"
    if not is_loopback(ns.host) and not ns.tls_cert and not ns.insecure:
        return (
            f"--host {ns.host} is reachable beyond this machine and the token would cross the "
            "network in the clear: give --tls-cert/--tls-key, or --insecure to accept that"
        )
    return ""


async def _amain(ns: argparse.Namespace, token: str) -> None:
    from agents.agent_server import serve

    profile = PhoneProfile(
        name=ns.name,
        kind=ns.kind,
        memory_budget_bytes=ns.memory_budget_mb * 1024 * 1024,
        cpu_threads=ns.cpu_threads,
        host=os.uname().nodename,
        cpus=ns.cpu_list,
        storage_dir=ns.storage_dir,
        storage_model=ns.storage_model,
    )

    def read(path: str | None) -> bytes | None:
        if not path:
            return None
        with open(path, "rb") as f:
            return f.read()

    if ns.insecure and not is_loopback(ns.host) and not ns.tls_cert:
        print(
            f"fleet-agent: warning: serving {ns.host} without TLS (--insecure): the token "
            "crosses the network in the clear",
            file=sys.stderr,
        )
    server, servicer, port = await serve(
        profile,
        token=token,
        host=ns.host,
        port=ns.port,
        tls_cert=read(ns.tls_cert),
        tls_key=read(ns.tls_key),
        tls_client_ca=read(ns.tls_client_ca),
        metrics_port=None if ns.metrics_port < 0 else ns.metrics_port,
        metrics_host=ns.metrics_host,
    )
    print(
        json.dumps(
            {
                "event": "ready",
                "port": port,
                "pid": os.getpid(),
                "name": ns.name,
                "metrics_port": servicer.metrics_port,
            }
        ),
        flush=True,
    )
    await until_stopped(ns.exit_on_stdin_eof)
    await servicer.close()
    await server.stop(grace=2.0)


async def until_stopped(exit_on_stdin_eof: bool) -> None:
    """Until SIGTERM or SIGINT, or (``exit_on_stdin_eof``) until stdin closes: the launcher is
    gone."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    if exit_on_stdin_eof:

        def watch_stdin() -> None:
            sys.stdin.buffer.read()  # returns at EOF
            loop.call_soon_threadsafe(stopping.set)

        threading.Thread(target=watch_stdin, daemon=True).start()
    await stopping.wait()


def main(argv: list[str] | None = None) -> None:
    ns = parse_args(argv)
    from fleet.limits import NAME_PATTERN, valid_name

    problem = check_security(ns)
    if not valid_name(ns.name):
        problem = f"--name {ns.name!r} must match {NAME_PATTERN}"
    if problem:
        print(f"fleet-agent: {problem}", file=sys.stderr)
        sys.exit(2)
    token = read_token(ns)
    if not token:
        sys.exit(
            f"fleet-agent: no token: set ${TOKEN_ENV}, pass --token-file or --token-stdin "
            "(the agent refuses to accept unauthenticated changes)"
        )
    if ns.memory_budget_mb <= 0 or ns.cpu_threads < 0:
        sys.exit("fleet-agent: --memory-budget-mb must be positive, --cpu-threads not negative")
    ns.cpu_list = ()
    if ns.cpus:
        try:
            ns.cpu_list = parse_cpus(ns.cpus)
            pin_to(ns.cpu_list)
        except ValueError as exc:
            sys.exit(f"fleet-agent: --cpus {ns.cpus}: {exc}")
    ns.cpu_threads = ns.cpu_threads or len(ns.cpu_list) or len(os.sched_getaffinity(0))
    ns.storage_dir = open_storage(ns)
    from fleet.runtime_dirs import RuntimeDir

    try:
        runtime = RuntimeDir.create(ns.name)
    except OSError as exc:
        sys.exit(f"fleet-agent: cannot make its private directory: {exc}")
    for stale in runtime.swept:
        print(f"fleet-agent: removed a dead agent's directory {stale}", file=sys.stderr)
    try:
        asyncio.run(_amain(ns, token))
    finally:
        runtime.remove()


def open_storage(ns: argparse.Namespace) -> str:
    """The phone's storage directory, created; a RAM-backed one is warned about, by path."""
    from pathlib import Path

    from agents.storage import PhoneStorage
    from fleet.storage_models import storage_model

    if ns.storage_dir == "none":
        return ""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = Path(ns.storage_dir) if ns.storage_dir else cache / "slm-fleet" / "phones" / ns.name
    try:
        storage = PhoneStorage(root, storage_model(ns.storage_model))
    except OSError as exc:
        sys.exit(f"fleet-agent: --storage-dir {root}: {exc.strerror or exc}")
    if storage.ram_backed:
        print(f"fleet-agent: warning: {storage.describe()['storage_warning']}", file=sys.stderr)
    return str(storage.root)


if __name__ == "__main__":
    main()
