"""A simulated phone's profile, captured from a real run: what the real engine measured, per
paradigm, on the phones of that run (``fleet profile capture RUN_DIR -o FILE``).

Per paradigm kind, over the completed trials of one model: each served request's prefill time
per uncached prompt token (first scheduled to first token) and its mean inter-token latency;
each model process's cold start at deploy; and the median runtime memory of an SLM process
(its PSS less weights and KV). The profile names the run, its git revision and host, so a
replayed figure can always be traced to the measurement it came from.

    profile = capture_profile(Path("runs/2026...-demo"), name="cpu-tiny")
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from fleet.results.store import ResultStore
from fleet.sim_profile import ParadigmProfile, ProfileError, Quantiles, SimProfile

MIN_REQUESTS = 20  # a paradigm measured on fewer served requests is left out


def capture_profile(run_dir: Path, *, name: str, model: str = "") -> SimProfile:
    """The profile of ``run_dir``'s completed trials of ``model`` (default: the run's first
    model); raises ProfileError when the run measured too little."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    exp = manifest.get("experiment", {})
    kinds = {p.get("name") or p["kind"]: p["kind"] for p in exp.get("paradigms", [])}
    store = ResultStore(run_dir / "results.sqlite", readonly=True)
    try:
        trials = store.query(
            "SELECT trial_id, paradigm, model, deploy_json FROM trials WHERE status = 'completed'"
        )
        model = model or next((t["model"] for t in trials), "")
        by_kind: dict[str, list[Any]] = {}
        for t in trials:
            if t["model"] == model and t["paradigm"] in kinds:
                by_kind.setdefault(kinds[t["paradigm"]], []).append(t)
        paradigms = {}
        for kind, ts in sorted(by_kind.items()):
            ids = [t["trial_id"] for t in ts]
            marks = ",".join("?" * len(ids))
            rows = store.query(
                "SELECT prompt_tokens, cached_prompt_tokens, scheduled_ns, first_token_ns, itl_s "
                f"FROM requests WHERE status = 'ok' AND trial_id IN ({marks})",
                tuple(ids),
            )
            prefill = [
                (r["first_token_ns"] - r["scheduled_ns"])
                / 1e9
                / max(1, r["prompt_tokens"] - (r["cached_prompt_tokens"] or 0))
                for r in rows
                if r["scheduled_ns"] and r["first_token_ns"] >= r["scheduled_ns"]
            ]
            itl = [r["itl_s"] for r in rows if r["itl_s"] is not None and r["itl_s"] > 0]
            loads = [
                a["cold_start_s"]
                for t in ts
                for a in json.loads(t["deploy_json"] or "{}").get("apps", [])
                if a.get("cold_start_s", 0) > 0
            ]
            runtime = [
                r["pss_bytes"] - r["weights_bytes"] - r["kv_bytes"]
                for r in store.query(
                    "SELECT pss_bytes, weights_bytes, kv_bytes FROM samples "
                    f"WHERE weights_bytes > 0 AND trial_id IN ({marks})",
                    tuple(ids),
                )
            ]
            if len(prefill) < MIN_REQUESTS or len(itl) < MIN_REQUESTS or not loads:
                continue
            paradigms[kind] = ParadigmProfile(
                prefill_s_per_token=Quantiles.of(prefill),
                itl_s=Quantiles.of(itl),
                load_s=Quantiles.of(loads),
                runtime_bytes=int(statistics.median(runtime)) if runtime else 0,
            )
    finally:
        store.close()
    if not paradigms:
        raise ProfileError(
            f"{run_dir}: no paradigm of model {model or '(none)'} has {MIN_REQUESTS} served "
            "requests in completed trials to profile"
        )
    host = manifest.get("host", {})
    git = manifest.get("git", {})
    return SimProfile(
        name=name,
        model=model,
        source={
            "run": manifest.get("run_id", run_dir.name),
            "experiment": str(exp.get("name", "")),
            "git": str(git.get("commit", ""))[:12] + ("+dirty" if git.get("dirty") else ""),
            "host": str(host.get("hostname", host.get("node", ""))),
            "cpu": str(host.get("cpu_model", host.get("processor", ""))),
            "cpu_count": str(host.get("cpu_count", "")),
            "captured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        paradigms=paradigms,
    )
