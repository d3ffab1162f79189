"""What a job reads: every video file under `input.dir`, or the rows of `input.manifest`.

Both give tables with the same columns: uri, license, title, author, source_url, attribution (the
licence still raw; ingest normalises it). Job-level values fill what a row leaves empty.

Neither is held whole: `Listing` yields the rows in tables of at most `rows` (the plan's waves), so the
driver holds one wave of a 100M-row manifest or folder, never all of it. A folder is walked one
directory at a time (each directory's entries sorted, the order the same on every run); a manifest is
read with pyarrow's streaming readers (CSV and JSON Lines in blocks, Parquet by row group) on one thread
(a threaded CSV reader reads ahead some 300 MB) and each batch is normalised with Arrow compute, not a
loop over rows. `python -m curate.bench.scale --manifest-rows N` measures the driver's memory for it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv
import pyarrow.json
import pyarrow.parquet as pq

from curate.config import InputConfig
from stages.ingest import INPUT_COLUMNS

INPUT_SCHEMA = pa.schema([pa.field(c, pa.string()) for c in INPUT_COLUMNS])
MANIFEST_FORMATS = (".csv", ".jsonl", ".ndjson", ".json", ".parquet")
_BLOCK_BYTES = 1 << 20  # CSV / JSON Lines read in blocks of this size (the CSV reader holds some 50x a block)


class InputError(RuntimeError):
    """The input location cannot be read at all (as opposed to one bad file, which is a sources row)."""


class Listing:
    """The job's input rows, in tables of at most `rows` (iterate it once). After the iteration, `n` is
    how many rows it gave and `others` how many files under `input.dir` were not videos (skipped)."""

    def __init__(self, cfg: InputConfig, rows: int = 20000):
        if not (cfg.dir or cfg.manifest):
            raise ValueError("a listing needs input.dir or input.manifest")
        self.cfg, self.rows, self.n, self.others = cfg, max(1, rows), 0, 0
        self.skipped: list[str] = []  # the first few skipped files, for the log
        if cfg.manifest:
            _manifest_format(cfg.manifest)  # an unknown format fails before anything runs

    def __iter__(self) -> Iterator[pa.Table]:
        batches = self._dir() if self.cfg.dir else self._manifest()
        for table in _rebatch(batches, self.rows):
            self.n += table.num_rows
            yield table

    # ---- a folder
    def _dir(self) -> Iterator[pa.Table]:
        cfg = self.cfg
        try:
            fs, root = fsspec.core.url_to_fs(cfg.dir)
            if not fs.isdir(root):
                raise InputError(f"input.dir {cfg.dir} is not a readable folder")
        except (OSError, ValueError) as e:
            raise InputError(f"input.dir {cfg.dir} cannot be listed: {e}") from e
        exts = tuple(e.lower() for e in cfg.extensions)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        local = protocol in ("file", "local")

        def failed(e: OSError):
            raise InputError(f"input.dir {cfg.dir} cannot be listed: {e}") from e

        uris: list[str] = []
        for path, dirs, files in fs.walk(root, detail=True, on_error=failed):
            ordered = sorted(dirs.items())  # walk() recurses in the order `dirs` holds
            dirs.clear()
            dirs.update(ordered)
            # A folder named like a video is an input that cannot be read (an error row), not something to drop.
            names = sorted([n for n in dirs if n.lower().endswith(exts)] + [n for n in files if n])
            for name in names:
                p = f"{path.rstrip('/')}/{name}"
                if not name.lower().endswith(exts):
                    self.others += 1
                    if len(self.skipped) < 20:
                        self.skipped.append(p)
                    continue
                uris.append(p if local else fs.unstrip_protocol(p))
                if len(uris) >= self.rows:
                    yield self._fill(pa.table({"uri": pa.array(uris, pa.string())}))
                    uris = []
        if uris:
            yield self._fill(pa.table({"uri": pa.array(uris, pa.string())}))

    # ---- a manifest
    def _manifest(self) -> Iterator[pa.Table]:
        uri = self.cfg.manifest
        fmt = _manifest_format(uri)
        try:
            f = fsspec.open(uri, "rb").open()
        except FileNotFoundError as e:
            raise InputError(f"input.manifest {uri} does not exist") from e
        except OSError as e:
            raise InputError(f"input.manifest {uri} cannot be read: {e}") from e
        try:
            if fmt == ".parquet":
                pf = pq.ParquetFile(f, pre_buffer=False)  # (pre-buffering reads ahead every row group)
                have = pf.schema_arrow.names
                self._check_columns(have)
                batches = pf.iter_batches(batch_size=self.rows, columns=[c for c in INPUT_COLUMNS if c in have], use_threads=False)
            elif fmt == ".csv":
                header = pa.csv.open_csv(f, read_options=pa.csv.ReadOptions(block_size=1 << 16, use_threads=False)).schema.names
                self._check_columns(header)
                f.seek(0)
                present = [c for c in INPUT_COLUMNS if c in header]
                convert = pa.csv.ConvertOptions(strings_can_be_null=True, include_columns=present,
                                                column_types={c: pa.string() for c in present})
                batches = pa.csv.open_csv(f, read_options=pa.csv.ReadOptions(block_size=_BLOCK_BYTES, use_threads=False), convert_options=convert)
            else:
                batches = _json_lines(f)
            for i, batch in enumerate(batches):
                if i == 0 and fmt not in (".parquet", ".csv"):
                    self._check_columns(batch.schema.names)  # (a later chunk's rows may all leave one out)
                if batch.num_rows:
                    yield self._fill(self._relative(pa.Table.from_batches([batch])))
        except (OSError, pa.ArrowInvalid) as e:
            raise InputError(f"input.manifest {uri} cannot be read: {e}") from e
        finally:
            f.close()

    def _check_columns(self, have) -> None:
        missing = [c for c in ("uri", "license") if c not in have and not (c == "license" and self.cfg.license)]
        if missing:
            raise InputError(f"input.manifest {self.cfg.manifest}: missing column(s) {', '.join(missing)}; have {', '.join(have)}")

    def _relative(self, table: pa.Table) -> pa.Table:
        """Relative local uris are taken relative to the manifest's folder (only those go through Python)."""
        base = os.path.dirname(self.cfg.manifest)
        uri = pc.cast(table["uri"].combine_chunks(), pa.string())
        if "://" in base:
            return table.set_column(table.schema.get_field_index("uri"), "uri", uri)
        relative = pc.invert(pc.or_kleene(pc.match_substring(uri, "://"), pc.starts_with(uri, "/")))
        relative = pc.and_kleene(relative, pc.greater(pc.utf8_length(uri), 0))
        idx = pc.indices_nonzero(pc.fill_null(relative, False))
        if len(idx):
            joined = [os.path.normpath(os.path.join(base, u)) for u in pc.take(uri, idx).to_pylist()]
            mask = pc.fill_null(relative, False)
            uri = pc.replace_with_mask(uri, mask, pa.array(joined, pa.string()))
        return table.set_column(table.schema.get_field_index("uri"), "uri", uri)

    def _fill(self, table: pa.Table) -> pa.Table:
        """The input columns as strings, in order; the job's values where a row has none (null or empty)."""
        cols = []
        for c in INPUT_COLUMNS:
            col = pc.cast(table[c], pa.string()) if c in table.column_names else pa.nulls(table.num_rows, pa.string())
            default = getattr(self.cfg, c, None) if c != "uri" else None
            if default:
                empty = pc.fill_null(pc.equal(col, ""), True)
                col = pc.if_else(empty, pa.scalar(str(default), pa.string()), col)
            cols.append(col)
        return pa.Table.from_arrays(cols, schema=INPUT_SCHEMA)


def _manifest_format(uri: str) -> str:
    ext = os.path.splitext(uri.lower())[1]
    if ext not in MANIFEST_FORMATS:
        raise InputError(f"input.manifest {uri}: unknown format {ext!r} (use .csv, .jsonl or .parquet)")
    return ext


def _json_lines(f) -> Iterator[pa.RecordBatch]:
    """JSON Lines in chunks of whole lines, each parsed on its own: pyarrow's streaming JSON reader fixes
    a column's type from its first block and fails when a later block differs (a licence column null for
    the first rows, then strings), so each chunk's types are inferred apart and cast by `_fill`."""
    while True:
        chunk = f.read(_BLOCK_BYTES)
        if not chunk:
            return
        chunk += f.readline()  # to the end of the line
        if chunk.strip():
            yield from pa.json.read_json(pa.BufferReader(chunk), read_options=pa.json.ReadOptions(use_threads=False)).to_batches()


def _rebatch(tables: Iterator[pa.Table], rows: int) -> Iterator[pa.Table]:
    """Tables of exactly `rows` rows (the last one fewer), whatever sizes come in."""
    held: list[pa.Table] = []
    n = 0
    for t in tables:
        while t.num_rows:
            take = t.slice(0, rows - n)
            held.append(take)
            n += take.num_rows
            t = t.slice(take.num_rows)
            if n == rows:
                yield pa.concat_tables(held).combine_chunks()
                held, n = [], 0
    if n:
        yield pa.concat_tables(held).combine_chunks()


def list_dir(cfg: InputConfig) -> tuple[pa.Table, int]:
    """Every video file under cfg.dir as one table, and how many other files were skipped (small inputs
    and tools; the job iterates a `Listing`)."""
    listing = Listing(cfg)
    return _whole(listing), listing.others


def read_manifest(cfg: InputConfig) -> pa.Table:
    """Every manifest row as one table (small inputs and tools; the job iterates a `Listing`)."""
    return _whole(Listing(cfg))


def _whole(listing: Listing) -> pa.Table:
    tables = list(listing)
    return pa.concat_tables(tables) if tables else INPUT_SCHEMA.empty_table()
