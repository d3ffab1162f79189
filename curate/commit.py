"""The commit log: every step's results, written by the workers as they are made.

    OUT/commit/<step>/<key>/part-<hash of the part's ids>.parquet

`key` names the step's settings (and the code rules that shape its results), so a change of settings
starts a new folder and never mixes with results made under the old ones. A part holds one block's
results (`id` = the clip or source each row is about, `match` = what else about the row its result
depends on, e.g. the clip's bytes or the prompt, then the step's columns). It is written under a
temporary name that starts with a dot (readers skip those) and renamed, so a part is whole or absent; a
retried task writes a part of the same name with the same rows. The number of files grows with blocks
(thousands of rows each), not with sources or clips, and `compact` folds a folder's parts into one.

A worker looks a block's results up by (id, match) through `CommitLog.locate(ids)` and `rows`: the
keys of small parts (a block's) are read once per worker and kept; of a compacted part, sorted by id in
row groups of ROW_GROUP rows, only the groups whose id range holds the block's ids are read, for the
keys and then for the rows. So a worker never holds a step's whole index (100M clips: gigabytes per
worker per step). Rows of one id under other matches stay: going back to an earlier prompt finds its
captions again.
"""

from __future__ import annotations

import bisect
import hashlib
import posixpath
import time
import uuid

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.layout import Layout

PART = "part-"
FOLD = "part-fold-"  # a part `compact` wrote
RUN = "_run"  # the wall clock (ns) of the run that wrote a row: of two rows for one id, the later one wins
FOLD_ROWS = 1 << 18  # rows `compact` holds at once: a larger folder is folded one id range at a time
ROW_GROUP = 4096  # rows per row group of a compacted part (sorted by id): a lookup reads only the groups holding its ids


def part_name(ids: list[str], matches: list | None = None) -> str:
    """part-<hash of the (id, match) pairs it holds>.parquet: a retried block writes the same name."""
    keys = sorted(f"{i}\t{m}" for i, m in zip(ids, matches or [None] * len(ids)))
    return PART + hashlib.sha256("\n".join(keys).encode()).hexdigest()[:20] + ".parquet"


def _is_part(path: str) -> bool:
    name = posixpath.basename(path)
    return name.startswith(PART) and name.endswith(".parquet")


class CommitLog:
    """One step's committed results under one settings key."""

    def __init__(self, root_url: str, step: str, key: str):
        self.url = f"{root_url.rstrip('/')}/{Layout.commit(step, key)}"
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self._listed: list[str] | None = None  # the parts, listed once (see `locate`)
        self._small: dict[str, pa.Table] = {}  # small part -> its keys, read once
        self._groups: dict[str, list] = {}  # part -> [(min id, max id)] of its row groups, read once

    # ------------------------------------------------------------------ writing

    def write(self, table: pa.Table, run: int | None = None, row_group_size: int | None = None, fold: bool = False) -> str | None:
        """Commit one block's rows (must have `id`); returns the part's name, or None for no rows. A
        fold (`compact`'s output) is named part-fold-<hash>.parquet."""
        if table.num_rows == 0:
            return None
        if run is not None:
            table = table.append_column(RUN, pa.array([run] * table.num_rows, pa.int64()))
        matches = table["match"].to_pylist() if "match" in table.column_names else None
        name = part_name(table["id"].to_pylist(), matches)
        if fold:
            name = FOLD + name[len(PART):]
        self.fs.makedirs(self.root, exist_ok=True)
        final = f"{self.root}/{name}"
        tmp = f"{self.root}/.{name}.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open(tmp, "wb") as f:
            pq.write_table(table, f, compression="zstd", row_group_size=row_group_size)
        self.fs.mv(tmp, final)
        return name

    # ------------------------------------------------------------------ reading

    def parts(self) -> list[str]:
        if not self.fs.exists(self.root):
            return []
        return sorted(p for p in self.fs.ls(self.root, detail=False) if _is_part(p))

    def read(self, columns: list[str] | None = None, latest: bool = True, keys=("id",)) -> pa.Table | None:
        """Every committed row (of each `keys` only the latest when `latest`), or None when nothing is committed."""
        tables = []
        for p in self.parts():
            with self.fs.open(p, "rb") as f:
                tables.append(pq.read_table(f, columns=columns))
        if not tables:
            return None
        table = pa.concat_tables(tables, promote_options="default")
        return latest_rows(table, [k for k in keys if k in table.column_names]) if latest else table

    def locate(self, ids) -> dict[tuple[str, str | None], str]:
        """{(id, match): part path} of the committed rows of `ids` (of equal keys the later run wins).

        The parts are listed once per object (a part written after that is not seen). A small part (at
        most ROW_GROUP rows: one block's) has its keys read once and kept; a large one (a fold, sorted by
        id in row groups of ROW_GROUP rows) is asked only for the row groups whose id range holds any of
        `ids`: a worker holds the keys of the parts not yet folded, never a step's whole index."""
        wanted = sorted({i for i in ids if i is not None})
        if not wanted:
            return {}
        if self._listed is None:
            self._listed = self.parts()
        values = pa.array(wanted, pa.string())
        found = []
        for p in self._listed:
            keys = self._keys(p, wanted)
            keys = keys.filter(pc.is_in(keys["id"], value_set=values))
            if keys.num_rows:
                runs = keys[RUN].to_pylist() if RUN in keys.column_names else [0] * keys.num_rows
                matches = keys["match"].to_pylist() if "match" in keys.column_names else [None] * keys.num_rows
                found += zip(runs, keys["id"].to_pylist(), matches, [p] * keys.num_rows)
        out = {}
        for _run, i, m, p in sorted(found, key=lambda r: r[0]):  # stable: a later part of the same run wins
            out[(i, m)] = p
        return out

    def _keys(self, part: str, ids: list[str]) -> pa.Table:
        """The id, match and run columns of a part: all of a small part (kept), the row groups of a large
        one that may hold `ids` (sorted)."""
        if part in self._small:
            return self._small[part]
        with self.fs.open(part, "rb") as f:
            pf = pq.ParquetFile(f)
            cols = [c for c in ("id", "match", RUN) if c in pf.schema_arrow.names]
            if pf.metadata.num_rows <= ROW_GROUP:
                self._small[part] = pf.read(columns=cols)
                return self._small[part]
            return self._read_ids(pf, part, ids, cols)

    def rows(self, wanted: dict[tuple[str, str | None], str]) -> dict[str, dict]:
        """{id: committed row} for the (id, match) keys asked, read from the parts `locate` named."""
        by_part: dict[str, set] = {}
        for key, p in wanted.items():
            by_part.setdefault(p, set()).add(key)
        out = {}
        for p, keys in by_part.items():
            ids = sorted({i for i, _ in keys})
            with self.fs.open(p, "rb") as f:
                t = self._read_ids(pq.ParquetFile(f), p, ids)
            t = t.filter(pc.is_in(t["id"], pa.array(ids, pa.string())))
            for r in t.to_pylist():
                if (r["id"], r.get("match")) in keys:
                    r.pop(RUN, None)
                    out[r["id"]] = r
        return out

    def _read_ids(self, pf: pq.ParquetFile, part: str, ids: list[str], columns: list[str] | None = None) -> pa.Table:
        """The row groups of a part that may hold any of `ids` (sorted), by the groups' id statistics: a
        compacted part (millions of rows) costs a lookup one group, not the whole file."""
        groups = self._groups.get(part)
        if groups is None:
            md, col = pf.metadata, pf.schema_arrow.get_field_index("id")
            groups = []
            for g in range(md.num_row_groups):
                st = md.row_group(g).column(col).statistics
                groups.append((st.min, st.max) if st is not None and st.has_min_max else (None, None))
            self._groups[part] = groups
        if len(groups) <= 1:
            return pf.read(columns=columns)
        need = []
        for g, (lo, hi) in enumerate(groups):
            if lo is None:
                need.append(g)
                continue
            k = bisect.bisect_left(ids, lo)
            if k < len(ids) and ids[k] <= hi:
                need.append(g)
        if not need:
            schema = pf.schema_arrow
            return (pa.schema([schema.field(c) for c in columns]) if columns else schema).empty_table()
        return pf.read_row_groups(need, columns=columns)

    def compact(self, min_parts: int = 64) -> bool:
        """Fold the folder's parts into sorted parts when there are more than `min_parts` that are not
        folds (a large folder's folds are many) (latest row per
        (id, match), sorted by id in row groups of ROW_GROUP rows). Up to FOLD_ROWS rows are folded in
        memory into one part; a larger folder is folded by id range, in memory one range at a time: the
        parts are streamed once into a temporary file per range (ranges cut at quantiles of a sample of
        the ids), and each range becomes one part. The folds are written before the parts they replace
        are removed: a crash in between loses nothing (the fold's rows are the newest of their keys)."""
        parts = self.parts()
        if len(parts) <= min_parts:
            return False
        if sum(not posixpath.basename(p).startswith(FOLD) for p in parts) <= min_parts:
            return False  # mostly folds already (a large folder is several): nothing worth a refold yet
        stamp = time.time_ns()
        total = sum(self._meta(p).num_rows for p in parts)
        bounds = self._bounds(parts, total, -(-total // FOLD_ROWS)) if total > FOLD_ROWS else []
        if not bounds:
            written = {self._fold(self.read(keys=("id", "match")), stamp)}
        else:
            written = set()
            for spill in self._spill(parts, bounds):
                with self.fs.open(spill, "rb") as f:
                    table = pq.read_table(f)
                self.fs.rm(spill)
                written.add(self._fold(latest_rows(table, ["id", "match"] if "match" in table.column_names else ["id"]), stamp))
        for p in parts:
            if p not in written:
                self.fs.rm(p)
        self._listed, self._small = None, {}
        return True

    def _fold(self, table: pa.Table, stamp: int) -> str:
        """Write latest rows sorted by id as one part (stamped `stamp`); returns its path."""
        table = table.sort_by([("id", "ascending")])
        table = table.drop_columns([RUN]) if RUN in table.column_names else table
        return f"{self.root}/{self.write(table, run=stamp, row_group_size=ROW_GROUP, fold=True)}"

    def _meta(self, part: str) -> pq.FileMetaData:
        with self.fs.open(part, "rb") as f:
            return pq.ParquetFile(f).metadata

    def _bounds(self, parts: list[str], total: int, ranges: int) -> list[str]:
        """`ranges` - 1 ids that cut the folder's `total` ids into ranges of about equal size (quantiles
        of a sample of about 100,000 ids, read from the id column only)."""
        stride = max(1, total // 100_000)
        sample = []
        for p in parts:
            with self.fs.open(p, "rb") as f:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=65536, columns=["id"]):
                    sample += batch.column(0).take(pa.array(range(0, batch.num_rows, stride))).to_pylist()
        sample.sort()
        return sorted({sample[len(sample) * k // ranges] for k in range(1, ranges)})

    def _spill(self, parts: list[str], bounds: list[str]) -> list[str]:
        """Every row of `parts` (with its run) into a temporary file per id range, in parts order (so a
        tie of runs keeps the later part's row); returns the files that got rows."""
        schemas = []
        for p in parts:
            with self.fs.open(p, "rb") as f:
                schemas.append(pq.read_schema(f))
        schema = pa.unify_schemas([*schemas, pa.schema([pa.field(RUN, pa.int64())])], promote_options="default")
        tag = uuid.uuid4().hex[:8]
        paths = [f"{self.root}/.fold-{k:05d}.parquet.tmp-{tag}" for k in range(len(bounds) + 1)]
        files, writers = {}, {}
        cuts = pa.array(bounds, pa.string())
        try:
            for p in parts:
                with self.fs.open(p, "rb") as f:
                    for batch in pq.ParquetFile(f).iter_batches(batch_size=65536):
                        table = _conform(pa.Table.from_batches([batch]), schema)
                        ids = table["id"]
                        k = pc.cast(pc.greater_equal(ids, cuts[0]), pa.int32())  # the range: how many cuts are <= id
                        for b in cuts[1:]:
                            k = pc.add(k, pc.cast(pc.greater_equal(ids, b), pa.int32()))
                        for r in pc.unique(k).to_pylist():
                            if r not in writers:
                                files[r] = self.fs.open(paths[r], "wb")
                                writers[r] = pq.ParquetWriter(files[r], schema, compression="zstd")
                            writers[r].write_table(table.filter(pc.equal(k, r)))
        finally:
            for r in writers:
                writers[r].close()
                files[r].close()
        return [paths[r] for r in sorted(writers)]

def latest_rows(table: pa.Table, keys=("id",)) -> pa.Table:
    """Of the rows sharing `keys`, the one of the latest run (ties: the later one in the table)."""
    if table.num_rows == 0:
        return table
    table = table.append_column("_i", pa.array(range(table.num_rows), pa.int64()))
    if RUN not in table.column_names:
        table = table.append_column(RUN, pa.array([0] * table.num_rows, pa.int64()))
    # sort by (keys, run, position) and keep the last row of each key
    keys = list(keys)
    order = table.sort_by([*((k, "ascending") for k in keys), (RUN, "ascending"), ("_i", "ascending")])
    if order.num_rows > 1:
        n = order.num_rows
        change = None
        for k in keys:
            col = pc.fill_null(order[k].cast(pa.string()), "\x00null")
            diff = pc.not_equal(col.slice(0, n - 1), col.slice(1))
            change = diff if change is None else pc.or_(change, diff)
        change = change.combine_chunks() if isinstance(change, pa.ChunkedArray) else change
        order = order.filter(pa.concat_arrays([change, pa.array([True])]))
    return order.drop_columns(["_i", RUN])


def run_stamp() -> int:
    """This run's stamp for RUN (the wall clock, so later runs win)."""
    return time.time_ns()


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with `schema`'s columns, in order and types (missing ones null; no run: 0)."""
    cols = []
    for field in schema:
        if field.name in table.column_names:
            cols.append(table[field.name].cast(field.type))
        elif field.name == RUN:
            cols.append(pa.array([0] * table.num_rows, pa.int64()))
        else:
            cols.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(cols, schema=schema)
