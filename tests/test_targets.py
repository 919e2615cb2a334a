"""The targets file a standing Prometheus reads: several runs share it, each keeps the others'
groups, and an ended run's groups stay for their grace period, then go."""

import json
import multiprocessing
import subprocess
import sys
import time

from fleet.observe.targets import EXPIRES, SharedTargetsFile, prune, read_groups


def runs_in(path):
    return sorted({g["labels"]["run"] for g in read_groups(path)})


def test_two_runs_share_the_file_and_an_ended_one_goes_after_its_grace(tmp_path):
    path = tmp_path / "fleet.json"
    a = SharedTargetsFile(path, "run-a", grace_s=30)
    b = SharedTargetsFile(path, "run-b", grace_s=30)
    a.set("coordinator", "127.0.0.1:9000", job="coordinator")
    a.set("phone-1", "127.0.0.1:9001", job="phone-agent", phone="phone-1")
    b.set("coordinator", "127.0.0.1:9100", job="coordinator")
    assert runs_in(path) == ["run-a", "run-b"]
    assert len(read_groups(path)) == 3
    a.retire(now=1000.0)
    retired = [g for g in read_groups(path) if g["labels"]["run"] == "run-a"]
    assert len(retired) == 2 and all(g["labels"][EXPIRES] == "1030.000" for g in retired)
    assert prune(path, now=1029.0) == 0  # within the grace: still scraped
    assert prune(path, now=1031.0) == 2
    assert runs_in(path) == ["run-b"]
    # any later write by a live run drops expired groups too
    a2 = SharedTargetsFile(path, "run-c", grace_s=0)
    a2.set("coordinator", "127.0.0.1:9200", job="coordinator")
    a2.retire(now=time.time() - 1)  # its grace is over
    b.set("phone-2", "127.0.0.1:9101", job="phone-agent", phone="phone-2")
    assert runs_in(path) == ["run-b"]
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_a_run_cannot_take_another_runs_label(tmp_path):
    path = tmp_path / "fleet.json"
    a = SharedTargetsFile(path, "run-a")
    a.set("phone-1", "127.0.0.1:9001", job="phone-agent", run="run-b")
    assert runs_in(path) == ["run-a"]


def test_an_unreadable_file_is_replaced_not_fatal(tmp_path):
    path = tmp_path / "fleet.json"
    path.write_text("{not json")
    SharedTargetsFile(path, "run-a").set("coordinator", "127.0.0.1:9000", job="coordinator")
    assert runs_in(path) == ["run-a"]


def _writer(path, run, n):
    sd = SharedTargetsFile(path, run)
    for i in range(n):
        sd.set(f"phone-{i}", f"127.0.0.1:{10000 + i}", job="phone-agent", phone=f"phone-{i}")


def test_concurrent_runs_lose_no_group(tmp_path):
    path = tmp_path / "fleet.json"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, f"run-{k}", 25)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    groups = read_groups(path)
    assert len(groups) == 100 and runs_in(path) == [f"run-{k}" for k in range(4)]


def test_prune_command_and_bad_flags(tmp_path):
    path = tmp_path / "fleet.json"
    sd = SharedTargetsFile(path, "run-a", grace_s=0)
    sd.set("coordinator", "127.0.0.1:9000", job="coordinator")
    sd.retire()

    def fleet(*args):
        return subprocess.run(
            [sys.executable, "-m", "fleet.coordinator.cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = fleet("targets", "prune", str(path))
    assert done.returncode == 0 and "removed 1 target group" in done.stdout
    assert json.loads(path.read_text()) == []
    missing = fleet("targets", "prune", str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and "no such targets file" in missing.stderr
    for flags, reason in (
        (["--targets-file", str(tmp_path)], "is a directory"),
        (["--targets-file", str(tmp_path / "t.yaml")], "must end in .json"),
        (["--targets-file", str(tmp_path / "no" / "t.json")], "is not a folder"),
        (["--targets-grace", "-1"], "--targets-grace must be between"),
    ):
        proc = fleet("run", "--runs-dir", str(tmp_path / "runs"), *flags)
        assert proc.returncode == 2, proc.stderr
        assert reason in proc.stderr and "Traceback" not in proc.stderr


def test_changes_in_a_deferred_block_are_written_once_at_its_end(tmp_path, monkeypatch):
    from fleet.observe import targets

    writes = []
    real = targets._write_atomically
    monkeypatch.setattr(
        targets, "_write_atomically", lambda p, g: (writes.append(len(g)), real(p, g))
    )
    sd = targets.TargetsFile(tmp_path / "t.json")
    writes.clear()
    with sd.deferred():
        for i in range(50):
            sd.set(f"p{i}", f"127.0.0.1:{9000 + i}", job="phone-agent")
        assert writes == [] and read_groups(sd.path) == []  # nothing yet
    assert writes == [50] and len(read_groups(sd.path)) == 50
    sd.remove("p0")  # outside a block: at once
    assert writes == [50, 49]
