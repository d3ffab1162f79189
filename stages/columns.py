"""What every scorer shares: which clip rows it scores, and how it writes its columns into a batch.

A scorer never drops a row: rows that are not `kept` or have no clip file keep null scores; a clip
whose file cannot be read becomes `status = error`, `reason = score_error`, with the scorer named in `error`.
"""

from __future__ import annotations

from typing import Any, Callable

import pyarrow as pa

from schemas import ClipStatus, Reason


def scorable(row: dict) -> bool:
    return row.get("status") == ClipStatus.KEPT and bool(row.get("clip_uri"))


def set_columns(table: pa.Table, fields: list[pa.Field], rows: list[dict]) -> pa.Table:
    """`table` with `fields` set from `rows` (one dict per row): replaced in place if present, else appended."""
    for f in fields:
        values = pa.array([r.get(f.name) for r in rows], f.type)
        i = table.schema.get_field_index(f.name)
        table = table.set_column(i, f, values) if i >= 0 else table.append_column(f, values)
    return table


def mark_errors(table: pa.Table, errors: dict[int, str], scorer: str) -> pa.Table:
    """Rows at the given indices become `error` / `score_error`, the message prefixed with the scorer."""
    if not errors:
        return table
    status = table["status"].to_pylist()
    reason = table["reason"].to_pylist() if "reason" in table.column_names else [None] * table.num_rows
    error = table["error"].to_pylist() if "error" in table.column_names else [None] * table.num_rows
    for i, msg in errors.items():
        status[i], reason[i], error[i] = ClipStatus.ERROR, Reason.SCORE_ERROR, f"{scorer}: {msg}"
    rows = [{"status": s, "reason": r, "error": e} for s, r, e in zip(status, reason, error)]
    fields = [pa.field("status", pa.string(), nullable=False), pa.field("reason", pa.string()), pa.field("error", pa.string())]
    return set_columns(table, fields, rows)


def score_rows(table: pa.Table, fields: list[pa.Field], scorer: str, score: Callable[[dict], dict[str, Any]]) -> pa.Table:
    """Call `score(row)` for every scorable row; its dict fills `fields`. Errors it raises mark the row."""
    out, errors = [], {}
    for i, row in enumerate(table.to_pylist()):
        if not scorable(row):
            out.append({})
            continue
        try:
            out.append(score(row))
        except ScoreError as e:
            out.append({})
            errors[i] = str(e)
    return mark_errors(set_columns(table, fields, out), errors, scorer)


class ScoreError(Exception):
    """A clip file that cannot be scored (unreadable, undecodable)."""
