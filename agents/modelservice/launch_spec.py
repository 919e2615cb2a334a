"""How an SLM process is told what to serve: one JSON argument (no torch here: app processes,
which launch their own model under per-app, import this without loading torch themselves)."""

from __future__ import annotations

import json
from dataclasses import asdict

from fleet.records import ContextPolicy, ModelSpec, SchedulerPolicy, ServiceOptions


def spec_to_json(model: ModelSpec, options: ServiceOptions, threads: int, kv_budget_bytes: int,
                 swap_dir: str) -> str:
    return json.dumps({"model": asdict(model), "service": asdict(options), "threads": threads,
                       "kv_budget_bytes": kv_budget_bytes, "swap_dir": swap_dir})


def spec_from_json(text: str):
    d = json.loads(text)
    s = d["service"]
    options = ServiceOptions(**{**s, "scheduler": SchedulerPolicy(s["scheduler"]),
                                "context_policy": ContextPolicy(s["context_policy"])})
    return ModelSpec(**d["model"]), options, d["threads"], d["kv_budget_bytes"], d["swap_dir"]
