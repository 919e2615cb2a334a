"""What an SLM process is told to serve, handed from its launcher as one argument.

The launch spec travels pickled (base64 in argv) from the launcher to the process it starts, both
of this user and this installation, so every value keeps its type: the scheduler policy that the
experiment file named is the same ``SchedulerPolicy`` member here and in the engine. No torch
here: app processes, which launch their own model under per-app, import this without it.
"""

from __future__ import annotations

import base64
import pickle
from dataclasses import dataclass

from fleet.records import ModelSpec, ServiceOptions


@dataclass(frozen=True)
class LaunchSpec:
    model: ModelSpec
    options: ServiceOptions
    threads: int = 1  # torch threads of the process
    kv_budget_bytes: int = 0  # KV the context manager may hold (0: from memory_budget_bytes)
    # the phone's SLM budget for this process: its KV may take what its own PSS after loading
    # (weights + runtime) leaves (0: no limit)
    memory_budget_bytes: int = 0
    swap_dir: str = ""  # where evicted contexts are written (without a phone storage)
    storage_dir: str = ""  # the phone's storage: model files and swapped contexts live there
    storage_model: str = "none"  # fleet.storage_models name: how fast that storage is


def encode(spec: LaunchSpec) -> str:
    return base64.b64encode(pickle.dumps(spec)).decode("ascii")


def decode(text: str) -> LaunchSpec:
    spec = pickle.loads(base64.b64decode(text))
    if not isinstance(spec, LaunchSpec):
        raise ValueError("--spec is not a LaunchSpec")
    return spec
