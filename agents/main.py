"""``fleet-agent``: run one phone agent (a virtual phone on this machine, or on a phone itself).

    FLEET_AGENT_TOKEN=secret fleet-agent --name pixel-a --memory-budget-mb 4096 --cpu-threads 2

Binds 127.0.0.1 on a free port unless told otherwise and prints one JSON line once it serves:
``{"event": "ready", "port": 50123, "pid": 4242}``. With ``--exit-on-stdin-eof`` it exits when its
stdin closes, which is how a launcher makes sure no agent outlives it.
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
    p = argparse.ArgumentParser(prog="fleet-agent", description="Run a phone agent.")
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
    p.add_argument("--token-file", help=f"file holding the shared token (default: ${TOKEN_ENV})")
    p.add_argument("--tls-cert", help="PEM certificate; with --tls-key, serve TLS")
    p.add_argument("--tls-key", help="PEM private key")
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
    if ns.token_file:
        with open(ns.token_file, encoding="utf-8") as f:
            return f.read().strip()
    return os.environ.get(TOKEN_ENV, "")


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
    cert = key = None
    if ns.tls_cert and ns.tls_key:
        cert, key = open(ns.tls_cert, "rb").read(), open(ns.tls_key, "rb").read()
    server, servicer, port = await serve(
        profile,
        token=token,
        host=ns.host,
        port=ns.port,
        tls_cert=cert,
        tls_key=key,
        metrics_port=None if ns.metrics_port < 0 else ns.metrics_port,
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
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    if ns.exit_on_stdin_eof:

        def watch_stdin() -> None:
            sys.stdin.buffer.read()  # returns at EOF: the launcher is gone
            loop.call_soon_threadsafe(stopping.set)

        threading.Thread(target=watch_stdin, daemon=True).start()
    await stopping.wait()
    await servicer.close()
    await server.stop(grace=2.0)


def main(argv: list[str] | None = None) -> None:
    ns = parse_args(argv)
    token = read_token(ns)
    if not token:
        sys.exit(
            f"fleet-agent: no token: set ${TOKEN_ENV} or pass --token-file "
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
    asyncio.run(_amain(ns, token))


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
