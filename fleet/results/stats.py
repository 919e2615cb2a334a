"""Small statistics the summaries and the analysis share: percentiles, spreads, fairness."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


@dataclass(frozen=True)
class Spread:
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
        return f"{m:.{digits}f} [{lo:.{digits}f}-{hi:.{digits}f}]"


def jain_index(values: list[float]) -> float:
    """Jain's fairness index: 1 when all equal, 1/n when one value takes everything."""
    xs = [v for v in values if v is not None and not math.isnan(v)]
    if not xs:
        return math.nan
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))
