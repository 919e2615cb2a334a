"""What a run is doing, as it does it: one line per trial start and end (with its outcome and
key figures) when the output is not a terminal, the live bar when it is, every line in the run's
log (``runs/<id>/fleet.log``), and an ETA from the plan's durations.

    progress = RunProgress(trials, drain_s=2.0, say=print, lines=not sys.stdout.isatty())
    progress.started(trial)
    progress.finished(trial, "completed", records=128, reason="")

The ETA: the phones run their trials in parallel, so it is the longest remaining plan of any
phone (workload durations plus drain), scaled by how long finished trials took against their
plan (deploys and resets cost time the plan does not know).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("fleet.run")


def _fmt_s(s: float) -> str:
    s = max(0, round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class RunProgress:
    def __init__(
        self,
        trials: list[Any],
        drain_s: float,
        say: Callable[[str], object] = print,
        lines: bool = True,
    ):
        self.drain_s = drain_s
        self.say = say
        self.lines = lines
        self.total = len(trials)
        self._left: dict[str, float] = {}  # phone -> planned seconds of its unfinished trials
        for t in trials:
            self._left[t.phone] = self._left.get(t.phone, 0.0) + self.planned(t)
        self._started: dict[str, float] = {}
        self._done = 0
        self._planned_done = 0.0
        self._actual_done = 0.0
        self._lock = threading.Lock()

    def planned(self, trial: Any) -> float:
        return float(trial.workload.duration_s) + self.drain_s

    def eta_s(self) -> float | None:
        with self._lock:
            if not self._planned_done:
                return None
            factor = self._actual_done / self._planned_done
            return max(self._left.values(), default=0.0) * factor

    def _describe(self, trial: Any) -> str:
        return (
            f"{trial.trial_id} phone={trial.phone} paradigm={trial.paradigm.label} "
            f"workload={trial.workload.name} mix={trial.mix} rep={trial.repetition}"
        )

    def started(self, trial: Any) -> None:
        with self._lock:
            self._started[trial.trial_id] = time.monotonic()
            n = self._done + len(self._started)
        text = f"start {self._describe(trial)} ({n}/{self.total})"
        log.info(text)
        if self.lines:
            self.say(f"{time.strftime('%H:%M:%S')} {text}")

    def finished(self, trial: Any, status: str, records: int = 0, reason: str = "") -> None:
        with self._lock:
            t0 = self._started.pop(trial.trial_id, time.monotonic())
            took = time.monotonic() - t0
            self._done += 1
            self._left[trial.phone] = max(
                0.0, self._left.get(trial.phone, 0.0) - self.planned(trial)
            )
            self._planned_done += self.planned(trial)
            self._actual_done += took
            done = self._done
        eta = self.eta_s()
        text = (
            f"end   {trial.trial_id} {status} {records} requests in {took:.1f} s "
            f"({done}/{self.total} done"
            + (f", ETA {_fmt_s(eta)}" if eta is not None and done < self.total else "")
            + ")"
            + (f": {reason[:300]}" if reason and status != "completed" else "")
        )
        (log.info if status == "completed" else log.warning)(text)
        if self.lines:
            self.say(f"{time.strftime('%H:%M:%S')} {text}")


def open_run_log(path: Any, verbose: bool = False) -> logging.Handler:
    """Send the ``fleet`` loggers' records to the run's log file (INFO, or DEBUG with -v)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    )
    root = logging.getLogger("fleet")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.addHandler(handler)
    return handler
