"""The fault campaign: random kill -9 of app, model, service and agent processes across short
tiny-model trials, and SIGINT, SIGTERM and kill -9 of the coordinator followed by ``--resume``.

Bounded in time, seeded. The assertion is the invariant: every record that reached the
coordinator is in the store (and, where the agent lived to count them, every record it streamed),
every trial ends completed, failed with a reason, or interrupted; a resumed run completes; no
process and no private directory is left behind.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml
from blocking import blocking_iter

from fleet.coordinator.config import VirtualPhone
from fleet.coordinator.phone_host import PhoneHost
from fleet.records import (
    AppWorkload,
    ArrivalPattern,
    DeploySpec,
    ModelSpec,
    Paradigm,
    RequestRecord,
    TraceRequest,
    TrialStatus,
    TrialSummary,
    WorkloadRun,
)
from fleet.results.store import ResultStore

pytestmark = pytest.mark.slow

KILLS = 100
SEED = 20261201


@pytest.fixture
def runtime_root():
    """A short private root for the agents' directories: unix socket paths must stay under
    108 bytes, which a pytest tmp_path would break."""
    path = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _role(p: psutil.Process) -> str:
    cmd = " ".join(p.cmdline())
    if "agents.modelservice.slm_server" in cmd:
        return (
            "model"
            if p.parent() and "multiprocessing" in " ".join(p.parent().cmdline())
            else "service"
        )
    if "multiprocessing.spawn" in cmd:  # not the resource tracker, which is no app
        return "app"
    return ""


def _targets(agent_pid: int) -> dict[str, list[psutil.Process]]:
    out: dict[str, list[psutil.Process]] = {}
    try:
        for p in psutil.Process(agent_pid).children(recursive=True):
            try:
                role = _role(p)
            except psutil.Error:
                continue
            if role:
                out.setdefault(role, []).append(p)
    except psutil.Error:
        pass
    return out


APPS = (
    AppWorkload("kb", ArrivalPattern.POISSON, rate_per_s=6.0, prompt_tokens=16, output_tokens=4,
                foreground=True, slo_ttft_s=0.2),
    AppWorkload("chat", ArrivalPattern.CLOSED_LOOP, prompt_tokens=24, output_tokens=6,
                multi_turn=True),
)  # fmt: skip


def _trace(rng: random.Random, duration_s: float) -> tuple[TraceRequest, ...]:
    t, out = 0.0, []
    while True:
        t += rng.expovariate(6.0)
        if t >= duration_s:
            break
        out.append(TraceRequest("kb", len(out), t, 16, 4))
    return tuple(out) + tuple(TraceRequest("chat", i, None, 24, 6, "chat:0", i) for i in range(8))


def _kill(agent_pid: int, rng: random.Random, kills: dict[str, int], n: int = 1) -> bool:
    """kill -9 of ``n`` of the agent's app, model and service processes at once, chosen at
    random (a role first, then a process of it), as a low-memory killer's burst would."""
    targets = _targets(agent_pid)
    chosen: list[tuple[str, psutil.Process]] = []
    while targets and len(chosen) < n:
        role = rng.choice(sorted(targets))
        proc = targets[role].pop(rng.randrange(len(targets[role])))
        if not targets[role]:
            del targets[role]
        chosen.append((role, proc))
    for role, proc in chosen:
        try:
            proc.kill()
        except psutil.Error:
            continue
        kills[role] = kills.get(role, 0) + 1
    return bool(chosen)


def _killer(plan: str, agent_pid: int, rng: random.Random, kills: dict[str, int],
            measuring: threading.Event, done: threading.Event) -> None:  # fmt: skip
    """One trial's faults. ``deploy``: one or two kills while the models load; ``run``: one to
    three at once while requests are served; ``agent``: kill -9 of the agent itself while it
    serves; ``none``: a control trial, which must complete."""
    if plan == "none":
        return
    if plan == "deploy":
        until = time.monotonic() + rng.uniform(0.3, 3.0)
        while not done.wait(0.05):
            if time.monotonic() >= until and _kill(agent_pid, rng, kills, rng.choice([1, 2])):
                return
        return
    if not measuring.wait(60) or done.wait(rng.uniform(0.0, 1.5)):
        return
    if plan == "agent":
        os.kill(agent_pid, signal.SIGKILL)
        kills["agent"] = kills.get("agent", 0) + 1
        return
    _kill(agent_pid, rng, kills, rng.choice([1, 2, 3, 3]))


def _our_processes(runtime_root: Path) -> list[psutil.Process]:
    """Every process, whoever its parent now is, that belongs to an agent under runtime_root: an
    orphan is re-parented to init and would escape a children() check."""
    mine = []
    for p in psutil.process_iter(["cmdline", "environ"]):
        try:
            text = (
                " ".join(p.info["cmdline"] or [])
                + " "
                + (p.info["environ"] or {}).get("TMPDIR", "")
            )
        except psutil.Error:
            continue
        if str(runtime_root) in text and p.pid != os.getpid():
            mine.append(p)
    return mine


@pytest.mark.long
def test_random_kills_on_the_phone_lose_no_record(tmp_path, monkeypatch, runtime_root):
    monkeypatch.setenv("SLM_FLEET_RUNTIME_ROOT", str(runtime_root))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    host = PhoneHost()
    phone = VirtualPhone(
        name="victim", memory_budget_mb=2048, cpu_threads=min(2, os.cpu_count() or 1)
    )
    host.start_virtual_phone(phone)
    store = ResultStore(tmp_path / "results.sqlite")
    kills: dict[str, int] = {}
    ends: dict[str, int] = {}
    plans: dict[str, int] = {}
    checked = 0
    paradigms = [Paradigm.PER_APP, Paradigm.SLMAAS, Paradigm.AGENT_OS]
    deadline = time.monotonic() + 600  # 100 kills take 60 trials, about 480 s on 2 cores
    trial = 0
    try:
        while sum(kills.values()) < KILLS and time.monotonic() < deadline:
            rng = random.Random(SEED * 1000 + trial)  # per trial: the threads cannot reorder it
            paradigm = paradigms[trial % 3]
            tid = f"t{trial}"
            store.add_trial(tid, phone="victim", paradigm=paradigm.value, workload="w",
                            model="tiny", repetition=trial, shared_cores=False)  # fmt: skip
            store.start_trial(tid)
            spec = DeploySpec(paradigm, ModelSpec(preset="tiny"), APPS, max_context_tokens=512)
            run = WorkloadRun(tid, 2.5, trial, 0.2, _trace(rng, 2.5), drain_s=1.0)
            plan = (
                "agent"
                if trial % 9 == 8
                else rng.choices(["run", "deploy", "none"], weights=[7, 2, 1])[0]
            )
            plans[plan] = plans.get(plan, 0) + 1
            measuring, done = threading.Event(), threading.Event()
            agent_pid = host._procs["victim"].pid
            th = threading.Thread(
                target=_killer,
                args=(plan, agent_pid, random.Random(rng.random()), kills, measuring, done),
                daemon=True,
            )
            th.start()
            received, summary, status, reason = 0, None, TrialStatus.FAILED, "no result"
            last: list = []
            for kind, payload in blocking_iter(host.run_trial("victim", spec, run)):
                if kind == "events":
                    got = sum(isinstance(e, RequestRecord) for e in payload)
                    received += got
                    if got:
                        measuring.set()
                    store.add_events(tid, payload)
                elif kind == "end":  # with the summary's batch, stored with the end
                    done.set()  # the workload has ended: a killer still waiting gives up
                    measuring.set()
                    last = payload.events
                    received += sum(isinstance(e, RequestRecord) for e in last)
                    summary = payload.summary
                    if summary is not None:
                        status, reason = summary.status, summary.reason
                    else:
                        reason = payload.failed
                elif kind == "failed":
                    reason = payload
            done.set()
            th.join()
            store.finish_trial(tid, status, reason, summary, events=last)
            stored = store.query("SELECT COUNT(*) FROM requests WHERE trial_id=?", (tid,))[0][0]
            assert stored == received, (tid, stored, received)  # everything that arrived
            if isinstance(summary, TrialSummary):
                assert stored == summary.num_requests, (tid, stored, summary)  # all it streamed
            assert status in (TrialStatus.COMPLETED, TrialStatus.FAILED), status
            if status is TrialStatus.FAILED:
                assert reason, tid
            if plan == "none":
                assert status is TrialStatus.COMPLETED, (tid, reason)  # no fault, no failure
            ends[status.value] = ends.get(status.value, 0) + 1
            checked += stored
            if not psutil.pid_exists(agent_pid) or host._procs["victim"].poll() is not None:
                host.stop_phone("victim")
                host.start_virtual_phone(phone)  # its start sweeps the dead one's directory
            trial += 1
    finally:
        agents = [p.pid for p in host._procs.values()]
        host.shutdown()
        store.close()
    print(f"\nfault campaign: {sum(kills.values())} kills {kills} in {trial} trials "
          f"(plans {plans}; ends {ends}); {checked} records checked")  # fmt: skip
    assert sum(kills.values()) >= KILLS
    assert checked > 0 and ends.get("completed", 0) > 0
    gone = time.monotonic() + 10
    while (left := _our_processes(runtime_root)) and time.monotonic() < gone:
        time.sleep(0.2)
    assert not left, [(p.pid, p.cmdline()) for p in left]
    for pid in agents:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    assert not list(runtime_root.glob("*/*")), list(runtime_root.glob("*/*"))


# -- the coordinator ---------------------------------------------------------------------------


def _experiment() -> dict:
    return {
        "name": "faults",
        "seed": 3,
        "repetitions": 4,
        "trial_order": "sequential",
        "drain_s": 2,
        "sample_interval_s": 0.2,
        "phones": [{"name": "p1", "kind": "virtual", "memory_budget_mb": 1024, "cpu_threads": 1}],
        "models": [{"preset": "tiny"}],
        "paradigms": [{"kind": "slmaas"}],
        "workloads": [
            {
                "name": "w",
                "duration_s": 3,
                "max_context_tokens": 256,
                "apps": [
                    {"name": "kb", "arrival": {"kind": "poisson", "rate_per_s": 4},
                     "prompt_tokens": 16, "output_tokens": 4},
                    {"name": "chat", "arrival": {"kind": "closed_loop"},
                     "prompt_tokens": 24, "output_tokens": 6, "max_requests": 4},
                ],
            }
        ],
    }  # fmt: skip


class Fleet:
    """A ``fleet`` command in its own process, its output in a file (a pipe nobody reads while
    it runs would fill and block it)."""

    def __init__(self, tmp_path: Path, runtime_root: Path, *args: str):
        env = dict(os.environ, SLM_FLEET_RUNTIME_ROOT=str(runtime_root),
                   XDG_CACHE_HOME=str(tmp_path / "cache"))  # fmt: skip
        self.log = tmp_path / f"fleet-{time.monotonic_ns()}.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fleet.coordinator.cli", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
                env=env,
            )
        self.pid = self.proc.pid

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def communicate(self, timeout: float) -> tuple[str, None]:
        self.proc.wait(timeout=timeout)
        return self.log.read_text(), None

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode


def _fleet(tmp_path: Path, runtime_root: Path, *args: str) -> Fleet:
    return Fleet(tmp_path, runtime_root, *args)


def _statuses(db: Path) -> dict[str, str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return dict(conn.execute("SELECT trial_id, status FROM trials"))


def _wait_for(pred, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _watch_tree(pid: int, seen: dict[int, float], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            for c in psutil.Process(pid).children(recursive=True):
                try:
                    seen.setdefault(c.pid, c.create_time())
                except psutil.Error:
                    pass
        except psutil.Error:
            return
        stop.wait(0.3)


def _alive(seen: dict[int, float]) -> list[str]:
    out = []
    for pid, created in seen.items():
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - created) < 0.01 and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{pid} {' '.join(p.cmdline())[:80]}")
        except psutil.Error:
            pass
    return out


def _complete(run: Path) -> None:
    """Every trial completed, with a record for every request its trace held."""
    db = run / "results.sqlite"
    assert set(_statuses(db).values()) == {"completed"}, _statuses(db)
    with sqlite3.connect(db) as conn:
        missing = conn.execute(
            "SELECT COUNT(*) FROM trials t JOIN trace_requests q ON q.repetition = t.repetition "
            "LEFT JOIN requests r ON r.trial_id = t.trial_id AND r.request_id = q.request_id "
            "WHERE r.request_id IS NULL AND q.at_s IS NOT NULL"
        ).fetchone()[0]
    assert missing == 0
    assert (run / "report.html").is_file()


@pytest.mark.ray
@pytest.mark.parametrize(  # a minute or more each: SIGINT and SIGTERM (SIGINT's path, without
    "how",  # Prometheus) run with the long suites, SIGKILL (the reaper's path) in make test
    [
        pytest.param("SIGINT", marks=pytest.mark.long),
        pytest.param("SIGTERM", marks=pytest.mark.long),
        "SIGKILL",
    ],
)  # SIGINT's run has its own Prometheus: a stop must end it too
def test_a_stopped_or_killed_coordinator_is_resumed_to_the_end(tmp_path, how, runtime_root):
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(_experiment()))
    run = tmp_path / "runs" / "r"
    prometheus = {"SIGINT": "", "SIGTERM": "--no-prometheus", "SIGKILL": "--keep-prometheus"}
    proc = _fleet(tmp_path, runtime_root, "run", "exp.yaml", "--runs-dir", "runs", "--run-id", "r",
                  *filter(None, [prometheus[how]]))  # fmt: skip
    seen: dict[int, float] = {}
    stop = threading.Event()
    threading.Thread(target=_watch_tree, args=(proc.pid, seen, stop), daemon=True).start()
    db = run / "results.sqlite"

    def one_done_one_running() -> bool:
        if not db.exists():
            return False
        s = list(_statuses(db).values())
        return "completed" in s and "running" in s

    _wait_for(one_done_one_running, 240, "a completed and a running trial")
    if how == "SIGKILL":
        listening = _listening(seen)
    proc.send_signal(getattr(signal, how))
    out, _ = proc.communicate(timeout=120)
    stop.set()
    statuses = _statuses(db)
    if how == "SIGKILL":
        assert proc.returncode == -9
        _wait_for(lambda: not _alive(seen), 60, f"the reaper to end {_alive(seen)}")
        print("\nlistening sockets of a local run:\n" + "\n".join(listening))
        for line in listening:
            addr, name = line.split(" ", 1)
            if not _is_loopback(addr.rsplit(":", 1)[0].strip("[]")):
                assert name.startswith(("gcs_server", "raylet", "ray:")), line  # Ray's own
        summary = _fleet(tmp_path, runtime_root, "summary", str(run))
        text, _ = summary.communicate(timeout=120)
        assert summary.returncode == 3 and "interrupted" in text, text
    else:
        assert proc.returncode == {"SIGINT": 130, "SIGTERM": 143}[how], out
        assert f"stopped by {how}" in out and "--resume" in out
        assert set(statuses.values()) <= {"completed", "interrupted", "not_run"}, statuses
        assert "interrupted" in statuses.values() or "not_run" in statuses.values()
        _wait_for(lambda: not _alive(seen), 30, f"every child to end: {_alive(seen)}")
    assert not list(runtime_root.glob("*/*")), "private directories left behind"
    kept = sum(s == "completed" for s in statuses.values())
    resumed = _fleet(tmp_path, runtime_root, "run", "--resume", str(run), "--no-prometheus")
    out, _ = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, out
    _complete(run)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM trials WHERE attempt = 0 AND status = "
                            "'completed'").fetchone()[0] >= kept  # fmt: skip


def _is_loopback(ip: str) -> bool:
    import ipaddress

    a = ipaddress.ip_address(ip)
    mapped = getattr(a, "ipv4_mapped", None)
    return a.is_loopback or bool(mapped and mapped.is_loopback)


def _listening(seen: dict[int, float]) -> list[str]:
    pids = set(seen)
    out = []
    for c in psutil.net_connections("inet"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            try:
                proc = psutil.Process(c.pid)
                name = proc.name()
                ray_file = next((a for a in proc.cmdline() if "/ray/" in a), "")
                if ray_file:  # Ray's own Python processes (autoscaler monitor, agents)
                    name = f"ray:{ray_file.rsplit('/ray/', 1)[1]}"
            except psutil.Error:
                name = "?"
            ip = f"[{c.laddr.ip}]" if ":" in c.laddr.ip else c.laddr.ip
            out.append(f"{ip}:{c.laddr.port} {name}")
    return sorted(out)
