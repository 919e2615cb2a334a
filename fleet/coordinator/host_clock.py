"""How far a host's wall clock is from the coordinator's, so that times taken on two machines
can be compared (a trial's start slot, set here, against its Deploy, sent on the phone's
host).

As NTP does: ask the host for its time a few times; each answer was read somewhere between the
question and its reply, so the host's clock less the midpoint of the two is the offset, and the
round trip bounds its error (half of it). The fastest round trip's answer is kept.

    offset_s, error_s = clock_offset(lambda: ray.get(actor.clock.remote()))
    host_time = coordinator_time + offset_s
"""

from __future__ import annotations

import time
from collections.abc import Callable

ROUNDS = 5


def clock_offset(ask: Callable[[], float], rounds: int = ROUNDS) -> tuple[float, float]:
    """(offset, error bound) in seconds of the clock ``ask()`` reads (``time.time()`` on the
    host) against this process's ``time.time()``."""
    best: tuple[float, float] | None = None
    for _ in range(rounds):
        sent = time.time()
        theirs = ask()
        back = time.time()
        rtt = back - sent
        if best is None or rtt < 2 * best[1]:
            best = (theirs - (sent + back) / 2, rtt / 2)
    assert best is not None
    return best
