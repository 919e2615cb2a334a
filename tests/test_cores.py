"""Each virtual phone's process tree is confined to cores of its own: read back from /proc."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from blocking import blocking_iter

from fleet.coordinator.config import VirtualPhone
from fleet.coordinator.phone_host import CoreError, PhoneHost
from fleet.records import (
    AppWorkload,
    ArrivalPattern,
    DeploySpec,
    ModelSpec,
    Paradigm,
    TrialSummary,
    WorkloadRun,
)

HOST_CORES = sorted(os.sched_getaffinity(0))


def allowed_cpus(pid: int) -> set[int]:
    """The cores the kernel lets ``pid`` run on (``Cpus_allowed_list`` in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            out: set[int] = set()
            for part in line.split(":", 1)[1].strip().split(","):
                lo, _, hi = part.partition("-")
                out.update(range(int(lo), int(hi or lo) + 1))
            return out
    raise AssertionError(f"no Cpus_allowed_list for {pid}")


def descendants(pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


@pytest.mark.skipif(len(HOST_CORES) < 2, reason="needs two cores to give two phones one each")
def test_two_phones_get_disjoint_cores_and_every_process_stays_on_them():
    host = PhoneHost()
    try:
        a = host.start_virtual_phone(VirtualPhone(name="a", cpu_threads=1))
        b = host.start_virtual_phone(VirtualPhone(name="b", cpu_threads=len(HOST_CORES) - 1))
        assert not set(a["cpus"]) & set(b["cpus"]) and not a["shared"] and not b["shared"]
        with pytest.raises(CoreError, match="asks for 1 cores; this host has"):
            host.start_virtual_phone(VirtualPhone(name="c", cpu_threads=1))
        assert host.describe("a").profile.cpus == tuple(a["cpus"])
        assert host.describe("a").profile.cpu_threads == 1
        app = AppWorkload(
            "kb", ArrivalPattern.CLOSED_LOOP, prompt_tokens=4, output_tokens=2, max_requests=2
        )
        spec = DeploySpec(Paradigm.PER_APP, ModelSpec("tiny"), (app,), max_context_tokens=64)
        events = list(blocking_iter(host.run_trial("a", spec, WorkloadRun("t", 5.0))))
        assert events[-1][0] == "end" and isinstance(events[-1][1].summary, TrialSummary), events
        # the model process is gone after the trial's reset; deploy again to look at it live
        client = host._clients["a"]
        deployed = client.deploy(spec)
        agent_pid = host.describe("a").agent_pid
        tree = [agent_pid, *descendants(agent_pid)]
        assert deployed.apps[0].pid in tree and len(tree) >= 3  # agent, app, its model
        for pid in tree:
            assert allowed_cpus(pid) == set(a["cpus"]), pid
        assert allowed_cpus(host.describe("b").agent_pid) == set(b["cpus"])
        client.reset()
    finally:
        host.shutdown()


def test_sharing_cores_is_explicit():
    host = PhoneHost()
    try:
        a = host.start_virtual_phone(VirtualPhone(name="a", cpu_threads=len(HOST_CORES)))
        b = host.start_virtual_phone(VirtualPhone(name="b", cpu_threads=1), True)
        assert not a["shared"] and b["shared"] and set(b["cpus"]) <= set(a["cpus"])
    finally:
        host.shutdown()


def test_phones_sharing_a_core_on_the_same_host_are_marked_both_ways():
    from fleet.coordinator.driver import core_sharers

    cpus = {
        "a": ("local", (0, 1)),
        "b": ("local", (1,)),
        "c": ("local", (2,)),
        "d": ("host-2", (0,)),  # core 0 of another host
        "e": ("local", (2, 0)),
        "sim": ("local", ()),  # a simulated phone is pinned to nothing
    }
    assert core_sharers(cpus) == {
        "a": ["b", "e"],
        "b": ["a"],
        "c": ["e"],
        "d": [],
        "e": ["a", "c"],
        "sim": [],
    }
    many = {f"p{i}": ("local", (i,)) for i in range(1000)}
    assert not any(core_sharers(many).values())
