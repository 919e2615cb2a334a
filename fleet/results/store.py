"""The embedded results store: one SQLite file per run (``runs/<run-id>/results.sqlite``).

Append-only while a run is live: every batch of streamed records is committed as it arrives in
one transaction; a row SQLite refuses (a number out of range, a duplicate request id) is set
aside alone in ``rejected`` with the reason and the rest of the batch lands, so a crash or a bad
record loses at most what was in flight. Request rows are only ever inserted, never replaced.
Every trial state change is appended to ``trial_events`` (the ``trials`` row holds the latest).

A trial that is run again (``fleet run --resume``) gets a new ``attempt``: the rows of earlier
attempts stay in the ``*_all`` tables, marked superseded by the attempt number, and the views
``requests``, ``events``, ``samples`` and ``service_stats`` show each trial's current attempt only,
so every reader sees one consistent run.
Raw timestamps are kept (token times as JSON), so every summary can be recomputed from the store
alone; the derived columns (app delay, queue wait, TTFT, ITL, e2e, waiting) are the records' own
values, NULL where a request never got that far; ``waited_s`` is how long the app waited for it
(the censoring time of an unserved request). Each trial's apps (priority, SLO, arrival process)
and each repetition's trace (every request the apps were to send) are stored with the run, so
the analysis needs nothing but this file.

    store = ResultStore(run_dir / "results.sqlite")
    store.add_trial(...); store.start_trial(trial_id)
    store.add_events(trial_id, events); store.finish_trial(...)
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from fleet.records import (
    AgentDescription,
    AppWorkload,
    DeployResult,
    DeviceReading,
    PhoneEvent,
    RejectedEvent,
    RequestRecord,
    ResourceSample,
    ServiceStats,
    TraceRequest,
    TrialStatus,
    TrialSummary,
)

STATS_COLUMNS = tuple(f.name for f in fields(ServiceStats))
# 7: device readings, battery at trial start/end; 6: attempts, trial events, rejected rows;
# 5: KV used; 4: memory split; 3: promotions; 2: traces; 0/1: before
SCHEMA_VERSION = 8

# A trial's app mix (the ``mix`` column): one app alone, every app together, or the first k.
CORUN = "corun"


def solo_mix(app: str) -> str:
    return f"solo:{app}"


def count_mix(k: int) -> str:
    return f"apps:{k}"


SCHEMA = f"""
CREATE TABLE IF NOT EXISTS phones (
    name TEXT PRIMARY KEY, kind TEXT, address TEXT, agent_pid INTEGER, host TEXT,
    status TEXT, error TEXT, describe_json TEXT, cpus TEXT, shared_cores INTEGER
);
CREATE TABLE IF NOT EXISTS trials (
    trial_id TEXT PRIMARY KEY, phone TEXT, paradigm TEXT, workload TEXT, model TEXT,
    repetition INTEGER, mix TEXT, num_apps INTEGER, status TEXT, reason TEXT, shared_cores INTEGER,
    started_at REAL, ended_at REAL, deploy_json TEXT, summary_json TEXT, seq INTEGER,
    attempt INTEGER NOT NULL DEFAULT 0,
    battery_start_c REAL, battery_end_c REAL, cooldown_s REAL, dispatch_s REAL
);
CREATE TABLE IF NOT EXISTS trial_events (
    trial_id TEXT, attempt INTEGER, t REAL, status TEXT, reason TEXT
);
CREATE TABLE IF NOT EXISTS rejected (
    trial_id TEXT, attempt INTEGER, t REAL, kind TEXT, ident TEXT, reason TEXT
);
CREATE TABLE IF NOT EXISTS trace_requests (
    repetition INTEGER, workload TEXT, app TEXT, idx INTEGER, request_id TEXT, at_s REAL,
    prompt_tokens INTEGER, output_tokens INTEGER, session TEXT, turn INTEGER,
    PRIMARY KEY (repetition, workload, app, idx)
);
CREATE TABLE IF NOT EXISTS trial_apps (
    trial_id TEXT, app TEXT, foreground INTEGER, slo_ttft_s REAL, pattern TEXT,
    rate_per_s REAL, burst_size INTEGER, think_time_s REAL, prompt_tokens INTEGER,
    output_tokens INTEGER, multi_turn INTEGER, max_requests INTEGER,
    system_prompt_tokens INTEGER, model_json TEXT,
    PRIMARY KEY (trial_id, app)
);
CREATE TABLE IF NOT EXISTS requests_all (
    trial_id TEXT, attempt INTEGER, request_id TEXT, app TEXT, status TEXT, error TEXT,
    prompt_tokens INTEGER, output_tokens INTEGER, submit_ns INTEGER, scheduled_ns INTEGER,
    first_token_ns INTEGER, last_token_ns INTEGER, token_ns_json TEXT,
    queue_wait_s REAL, ttft_s REAL, itl_s REAL, e2e_s REAL, cold_start_s REAL, turn INTEGER,
    slices_json TEXT, context_switch_s REAL, context_switch_bytes INTEGER, context_restore TEXT,
    cached_prompt_tokens INTEGER, max_batch_size INTEGER, waiting_s REAL,
    sent_ns INTEGER, end_ns INTEGER, app_delay_s REAL, waited_s REAL,
    PRIMARY KEY (trial_id, attempt, request_id)
);
CREATE TABLE IF NOT EXISTS events_all (
    trial_id TEXT, attempt INTEGER, t_ns INTEGER, kind TEXT, app TEXT, detail TEXT, bytes INTEGER,
    duration_s REAL
);
CREATE TABLE IF NOT EXISTS samples_all (
    trial_id TEXT, attempt INTEGER, t_ns INTEGER, component TEXT, pid INTEGER, rss_bytes INTEGER,
    pss_bytes INTEGER, cpu_percent REAL, weights_bytes INTEGER, kv_bytes INTEGER,
    kv_used_bytes INTEGER
);
CREATE TABLE IF NOT EXISTS service_stats_all (
    trial_id TEXT, attempt INTEGER, {", ".join(STATS_COLUMNS)}
);
CREATE TABLE IF NOT EXISTS device_readings_all (
    trial_id TEXT, attempt INTEGER, t_ns INTEGER, kind TEXT, name TEXT, value REAL
);
CREATE INDEX IF NOT EXISTS samples_trial ON samples_all (trial_id, attempt, t_ns);
""" + "".join(
    f"""
CREATE VIEW IF NOT EXISTS {view} AS SELECT x.* FROM {view}_all x
    JOIN trials t ON x.trial_id = t.trial_id AND x.attempt = t.attempt;"""
    for view in ("requests", "events", "samples", "service_stats", "device_readings")
)

# Values SQLite can hold in an INTEGER column.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _request_row(trial_id: str, attempt: int, r: RequestRecord) -> tuple[Any, ...]:
    lat, s = r.latencies(), r.service
    return (
        trial_id,
        attempt,
        r.request_id,
        r.app,
        r.status.value,
        r.error,
        r.prompt_tokens,
        r.output_tokens,
        r.submit_ns,
        r.scheduled_ns,
        r.first_token_ns,
        r.last_token_ns,
        json.dumps(r.token_ns),
        lat.queue_wait_s,
        lat.ttft_s,
        lat.itl_s,
        lat.e2e_s,
        r.cold_start_s,
        r.turn,
        json.dumps([asdict(x) for x in s.slices]),
        s.context_switch_s,
        s.context_switch_bytes,
        s.context_restore,
        s.cached_prompt_tokens,
        s.max_batch_size,
        lat.waiting_s,
        r.sent_ns,
        r.end_ns,
        lat.app_delay_s,
        r.waited_s,
    )


def _app_row(trial_id: str, a: AppWorkload) -> tuple[Any, ...]:
    return (
        trial_id,
        a.name,
        int(a.foreground),
        a.slo_ttft_s,
        a.pattern.value,
        a.rate_per_s,
        a.burst_size,
        a.think_time_s,
        a.prompt_tokens,
        a.output_tokens,
        int(a.multi_turn),
        a.max_requests,
        a.system_prompt_tokens,
        json.dumps(asdict(a.model)) if a.model else None,
    )


class StoreError(Exception):
    """A results file this version cannot read (written by an older one)."""


class ResultStore:
    def __init__(self, path: Path, readonly: bool = False):
        """``readonly``: a reader's view (``fleet compare``): nothing is created or written."""
        self.path = Path(path)
        self._lock = threading.Lock()
        if readonly:
            self._db = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, check_same_thread=False
            )
        else:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        tables = self._db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
        if tables and version != SCHEMA_VERSION:
            self._db.close()
            raise StoreError(
                f"{self.path}: results schema {version}, this version reads {SCHEMA_VERSION} "
                "(written by another version of slm-fleet; analyse it with that version, or "
                "re-run the experiment)"
            )
        if not readonly:
            self._db.executescript(SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._attempt: dict[str, int] = {}  # trial -> its current attempt

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: committed whole, or rolled back whole and the error raised; the
        connection is never left inside a transaction."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _write(self, sql: str, row: tuple[Any, ...]) -> None:
        with self._transaction() as db:
            db.execute(sql, row)

    def upsert_phone(
        self,
        name: str,
        *,
        kind: str,
        address: str = "",
        agent_pid: int = 0,
        host: str = "",
        status: str,
        error: str = "",
        describe: AgentDescription | None = None,
        cpus: tuple[int, ...] = (),
        shared_cores: bool = False,
    ) -> None:
        """A phone as it came up (or did not); its trials are marked if it shares cores
        (``mark_shared_cores`` settles that once every phone is up)."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO phones VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    name,
                    kind,
                    address,
                    agent_pid,
                    host,
                    status,
                    error,
                    json.dumps(asdict(describe) if describe else {}),
                    ",".join(map(str, cpus)),
                    int(shared_cores),
                ),
            )
            db.execute("UPDATE trials SET shared_cores=? WHERE phone=?", (int(shared_cores), name))

    def mark_shared_cores(self, name: str, shared: bool) -> None:
        with self._transaction() as db:
            db.execute("UPDATE phones SET shared_cores=? WHERE name=?", (int(shared), name))
            db.execute("UPDATE trials SET shared_cores=? WHERE phone=?", (int(shared), name))

    def add_trial(
        self,
        trial_id: str,
        *,
        phone: str,
        paradigm: str,
        workload: str,
        model: str,
        repetition: int,
        shared_cores: bool,
        mix: str = CORUN,
        apps: tuple[AppWorkload, ...] = (),
        num_apps: int = 0,
        seq: int = 0,
        trace: tuple[TraceRequest, ...] = (),
    ) -> None:
        """A planned trial, its apps and its requests (stored once per repetition)."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO trials (trial_id, phone, paradigm, workload, model, "
                "repetition, mix, num_apps, status, reason, shared_cores, seq) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    trial_id,
                    phone,
                    paradigm,
                    workload,
                    model,
                    repetition,
                    mix,
                    num_apps or len(apps),
                    TrialStatus.PENDING.value,
                    "",
                    int(shared_cores),
                    seq,
                ),
            )
            db.execute(
                "INSERT INTO trial_events VALUES (?,?,?,?,?)",
                (trial_id, 0, time.time(), TrialStatus.PENDING.value, "planned"),
            )
            db.executemany(
                "INSERT OR IGNORE INTO trace_requests VALUES (?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        repetition,
                        workload,
                        t.app,
                        t.index,
                        t.request_id,
                        t.at_s,
                        t.prompt_tokens,
                        t.output_tokens,
                        t.session,
                        t.turn,
                    )
                    for t in trace
                ],
            )
            db.executemany(
                f"INSERT INTO trial_apps VALUES ({','.join('?' * 14)})",
                [_app_row(trial_id, a) for a in apps],
            )

    def _set_status(
        self, db: sqlite3.Connection, trial_id: str, status: TrialStatus, reason: str
    ) -> int:
        """The audited update: the change appended to trial_events, the row set to it."""
        attempt = self.attempt(trial_id, db)
        db.execute(
            "INSERT INTO trial_events VALUES (?,?,?,?,?)",
            (trial_id, attempt, time.time(), status.value, reason),
        )
        db.execute(
            "UPDATE trials SET status=?, reason=? WHERE trial_id=?",
            (status.value, reason, trial_id),
        )
        return attempt

    def attempt(self, trial_id: str, db: sqlite3.Connection | None = None) -> int:
        if trial_id not in self._attempt:
            row = (
                (db or self._db)
                .execute("SELECT attempt FROM trials WHERE trial_id=?", (trial_id,))
                .fetchone()
            )
            if row is None:
                raise KeyError(f"no trial {trial_id!r} in {self.path}")
            self._attempt[trial_id] = int(row[0])
        return self._attempt[trial_id]

    def start_trial(self, trial_id: str) -> int:
        """Mark the trial running; a trial that ran before (an interrupted run resumed) starts
        a new attempt, which supersedes the rows of the earlier ones. Returns the attempt."""
        with self._transaction() as db:
            started, attempt = db.execute(
                "SELECT started_at, attempt FROM trials WHERE trial_id=?", (trial_id,)
            ).fetchone()
            if started is not None:
                attempt += 1
                db.execute(
                    "UPDATE trials SET attempt=?, deploy_json=NULL, summary_json=NULL, "
                    "ended_at=NULL, battery_start_c=NULL, battery_end_c=NULL, cooldown_s=NULL "
                    "WHERE trial_id=?",
                    (attempt, trial_id),
                )
            self._attempt[trial_id] = attempt
            db.execute("UPDATE trials SET started_at=? WHERE trial_id=?", (time.time(), trial_id))
            self._set_status(db, trial_id, TrialStatus.RUNNING, f"attempt {attempt}")
        return attempt

    def set_deploy(self, trial_id: str, deploy: DeployResult) -> None:
        self._write(
            "UPDATE trials SET deploy_json=? WHERE trial_id=?",
            (json.dumps(asdict(deploy)), trial_id),
        )

    def note_thermal(self, trial_id: str, when: str, celsius: float, cooldown_s: float) -> None:
        """A real phone's battery temperature at the trial's start (after ``cooldown_s`` of
        waiting for it to cool) or end."""
        with self._transaction() as db:
            self._note_thermal(db, trial_id, when, celsius, cooldown_s)

    def _note_thermal(
        self, db: sqlite3.Connection, trial_id: str, when: str, celsius: float, cooldown_s: float
    ) -> None:
        column = {"start": "battery_start_c", "end": "battery_end_c"}[when]
        db.execute(f"UPDATE trials SET {column}=? WHERE trial_id=?", (celsius, trial_id))
        if when == "start":
            db.execute("UPDATE trials SET cooldown_s=? WHERE trial_id=?", (cooldown_s, trial_id))

    def note_dispatch(self, trial_id: str, seconds: float) -> None:
        """The coordinator's own time on the trial: from deciding to run it to its Deploy
        being sent, and from its summary's arrival to the trial stored (the phone's Reset
        excluded)."""
        with self._transaction() as db:
            db.execute("UPDATE trials SET dispatch_s=? WHERE trial_id=?", (seconds, trial_id))

    def finish_trial(
        self,
        trial_id: str,
        status: TrialStatus,
        reason: str = "",
        summary: TrialSummary | None = None,
        events: Iterable[object] = (),
        thermal: tuple[str, float, float] | None = None,
    ) -> int:
        """The trial's end, in one transaction with the last events that came with its summary
        and, for a real phone, its battery temperature at the end; returns the records stored."""
        rows = self._event_rows(trial_id, events) if events else []
        with self._transaction() as db:
            records = self._insert_events(db, trial_id, rows)[0]
            if thermal is not None:
                self._note_thermal(db, trial_id, *thermal)
            self._set_status(db, trial_id, status, reason)
            db.execute(
                "UPDATE trials SET ended_at=?, summary_json=? WHERE trial_id=?",
                (
                    time.time(),
                    json.dumps(asdict(summary), default=str) if summary else None,
                    trial_id,
                ),
            )
        return records

    def mark_trials(self, trial_ids: Iterable[str], status: TrialStatus, reason: str) -> None:
        """Set many trials' status at once (a stopped run's never-started or cut-short ones)."""
        with self._transaction() as db:
            for trial_id in trial_ids:
                self._set_status(db, trial_id, status, reason)

    def reject(self, trial_id: str, kind: str, ident: str, reason: str) -> None:
        """Keep note of something that could not be stored (a record the wire refused)."""
        self._write(
            "INSERT INTO rejected VALUES (?,?,?,?,?,?)",
            (trial_id, self.attempt(trial_id), time.time(), kind, ident, reason[:500]),
        )

    def add_events(self, trial_id: str, events: Iterable[object]) -> tuple[int, int]:
        """Commit a batch of streamed events; returns (records, samples) stored. A row SQLite
        refuses is set aside in ``rejected`` with the reason; the rest of the batch lands."""
        rows = self._event_rows(trial_id, events)
        with self._transaction() as db:
            return self._insert_events(db, trial_id, rows)

    def _event_rows(
        self, trial_id: str, events: Iterable[object]
    ) -> list[tuple[str, str, str, tuple[Any, ...]]]:
        """Each event as (kind, ident, INSERT statement, row); no statement: refused already,
        the row holds the reason."""
        attempt = self.attempt(trial_id)
        rows: list[tuple[str, str, str, tuple[Any, ...]]] = []  # (kind, ident, sql, row)
        for e in events:
            if isinstance(e, RequestRecord):
                rows.append(
                    ("record", e.request_id, _INSERT_REQUEST, _request_row(trial_id, attempt, e))
                )
            elif isinstance(e, PhoneEvent):
                rows.append(
                    (
                        "event",
                        e.kind,
                        _INSERT_EVENT,
                        (trial_id, attempt, e.t_ns, e.kind, e.app, e.detail, e.bytes, e.duration_s),
                    )
                )
            elif isinstance(e, ResourceSample):
                rows.append(
                    (
                        "sample",
                        f"{e.component}@{e.t_ns}",
                        _INSERT_SAMPLE,
                        (
                            trial_id,
                            attempt,
                            e.t_ns,
                            e.component,
                            e.pid,
                            e.rss_bytes,
                            e.pss_bytes,
                            e.cpu_percent,
                            e.weights_bytes,
                            e.kv_bytes,
                            e.kv_used_bytes,
                        ),
                    )
                )
            elif isinstance(e, ServiceStats):
                rows.append(
                    (
                        "stats",
                        str(e.t_ns),
                        _INSERT_STATS,
                        (trial_id, attempt, *(getattr(e, c) for c in STATS_COLUMNS)),
                    )
                )
            elif isinstance(e, DeviceReading):
                rows.append(
                    (
                        "device",
                        f"{e.kind}.{e.name}@{e.t_ns}",
                        _INSERT_DEVICE,
                        (trial_id, attempt, e.t_ns, e.kind, e.name, e.value),
                    )
                )
            elif isinstance(e, RejectedEvent):
                rows.append((e.kind, e.ident, "", (e.reason,)))
            else:
                rows.append(("unknown", type(e).__name__, "", ("not a record the store knows",)))
        return rows

    def _insert_events(
        self, db: sqlite3.Connection, trial_id: str, rows: list[tuple[str, str, str, tuple]]
    ) -> tuple[int, int]:
        """Insert event rows inside the caller's transaction, each under a savepoint: a row
        SQLite refuses goes to ``rejected``. Returns (records, samples) stored."""
        attempt = self.attempt(trial_id, db)
        stored: dict[str, int] = {}
        for kind, ident, sql, row in rows:
            reason = str(row[0]) if not sql else _out_of_range(row)
            if not reason:
                db.execute("SAVEPOINT row")
                try:
                    db.execute(sql, row)
                    db.execute("RELEASE row")
                    stored[kind] = stored.get(kind, 0) + 1
                    continue
                except (sqlite3.Error, OverflowError, ValueError, TypeError) as exc:
                    db.execute("ROLLBACK TO row")
                    db.execute("RELEASE row")
                    reason = f"{type(exc).__name__}: {exc}"
            db.execute(
                "INSERT INTO rejected VALUES (?,?,?,?,?,?)",
                (trial_id, attempt, time.time(), kind, ident, reason[:500]),
            )
        return stored.get("record", 0), stored.get("sample", 0)

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            self._db.row_factory = sqlite3.Row
            try:
                return self._db.execute(sql, args).fetchall()
            finally:
                self._db.row_factory = None


_INSERT_REQUEST = f"INSERT INTO requests_all VALUES ({','.join('?' * 30)})"
_INSERT_EVENT = "INSERT INTO events_all VALUES (?,?,?,?,?,?,?,?)"
_INSERT_SAMPLE = "INSERT INTO samples_all VALUES (?,?,?,?,?,?,?,?,?,?,?)"
_INSERT_DEVICE = "INSERT INTO device_readings_all VALUES (?,?,?,?,?,?)"
_INSERT_STATS = f"INSERT INTO service_stats_all VALUES ({','.join('?' * (2 + len(STATS_COLUMNS)))})"


def _out_of_range(row: tuple[Any, ...]) -> str:
    """Why a row cannot be stored as it is ("" when it can): an integer SQLite cannot hold."""
    for i, v in enumerate(row):
        if isinstance(v, int) and not isinstance(v, bool) and not INT64_MIN <= v <= INT64_MAX:
            return f"column {i}: integer {v} does not fit 64 bits"
    return ""
