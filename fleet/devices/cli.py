"""``fleet devices``: the adb devices of this host or of every host of a Ray cluster; ``prepare``
installs the agent on a phone; ``emulate`` starts emulated devices for rehearsals.

    fleet devices [--json] [--address auto]       list (host, serial, model, Android, ABI, RAM,
                                                  battery, state)
    fleet devices prepare SERIAL [--force]        install or update the agent's code, check runtime
    fleet devices emulate N [--root DIR]          N emulated devices, `adb connect`ed, until Ctrl-C
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from fleet.devices.hosts import host_name
from fleet.devices.provider import DeviceError, DeviceInfo, DeviceProvider

COLUMNS = ("host", "serial", "state", "model", "android", "abi", "ram_mb", "battery_level",
           "battery_c")  # fmt: skip


def add_parser(sub) -> None:
    p = sub.add_parser(
        "devices",
        help="list the adb devices of every host; prepare a phone; emulate devices",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--address",
        help="a Ray cluster (or 'auto'): list the devices of every host in it "
        "(default: this host's adb server only)",
    )
    dsub = p.add_subparsers(dest="action")
    prep = dsub.add_parser("prepare", help="install or update the agent's code on a phone")
    prep.add_argument("serial", help="the phone, as `fleet devices` lists it")
    prep.add_argument("--force", action="store_true", help="push even if the same version is on it")
    prep.add_argument(
        "--python",
        default="",
        help="the Python runtime on the phone "
        "(default /data/local/tmp/slm-fleet/runtime/bin/python3)",
    )
    emu = dsub.add_parser(
        "emulate", help="start N emulated adb devices (stand-ins, not phones) until Ctrl-C"
    )
    emu.add_argument("count", type=int, help="how many devices")
    emu.add_argument("--root", type=Path, help="their sandboxes (default: a temporary folder)")
    emu.add_argument("--unauthorized", type=int, default=0, help="how many of them refuse adb")
    emu.add_argument(
        "--no-connect", action="store_true", help="do not `adb connect` them (print ports only)"
    )


def cmd_devices(ns) -> int:
    if ns.action == "emulate":
        return _emulate(ns)
    if ns.action == "prepare":
        return _prepare(ns)
    try:
        rows = _cluster_devices(ns.address) if ns.address else DeviceProvider().devices()
    except DeviceError as e:
        print(f"fleet: {e}", file=sys.stderr)
        return 1
    if ns.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(*COLUMNS, title=f"{len(rows)} adb device(s)")
    for r in rows:
        table.add_row(
            r.host,
            r.serial,
            r.state if not r.error else f"{r.state} ({r.error})",
            r.model,
            r.android,
            r.abi,
            str(r.ram_mb or ""),
            f"{r.battery_level} %" if r.battery_level >= 0 else "",
            f"{r.battery_c:.1f} C" if r.battery_c is not None else "",
        )
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    return 0


def _cluster_devices(address: str) -> list[DeviceInfo]:
    """One provider per live Ray node, pinned to it, each asking its own host's adb server."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        providers: list[tuple[str, Any]] = []
        provider_cls: Any = ray.remote(num_cpus=0)(DeviceProvider)
        for n in ray.nodes():
            if not n.get("Alive"):
                continue
            host = host_name(n)
            actor = provider_cls.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(host=host)
            providers.append((host, actor))
        rows: list[DeviceInfo] = []
        for host, actor in providers:
            try:
                rows += ray.get(actor.devices.remote(), timeout=120)
            except Exception as e:  # one host's adb server down: say so, list the others
                rows.append(DeviceInfo(host, "-", "error", error=str(e).splitlines()[-1][:200]))
        return sorted(rows, key=lambda r: (r.host, r.serial))
    finally:
        ray.shutdown()


def _prepare(ns) -> int:
    from fleet.devices.launcher import RUNTIME_PYTHON, ShellLauncher

    try:
        print(ShellLauncher(DeviceProvider(), python=ns.python or RUNTIME_PYTHON).prepare(
            ns.serial, force=ns.force
        ))  # fmt: skip
    except DeviceError as e:
        print(f"fleet: {e}", file=sys.stderr)
        return 1
    return 0


def _emulate(ns) -> int:
    from fleet.devices.emulator.device import EmulatedDevice, Facts

    if not 0 < ns.count <= 64:
        print("fleet: emulate 1 to 64 devices", file=sys.stderr)
        return 2
    root = ns.root or Path(tempfile.mkdtemp(prefix="sfe-"))  # short: socket paths
    devices = [
        EmulatedDevice(
            root / f"emu{i}", Facts(model=f"Emulated Pixel {i}"), authorized=i >= ns.unauthorized
        )  # fmt: skip
        for i in range(ns.count)
    ]
    provider = None if ns.no_connect else DeviceProvider()
    print(f"{ns.count} EMULATED adb devices (stand-ins running on this machine, not phones); "
          f"sandboxes under {root}")  # fmt: skip
    for d in devices:
        if provider is not None:
            provider.ensure_server()
            d.connect_to(provider.adb.port)
        print(f"  {d.serial}  {d.facts.model}  {'authorized' if d.authorized else 'unauthorized'}")
    print("Ctrl-C stops them.", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(2.0):  # a restarted adb server finds USB phones by itself: these, so
        if provider is None:  # that they behave alike, are connected to it again
            continue
        try:
            listed = provider.serials()
        except DeviceError:
            continue
        for d in devices:
            if d.plugged and d.serial not in listed:
                try:
                    provider.adb.connect(d.serial, timeout=5)
                except Exception:
                    pass
    for d in devices:
        if provider is not None:
            try:
                provider.adb.disconnect(d.serial)
            except Exception:
                pass
        d.close()
    return 0
