"""Measured profiles a simulated phone replays: per paradigm, the distributions of per-token
prefill time, inter-token latency and model load time, and the runtime memory of one SLM
process, each measured by the real engine in a real run and stored with where it came from.

Both sides use it: ``fleet profile capture`` (coordinator side) writes one from a run's store,
the simulated agent (phone side) draws from it. A profile is data, never code; the embedded one
(``builtin``) was captured on the project's 2-core CI-class machine and says so in its source.

    profile = load_profile("builtin")                # or a path to a captured JSON file
    p = profile.paradigm("slmaas")                   # -> ParadigmProfile
    seconds = p.itl_s.draw(rng.random())             # inverse-CDF draw from the measured ones
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

BUILTIN = "builtin"
PROFILE_FORMAT = 1
QUANTILE_POINTS = 21  # 0, 5, ..., 100th percentiles


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Quantiles:
    """A measured distribution kept as evenly spaced quantiles (0th to 100th), drawn from by
    linear interpolation of the inverse CDF; ``n`` is how many measurements it came from."""

    values: tuple[float, ...]
    n: int

    @classmethod
    def of(cls, samples: list[float], points: int = QUANTILE_POINTS) -> Quantiles:
        import numpy as np

        if not samples:
            raise ProfileError("no measurements to make a distribution of")
        qs = np.quantile(np.asarray(samples, dtype=float), np.linspace(0.0, 1.0, points))
        return cls(tuple(float(q) for q in qs), len(samples))

    def draw(self, u: float) -> float:
        """The value at cumulative probability ``u`` in [0, 1)."""
        pos = min(max(u, 0.0), 1.0) * (len(self.values) - 1)
        i = min(int(pos), len(self.values) - 2)
        lo, hi = self.values[i], self.values[i + 1]
        return lo + (hi - lo) * (pos - i)

    @property
    def median(self) -> float:
        return self.draw(0.5)


@dataclass(frozen=True)
class ParadigmProfile:
    prefill_s_per_token: Quantiles  # first scheduled to first token, per uncached prompt token
    itl_s: Quantiles  # mean gap between output tokens, per request
    load_s: Quantiles  # one model process's cold start at deploy
    runtime_bytes: int  # one SLM process's memory beyond its weights and KV cache (median PSS)


@dataclass(frozen=True)
class SimProfile:
    name: str
    model: str  # the model label the figures were measured with, e.g. "tiny/fp32"
    source: dict[str, str] = field(default_factory=dict)  # run, git, host, cpu, captured_at
    paradigms: dict[str, ParadigmProfile] = field(default_factory=dict)  # by Paradigm value

    def paradigm(self, kind: str) -> ParadigmProfile:
        try:
            return self.paradigms[kind]
        except KeyError:
            raise ProfileError(
                f"profile {self.name} has no measurements of paradigm {kind} "
                f"(it has {', '.join(sorted(self.paradigms)) or 'none'})"
            ) from None

    @property
    def label(self) -> str:
        """How records and reports name what they replay."""
        return f"simulated: profile {self.name} ({self.model}, {self.source.get('run', '?')})"

    def to_json(self) -> str:
        return json.dumps({"format": PROFILE_FORMAT} | asdict(self), indent=1) + "\n"


def _quantiles(data: Any, where: str) -> Quantiles:
    if not isinstance(data, dict):
        raise ProfileError(f"{where}: expected {{values, n}}")
    values = data.get("values")
    n = data.get("n")
    if (
        not isinstance(values, list)
        or len(values) < 2
        or not all(isinstance(v, int | float) and math.isfinite(v) and v >= 0 for v in values)
        or list(values) != sorted(values)
    ):
        raise ProfileError(f"{where}.values: at least two finite, non-negative, sorted numbers")
    if not isinstance(n, int) or n < 1:
        raise ProfileError(f"{where}.n: a positive count of measurements")
    return Quantiles(tuple(float(v) for v in values), n)


def parse_profile(data: Any, source: str) -> SimProfile:
    if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
        raise ProfileError(f"{source}: not a profile of format {PROFILE_FORMAT}")
    paradigms: dict[str, ParadigmProfile] = {}
    raw = data.get("paradigms")
    if not isinstance(raw, dict) or not raw:
        raise ProfileError(f"{source}: paradigms: at least one paradigm's measurements")
    for kind, p in raw.items():
        where = f"{source}: paradigms.{kind}"
        if not isinstance(p, dict):
            raise ProfileError(f"{where}: expected a mapping")
        runtime = p.get("runtime_bytes")
        if not isinstance(runtime, int) or runtime < 0:
            raise ProfileError(f"{where}.runtime_bytes: a non-negative byte count")
        paradigms[kind] = ParadigmProfile(
            prefill_s_per_token=_quantiles(p.get("prefill_s_per_token"), f"{where}.prefill"),
            itl_s=_quantiles(p.get("itl_s"), f"{where}.itl_s"),
            load_s=_quantiles(p.get("load_s"), f"{where}.load_s"),
            runtime_bytes=runtime,
        )
    src = data.get("source", {})
    if not isinstance(src, dict):
        raise ProfileError(f"{source}: source: a mapping of where the figures came from")
    return SimProfile(
        name=str(data.get("name", "")) or Path(source).stem,
        model=str(data.get("model", "")),
        source={str(k): str(v) for k, v in src.items()},
        paradigms=paradigms,
    )


def builtin_text() -> str:
    return resources.files("fleet").joinpath("profiles/builtin.json").read_text()


def load_profile(where: str) -> SimProfile:
    """The embedded profile (``builtin``) or a captured JSON file; raises ProfileError."""
    if where == BUILTIN:
        text, source = builtin_text(), "(embedded) builtin"
    else:
        p = Path(where)
        if not p.is_file():
            raise ProfileError(f"{where}: no such profile file")
        text, source = p.read_text(encoding="utf-8"), str(p)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ProfileError(f"{source}: not JSON: {exc}") from None
    return parse_profile(data, source)
