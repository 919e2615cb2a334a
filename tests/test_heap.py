"""fleet.coordinator.heap: a settled heap is frozen, collects on its own thread only, and
comes back whole."""

from __future__ import annotations

import gc
import time
import weakref

from fleet.coordinator import heap
from fleet.coordinator.phone_host import PhoneHost


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def test_a_settled_heap_is_frozen_collects_on_its_own_and_is_released():
    assert gc.isenabled() and gc.get_freeze_count() == 0
    alive = _Node()
    with heap.settled(collect_every_s=0.2) as held:
        assert not gc.isenabled()  # no automatic collection while trials stream
        assert gc.get_freeze_count() > 0  # what was alive is out of later collections
        garbage = _Node()
        gone = weakref.ref(garbage)
        del garbage
        deadline = time.monotonic() + 10
        while gone() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone() is None, "the settled heap's own thread never collected the cycle"
    assert gc.isenabled() and gc.get_freeze_count() == 0
    held.release()  # a second release changes nothing
    assert gc.isenabled() and alive.me is alive


def test_a_heap_settled_with_collection_off_stays_off_after_it():
    gc.disable()
    try:
        with heap.settled():
            pass
        assert not gc.isenabled() and gc.get_freeze_count() == 0
    finally:
        gc.enable()


def test_a_phone_host_settles_its_heap_once_and_releases_it_at_shutdown():
    host = PhoneHost()
    try:
        host.settle_heap()
        frozen = gc.get_freeze_count()
        host.settle_heap()  # the driver asks each host once; a second ask keeps the first
        assert not gc.isenabled() and gc.get_freeze_count() == frozen > 0
    finally:
        host.shutdown()
    assert gc.isenabled() and gc.get_freeze_count() == 0
