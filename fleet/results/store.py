"""The embedded results store: one SQLite file per run (``runs/<run-id>/results.sqlite``).

Append-only while a run is live: every batch of streamed records is committed as it arrives, so a
crash loses at most what was in flight. Raw timestamps are kept (token times as JSON), so every
summary can be recomputed from the store alone.

    store = ResultStore(run_dir / "results.sqlite")
    store.start_trial(...); store.add_events(trial_id, events); store.finish_trial(...)
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

from fleet.records import PhoneEvent, RequestRecord, ResourceSample, TrialStatus, TrialSummary

SCHEMA = """
CREATE TABLE IF NOT EXISTS phones (
    name TEXT PRIMARY KEY, kind TEXT, address TEXT, agent_pid INTEGER, host TEXT,
    status TEXT, error TEXT, describe_json TEXT
);
CREATE TABLE IF NOT EXISTS trials (
    trial_id TEXT PRIMARY KEY, phone TEXT, paradigm TEXT, workload TEXT, model TEXT,
    repetition INTEGER, mix TEXT, num_apps INTEGER, status TEXT, reason TEXT, shared_cores INTEGER,
    started_at REAL, ended_at REAL, deploy_json TEXT, summary_json TEXT
);
CREATE TABLE IF NOT EXISTS requests (
    trial_id TEXT, request_id TEXT, app TEXT, status TEXT, error TEXT,
    prompt_tokens INTEGER, output_tokens INTEGER, submit_ns INTEGER, scheduled_ns INTEGER,
    first_token_ns INTEGER, last_token_ns INTEGER, token_ns_json TEXT,
    queue_wait_s REAL, ttft_s REAL, itl_s REAL, e2e_s REAL, cold_start_s REAL, turn INTEGER,
    slices_json TEXT, context_switch_s REAL, context_switch_bytes INTEGER, context_restore TEXT,
    cached_prompt_tokens INTEGER, max_batch_size INTEGER, waiting_s REAL,
    PRIMARY KEY (trial_id, request_id)
);
CREATE TABLE IF NOT EXISTS events (
    trial_id TEXT, t_ns INTEGER, kind TEXT, app TEXT, detail TEXT, bytes INTEGER,
    duration_s REAL
);
CREATE TABLE IF NOT EXISTS samples (
    trial_id TEXT, t_ns INTEGER, component TEXT, pid INTEGER, rss_bytes INTEGER,
    pss_bytes INTEGER, cpu_percent REAL
);
CREATE INDEX IF NOT EXISTS samples_trial ON samples (trial_id, t_ns);
"""


def _served_metrics(r: RequestRecord) -> tuple:
    """(queue wait, TTFT, ITL, e2e) in seconds; NULL where the request never got that far."""
    if not r.token_ns:
        return (r.queue_wait_s if r.scheduled_ns else None), None, None, None
    return r.queue_wait_s, r.ttft_s, (r.itl_s if len(r.token_ns) > 1 else None), r.e2e_s


class ResultStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, rows: Iterable[tuple] | tuple = ()) -> None:
        with self._lock:
            if isinstance(rows, tuple):
                self._db.execute(sql, rows)
            else:
                self._db.execute("BEGIN")
                self._db.executemany(sql, rows)
                self._db.execute("COMMIT")

    def upsert_phone(self, name: str, *, kind: str, address: str = "", agent_pid: int = 0,
                     host: str = "", status: str, error: str = "", describe: dict | None = None):
        self._write("INSERT OR REPLACE INTO phones VALUES (?,?,?,?,?,?,?,?)",
                    (name, kind, address, agent_pid, host, status, error,
                     json.dumps(describe or {})))

    def add_trial(self, trial_id: str, *, phone: str, paradigm: str, workload: str, model: str,
                  repetition: int, shared_cores: bool, mix: str = "corun",
                  num_apps: int = 0) -> None:
        self._write("INSERT OR IGNORE INTO trials (trial_id, phone, paradigm, workload, model, "
                    "repetition, mix, num_apps, status, reason, shared_cores) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (trial_id, phone, paradigm, workload, model, repetition, mix, num_apps,
                     TrialStatus.PENDING.value, "", int(shared_cores)))

    def start_trial(self, trial_id: str) -> None:
        self._write("UPDATE trials SET status=?, started_at=? WHERE trial_id=?",
                    (TrialStatus.RUNNING.value, time.time(), trial_id))

    def set_deploy(self, trial_id: str, deploy: dict) -> None:
        self._write("UPDATE trials SET deploy_json=? WHERE trial_id=?",
                    (json.dumps(deploy), trial_id))

    def finish_trial(self, trial_id: str, status: TrialStatus, reason: str = "",
                     summary: TrialSummary | None = None) -> None:
        self._write("UPDATE trials SET status=?, reason=?, ended_at=?, summary_json=? "
                    "WHERE trial_id=?",
                    (status.value, reason, time.time(),
                     json.dumps(asdict(summary), default=str) if summary else None, trial_id))

    def add_events(self, trial_id: str, events: Iterable) -> tuple[int, int]:
        """Commit a batch of records and samples; returns (records, samples) written."""
        recs, samples, phone_events = [], [], []
        for e in events:
            if isinstance(e, RequestRecord):
                recs.append((trial_id, e.request_id, e.app, e.status.value, e.error,
                             e.prompt_tokens, e.output_tokens, e.submit_ns, e.scheduled_ns,
                             e.first_token_ns, e.last_token_ns, json.dumps(e.token_ns),
                             *_served_metrics(e), e.cold_start_s, e.turn,
                             json.dumps([asdict(s) for s in e.slices]), e.context_switch_s,
                             e.context_switch_bytes, e.context_restore, e.cached_prompt_tokens,
                             e.max_batch_size, e.waiting_s if e.scheduled_ns else None))
            elif isinstance(e, PhoneEvent):
                phone_events.append((trial_id, e.t_ns, e.kind, e.app, e.detail, e.bytes,
                                     e.duration_s))
            elif isinstance(e, ResourceSample):
                samples.append((trial_id, e.t_ns, e.component, e.pid, e.rss_bytes, e.pss_bytes,
                                e.cpu_percent))
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO requests VALUES "
                                 f"({','.join('?' * 25)})", recs)
            self._db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?)", phone_events)
            self._db.executemany("INSERT INTO samples VALUES (?,?,?,?,?,?,?)", samples)
            self._db.execute("COMMIT")
        return len(recs), len(samples)

    def query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            self._db.row_factory = sqlite3.Row
            try:
                return self._db.execute(sql, args).fetchall()
            finally:
                self._db.row_factory = None
