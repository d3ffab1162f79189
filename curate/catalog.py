"""DuckDB catalog over a job's Parquet tables: views sources, scenes, clips, shards, takedowns, read-only.

A table is one file, tables/<name>.parquet, or a hive-partitioned folder, tables/<name>/bucket=NNNNN/*.parquet,
whose view has a `bucket` column (from the folder names: `WHERE bucket = 7` reads only that folder).

The tables are read by pyarrow (local or any fsspec URL) and handed to DuckDB as lazy Arrow datasets;
DuckDB itself is then denied every file system, so no query can write, attach or read another file.
(DuckDB's `allowed_paths` would have let it read the Parquet files directly, but it also lets
`COPY ... TO '<that file>' (USE_TMP_FILE false)` overwrite them.)
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import decimal
import io
import json
import math
import os
import posixpath
import tempfile

import duckdb

from curate.layout import Layout
from curate.storage import Output
from schemas import TABLES

FORMATS = ("table", "csv", "json")


def connect(out: str, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with one view per table: OUT/tables/<name>.parquet or the folder OUT/tables/<name>/.

    A partitioned table's view has the columns of its schema in `schemas.TABLES` plus `bucket`; a missing
    table is an empty view with its schema. Part files being written (`*.tmp-*`) are not read. OUT may
    be a local path or an fsspec URL.

    The commit log shows what runs have committed, during a run and after one was killed, before any
    table exists: `committed_clips` (every run's final clip rows, `_run` the run's clock in ns: the
    latest run's are `where _run = (select max(_run) from committed_clips)`) and `committed_sources`.
    `threads`: DuckDB's threads (1: sums of floating-point columns come out the same every time, as
    the release files and the report need). Raises FileNotFoundError when OUT has neither tables/ nor commit/.
    """
    output = Output(out)
    has_tables, has_commit = output.fs.isdir(output.path(Layout.TABLES)), output.fs.isdir(output.path(Layout.COMMIT))
    if not has_tables and not has_commit:
        raise FileNotFoundError(f"no tables/ folder in output {out!r} (looked for {output.path(Layout.TABLES)!r}); has the job run?")
    try:
        os.getcwd()
    except FileNotFoundError:
        # DuckDB needs a working directory. Under `ray job submit` the driver runs in Ray's copy of the
        # checkout, which Ray may remove while the job runs (once no worker uses that runtime env).
        os.chdir(tempfile.gettempdir())
    con = duckdb.connect(":memory:")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    for name, schema in TABLES.items():
        data = output.table_dataset(name) if has_tables else None
        con.register(name, schema.empty_table() if data is None else data)
    for name, rel, schema in (("committed_clips", Layout.commit(*Layout.CLIP_ROWS), TABLES["clips"]),
                              ("committed_sources", Layout.commit(*Layout.SOURCE_ROWS), TABLES["sources"])):
        con.register(name, _committed(output, rel, schema))
    # From here on DuckDB touches no file (reads go through the registered Arrow datasets), and a
    # query cannot switch that back.
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _committed(output: Output, rel: str, schema):
    """The commit log's parts under `rel` as one dataset with `schema`'s columns and `_run` (temporaries,
    named `.part-…`, skipped)."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    schema = pa.schema([*schema, pa.field("_run", pa.int64())])
    folder = output.path(rel)
    parts = sorted(p for p in output.fs.ls(folder, detail=False) if posixpath.basename(p).startswith("part-") and p.endswith(".parquet")) \
        if output.fs.isdir(folder) else []
    if not parts:
        return schema.empty_table()
    return pads.dataset(parts, schema=schema, format="parquet", filesystem=output.arrow_fs)


def query(out: str, sql: str, fmt: str = "table") -> str:
    """Run `sql` against the catalog of `out` and render the result as "table", "csv" or "json".

    "json" is one array of row objects (columns in order); NaN/inf become null, bytes base64, dates
    and times ISO strings. A statement without a result gives "". SQL errors propagate as duckdb errors.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    con = connect(out)
    try:
        cursor = con.execute(sql)
        if cursor.description is None:
            return ""
        columns = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
    finally:
        con.close()
    if fmt == "json":
        records = [dict(zip(columns, (_jsonable(v) for v in row))) for row in rows]
        return json.dumps(records, ensure_ascii=False, allow_nan=False)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_text(v, null="") for v in row] for row in rows)
        return buf.getvalue()
    return _render_table(columns, rows)


def _jsonable(value):
    """A DuckDB Python value as plain JSON data."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (dt.date, dt.time, dt.datetime)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)  # timedelta, UUID, anything else: its text


def _text(value, null: str) -> str:
    """One cell as text: nested values as compact JSON, NULL as `null`."""
    if value is None:
        return null
    if isinstance(value, (dict, list, tuple, bytes, bytearray, memoryview)):
        return json.dumps(_jsonable(value), ensure_ascii=False, separators=(",", ":"))
    if isinstance(value, (dt.date, dt.time, dt.datetime)):
        return value.isoformat()
    return str(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, decimal.Decimal)) and not isinstance(value, bool)


def _render_table(columns: list[str], rows: list[tuple]) -> str:
    """An aligned text table: header, rule, rows (numbers right-aligned), and a row count."""
    cells = [[_text(v, null="NULL") for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [all(_is_number(row[i]) or row[i] is None for row in rows) for i in range(len(columns))]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [line(columns), "  ".join("-" * w for w in widths), *(line(r) for r in cells)]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out) + "\n"
