"""The runs under a runs directory, as rows: ``fleet runs``.

    rows = list_runs(Path("runs"))   # newest first; RunRow(run_id, experiment, started_at, ...)

Read from each run's directory alone (manifest, store, lock), so a live, crashed or copied-in
run is listed as it is; a directory that is not a run is skipped, one whose files cannot be read
is listed with the reason.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path

from fleet.results.run_state import run_state


@dataclass(frozen=True)
class RunRow:
    run_id: str
    path: str
    experiment: str = ""
    started_at: float | None = None
    duration_s: float | None = None
    state: str = ""  # live | finished | stopped | interrupted | unreadable
    phones: tuple[str, ...] = ()
    paradigms: tuple[str, ...] = ()
    completed: int = 0
    failed: int = 0
    interrupted: int = 0  # interrupted, not run, or never finished
    trials: int = 0
    error: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def read_run(run_dir: Path) -> RunRow:
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
        db = sqlite3.connect(f"file:{run_dir / 'results.sqlite'}?mode=ro", uri=True)
        try:
            counts = dict(db.execute("SELECT status, COUNT(*) FROM trials GROUP BY status"))
            phones = tuple(r[0] for r in db.execute("SELECT DISTINCT phone FROM trials"))
            paradigms = tuple(r[0] for r in db.execute("SELECT DISTINCT paradigm FROM trials"))
        finally:
            db.close()
        state = run_state(run_dir).status
    except (OSError, ValueError, sqlite3.Error) as e:
        return RunRow(run_dir.name, str(run_dir), state="unreadable", error=str(e)[:200])
    started, ended = manifest.get("started_at"), manifest.get("ended_at")
    total = sum(counts.values())
    return RunRow(
        run_id=manifest.get("run_id", run_dir.name),
        path=str(run_dir),
        experiment=(manifest.get("experiment") or {}).get("name", ""),
        started_at=started,
        duration_s=(ended - started) if started and ended else None,
        state=state,
        phones=tuple(sorted(phones)),
        paradigms=tuple(sorted(paradigms)),
        completed=counts.get("completed", 0),
        failed=counts.get("failed", 0),
        interrupted=total - counts.get("completed", 0) - counts.get("failed", 0),
        trials=total,
    )


def list_runs(runs_dir: Path) -> list[RunRow]:
    """Every run under ``runs_dir``, newest first."""
    if not runs_dir.is_dir():
        return []
    rows = [
        read_run(d)
        for d in runs_dir.iterdir()
        if d.is_dir() and (d / "results.sqlite").is_file() and (d / "manifest.json").is_file()
    ]
    return sorted(rows, key=lambda r: (r.started_at or 0.0, r.run_id), reverse=True)


def write_index(runs_dir: Path, rows: list[RunRow]) -> Path:
    """``runs/index.html``: every run with its state and counts, linking its report."""
    import html
    import time

    def cell(r: RunRow) -> str:
        started = (
            time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started_at)) if r.started_at else ""
        )
        report = Path(r.path) / "report.html"
        link = (
            f'<a href="{html.escape(report.relative_to(runs_dir).as_posix())}">'
            f"{html.escape(r.run_id)}</a>"
            if report.is_file()
            else html.escape(r.run_id)
        )
        cols = (
            link, html.escape(r.experiment), started,
            f"{r.duration_s:.0f} s" if r.duration_s is not None else "",
            html.escape(r.state + (f": {r.error}" if r.error else "")),
            html.escape(", ".join(r.phones)), html.escape(", ".join(r.paradigms)),
            str(r.completed), str(r.failed), str(r.interrupted),
        )  # fmt: skip
        return "<tr>" + "".join(f"<td>{c}</td>" for c in cols) + "</tr>"

    head = ("run", "experiment", "started", "duration", "state", "phones", "paradigms", "ok",
            "failed", "cut")  # fmt: skip
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>fleet runs</title>
<style>body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
th {{ background: #f3f3f3; }}</style></head><body>
<h1>{len(rows)} run(s)</h1>
<table><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr>
{"".join(cell(r) for r in rows)}
</table></body></html>
"""
    out = runs_dir / "index.html"
    out.write_text(page, encoding="utf-8")
    return out
