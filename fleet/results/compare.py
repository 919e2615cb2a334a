"""``fleet compare A B``: two runs' paradigm comparisons side by side, with the deltas.

For each (phone, model, workload, paradigm) both runs measured, each figure of the comparison
comes with both values, B - A, and whether the difference exceeds the spread:

- per-trial figures (tokens/s, peak PSS, kills, cold starts, Jain's index per repetition) carry
  each run's min-max over its trials: "beyond" when the two ranges do not overlap, "within"
  when they do, "n=1" when a run has a single trial (no spread to compare against);
- per-request figures (foreground p50 TTFT, SLO met) pool every arrival and have no per-trial
  spread: their row says so ("pooled") and gives both n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from fleet.results.analysis import GroupResult, analyze
from fleet.results.stats import Estimate, Spread
from fleet.results.store import ResultStore

SPREAD_FIGURES = (  # (label, attribute, scale, unit)
    ("tokens/s", "tokens_per_s", 1.0, ""),
    ("peak PSS", "peak_pss_bytes", 2**-20, " MiB"),
    ("LMK kills", "kills", 1.0, ""),
    ("cold starts", "cold_starts", 1.0, ""),
    ("Jain (per rep)", "fairness_by_rep", 1.0, ""),
)
POOLED_FIGURES = (("fg p50 TTFT", "fg_ttft_p50", 1e3, " ms"), ("SLO met", "slo", 100.0, " %"))


@dataclass(frozen=True)
class Delta:
    group: str  # phone / model / workload / paradigm
    figure: str
    a: str
    b: str
    delta: str
    verdict: str  # beyond | within | n=1 | pooled | -

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def _groups(run_dir: Path) -> dict[tuple[str, str, str, str], GroupResult]:
    store = ResultStore(run_dir / "results.sqlite", readonly=True)  # a reader: writes nothing
    try:
        return {(g.phone, g.model, g.workload, g.paradigm): g for g in analyze(store)}
    finally:
        store.close()


def _spread_row(key: str, label: str, a: Spread, b: Spread, scale: float, unit: str) -> Delta:
    def text(s: Spread) -> str:
        if not s.n:
            return "-"
        return f"{s.median * scale:.3g}{unit} [{s.lo * scale:.3g}-{s.hi * scale:.3g}] n={s.n}"

    if not a.n or not b.n:
        return Delta(key, label, text(a), text(b), "-", "-")
    d = (b.median - a.median) * scale
    if a.n < 2 or b.n < 2:
        verdict = "n=1"
    else:
        verdict = "beyond" if (b.lo > a.hi or b.hi < a.lo) else "within"
    return Delta(key, label, text(a), text(b), f"{d:+.3g}{unit}", verdict)


def _pooled_row(key: str, label: str, a: Estimate, b: Estimate, scale: float, unit: str) -> Delta:
    def text(e: Estimate) -> str:
        if not e.n or math.isnan(e.value):
            return "-"
        return ("unserved" if math.isinf(e.value) else f"{e.value * scale:.3g}{unit}") + f" n={e.n}"

    ok = a.n and b.n and all(math.isfinite(e.value) for e in (a, b))
    d = f"{(b.value - a.value) * scale:+.3g}{unit}" if ok else "-"
    return Delta(key, label, text(a), text(b), d, "pooled" if ok else "-")


def compare_runs(run_a: Path, run_b: Path) -> tuple[list[Delta], list[str]]:
    """(rows, groups measured by one run only)."""
    ga, gb = _groups(run_a), _groups(run_b)
    rows: list[Delta] = []
    for k in sorted(set(ga) & set(gb)):
        key = " / ".join(k)
        a, b = ga[k], gb[k]
        for label, attr, scale, unit in POOLED_FIGURES:
            rows.append(_pooled_row(key, label, getattr(a, attr), getattr(b, attr), scale, unit))
        for label, attr, scale, unit in SPREAD_FIGURES:
            rows.append(_spread_row(key, label, getattr(a, attr), getattr(b, attr), scale, unit))
    only = [f"{' / '.join(k)} (only in {run_a.name})" for k in sorted(set(ga) - set(gb))] + [
        f"{' / '.join(k)} (only in {run_b.name})" for k in sorted(set(gb) - set(ga))
    ]
    return rows, only
