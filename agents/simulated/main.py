"""``python -m agents.simulated.main``: serve many simulated phones from one process (started by
the coordinator's host actor for a run's ``kind: simulated`` phones, up to 250 per process).

    python -m agents.simulated.main --profile builtin --token-stdin --exit-on-stdin-eof

stdin: the token on the first line, then one JSON line listing the phones
(``[{"name": ..., "memory_budget_mb": ..., "cpu_threads": ...}, ...]``). Binds loopback on free
ports and prints one ready line: ``{"event": "ready", "port": ..., "metrics_port": ...,
"pid": ..., "phones": N}``; exits when stdin closes. It runs at a lower priority than the
coordinator (``--nice``, 10 by default): the phones it stands in for have CPUs of their own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from fleet.limits import valid_name
from fleet.records import PhoneProfile
from fleet.sim_profile import BUILTIN, ProfileError, load_profile

MAX_PHONES = 10_000
# Added to the process's nice value: simulated phones stand in for phones' own CPUs, so on the
# coordinator's host they yield its cores to the coordinator, Ray and Prometheus they are
# measuring. At 1,000 phones they took a whole core of two, and the trials' dispatch p50 was
# 32-72 ms at the same nice value as the coordinator, 12-21 ms at this one.
NICE = 10


def parse_phones(line: str) -> list[PhoneProfile]:
    """The phones of the JSON line; raises ValueError naming what is wrong."""
    data = json.loads(line)
    if not isinstance(data, list) or not 0 < len(data) <= MAX_PHONES:
        raise ValueError(f"expected a list of 1 to {MAX_PHONES} phones")
    out = []
    for i, p in enumerate(data):
        name = p.get("name", "") if isinstance(p, dict) else ""
        budget, threads = p.get("memory_budget_mb"), p.get("cpu_threads")
        if not valid_name(str(name)):
            raise ValueError(f"phones.{i}.name: {name!r} is not a valid phone name")
        if (
            not isinstance(budget, int)
            or budget <= 0
            or not isinstance(threads, int)
            or threads < 1
        ):
            raise ValueError(f"phones.{i}: memory_budget_mb and cpu_threads must be positive")
        out.append(
            PhoneProfile(
                name=name,
                kind="simulated",
                memory_budget_bytes=budget * 1024 * 1024,
                cpu_threads=threads,
                host=os.uname().nodename,
            )
        )
    if len({p.name for p in out}) != len(out):
        raise ValueError("phone names must be unique")
    return out


async def _amain(ns: argparse.Namespace, token: str, phones: list[PhoneProfile], sim) -> None:
    from agents.main import until_stopped
    from agents.simulated.fleet_server import serve_fleet

    server, router, port, metrics_port, exporter = await serve_fleet(
        phones, sim, token=token, host=ns.host, port=ns.port
    )
    print(
        json.dumps(
            {
                "event": "ready",
                "port": port,
                "metrics_port": metrics_port,
                "pid": os.getpid(),
                "phones": len(phones),
            }
        ),
        flush=True,
    )
    await until_stopped(ns.exit_on_stdin_eof)
    await router.close()
    exporter.close()
    await server.stop(grace=2.0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="fleet-sim-agent", description=__doc__.split("\n")[0])
    p.add_argument("--profile", default=BUILTIN, help="a captured profile file, or builtin")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (loopback only)")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--token-stdin", action="store_true", required=True)
    p.add_argument("--exit-on-stdin-eof", action="store_true")
    p.add_argument(
        "--nice", type=int, default=NICE, help=f"added to the nice value, 0-19 (default {NICE})"
    )
    ns = p.parse_args(argv)
    if ns.host not in ("127.0.0.1", "localhost", "::1"):
        p.error("simulated phones serve loopback only")
    if not 0 <= ns.nice <= 19:
        p.error("--nice: from 0 (as the coordinator) to 19 (the lowest priority)")
    token = sys.stdin.readline().strip()
    if not token:
        sys.exit("fleet-sim-agent: no token on stdin")
    try:
        sim = load_profile(ns.profile)
        phones = parse_phones(sys.stdin.readline())
    except (ProfileError, ValueError) as exc:
        sys.exit(f"fleet-sim-agent: {exc}")
    if ns.nice:
        os.nice(ns.nice)
    asyncio.run(_amain(ns, token, phones, sim))


if __name__ == "__main__":
    main()
