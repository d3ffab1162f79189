"""The output folder: a local path or any fsspec URL, read and written through one `Output` (what
lives where inside it: `curate.layout.Layout`)."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import socket
import time

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from pyarrow.fs import FSSpecHandler, PyFileSystem
from pyarrow.fs import LocalFileSystem as ArrowLocalFileSystem

from curate.layout import Layout
from schemas import TABLES

# The hive partition key of a partitioned table: `bucket=00042/` is bucket 42.
PARTITION = pa.schema([pa.field("bucket", pa.int32())])


def is_table_part(rel: str) -> bool:
    """A finished part file of a partitioned table (`rel`: its path inside the table's folder): `*.parquet`,
    not temporary (`*.tmp-*`), nothing hidden on the way (`.*`, `_*`, as Hive and pyarrow skip). A write
    in progress is never read, whether its temporary name is `part-x.parquet.tmp-1` or `.part-x.parquet.tmp-1`."""
    *dirs, name = rel.strip("/").split("/")
    return name.endswith(".parquet") and ".tmp-" not in name and not any(p.startswith((".", "_")) for p in (*dirs, name))


_ORDER = {"sources": ["source_id"], "scenes": ["source_id", "scene_index"], "clips": ["source_id", "start_frame", "clip_id"]}


class OutputBusy(RuntimeError):
    """Another run is writing to the same output folder."""


class Output:
    def __init__(self, url: str):
        self.url = url.rstrip("/") or "/"
        self.fs, self.root = fsspec.core.url_to_fs(self.url)

    @property
    def is_local(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")

    def uri(self, rel: str) -> str:
        """A URI stages can open: a plain path when local, else a URL."""
        return f"{self.url}/{rel}"

    def path(self, rel: str) -> str:
        """The path inside this output's filesystem."""
        return f"{self.root}/{rel}"

    def makedirs(self, rel: str = "") -> None:
        self.fs.makedirs(self.path(rel) if rel else self.root, exist_ok=True)

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write through a temporary name, then rename: readers never see half a file."""
        final = self.path(rel)
        self.fs.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = f"{final}.tmp-{os.getpid()}"
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        self.fs.mv(tmp, final)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def write_table(self, name: str, table: pa.Table, buckets: int | None = None) -> None:
        """Write a whole table: one file, or with `buckets` hive-partitioned by the bucket of each row's
        source_id (tables/<name>/bucket=NNNNN/part-00000.parquet, rows in the table's order). Files of the
        other form, and buckets the table no longer has, are removed after the new ones are in place."""
        from stages.shards import bucket_of

        if not buckets:
            self.write_bucket(name, None, table)
            self.keep_buckets(name, None)
            return
        of = pa.array([bucket_of(s, buckets) for s in table["source_id"].to_pylist()], pa.int32())
        written = set(of.to_pylist())
        for b in sorted(written):
            self.write_bucket(name, b, table.filter(pc.equal(of, b)))
        self.keep_buckets(name, written)

    def write_bucket(self, name: str, bucket: int | None, table: pa.Table) -> None:
        """One bucket's part of a partitioned table (tables/<name>/bucket=NNNNN/part-00000.parquet), or with
        `bucket` None the whole table as one file: what one finalize task writes (see `keep_buckets`)."""
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self.write_bytes(Layout.table_file(name) if bucket is None else Layout.table_part(name, bucket), buf.getvalue())

    def keep_buckets(self, name: str, buckets: set[int] | None) -> None:
        """After every bucket of a table was written (`write_bucket`): remove the buckets not in `buckets`
        and the table's other form (`buckets` None: the single file was written, the folder goes)."""
        single, folder = self.path(Layout.table_file(name)), self.path(Layout.table_folder(name))
        if buckets is None:
            if self.fs.isdir(folder):
                self.fs.rm(folder, recursive=True)
            return
        wanted = {self.path(Layout.table_bucket(name, b)).rstrip("/") for b in buckets}
        for d in self.fs.ls(folder, detail=False) if self.fs.isdir(folder) else []:
            if d.rstrip("/") not in wanted:
                self.fs.rm(d, recursive=True)
        self.fs.makedirs(folder, exist_ok=True)  # an empty table is an empty folder
        if self.fs.exists(single):
            self.fs.rm(single)

    @property
    def arrow_fs(self):
        """This output's filesystem for pyarrow.dataset (native when local)."""
        return ArrowLocalFileSystem() if isinstance(self.fs, LocalFileSystem) else PyFileSystem(FSSpecHandler(self.fs))

    def has_table(self, name: str) -> bool:
        """tables/<name>.parquet or the folder tables/<name>/ exists (an empty folder is an empty table)."""
        return self.fs.isdir(self.path(Layout.table_folder(name))) or self.exists(Layout.table_file(name))

    def table_dataset(self, name: str, bucket: bool = True) -> pads.Dataset | None:
        """The table as a lazy pyarrow dataset, or None when there is none.

        The folder tables/<name>/ (hive-partitioned, preferred when both exist) has exactly the columns of
        `schemas.TABLES[name]` (a part written before a column existed reads it as nulls), plus `bucket`
        (int32, from the folder name) when `bucket`; its files are listed once here, and a part written
        after that is not seen. The single file tables/<name>.parquet has the columns it was written with.
        """
        folder = self.path(Layout.table_folder(name))
        if self.fs.isdir(folder):
            parts = sorted(p for p in self.fs.find(folder) if is_table_part(p[len(folder):]))
            schema = TABLES[name]
            if bucket:
                schema = pa.schema([*schema, *PARTITION], metadata=schema.metadata)
            partitioning = pads.partitioning(PARTITION, flavor="hive")
            return pads.dataset(parts, schema=schema, format="parquet", filesystem=self.arrow_fs,
                                partitioning=partitioning, partition_base_dir=folder)  # fmt: skip
        path = self.path(Layout.table_file(name))
        if self.fs.exists(path):
            return pads.dataset(path, format="parquet", filesystem=self.arrow_fs)
        return None

    def read_table(self, name: str) -> pa.Table:
        """The whole table in either layout; a partitioned one without `bucket`, in its natural order
        (sources by source_id, scenes and clips by source and start frame)."""
        folder = self.path(Layout.table_folder(name))
        if self.fs.isdir(folder):
            table = self.table_dataset(name, bucket=False).to_table()
            keys = _ORDER.get(name, [])
            return table.sort_by([(k, "ascending") for k in keys]) if keys and table.num_rows else table
        with self.fs.open(self.path(Layout.table_file(name)), "rb") as f:
            return pq.read_table(f)

    @contextlib.contextmanager
    def lock(self):
        """Hold the output folder for one run. A second run fails at once with who holds it.

        A local folder uses flock, which the kernel releases even when the holder is killed. On
        object stores there is no lock: one writer per output is then the user's to keep.
        """
        if not self.is_local:
            yield
            return
        self.makedirs()
        path = self.path(Layout.LOCK)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
                raise OutputBusy(f"output folder {self.url} is in use by another curate run ({holder})") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode(), 0)
            yield
        finally:
            os.close(fd)

    def remove_temporaries(self) -> int:
        """Delete `*.tmp-*` files a killed run left behind (only while holding the lock)."""
        removed = 0
        for sub in Layout.WRITTEN:
            if self.exists(sub):
                for p in self.fs.find(self.path(sub)):
                    if ".tmp-" in os.path.basename(p):
                        self.fs.rm(p)
                        removed += 1
        return removed
