"""Per-trial lines, the run log and the ETA (fleet/coordinator/progress.py)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from fleet.coordinator.progress import RunProgress, open_run_log


def _trial(tid: str, phone: str, duration_s: float):
    return SimpleNamespace(
        trial_id=tid, phone=phone, paradigm=SimpleNamespace(label="slmaas"),
        workload=SimpleNamespace(name="w", duration_s=duration_s), mix="corun", repetition=0,
    )  # fmt: skip


def test_a_line_per_start_and_end_and_an_eta_from_the_longest_phone(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("fleet.coordinator.progress.time.monotonic", lambda: clock[0])
    trials = [_trial("a0", "a", 10), _trial("a1", "a", 10), _trial("b0", "b", 30)]
    said: list[str] = []
    handler = open_run_log(tmp_path / "fleet.log")
    try:
        p = RunProgress(trials, drain_s=0.0, say=said.append, lines=True)
        assert p.eta_s() is None  # nothing finished: no factor yet
        p.started(trials[0])
        clock[0] += 20.0  # took twice its plan
        p.finished(trials[0], "completed", records=7)
        assert p.eta_s() == 2.0 * 30  # phone b's 30 s of plan is the longest left, x2
        p.started(trials[2])
        p.finished(trials[2], "failed", 0, "phone b died")
    finally:
        logging.getLogger("fleet").removeHandler(handler)
        handler.close()
    assert said[0].endswith("start a0 phone=a paradigm=slmaas workload=w mix=corun rep=0 (1/3)")
    assert "end   a0 completed 7 requests in 20.0 s (1/3 done, ETA 1m00s)" in said[1]
    assert said[-1].endswith(": phone b died")
    log = (tmp_path / "fleet.log").read_text()
    assert "INFO    fleet.run: start a0" in log and "WARNING fleet.run: end   b0 failed" in log


def test_no_lines_on_a_terminal_but_still_the_log():
    said: list[str] = []
    p = RunProgress([_trial("a0", "a", 1)], 0.0, say=said.append, lines=False)
    p.started(p_trial := _trial("a0", "a", 1))
    p.finished(p_trial, "completed")
    assert said == []
