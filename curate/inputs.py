"""What a job reads: every video file under `input.dir`, or the rows of `input.manifest`.

Both give the same table: uri, license, title, author, source_url, attribution (the licence still
raw; ingest normalises it). Job-level values fill what a row leaves empty.
"""

from __future__ import annotations

import os

import fsspec
import pyarrow as pa
import pyarrow.csv
import pyarrow.json
import pyarrow.parquet as pq

from curate.config import InputConfig
from stages.ingest import INPUT_COLUMNS

INPUT_SCHEMA = pa.schema([pa.field(c, pa.string()) for c in INPUT_COLUMNS])


class InputError(RuntimeError):
    """The input location cannot be read at all (as opposed to one bad file, which is a sources row)."""


def list_dir(cfg: InputConfig) -> tuple[pa.Table, list[str]]:
    """(input rows for every video file under cfg.dir, sorted; the other files found, which are skipped)."""
    try:
        fs, root = fsspec.core.url_to_fs(cfg.dir)
        if not fs.isdir(root):
            raise InputError(f"input.dir {cfg.dir} is not a readable folder")
        # Folders too: one named like a video is an input that cannot be read, not something to drop.
        found = sorted(p for p, info in fs.find(root, withdirs=True, detail=True).items()
                       if info.get("type") != "directory" or p.lower().endswith(tuple(e.lower() for e in cfg.extensions)))
    except (OSError, ValueError) as e:
        raise InputError(f"input.dir {cfg.dir} cannot be listed: {e}") from e
    exts = tuple(e.lower() for e in cfg.extensions)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    local = protocol in ("file", "local")
    videos, others = [], []
    for p in found:
        uri = p if local else fs.unstrip_protocol(p)
        (videos if p.lower().endswith(exts) else others).append(uri)
    rows = [_defaults({"uri": uri}, cfg) for uri in videos]
    return pa.Table.from_pylist(rows, schema=INPUT_SCHEMA), others


def read_manifest(cfg: InputConfig) -> pa.Table:
    """Manifest rows; relative local uris are taken relative to the manifest's folder."""
    uri = cfg.manifest
    ext = os.path.splitext(uri.lower())[1]
    try:
        with fsspec.open(uri, "rb") as f:
            if ext == ".csv":
                table = pa.csv.read_csv(f, convert_options=pa.csv.ConvertOptions(strings_can_be_null=True))
            elif ext in (".jsonl", ".ndjson", ".json"):
                table = pa.json.read_json(f)
            elif ext == ".parquet":
                table = pq.read_table(f)
            else:
                raise InputError(f"input.manifest {uri}: unknown format {ext!r} (use .csv, .jsonl or .parquet)")
    except FileNotFoundError as e:
        raise InputError(f"input.manifest {uri} does not exist") from e
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"input.manifest {uri} cannot be read: {e}") from e
    missing = [c for c in ("uri", "license") if c not in table.column_names and not (c == "license" and cfg.license)]
    if missing:
        raise InputError(f"input.manifest {uri}: missing column(s) {', '.join(missing)}; have {', '.join(table.column_names)}")
    base = os.path.dirname(uri)
    rows = []
    for r in table.to_pylist():
        row = {c: (None if r.get(c) is None else str(r[c])) for c in INPUT_COLUMNS}
        if row["uri"] and "://" not in row["uri"] and not os.path.isabs(row["uri"]) and "://" not in base:
            row["uri"] = os.path.normpath(os.path.join(base, row["uri"]))
        rows.append(_defaults(row, cfg))
    return pa.Table.from_pylist(rows, schema=INPUT_SCHEMA)


def _defaults(row: dict, cfg: InputConfig) -> dict:
    for c in INPUT_COLUMNS[1:]:
        if not row.get(c):
            row[c] = getattr(cfg, c)
    return row
