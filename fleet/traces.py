"""Workloads as traces: every request an app will send, generated once and replayed.

A trace is the full request sequence of one app for one (workload, repetition): when each request
arrives (open loop) or that it follows the previous response (closed loop), its prompt and output
lengths, and the conversation (session, turn) it belongs to. The coordinator generates it from the
run's seed (or reads it from a JSONL file, arrival kind ``trace``), stores it with the run and
sends it with every trial of that repetition, so an app's solo baseline and its co-run replay the
same requests, with the same ids. Prompt token ids are drawn on the phone from the seed and the
request's index, so they are the same too.

    reqs = generate_trace(app, duration_s=12, seed=3, max_context=1024)
    reqs = read_trace_file(Path("keyboard.jsonl"), app="keyboard")

JSONL format, one request per line (``t_s`` is seconds after the workload starts)::

    {"t_s": 0.52, "prompt_tokens": 32, "output_tokens": 8}
    {"t_s": 1.90, "prompt_tokens": 60, "output_tokens": 40, "session": "c1", "turn": 0}

``session`` and ``turn`` are optional: requests of one session form a conversation whose every
turn's prompt carries the previous turns (turn k is sent only once turn k-1 has finished; the
wait is recorded as app-side delay).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from fleet.records import AppWorkload, ArrivalPattern, TraceRequest

__all__ = ["TraceError", "TraceRequest", "generate_trace", "read_trace_file"]

CLOSED_LOOP_MAX = 5000  # most requests a closed-loop app's trace holds
MIN_CYCLE_S = 0.01  # a closed-loop app without think time still needs this long per request
MAX_TRACE_TOKENS = 1 << 16  # most prompt or output tokens of one traced request


class TraceError(ValueError):
    """A trace file that cannot be used; the message names the file, the line and the field."""


def generate_trace(
    app: AppWorkload, duration_s: float, seed: int, max_context: int = 0
) -> tuple[TraceRequest, ...]:
    """The requests of a Poisson or closed-loop app within ``duration_s``, from the seed.

    Poisson: exponential inter-arrival times at ``rate_per_s``, ``burst_size`` requests per
    arrival. Closed loop: as many requests as the app could send (``max_requests``, or one per
    think time within the duration), in order; a multi-turn app starts a new session after
    ``turns_per_session`` turns or when the next turn would exceed ``max_context`` tokens."""
    rng = random.Random(f"trace:{seed}:{app.name}")
    if app.pattern is ArrivalPattern.POISSON:
        times: list[float] = []
        t = 0.0
        while True:
            t += rng.expovariate(app.rate_per_s)
            if t >= duration_s or (app.max_requests and len(times) >= app.max_requests):
                break
            times.extend([t] * max(1, app.burst_size))
        if app.max_requests:
            times = times[: app.max_requests]
        return tuple(
            TraceRequest(app.name, i, at, app.prompt_tokens, app.output_tokens)
            for i, at in enumerate(times)
        )
    if app.pattern is not ArrivalPattern.CLOSED_LOOP:
        raise ValueError(f"app {app.name}: a {app.pattern.value} app's trace comes from its file")
    n = app.max_requests or min(
        CLOSED_LOOP_MAX, math.ceil(duration_s / max(app.think_time_s, MIN_CYCLE_S)) + 1
    )
    turn_tokens = app.prompt_tokens + app.output_tokens
    out, session, turn = [], 0, 0
    for i in range(n):
        if (
            app.multi_turn
            and turn
            and (
                (app.turns_per_session and turn >= app.turns_per_session)
                or (
                    max_context
                    and app.system_prompt_tokens + (turn + 1) * turn_tokens > max_context
                )
            )
        ):
            session, turn = session + 1, 0
        out.append(
            TraceRequest(
                app.name,
                i,
                None,
                app.prompt_tokens,
                app.output_tokens,
                f"{app.name}#{session}" if app.multi_turn else "",
                turn if app.multi_turn else 0,
            )
        )
        turn += 1
    return tuple(out)


def read_trace_file(path: Path, app: str) -> tuple[TraceRequest, ...]:
    """An app's trace from a JSONL file, in arrival order; raises TraceError naming the line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read trace: {exc.strerror or exc}") from None
    rows: list[tuple[float, int, int, str, int | None]] = []
    for no, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{no}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise TraceError(f"{where}: not JSON: {exc}") from None
        if not isinstance(row, dict):
            raise TraceError(f"{where}: expected an object per line")
        unknown = sorted(set(row) - {"t_s", "prompt_tokens", "output_tokens", "session", "turn"})
        if unknown:
            raise TraceError(f"{where}: unknown field {unknown[0]!r}")
        rows.append(
            (
                _number(row, "t_s", where, float, 0.0, 1e7),
                _number(row, "prompt_tokens", where, int, 1, MAX_TRACE_TOKENS),
                _number(row, "output_tokens", where, int, 1, MAX_TRACE_TOKENS),
                _session(row, where),
                _number(row, "turn", where, int, 0, 1 << 20) if "turn" in row else None,
            )
        )
    if not rows:
        raise TraceError(f"{path}: the trace holds no requests")
    rows.sort(key=lambda r: r[0])  # stable: equal times keep the file's order
    turns: dict[str, int] = {}
    out = []
    for i, (at, prompt, output, session, turn) in enumerate(rows):
        if session:
            expected = turns.get(session, 0)
            if turn is not None and turn != expected:
                raise TraceError(
                    f"{path}: session {session!r}: turn {turn} arrives where turn {expected} "
                    "is due (turns are 0, 1, 2, ... in arrival order)"
                )
            turn, turns[session] = expected, expected + 1
        out.append(TraceRequest(app, i, at, prompt, output, session, turn or 0))
    return tuple(out)


def _number(row: dict, key: str, where: str, kind: type, lo: float, hi: float):
    if key not in row:
        raise TraceError(f"{where}: missing field {key!r}")
    v = row[key]
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi  # NaN fails
    if ok and kind is int:
        ok = float(v).is_integer()
    if not ok:
        raise TraceError(
            f"{where}: {key} must be a{'n integer' if kind is int else ' number'} in "
            f"[{lo:g}, {hi:g}], got {v!r}"
        )
    return kind(v)


def _session(row: dict, where: str) -> str:
    v = row.get("session", "")
    if not isinstance(v, (str, int)) or isinstance(v, bool) or len(str(v)) > 200:
        raise TraceError(f"{where}: session must be a string of at most 200 characters")
    return str(v)
