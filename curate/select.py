"""Selection: the job's one predicate over the clip columns, applied after scoring.

The predicate is SQL (DuckDB) over the `clips` columns, e.g.
`motion_score >= 0.5 and aesthetic_score >= 4.5 and watermark_score < 0.5`. It is cut at its
top-level ANDs; each condition is evaluated on its own, so a `kept` clip that fails becomes
`filtered` with reason `select: <the conditions it failed>`. A null score fails its condition (SQL
three-valued logic: only true passes). Scores stay in `clips` either way, so the same predicate with
other thresholds can be replayed in `curate query` without recomputing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from schemas import CLIPS, ClipStatus, Reason


@dataclass(frozen=True)
class SelectConfig:
    where: str | None = None  # SQL predicate over clips columns; a kept clip that fails it becomes `filtered`

    def __post_init__(self):
        if self.where is not None:
            if not self.where.strip():
                raise ValueError("select.where is empty: leave it out (or null) to keep every clip")
            validate(self.where)


_TOKEN = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|\(|\)|\b(?:and|between)\b|[^'"()\s]+|\s+""", re.IGNORECASE)


def conditions(where: str) -> list[str]:
    """`where` cut at its top-level ANDs (not inside parentheses, quotes, or `x BETWEEN a AND b`)."""
    parts, current, depth, between = [], [], 0, 0
    for tok in _TOKEN.findall(where):
        low = tok.lower()
        if tok == "(":
            depth += 1
        elif tok == ")":
            depth -= 1
        elif low == "between" and depth == 0:
            between += 1
        elif low == "and" and depth == 0:
            if between:
                between -= 1
            else:
                parts.append("".join(current).strip())
                current = []
                continue
        current.append(tok)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def validate(where: str) -> None:
    """Raise ValueError when `where` is not a predicate over the clips columns (unknown column, bad SQL)."""
    con = duckdb.connect(":memory:")
    con.register("clips", CLIPS.empty_table())
    try:
        for cond in conditions(where):
            con.execute(f"select ({cond})::boolean from clips").fetchall()
    except duckdb.Error as e:
        raise ValueError(f"select.where {where!r}: {str(e).splitlines()[0]}") from e
    finally:
        con.close()


def apply_select(clips: pa.Table, where: str | None) -> pa.Table:
    """`clips` with kept rows that fail `where` marked filtered, reason naming the failed conditions."""
    if not where or clips.num_rows == 0:
        return clips
    conds = conditions(where)
    con = duckdb.connect(":memory:")
    try:
        con.register("clips", clips)
        cols = ", ".join(f"coalesce(({c})::boolean, false) as c{i}" for i, c in enumerate(conds))
        passed = con.execute(f"select {cols} from clips").fetchall()  # row order of a plain scan is kept
    finally:
        con.close()
    status, reason = clips["status"].to_pylist(), clips["reason"].to_pylist()
    for i, row in enumerate(passed):
        failed = [c for c, ok in zip(conds, row) if not ok]
        if status[i] == ClipStatus.KEPT and failed:
            status[i] = ClipStatus.FILTERED
            reason[i] = f"{Reason.SELECT}: " + " and ".join(failed)
    clips = clips.set_column(clips.schema.get_field_index("status"), clips.schema.field("status"), pa.array(status, pa.string()))
    return clips.set_column(clips.schema.get_field_index("reason"), clips.schema.field("reason"), pa.array(reason, pa.string()))


def split_where(where: str | None) -> tuple[str | None, str | None]:
    """(conditions decidable after scoring, conditions on caption columns, decidable after captioning)."""
    if not where:
        return None, None
    before, after = [], []
    for cond in conditions(where):
        (after if re.search(r"\bcaption_", cond, re.I) else before).append(cond)
    return " and ".join(before) or None, " and ".join(after) or None
