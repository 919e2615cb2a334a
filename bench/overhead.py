"""The instrument's own cost, measured on a real agent with the tiny model: what the testbed
spends that a phone running the paradigm alone would not.

- idle agent RSS, before any model is deployed (target <= 150 MB);
- per request, the time outside the model: from sent by the app to its last token, less every
  slice the model ran it (RPC both ways, the service's bookkeeping, the app's), p50 over a
  closed-loop trial (target <= 0.5 ms);
- the resource sampler: CPU time of one tick over the deployment's SLM processes (what the agent
  samples: here the one service process), as a share of one core at a 100 ms interval
  (target <= 2%);
- the trial's CPU split: the testbed's processes (the agent and the apps' load generators)
  against the model's, and the testbed's CPU as a share of the trial's wall time.

Medians over --runs trials; results also go to bench/results/overhead.json.

    python bench/overhead.py [--runs 3] [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

from agents.probes import ProcessSampler
from fleet.coordinator.agent_client import AgentClient
from fleet.records import (
    AppWorkload,
    ArrivalPattern,
    DeploySpec,
    ModelSpec,
    Paradigm,
    RequestRecord,
    RequestStatus,
    WorkloadRun,
)

RESULTS = Path(__file__).resolve().parent / "results" / "overhead.json"
TOKEN = "bench-overhead-token"


def start_agent() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agents.main", "--exit-on-stdin-eof", "--name", "bench"]
        + ["--memory-budget-mb", "2048", "--cpu-threads", "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=dict(os.environ, FLEET_AGENT_TOKEN=TOKEN),
        text=True,
    )
    assert proc.stdout is not None
    ready = json.loads(proc.stdout.readline())
    return proc, f"127.0.0.1:{ready['port']}"


def cpu_s(procs: list[psutil.Process]) -> dict[int, float]:
    out = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def one_trial(client: AgentClient, agent: psutil.Process, seconds: float) -> dict[str, float]:
    app = AppWorkload(
        "kb", ArrivalPattern.CLOSED_LOOP, prompt_tokens=8, output_tokens=4, foreground=True
    )
    deployed = client.deploy(DeploySpec(Paradigm.SLMAAS, ModelSpec(preset="tiny"), (app,)))
    model_pids = {a.pid for a in deployed.apps}
    sampler = ProcessSampler()
    before: dict[int, float] = {}
    records: list[RequestRecord] = []
    t0 = time.monotonic()
    for event in client.run_workload(WorkloadRun("overhead", seconds, sample_interval_s=0.1)):
        if not before:  # the first event: the app processes are up
            before = cpu_s([agent, *agent.children(recursive=True)])
            t0 = time.monotonic()
        if isinstance(event, RequestRecord):
            records.append(event)
    wall = time.monotonic() - t0
    family = [agent, *agent.children(recursive=True)]
    after = cpu_s(family)
    # the sampler's own cost: ticks over the deployment's SLM processes, as the agent samples
    processes = {a.pid: a.app for a in deployed.apps}
    sampler.sample(processes)
    ticks, busy = 30, 0.0  # ticks 100 ms apart, as the agent's: PSS re-read as it would be
    for _ in range(ticks):
        c0 = time.process_time()
        sampler.sample(processes)
        busy += time.process_time() - c0
        time.sleep(0.1)
    tick_s = busy / ticks
    client.reset()
    used = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
    model = sum(v for pid, v in used.items() if pid in model_pids)
    testbed = sum(v for pid, v in used.items() if pid not in model_pids)
    served = [r for r in records if r.status is RequestStatus.OK and r.service.slices]
    outside = sorted(
        (r.end_ns - r.sent_ns - sum(s.end_ns - s.start_ns for s in r.service.slices)) / 1e6
        for r in served
    )
    # where it goes: sent -> first slice; between slices; last slice -> last token -> end
    to_model = [(r.service.slices[0].start_ns - r.sent_ns) / 1e6 for r in served]
    between = [
        sum(b.start_ns - a.end_ns for a, b in zip(r.service.slices, r.service.slices[1:])) / 1e6
        for r in served
    ]
    to_token = [(r.token_ns[-1] - r.service.slices[-1].end_ns) / 1e6 for r in served]
    to_end = [(r.end_ns - r.token_ns[-1]) / 1e6 for r in served]
    return {
        "requests": len(outside),
        "outside_model_ms_p50": statistics.median(outside),
        "outside_model_ms_p90": outside[int(0.9 * (len(outside) - 1))],
        "sent_to_model_ms_p50": statistics.median(to_model),
        "between_slices_ms_p50": statistics.median(between),
        "last_slice_to_last_token_ms_p50": statistics.median(to_token),
        "last_token_to_end_ms_p50": statistics.median(to_end),
        "sampler_tick_ms": tick_s * 1e3,
        "sampler_core_share_at_100ms": tick_s / 0.1,
        "testbed_cpu_s": testbed,
        "model_cpu_s": model,
        "testbed_cpu_share": testbed / (testbed + model) if testbed + model else 0.0,
        "testbed_cpu_of_wall": testbed / wall,
        "wall_s": wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results ({RESULTS})")
    ns = p.parse_args()
    proc, address = start_agent()
    try:
        client = AgentClient(address, TOKEN)
        client.wait_healthy()
        agent = psutil.Process(proc.pid)
        time.sleep(2.0)  # settled, no model
        idle_rss = agent.memory_info().rss
        trials = [one_trial(client, agent, ns.seconds) for _ in range(ns.runs)]
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)
    med = {k: statistics.median(t[k] for t in trials) for k in trials[0]}
    print(f"tiny model, SLMaaS, one closed-loop app, {ns.seconds:g} s trials, medians of {ns.runs}")
    rows = [
        ("idle agent RSS (no model)", f"{idle_rss / 2**20:.0f} MiB", idle_rss <= 150 * 2**20),
        (
            f"time outside the model per request, p50 (n={med['requests']:.0f})",
            f"{med['outside_model_ms_p50']:.2f} ms (p90 {med['outside_model_ms_p90']:.2f})",
            med["outside_model_ms_p50"] <= 0.5,
        ),
        (
            "  of which: sent -> on the model, between slices,",
            f"{med['sent_to_model_ms_p50']:.2f}, {med['between_slices_ms_p50']:.2f},",
            None,
        ),
        (
            "  last slice -> its token at the app -> end (p50s)",
            f"{med['last_slice_to_last_token_ms_p50']:.2f}, "
            f"{med['last_token_to_end_ms_p50']:.2f} ms",
            None,
        ),
        (
            "resource sampler at 100 ms",
            f"{100 * med['sampler_core_share_at_100ms']:.2f}% of a core "
            f"({med['sampler_tick_ms']:.2f} ms a tick)",
            med["sampler_core_share_at_100ms"] <= 0.02,
        ),
        (
            "testbed CPU / (testbed + model) CPU",
            f"{100 * med['testbed_cpu_share']:.0f}% ({med['testbed_cpu_s']:.2f} s vs "
            f"{med['model_cpu_s']:.2f} s)",
            None,
        ),
        ("testbed CPU / trial wall time", f"{100 * med['testbed_cpu_of_wall']:.0f}%", None),
    ]
    for name, value, hit in rows:
        mark = "" if hit is None else ("hit" if hit else "MISS")
        print(f"  {name:<52} {value:<36} {mark}")
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(
        json.dumps({"idle_rss_bytes": idle_rss, "trials": trials, "medians": med}, indent=2) + "\n"
    )
    print(f"results: {ns.out}")


if __name__ == "__main__":
    main()
