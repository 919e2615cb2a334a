"""Dispatch: runs the planned trials on their phones' host actors and stores what streams back.

One thread per phone (each phone has cores of its own), its trials in the plan's order with an
optional cooldown between them; each trial a Ray streaming generator of event batches, each batch
committed as it arrives. Trial starts are paced fleet-wide (``start_rate_per_s``): a thousand
phones start over seconds, not in one burst that the store and the host actors would queue, and
their trials end as spread out. A trial's Ray call is made as soon as its start slot is given,
with the slot's time: its host actor deploys it at that time, so the call's trip to the host
(two to five milliseconds of Ray on a 2-core machine) overlaps the wait for the slot instead of
delaying the Deploy. A phone that never came up, an agent fault or a dead host actor
fails that trial with the reason and the records already stored stay; the other trials go on.

A stop (``stop.set()``, from the coordinator's signal handler) starts no further trial, asks the
agents running one to Stop, and lets them end: a trial cut short is marked ``interrupted`` (its
records kept), one never started stays ``pending`` for the coordinator to mark ``not_run``.

    statuses = Dispatcher(store, observer, hosts, phone_errors, sample_interval_s).run(domains)
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from fleet.coordinator.plan import Trial
from fleet.observe.run_observer import RunObserver
from fleet.records import TrialStatus
from fleet.results.store import ResultStore

log = logging.getLogger("fleet.run")


class StartPacer:
    """Admits trial starts at most ``rate_per_s`` a second, in the order asked, from any
    thread: each start gets the next free slot."""

    def __init__(self, rate_per_s: float):
        self.interval_s = 1.0 / rate_per_s
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """This start's slot (``time.monotonic()`` seconds): now, or the next free one."""
        with self._lock:
            slot = max(time.monotonic(), self._next)
            self._next = slot + self.interval_s
        return slot

    @staticmethod
    def wait_until(slot: float, stop: threading.Event) -> bool:
        """Wait for ``slot``; False when stopped first."""
        left = slot - time.monotonic()
        return not stop.wait(left) if left > 0 else not stop.is_set()

    def wait(self, stop: threading.Event) -> bool:
        """Reserve a slot and wait for it; False when stopped first."""
        return self.wait_until(self.reserve(), stop)


def _cancel(stream: Any) -> None:
    """Cancel a trial's host call (a Ray ObjectRefGenerator); a finished one is left as it is.
    The host's coroutine ends: undeployed if it was waiting for its start, else its phone is
    reset."""
    import ray

    try:
        ray.cancel(stream)
    except Exception:  # not a Ray call (None, an exception), or already gone
        pass


def reason_of(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:500]


class Dispatcher:
    def __init__(
        self,
        store: ResultStore,
        observer: RunObserver,
        hosts: dict[str, Any],
        phone_errors: dict[str, str],
        sample_interval_s: float,
        progress: Any = None,
        *,
        cooldown_s: float = 0.0,
        start_rate_per_s: float = 50.0,
        drain_s: float = 30.0,
        stop: threading.Event | None = None,
        trial_log: Any = None,
        clock_offsets: dict[str, float] | None = None,
    ):
        self.store = store
        self.observer = observer
        self.hosts = hosts  # phone -> its host's PhoneHost actor handle
        self.phone_errors = phone_errors  # phone -> why it did not come up
        self.sample_interval_s = sample_interval_s
        self.progress = progress  # a rich Progress, or None
        self.cooldown_s = cooldown_s  # idle pause before each of a phone's trials but the first
        self.pacer = StartPacer(start_rate_per_s)
        self.drain_s = drain_s
        self.stop = stop or threading.Event()
        self.stop_reason = "the run was stopped"
        self.trial_log = trial_log  # a progress.RunProgress: lines and the run log, or None
        # phone -> its host's wall clock less this one's (host_clock): a start slot is sent in
        # the host's time, and the host's times come back to this one's
        self.clock_offsets = clock_offsets or {}
        self._busy: set[str] = set()  # phones that have begun trials (a stop asks each to Stop)
        self._busy_lock = threading.Lock()

    def run(self, domains: dict[str, list[Trial]]) -> dict[str, str]:
        """Run every phone's trials, phones in parallel; returns trial_id -> status. A stop's
        asks to the phones' hosts have been answered (or timed out) by the time it returns."""
        statuses: dict[str, str] = {}
        finished = threading.Event()
        stopper = threading.Thread(
            target=self._stop_when_asked, args=(finished,), daemon=True, name="stopper"
        )
        stopper.start()
        threads = [
            threading.Thread(
                target=self._run_domain, args=(d, ts, statuses), name=f"domain-{d}", daemon=True
            )
            for d, ts in domains.items()
        ]
        for th in threads:
            th.start()
        try:
            for th in threads:
                while th.is_alive():  # a timed join: a second signal can interrupt the wait
                    th.join(timeout=0.5)
        finally:
            finished.set()
        # the domains can end first (a stop wakes their slot waits at once): the asks of a stop
        # must still reach the hosts before the run moves on (and, say, shuts Ray down)
        while stopper.is_alive():
            stopper.join(timeout=0.5)
        return statuses

    def _run_domain(self, domain: str, trials: list[Trial], statuses: dict[str, str]) -> None:
        task = self.progress.add_task(domain, total=len(trials)) if self.progress else None
        for i, trial in enumerate(trials):
            if i and self.cooldown_s:
                self.stop.wait(self.cooldown_s)
            with self._busy_lock:  # before the check: a stop after it sees this phone
                self._busy.add(trial.phone)
            if self.stop.is_set():
                break  # the rest stay pending: the coordinator marks them not_run
            slot = self.pacer.reserve()
            start_at = time.time() + max(0.0, slot - time.monotonic())
            stream = self._submit(trial, start_at)
            if not self.pacer.wait_until(slot, self.stop):
                break  # its host was asked to stop this phone too: the trial never deploys
            self._advance(task, trial, 0)
            try:
                statuses[trial.trial_id] = self.run_trial(trial, task, stream, start_at)
            except Exception as exc:  # a bug or a store error fails this trial, not the domain
                _cancel(stream)  # called ahead: it must not run on unobserved
                reason = f"coordinator error: {reason_of(exc)}"
                self.store.finish_trial(trial.trial_id, TrialStatus.FAILED, reason)
                self.observer.metrics.trial_state("running", "failed")
                statuses[trial.trial_id] = TrialStatus.FAILED.value
                if self.trial_log is not None:
                    self.trial_log.finished(trial, TrialStatus.FAILED.value, 0, reason)
            if task is not None:
                self.progress.advance(task)

    def _submit(self, trial: Trial, start_at: float) -> Any:
        """The trial's Ray call to its phone's host, to deploy at ``start_at`` (wall clock):
        its stream of items, the exception that made the call fail, or None for a phone that
        never came up."""
        if trial.phone in self.phone_errors:
            return None
        try:
            return self.hosts[trial.phone].run_trial.remote(
                trial.phone,
                trial.deploy_spec(),
                trial.workload_run(self.sample_interval_s, self.drain_s),
                start_at + self.clock_offsets.get(trial.phone, 0.0),
            )
        except Exception as exc:  # run_trial stores it as the trial's failure
            return exc

    def run_trial(
        self, trial: Trial, task: Any = None, stream: Any = None, start_at: float = 0.0
    ) -> str:
        """Run one trial to its end and store it; ``stream``: its call made ahead by
        ``_submit`` for ``start_at`` (else the call is made now)."""
        import ray

        if stream is None:
            start_at = time.time()
            stream = self._submit(trial, start_at)
        metrics = self.observer.metrics
        metrics.trial_state("pending", "running")
        self.store.start_trial(trial.trial_id)
        if self.trial_log is not None:
            self.trial_log.started(trial)
        if trial.phone in self.phone_errors:
            self.store.finish_trial(
                trial.trial_id, TrialStatus.FAILED, self.phone_errors[trial.phone]
            )
            metrics.trial_state("running", "failed")
            if self.trial_log is not None:
                self.trial_log.finished(trial, "failed", 0, self.phone_errors[trial.phone])
            return TrialStatus.FAILED.value
        n_records = 0
        status, reason = TrialStatus.FAILED, "no result"
        stored = False
        try:
            if isinstance(stream, Exception):
                raise stream
            for ref in stream:  # to its end: the host resets the phone after the last item
                kind, payload = ray.get(ref)
                if kind == "deployed":
                    self.store.set_deploy(trial.trial_id, payload)
                elif kind == "events":
                    got = self.store.add_events(trial.trial_id, payload)[0]
                    n_records += got
                    metrics.records_stored(trial.phone, got)
                    self._advance(task, trial, n_records)
                elif kind == "thermal":
                    self.store.note_thermal(trial.trial_id, *payload)
                elif kind == "end":  # the trial's last item: stored at once, in one go
                    status, reason, got = self._end(trial, payload, start_at)
                    n_records += got
                    stored = True
                    self._advance(task, trial, n_records)
                elif kind == "failed":  # it never deployed
                    status, reason = self._finish(trial, TrialStatus.FAILED, payload)
                    stored = True
        except Exception as exc:  # the host actor itself died: records stored so far stay
            if stored:
                log.warning("trial %s: its phone host failed after it: %s", trial.trial_id, exc)
            else:
                status, reason = TrialStatus.FAILED, f"phone host died: {reason_of(exc)}"
        if not stored:
            status, reason = self._finish(trial, status, reason)
        if self.trial_log is not None:
            self.trial_log.finished(trial, status.value, n_records, reason)
        return status.value

    def _end(self, trial: Trial, end: Any, start_at: float) -> tuple[TrialStatus, str, int]:
        """Store a trial's end (a phone_host.TrialEnd): its last events, its summary or why it
        failed, in one transaction; then, for a trial that ran to its summary, the coordinator's
        own time on it (``dispatch_s``): from its start time (its paced slot, or when it was
        decided on, whichever is later) until its Deploy was sent (less the time an Android
        phone was waited for, lost or cooling down), and from its summary's arrival at the host
        until it is stored. Returns the status and reason stored and the
        records stored with them."""
        summary = end.summary
        if summary is not None:
            status, reason = summary.status, summary.reason
        else:
            status, reason = TrialStatus.FAILED, end.failed
        status, reason = self._interrupted(status, reason)
        got = self.store.finish_trial(
            trial.trial_id, status, reason, summary, events=end.events, thermal=end.thermal
        )
        try:  # the trial is stored: a failure from here on must not store it again as failed
            self.observer.metrics.records_stored(trial.phone, got)
            if end.summary_got:
                offset = self.clock_offsets.get(trial.phone, 0.0)  # the host's times, here
                to_deploy = end.deploy_sent - offset - start_at - end.phone_wait_s
                to_store = time.time() - (end.summary_got - offset)
                log.debug(
                    "trial %s: dispatch %.1f ms to its Deploy, %.1f ms from its summary to stored",
                    trial.trial_id,
                    to_deploy * 1e3,
                    to_store * 1e3,
                )
                self.store.note_dispatch(trial.trial_id, to_deploy + to_store)
                self.observer.metrics.trial_dispatched(to_deploy + to_store)
            self.observer.metrics.trial_state("running", status.value)
        except Exception as exc:
            log.warning("trial %s: stored, but noting its dispatch failed: %s", trial.trial_id, exc)
        return status, reason, got

    def _finish(self, trial: Trial, status: TrialStatus, reason: str) -> tuple[TrialStatus, str]:
        """Store the end of a trial that has no TrialEnd (it never deployed, or its host died)."""
        status, reason = self._interrupted(status, reason)
        self.store.finish_trial(trial.trial_id, status, reason)
        self.observer.metrics.trial_state("running", status.value)
        return status, reason

    def _interrupted(self, status: TrialStatus, reason: str) -> tuple[TrialStatus, str]:
        """A trial that did not complete while the run is stopping was cut short by the stop."""
        if self.stop.is_set() and status is not TrialStatus.COMPLETED:
            return TrialStatus.INTERRUPTED, f"{self.stop_reason} ({reason})"
        return status, reason

    def _stop_when_asked(self, finished: threading.Event) -> None:
        """On a stop, ask the agent of every phone running a trial to Stop (each then ends its
        workload, its stream ends with what was measured, and its trial is interrupted); one
        watcher for the whole fleet, the asks sent together."""
        import ray

        while not self.stop.wait(0.2):
            if finished.is_set():
                return
        with self._busy_lock:
            phones = sorted(self._busy)
        asks = {p: self.hosts[p].stop_trial.remote(p) for p in phones if p in self.hosts}
        for ref in asks.values():
            try:
                ray.get(ref, timeout=30)
            except Exception:
                pass  # a dead agent or host has stopped already

    def _advance(self, task: Any, trial: Trial, n_records: int) -> None:
        if self.progress is not None and task is not None:
            self.progress.update(task, description=f"{trial.trial_id}: {n_records} requests")
