"""The garbage collector in the coordinator's long-lived processes while a run's trials stream.

CPython's cyclic collector stops its process while it runs, and a full collection walks every
object alive. In one 1,000-phone run, after the phones were up and with the heap frozen, the
host actor still paused 54 times over 3 ms (1.08 s in all, up to 0.28 s) and the driver 7 times
(0.16 s, up to 86 ms); the trials' dispatch waited behind them. Yet neither process makes
cyclic garbage while trials stream: their collections then found none (the actor's at 1,000
phones, the driver's over a 100-phone dispatch). Once a run's phones are up, ``Settled``
collects, freezes what is alive (modules, Ray, each phone's client: the long-lived heap) out
of later collections, and stops automatic collection: a thread of its own collects every
``collect_every_s`` instead, so garbage a rare failure leaves is still freed.

    with heap.settled():                # the driver, while its trials run
        dispatcher.run(...)
    held = heap.Settled(); ...; held.release()   # a host actor, from one call to another
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

COLLECT_EVERY_S = 60.0


class Settled:
    """The heap frozen and automatic collection off until ``release()``; a collection every
    ``collect_every_s`` meanwhile."""

    def __init__(self, collect_every_s: float = COLLECT_EVERY_S):
        self._was_enabled = gc.isenabled()
        self._stop = threading.Event()
        gc.collect()
        gc.freeze()
        gc.disable()
        threading.Thread(
            target=self._collect, args=(collect_every_s,), daemon=True, name="gc"
        ).start()

    def _collect(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            gc.collect()

    def release(self) -> None:
        """The frozen objects are collectable again, automatic collection as it was."""
        if self._stop.is_set():
            return
        self._stop.set()
        gc.unfreeze()
        if self._was_enabled:
            gc.enable()


@contextmanager
def settled(collect_every_s: float = COLLECT_EVERY_S) -> Iterator[Settled]:
    held = Settled(collect_every_s)
    try:
        yield held
    finally:
        held.release()
