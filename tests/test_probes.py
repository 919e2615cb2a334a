"""The resource sampler: PSS read afresh when memory moves, carried by RSS in between."""

import os
from types import SimpleNamespace

import psutil

from agents.probes import PSS_REFRESH_BYTES, ProcessSampler


def test_pss_is_reread_when_rss_moves_and_carried_forward_otherwise(monkeypatch):
    """RSS is driven by hand (a long test process reuses freed memory, so real allocations
    need not move it); PSS reads are counted."""
    rss = [500 << 20]
    reads = []

    def memory_info(self):
        return SimpleNamespace(rss=rss[0])

    def memory_full_info(self):
        reads.append(self.pid)
        return SimpleNamespace(rss=rss[0], pss=rss[0] - (100 << 20))  # 100 MiB shared

    monkeypatch.setattr(psutil.Process, "memory_info", memory_info)
    monkeypatch.setattr(psutil.Process, "memory_full_info", memory_full_info)
    sampler = ProcessSampler()
    me = {os.getpid(): "me"}
    first = sampler.sample(me)[0]
    assert len(reads) == 1 and first.pss_bytes == 400 << 20
    rss[0] += PSS_REFRESH_BYTES // 2  # a small move: carried by the RSS change, no read
    small = sampler.sample(me)[0]
    assert len(reads) == 1 and small.pss_bytes == (400 << 20) + PSS_REFRESH_BYTES // 2
    assert small.rss_bytes == rss[0]
    rss[0] += 4 * PSS_REFRESH_BYTES  # a large one: PSS read again
    large = sampler.sample(me)[0]
    assert len(reads) == 2 and large.pss_bytes == rss[0] - (100 << 20)


def test_pss_is_reread_at_least_every_refresh_interval(monkeypatch):
    import agents.probes as probes

    monkeypatch.setattr(probes, "PSS_REFRESH_S", 0.0)
    reads = []
    real = psutil.Process.memory_full_info

    def counted(self):
        reads.append(self.pid)
        return real(self)

    monkeypatch.setattr(psutil.Process, "memory_full_info", counted)
    sampler = ProcessSampler()
    for _ in range(3):
        assert sampler.sample({os.getpid(): "me"})[0].pss_bytes > 0
    assert len(reads) == 3


def test_a_gone_process_is_dropped():
    sampler = ProcessSampler()
    assert sampler.sample({2**22 + 12345: "ghost"}) == []
