"""``fleet export RUN --format csv|parquet|jsonl``: every table of a run's store as files a
notebook or a spreadsheet takes, one per table (``docs/results.md`` describes each column).

    paths = export_run(Path("runs/r"), Path("runs/r/export"), "parquet")

Views are exported as their current attempt (``requests``, ``events``, ``samples``,
``service_stats``, ``device_readings``); the ``*_all`` tables with every attempt of a resumed
run are exported too, so nothing the store holds is left behind. Parquet keeps SQLite's column
types (integers as int64, REAL as float64, TEXT as string) through pyarrow.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

FORMATS = ("csv", "parquet", "jsonl")
SAFE_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")  # a crafted store's odd names are not exported


def tables(db: sqlite3.Connection) -> list[str]:
    """Every table and view, views (what readers use) first."""
    rows = db.execute(
        "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view') "
        "AND name NOT LIKE 'sqlite_%' ORDER BY type DESC, name"
    ).fetchall()
    return [name for name, _ in rows if SAFE_NAME.fullmatch(name)]  # the store's own names


def export_run(run_dir: Path, out_dir: Path, fmt: str) -> list[Path]:
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: one of {', '.join(FORMATS)}")
    db = sqlite3.connect(f"file:{run_dir / 'results.sqlite'}?mode=ro", uri=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        for name in tables(db):
            cur = db.execute(f'SELECT * FROM "{name}"')
            columns = [d[0] for d in cur.description]
            rows = cur.fetchall()
            path = out_dir / f"{name}.{fmt}"
            if fmt == "jsonl":
                with path.open("w") as f:
                    for row in rows:
                        f.write(json.dumps(dict(zip(columns, row, strict=True))) + "\n")
            else:
                _write_arrow(path, fmt, columns, rows, _types(db, name, columns))
            written.append(path)
    finally:
        db.close()
    return written


def _types(db: sqlite3.Connection, table: str, columns: list[str]) -> dict[str, str]:
    declared = {r[1]: (r[2] or "").upper() for r in db.execute(f'PRAGMA table_info("{table}")')}
    return {c: declared.get(c, "") for c in columns}


def _write_arrow(path: Path, fmt: str, columns: list[str], rows: list, types: dict) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    def arrow_type(declared: str, values: list) -> pa.DataType:
        if "INT" in declared:
            return pa.int64()
        if "REAL" in declared:
            return pa.float64()
        if "TEXT" in declared:
            return pa.string()
        kinds = {type(v) for v in values if v is not None}  # a view's column: by its values
        if kinds and kinds <= {int}:
            return pa.int64()
        if kinds and kinds <= {int, float}:
            return pa.float64()
        return pa.string()

    arrays = []
    for i, c in enumerate(columns):
        values = [r[i] for r in rows]
        t = arrow_type(types[c], values)
        if t == pa.string():
            values = [None if v is None else str(v) for v in values]
        arrays.append(pa.array(values, type=t))
    table = pa.Table.from_arrays(arrays, names=columns)
    if fmt == "parquet":
        pq.write_table(table, path)
    else:
        pacsv.write_csv(table, path)
