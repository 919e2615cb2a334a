"""How the coordinator grows with the fleet: 10, 100 and 1,000 simulated phones through the real
coordinator (`fleet run`: Ray, the dispatcher, the SQLite store, an embedded Prometheus).

Each size runs one experiment ``--runs`` times (medians shown, every run kept in the JSON): N
``kind: simulated`` phones replaying the embedded profile (measured by the real engine; see
fleet/sim_profile.py), one SLMaaS trial per phone, one Poisson app; trials start at the
experiment's default ``start_rate_per_s`` (50 a second: 1,000 phones over 20 s, the start
spread is reported). The simulated phones' processes run at nice 10 (they stand in for phones'
own CPUs: agents/simulated/main.py). Measured per size, from outside the run:

- coordinator RSS: peak of the ``fleet run`` process plus its phone-host actor (Ray's own
  daemons and the simulated phones' process are reported apart);
- CPU seconds of the same, per trial (and every role's CPU seconds: phones, Ray, Prometheus);
- dispatch overhead per trial (the store's ``dispatch_s``): the coordinator's own time, from
  the trial's start slot until its Deploy is sent and from its summary's arrival until the
  trial is stored, p50 and p90; beside it, everything beyond the phone's own load and workload
  time (``beyond phone``: the RPCs and the one simulated-phone process's queueing included) and
  the phones' workload time against its nominal duration (a saturated host stretches it);
- Prometheus series per phone: the series of ten phones, queried mid-run every 5 s, and the
  series the run's Prometheus holds in all (its TSDB head); a size's row states the most over
  its runs (a bound);
- trials completed: a size's row gives the fewest of its runs and every run's reasons for the
  others (each reason's first 300 characters, phone names folded);
- every trial completed, records stored per trial.

Targets (issue 13): at 1,000 phones dispatch overhead p50 <= 10 ms, coordinator RSS <= 2 GB,
no per-phone Ray actor (one per host: counted), series per phone bounded (stated). Writes
bench/results/fleet_scale.json and a plot, bench/results/fleet_scale.svg.

    python bench/fleet_scale.py [--phones 10,100,1000] [--duration 20] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import psutil
import yaml

RESULTS = Path(__file__).resolve().parent / "results"
FLEET = Path(sys.executable).with_name("fleet")


def experiment(n: int, duration_s: float) -> dict:
    return {
        "name": f"scale-{n}",
        "seed": 0,
        "drain_s": 5,
        "sample_interval_s": 2.0,
        "heartbeat_s": 10,
        "contention": {"solo_baselines": False, "corun": True},
        "phones": [{"name": "sim", "kind": "simulated", "count": n, "memory_budget_mb": 3072}],
        "models": [{"preset": "smollm-135m"}],
        "paradigms": [{"kind": "slmaas"}],
        "workloads": [
            {
                "name": "keyboard",
                "duration_s": duration_s,
                "apps": [
                    {
                        "name": "keyboard",
                        "arrival": {"kind": "poisson", "rate_per_s": 0.5},
                        "prompt_tokens": 32,
                        "output_tokens": 8,
                    }
                ],
            }
        ],
    }


class Watch:
    """Polls the run's processes (RSS, CPU) and, once it serves, its Prometheus."""

    def __init__(self, proc: subprocess.Popen, runs: Path):
        self.root = psutil.Process(proc.pid)
        self.runs = runs
        self.peak = {"coordinator": 0, "ray": 0, "phones": 0, "prometheus": 0}
        self.cpu: dict[int, tuple[str, float]] = {}
        self.series: dict = {}
        self.actors = 0
        self.done = threading.Event()

    def role(self, p: psutil.Process) -> str:
        cmd = " ".join(p.cmdline())
        if p.pid == self.root.pid or "PhoneHost" in p.name() or "PhoneHost" in cmd:
            return "coordinator"
        if "agents.simulated.main" in cmd:
            return "phones"
        if "prometheus" in p.name():
            return "prometheus"
        return "ray"

    def poll(self) -> None:
        last_query = 0.0
        while not self.done.wait(0.5):
            total = dict.fromkeys(self.peak, 0)
            actors = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                continue
            for p in procs:
                try:
                    with p.oneshot():
                        role = self.role(p)
                        total[role] += p.memory_info().rss
                        t = p.cpu_times()
                        self.cpu[p.pid] = (role, t.user + t.system)
                        actors += "PhoneHost" in p.name()
                except psutil.Error:
                    pass
            self.actors = max(self.actors, actors)
            for k, v in total.items():
                self.peak[k] = max(self.peak[k], v)
            if time.monotonic() - last_query > 5:
                last_query = time.monotonic()
                self.query_series()

    def query_series(self) -> None:
        """Series of ten phones (``sim-0`` to ``sim-9`` in any zero padding), counted by phone,
        and every series the run's Prometheus holds (its TSDB head): both cheap to answer. A
        count by phone over the whole fleet touches every series (226,000 at 1,000 phones),
        and every 5 s it took as much of the two cores as the coordinator being measured
        (one pair of 1,000-phone runs: dispatch p50 42 ms with it, 20 ms without)."""
        try:
            manifest = next(self.runs.glob("*/manifest.json"))
            data = json.loads(manifest.read_text())
            url, run = data["prometheus"]["url"], data["run_id"]
        except (StopIteration, KeyError, ValueError, OSError):
            return
        q = f'count by (phone) ({{run="{run}", job="phone-agent", phone=~"sim-0*[0-9]"}})'
        try:
            with urllib.request.urlopen(
                f"{url}/api/v1/query?{urllib.parse.urlencode({'query': q})}", timeout=5
            ) as resp:
                result = json.load(resp)["data"]["result"]
            with urllib.request.urlopen(f"{url}/api/v1/status/tsdb", timeout=5) as resp:
                head = int(json.load(resp)["data"]["headStats"]["numSeries"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        counts = [int(r["value"][1]) for r in result]
        if not counts:
            return
        # the fullest count by phone and the largest head, each kept on its own: once the ten
        # phones' trials end their series go stale (out of the count), while the head still
        # holds them and grows with the later phones' (a 100-phone run reported 5 a phone)
        if max(counts) >= self.series.get("per_phone_max", 0):
            self.series.update(
                phones_sampled=len(counts),
                per_phone_max=max(counts),
                per_phone_median=statistics.median(counts),
            )
        self.series["head_series"] = max(head, self.series.get("head_series", 0))


def run_size(n: int, duration_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"scale-{n}-") as tmp:
        exp = Path(tmp) / "exp.yaml"
        exp.write_text(yaml.safe_dump(experiment(n, duration_s)))
        runs = Path(tmp) / "runs"
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [str(FLEET), "run", str(exp), "--runs-dir", str(runs), "-q"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        watch = Watch(proc, runs)
        poller = threading.Thread(target=watch.poll, daemon=True)
        poller.start()
        _, err = proc.communicate()
        wall = time.monotonic() - t0
        watch.done.set()
        poller.join()
        if proc.returncode not in (0, 1):  # 1: it finished, some trials failed (counted below)
            raise SystemExit(f"fleet run ({n} phones) failed:\n{err[-3000:]}")
        db = sqlite3.connect(next(runs.glob("*/results.sqlite")))
        db.row_factory = sqlite3.Row
        trials = db.execute(
            "SELECT status, reason, started_at, ended_at, deploy_json, summary_json, dispatch_s "
            "FROM trials"
        ).fetchall()
        records = db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        kinds = {r[0] for r in db.execute("SELECT DISTINCT kind FROM phones")}
        db.close()
    dispatch, beyond, workload = [], [], []
    starts = [t["started_at"] for t in trials if t["started_at"]]
    for t in trials:
        if t["status"] != "completed":
            continue
        deploy, summary = (
            json.loads(t["deploy_json"] or "{}"),
            json.loads(t["summary_json"] or "{}"),
        )
        load = max((a["cold_start_s"] for a in deploy.get("apps", [])), default=0.0)
        workload.append(summary.get("duration_s", 0.0))
        beyond.append((t["ended_at"] - t["started_at"]) - load - workload[-1])
        dispatch.append(t["dispatch_s"])
    cpu: dict[str, float] = {}
    for role, seconds in watch.cpu.values():
        cpu[role] = cpu.get(role, 0.0) + seconds
    completed = sum(t["status"] == "completed" for t in trials)
    reasons: dict[str, int] = {}
    for t in trials:
        if t["status"] != "completed":
            why = re.sub(r"\bsim-\d+", "sim-*", t["reason"] or "no reason given")[:300]
            reasons[why] = reasons.get(why, 0) + 1
    return {
        "phones": n,
        "trials": len(trials),
        "completed": completed,
        "not_completed_reasons": reasons,
        "records": records,
        "phone_kinds": sorted(kinds),
        "wall_s": round(wall, 1),
        "start_spread_s": round(max(starts) - min(starts), 1) if starts else None,
        "dispatch_overhead_ms_p50": _ms(dispatch, 0.5),
        "dispatch_overhead_ms_p90": _ms(dispatch, 0.9),
        "beyond_phone_ms_p50": _ms(beyond, 0.5),
        "phone_workload_s_p50": round(statistics.median(workload), 2) if workload else None,
        "coordinator_rss_mb": round(watch.peak["coordinator"] / 2**20),
        "ray_daemons_rss_mb": round(watch.peak["ray"] / 2**20),
        "phones_process_rss_mb": round(watch.peak["phones"] / 2**20),
        "prometheus_rss_mb": round(watch.peak["prometheus"] / 2**20),
        "coordinator_cpu_s": round(cpu.get("coordinator", 0.0), 1),
        "coordinator_cpu_ms_per_trial": round(cpu.get("coordinator", 0.0) / len(trials) * 1000, 1),
        "cpu_s_by_role": {role: round(s, 1) for role, s in sorted(cpu.items())},
        "phone_host_actors": watch.actors,
        "series": watch.series,
    }


def median_row(runs: list[dict]) -> dict:
    """One row for a fleet size: the median of each figure over its runs (each run kept)."""
    row = dict(runs[-1])
    for key, value in runs[-1].items():
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and values:
            row[key] = statistics.median(values)
    # series per phone: the most any run saw (a bound; a saturated run's queries can miss the
    # trials' series and see only the agents' own), the fullest snapshot of those
    row["series"] = max(
        (r["series"] for r in runs),
        key=lambda s: (s.get("per_phone_max", 0), s.get("head_series", 0)),
    )
    row["completed"] = min(r["completed"] for r in runs)  # a failure in any run shows
    reasons: dict[str, int] = {}
    for r in runs:
        for why, count in r["not_completed_reasons"].items():
            reasons[why] = reasons.get(why, 0) + count
    row["not_completed_reasons"] = reasons
    row["runs"] = runs
    return row


def _ms(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) in ms; None without values."""
    if not values:
        return None
    return round(sorted(values)[round(q * (len(values) - 1))] * 1000, 1)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["phones"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, key, label in (
        (axes[0], "coordinator_rss_mb", "coordinator RSS (MB)"),
        (axes[1], "coordinator_cpu_ms_per_trial", "coordinator CPU per trial (ms)"),
        (axes[2], "dispatch_overhead_ms_p50", "dispatch overhead p50 (ms)"),
    ):
        ax.plot(n, [r[key] for r in rows], marker="o")
        ax.set_xscale("log")
        ax.set_xlabel("simulated phones")
        ax.set_title(label, fontsize=10)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def text_plot(rows: list[dict], key: str, label: str) -> None:
    top = max(r[key] for r in rows) or 1
    print(f"\n{label}")
    for r in rows:
        bar = "#" * max(1, round(40 * r[key] / top))
        print(f"  {r['phones']:>5} phones |{bar} {r[key]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--phones", default="10,100,1000", help="fleet sizes, comma separated")
    ap.add_argument("--duration", type=float, default=20.0, help="each trial's workload (s)")
    ap.add_argument("--runs", type=int, default=3, help="runs per size; medians are shown")
    ns = ap.parse_args()
    rows = []
    for n in (int(x) for x in ns.phones.split(",")):
        runs = []
        for i in range(ns.runs):
            print(f"running {n} simulated phones ({i + 1}/{ns.runs}) ...", flush=True)
            runs.append(run_size(n, ns.duration))
            print(json.dumps(runs[-1]), flush=True)
        rows.append(median_row(runs))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fleet_scale.json").write_text(json.dumps(rows, indent=1) + "\n")
    plot(rows, RESULTS / "fleet_scale.svg")
    print(f"\nmedians of {ns.runs} runs per size")
    print("\nphones  trials  done  records  dispatch p50/p90 ms  beyond phone p50 ms  workload s  "
          "coord RSS MB  CPU ms/trial  series/phone  actors  start spread s")  # fmt: skip
    for r in rows:
        s = r["series"]
        print(
            f"{r['phones']:>6}  {r['trials']:>6}  {r['completed']:>4}  {r['records']:>7}  "
            f"{r['dispatch_overhead_ms_p50']!s:>8} / {r['dispatch_overhead_ms_p90']!s:<8}  "
            f"{r['beyond_phone_ms_p50']!s:>19}  {r['phone_workload_s_p50']!s:>10}  "
            f"{r['coordinator_rss_mb']:>12}  {r['coordinator_cpu_ms_per_trial']:>12}  "
            f"{s.get('per_phone_max', '?'):>12}  {r['phone_host_actors']:>6}  "
            f"{r['start_spread_s']!s:>14}"
        )
    text_plot(rows, "coordinator_rss_mb", "coordinator RSS (MB)")
    text_plot(rows, "coordinator_cpu_ms_per_trial", "coordinator CPU per trial (ms)")
    text_plot(rows, "dispatch_overhead_ms_p50", "dispatch overhead p50 (ms)")
    big = rows[-1]
    checks = [
        ("dispatch overhead p50 <= 10 ms", (big["dispatch_overhead_ms_p50"] or 1e9) <= 10),
        ("coordinator RSS <= 2 GB", big["coordinator_rss_mb"] <= 2048),
        ("no per-phone Ray actor", big["phone_host_actors"] <= 1),
        ("every trial completed", all(r["completed"] == r["trials"] for r in big["runs"])),
    ]
    print(f"\ntargets at {big['phones']} phones:")
    for what, ok in checks:
        print(f"  {'hit ' if ok else 'MISS'}  {what}")
    print(f"plot: {RESULTS / 'fleet_scale.svg'}; figures: {RESULTS / 'fleet_scale.json'}")


if __name__ == "__main__":
    main()
