"""A host's clock offset, as NTP estimates it: the midpoint of the fastest round trip."""

from __future__ import annotations

import time

import pytest

from fleet.coordinator.host_clock import clock_offset


def test_the_offset_of_a_clock_ahead_is_found_within_the_fastest_round_trip():
    slow = iter([0.05, 0.0, 0.03, 0.0, 0.04])  # some answers come late

    def ask() -> float:
        now = time.time() + 2.5  # the host reads 2.5 s ahead, at once
        time.sleep(next(slow))  # and its reply takes a while to come back
        return now

    offset, error = clock_offset(ask)
    assert offset == pytest.approx(2.5, abs=error + 0.002)
    assert error < 0.01  # a fast round trip's, not a slow one's


def test_the_same_clock_is_at_no_offset():
    offset, error = clock_offset(time.time, rounds=3)
    assert abs(offset) <= error + 1e-6
