"""The resource sampler: PSS read afresh when memory moves, carried by RSS in between."""

import os

import psutil

from agents.probes import PSS_REFRESH_BYTES, ProcessSampler


def test_pss_is_reread_when_rss_moves_and_carried_forward_otherwise(monkeypatch):
    sampler = ProcessSampler()
    reads = []
    real = psutil.Process.memory_full_info

    def counted(self):
        reads.append(self.pid)
        return real(self)

    monkeypatch.setattr(psutil.Process, "memory_full_info", counted)
    me = {os.getpid(): "me"}
    first = sampler.sample(me)[0]
    assert len(reads) == 1 and first.pss_bytes > 0
    again = sampler.sample(me)[0]  # nothing moved: no page-table walk
    assert len(reads) == 1
    assert abs(again.pss_bytes - first.pss_bytes) <= PSS_REFRESH_BYTES
    grown = bytearray(4 * PSS_REFRESH_BYTES)  # new private pages, touched
    for i in range(0, len(grown), 4096):
        grown[i] = 1
    after = sampler.sample(me)[0]
    assert len(reads) == 2  # RSS moved by more than the threshold: PSS read again
    assert after.pss_bytes >= first.pss_bytes + 3 * PSS_REFRESH_BYTES
    del grown


def test_a_gone_process_is_dropped():
    sampler = ProcessSampler()
    assert sampler.sample({2**22 + 12345: "ghost"}) == []
