"""Statistics the summary, the analysis and the report share, defined once.

Nothing is dropped. A latency statistic is computed over every arrival, not over the requests
that happened to be served:

- a served request counts with its value;
- a request still waiting or streaming when the workload ended (cancelled) counts with the time
  it had waited: a lower bound of its latency (right-censored);
- a request never served (dropped at the app's cap, or failed) counts as never served (+inf).

Percentiles are nearest-rank (numpy's ``inverted_cdf``) over all arrivals. One with a censored
request at or below its rank is a lower bound (that request may truly lie above it) and shown
as ">= x"; one that lands on a never-served request is shown as "unserved". A statistic over
fewer than ``min_n`` requests is shown as "n<min_n", not as a number. SLO attainment is the
share of all arrivals whose first token came within the SLO.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

QUANTILE_METHOD: Final = "inverted_cdf"  # nearest rank: every percentile is one observed request
BOOTSTRAP_RESAMPLES = 1000


@dataclass(frozen=True)
class Outcomes:
    """How a set of arrivals ended."""

    ok: int = 0
    cancelled: int = 0
    dropped: int = 0
    failed: int = 0

    @classmethod
    def of(cls, statuses: Iterable[str]) -> Outcomes:
        xs = list(statuses)
        return cls(*(xs.count(s) for s in ("ok", "cancelled", "dropped", "failed")))

    @property
    def n(self) -> int:
        return self.ok + self.cancelled + self.dropped + self.failed

    @property
    def rate(self) -> float:
        """Completion rate: served whole / arrivals."""
        return self.ok / self.n if self.n else math.nan

    def fmt(self) -> str:
        if not self.n:
            return "-"
        rest = [
            f"{v} {k}"
            for k, v in (
                ("cancelled", self.cancelled),
                ("dropped", self.dropped),
                ("failed", self.failed),
            )
            if v
        ]
        return f"{self.ok}/{self.n} ok" + (f" ({', '.join(rest)})" if rest else "")


@dataclass(frozen=True)
class Estimate:
    """A statistic over requests: its value, how many requests it rests on, and whether it is
    only a lower bound (it landed on a censored request; +inf: on a never-served one)."""

    value: float
    n: int
    lower_bound: bool = False

    def fmt(self, scale: float = 1.0, digits: int = 2, min_n: int = 1) -> str:
        if not self.n or math.isnan(self.value):
            return "-"
        if self.n < min_n:
            return f"n<{min_n}"
        if math.isinf(self.value):
            return "unserved"
        text = f"{self.value * scale:.{digits}f}"
        return f">={text}" if self.lower_bound else text


@dataclass(frozen=True)
class Observed:
    """A latency over a set of arrivals: exact for served requests, lower bounds for the rest."""

    values: np.ndarray  # seconds; +inf for never served
    exact: np.ndarray  # bool per value

    @classmethod
    def of(cls, rows: Sequence, column: str, whole: bool = False) -> Observed:
        """From request rows (status, waited_s and ``column``), by the module's rule; ``whole``:
        the value is exact only for a request served whole (e2e), not for one cut short."""
        values, exact = [], []
        for r in rows:
            v = r[column]
            if v is not None and (r["status"] == "ok" or not whole):
                values.append(float(v))
                exact.append(True)
            elif r["status"] == "cancelled":
                values.append(float(r["waited_s"] or 0.0))
                exact.append(False)
            else:
                values.append(math.inf)
                exact.append(False)
        return cls(np.asarray(values, dtype=float), np.asarray(exact, dtype=bool))

    @property
    def n(self) -> int:
        return len(self.values)

    def quantile(self, q: float) -> Estimate:
        if not self.n:
            return Estimate(math.nan, 0)
        order = np.argsort(self.values, kind="stable")
        k = max(0, math.ceil(q / 100 * self.n) - 1)
        # any censored value at or below rank k may truly lie above it: then a lower bound
        censored = not bool(self.exact[order[: k + 1]].all())
        return Estimate(float(self.values[order[k]]), self.n, censored)

    def within(self, limit_s: float) -> Estimate:
        """Share of arrivals served within ``limit_s`` (SLO attainment)."""
        if not self.n:
            return Estimate(math.nan, 0)
        return Estimate(float(np.mean(self.exact & (self.values <= limit_s))), self.n)


def slowdown(co: Observed, solo: Observed, q: float, seed: int = 0) -> tuple[Estimate, tuple]:
    """Ratio of the q-th percentile, co-run over solo, of the same requests (paired by position:
    ``co`` and ``solo`` hold the same request ids in the same order), and its 95% bootstrap
    confidence interval (requests resampled in pairs). A censored co-run percentile makes the
    ratio a lower bound; a censored baseline makes it unknown (NaN)."""
    a, b = co.quantile(q), solo.quantile(q)
    if not a.n or not b.n or b.lower_bound or not b.value:
        return Estimate(math.nan, min(a.n, b.n)), (math.nan, math.nan)
    point = Estimate(a.value / b.value, a.n, a.lower_bound)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.n, size=(BOOTSTRAP_RESAMPLES, a.n))
    qa = np.percentile(co.values[idx], q, axis=1, method=QUANTILE_METHOD)
    qb = np.percentile(solo.values[idx], q, axis=1, method=QUANTILE_METHOD)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = qa / qb  # inf / inf (both unserved in a resample) is NaN: left out
    ratios = ratios[~np.isnan(ratios)]
    if not len(ratios):
        return point, (math.nan, math.nan)
    lo, hi = np.percentile(ratios, [2.5, 97.5], method=QUANTILE_METHOD)
    return point, (float(lo), float(hi))


@dataclass(frozen=True)
class Spread:
    """A per-trial figure over repetitions: median, min, max and how many trials."""

    median: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Spread:
        xs = [v for v in values if v is not None and not math.isnan(v)]
        if not xs:
            return cls(math.nan, math.nan, math.nan, 0)
        return cls(statistics.median(xs), min(xs), max(xs), len(xs))

    def fmt(self, scale: float = 1.0, digits: int = 2) -> str:
        if not self.n:
            return "-"
        m, lo, hi = self.median * scale, self.lo * scale, self.hi * scale
        if self.n == 1:
            return f"{m:.{digits}f} (n=1)"
        return f"{m:.{digits}f} [{lo:.{digits}f}-{hi:.{digits}f}] n={self.n}"


def jain_index(values: Sequence[float]) -> float:
    """Jain's fairness index over finite values: 1 when all equal, 1/n when one takes all.
    Callers decide which apps belong (see the analysis: both sides measured)."""
    xs = [v for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return math.nan
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))
