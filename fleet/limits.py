"""The bounds every number and name must keep, on the wire and in experiment files alike.

One table so the agent (which refuses a message outside them with INVALID_ARGUMENT) and the
experiment loader (which refuses a file with the field named) agree; the README lists them.
Every float must also be finite: NaN and infinities are refused everywhere.
"""

from __future__ import annotations

import math
import re

# Names become ids, socket and file names, metric labels: one pattern, no path can be built.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NAME_RE = re.compile(NAME_PATTERN)

MAX_APPS = 64  # apps of one workload (and of one Deploy)
MAX_DURATION_S = 86_400.0  # one trial's workload
MAX_DRAIN_S = 3_600.0
MAX_RATE_PER_S = 1_000.0  # one app's Poisson rate
MAX_BURST = 1_000  # requests per Poisson arrival
MAX_THINK_S = 3_600.0
MAX_SLO_S = 3_600.0
MAX_REQUEST_TOKENS = 1 << 16  # prompt or output tokens of one request
MAX_CONTEXT_TOKENS = 1 << 17
MAX_TRACE_REQUESTS = 100_000  # requests of one trial (one RunWorkload)
MAX_TURNS = 10_000
MAX_OUTSTANDING = 100_000
MAX_THREADS = 256  # torch threads of one SLM process
MAX_BATCH = 256
MAX_CHUNK_TOKENS = 1 << 16
MAX_KV_BUDGET_BYTES = 1 << 50
MIN_SAMPLE_INTERVAL_S = 0.01
MAX_SAMPLE_INTERVAL_S = 3_600.0
MAX_REPETITIONS = 1_000
MAX_TRIALS = 100_000  # trials of one experiment
MAX_SIMULATED_PHONES = 10_000  # phones of one simulated-phone entry (count)
MAX_TEXT = 1_000  # free text on the wire (reasons, details)


def valid_name(name: str) -> bool:
    return bool(NAME_RE.match(name))


def finite_in(v: float, lo: float, hi: float) -> bool:
    """``lo <= v <= hi`` and finite (NaN fails every comparison; inf fails the bound)."""
    return math.isfinite(v) and lo <= v <= hi
