"""WebDataset shard writing: pack clips into tar shards, byte-identical across runs.

`assign_shards` orders clips deterministically and packs them under a sample and a byte limit;
`WriteShards` writes each shard (mp4 + json metadata + optional txt caption per clip) to a temporary
name, renames it into place and returns one SHARDS row per shard.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import re
import uuid
from dataclasses import dataclass

import fsspec
import pyarrow as pa

from schemas import CLIPS, SAMPLE_FILES, SCHEMA_VERSION, SHARDS

# The order of samples: inside a shard, and of shards within a run.
SORT_KEYS = [("source_id", "ascending"), ("start_frame", "ascending"), ("clip_id", "ascending")]
# Tar header fields fixed so that the same samples give the same bytes on any machine, any day.
TAR_MTIME = 0
TAR_USER = "curate"
TAR_MODE = 0o444
# A sample's json holds the clip's CLIPS columns but these two: where it lives now, and where it used to.
JSON_COLUMNS = [name for name in CLIPS.names if name not in ("shard", "clip_uri")]
JSON_COLUMNS = [name for name in JSON_COLUMNS if name not in SAMPLE_FILES]  # files travel in the sample itself
GROUPS = ("license", "resolution", "length")


@dataclass(frozen=True)
class ShardConfig:
    max_samples: int = 1000  # samples per shard at most
    max_bytes: int = 1 << 30  # clip bytes per shard at most; a single larger clip gets a shard of its own
    target_shards: int | None = None  # at least this many shards (when there are as many clips), filled evenly
    group_by: tuple[str, ...] = ()  # "license", "resolution", "length": one folder of shards per group
    length_buckets_s: tuple[float, ...] = (2.0, 5.0, 10.0)  # edges of the length groups, in seconds
    # Clips are packed per bucket = hash(source_id) mod `buckets` (shard-BBBBB-NNNNNN.tar): adding or
    # removing a source rewrites only its bucket's shards. None: one sequence over every clip.
    buckets: int | None = 64

    def __post_init__(self):
        for name in ("max_samples", "max_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ShardConfig.{name} must be a positive int, got {value!r}")
        if self.buckets is not None and (isinstance(self.buckets, bool) or not isinstance(self.buckets, int) or self.buckets <= 0):
            raise ValueError(f"ShardConfig.buckets must be a positive int or null, got {self.buckets!r}")
        if self.target_shards is not None and (isinstance(self.target_shards, bool) or not isinstance(self.target_shards, int) or self.target_shards <= 0):
            raise ValueError(f"ShardConfig.target_shards must be a positive int, got {self.target_shards!r}")
        for g in self.group_by:
            if g not in GROUPS:
                raise ValueError(f"ShardConfig.group_by: unknown group {g!r}; choose from {', '.join(GROUPS)}")
        if list(self.length_buckets_s) != sorted(set(self.length_buckets_s)) or any(e <= 0 for e in self.length_buckets_s):
            raise ValueError(f"ShardConfig.length_buckets_s must be increasing positive numbers, got {self.length_buckets_s!r}")


def _safe(text: str) -> str:
    """A licence expression as a folder name: `MIT OR Apache-2.0` -> `MIT_OR_Apache-2.0`."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_.") or "none"


def group_of(row: dict, cfg: ShardConfig) -> str:
    """The shard group of a clip row, e.g. `CC-BY-4.0/640x272/len2-5s`; "" when not grouping."""
    parts = []
    for g in cfg.group_by:
        if g == "license":
            parts.append(_safe(row.get("license") or "NOASSERTION"))
        elif g == "resolution":
            parts.append(f"{row.get('width')}x{row.get('height')}")
        else:
            d = row.get("duration_s") or 0.0
            edges = [0.0, *cfg.length_buckets_s]
            lo = max(e for e in edges if e <= d)
            hi = next((e for e in edges if e > d), None)
            parts.append(f"len{lo:g}-{hi:g}s" if hi is not None else f"len{lo:g}s+")
    return "/".join(parts)


def _require(table: pa.Table, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise KeyError(f"{what} needs columns {missing}; the table has {table.column_names}")


def _check_clip_ids(clip_ids: list) -> None:
    seen = set()
    for clip_id in clip_ids:
        # WebDataset splits a file name at its first dot: a dot in the key would split the sample.
        if not isinstance(clip_id, str) or not clip_id or "." in clip_id or "/" in clip_id:
            raise ValueError(f"clip_id {clip_id!r} cannot be a sample key (non-empty, no '.' or '/')")
        if clip_id in seen:
            raise ValueError(f"clip_id {clip_id!r} appears more than once")
        seen.add(clip_id)


def bucket_of(source_id: str, buckets: int) -> int:
    """The shard bucket of a source: a hash of its id, stable across runs, machines and Python versions."""
    return int(hashlib.sha256(source_id.encode()).hexdigest()[:8], 16) % buckets


def assign_shards(clips: pa.Table, cfg: ShardConfig, prefix: str) -> pa.Table:
    """Sort `clips` by (source_id, start_frame, clip_id) and fill `shard` with f"{prefix}-{i:06d}.tar".

    Clips are packed in that order; a shard closes before it would exceed `cfg.max_samples` clips or
    `cfg.max_bytes` of `clip_bytes` (the clip file's size). The input order does not matter. With
    `cfg.target_shards`, the clips are also cut into that many even runs (more shards when the limits
    or groups ask for them; fewer only when there are fewer clips). With `cfg.group_by`,
    each group is packed on its own under `<dir of prefix>/<group>/`. With `cfg.buckets`, each hash
    bucket of sources is packed on its own too (`{prefix}-BBBBB-NNNNNN.tar`; `target_shards` then counts
    shards per bucket).
    """
    _require(clips, ["clip_id", "source_id", "start_frame", "clip_bytes"], "assign_shards")
    table = clips.sort_by(SORT_KEYS)
    if cfg.group_by:
        groups = [group_of(r, cfg) for r in table.select([c for c in ("license", "width", "height", "duration_s") if c in table.column_names]).to_pylist()]
        order = sorted(range(table.num_rows), key=lambda i: (groups[i], i))
        table, groups = table.take(order), [groups[i] for i in order]
    else:
        groups = [""] * table.num_rows
    if cfg.buckets:
        buckets = [bucket_of(s, cfg.buckets) for s in table.column("source_id").to_pylist()]
        keyed = [(g, b) for g, b in zip(groups, buckets)]
        order = sorted(range(table.num_rows), key=lambda i: (keyed[i], i))
        table, groups = table.take(order), [keyed[i] for i in order]
    clip_ids = table.column("clip_id").to_pylist()
    _check_clip_ids(clip_ids)
    # With a count target, clip k of N belongs to slot k * target // N: the slots split N evenly.
    sizes: dict = {}
    for g in groups:
        sizes[g] = sizes.get(g, 0) + 1
    target = cfg.target_shards or 1

    head, tail = posixpath.split(prefix)
    shards, index, n, size, current, slot, k = [], 0, 0, 0, None, 0, 0
    for clip_id, clip_bytes, group in zip(clip_ids, table.column("clip_bytes").to_pylist(), groups):
        if not isinstance(clip_bytes, int) or clip_bytes < 0:
            raise ValueError(f"clip {clip_id!r}: clip_bytes must be a non-negative int, got {clip_bytes!r}")
        if group != current:
            index, n, size, current, k = 0, 0, 0, group, 0
        new_slot = k * target // sizes[group]
        if n > 0 and (n + 1 > cfg.max_samples or size + clip_bytes > cfg.max_bytes or new_slot != slot):
            index, n, size = index + 1, 0, 0
        slot = new_slot
        folder, bucket = group if cfg.buckets else (group, None)
        name = posixpath.join(head, folder, tail) if folder else prefix
        shards.append(f"{name}-{bucket:05d}-{index:06d}.tar" if bucket is not None else f"{name}-{index:06d}.tar")
        n, size, k = n + 1, size + clip_bytes, k + 1

    column = pa.array(shards, pa.string())
    if "shard" in table.column_names:
        return table.set_column(table.column_names.index("shard"), "shard", column)
    return table.append_column("shard", column)


def _finite(value) -> bool:
    return value is not None and not (isinstance(value, float) and not math.isfinite(value))


def encode_json(obj: dict) -> bytes:
    """The deterministic encoding of a sample's json: sorted keys, compact, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def clip_metadata(row: dict) -> dict:
    """A sample's json: the row's non-null CLIPS columns (NaN/inf count as null) but shard and clip_uri."""
    meta = {k: row[k] for k in JSON_COLUMNS if _finite(row.get(k))}
    meta["schema_version"] = SCHEMA_VERSION
    return meta


class _HashingWriter:
    """A write-only file wrapper that counts and hashes what passes through it."""

    def __init__(self, f):
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self._f.write(data)


class WriteShards:
    """Stage: write the shards named in a batch's `shard` column; return one SHARDS row per shard.

    Rows of one shard must all be in the same batch. `out_root` is a local folder or fsspec URL; each
    shard goes to f"{out_root}/{shard}" by way of a temporary name, so a crash never leaves half a tar.
    """

    def __init__(self, cfg: ShardConfig, out_root: str):
        self.cfg = cfg
        self.out_root = out_root

    def __call__(self, batch: pa.Table) -> pa.Table:
        _require(batch, ["clip_id", "source_id", "start_frame", "clip_uri", "shard"], "WriteShards")
        rows = batch.sort_by(SORT_KEYS).to_pylist()
        by_shard: dict[str, list[dict]] = {}
        for row in rows:
            shard = row["shard"]
            if not isinstance(shard, str) or not shard or shard.startswith("/") or ".." in shard.split("/"):
                raise ValueError(f"clip {row['clip_id']!r}: shard {shard!r} is not a relative path")
            by_shard.setdefault(shard, []).append(row)

        fs, root = fsspec.core.url_to_fs(self.out_root)
        out = [self._write(fs, root, shard, by_shard[shard]) for shard in sorted(by_shard)]
        return pa.Table.from_pylist(out, schema=SHARDS)

    def _write(self, fs, root: str, shard: str, rows: list[dict]) -> dict:
        _check_clip_ids([row["clip_id"] for row in rows])
        if len(rows) > self.cfg.max_samples:
            raise ValueError(f"shard {shard!r} has {len(rows)} samples, more than max_samples={self.cfg.max_samples}")
        size, sha256 = write_tar(fs, posixpath.join(root.rstrip("/"), shard), (_sample(row) for row in rows))
        licenses = sorted({row["license"] for row in rows if row.get("license") is not None})
        return {
            "shard": shard,
            "n_samples": len(rows),
            "bytes": size,
            "sha256": sha256,
            "licenses": licenses,
        }


def write_tar(fs, path: str, samples) -> tuple[int, str]:
    """Write WebDataset `samples` (dicts of bytes) to `path` through a temporary name, with fixed
    headers so the same samples give the same bytes; return (bytes, sha256 hex)."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    try:
        with fs.open(tmp, "wb") as f:
            sink = _HashingWriter(f)
            import webdataset as wds  # here, not at import: it pulls in torch (1.5 s for every process)

            writer = wds.TarWriter(
                sink, user=TAR_USER, group=TAR_USER, mode=TAR_MODE, mtime=TAR_MTIME, encoder=False, compress=False
            )
            for sample in samples:
                writer.write(sample)
            writer.close()
        fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise
    return sink.size, sink.sha256.hexdigest()


def _sample(row: dict) -> dict:
    clip_id, uri = row["clip_id"], row["clip_uri"]
    if not uri:
        raise ValueError(f"clip {clip_id!r} has no clip_uri")
    try:
        with fsspec.open(uri, "rb") as f:
            mp4 = f.read()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"clip {clip_id!r}: clip_uri {uri!r} does not exist") from e
    sample = {"__key__": clip_id, "mp4": mp4, "json": encode_json(clip_metadata(row))}
    if row.get("caption") is not None:
        sample["txt"] = row["caption"].encode("utf-8")
    for column, ext in SAMPLE_FILES.items():  # latents, text embeddings: files next to the clip
        if row.get(column):
            with fsspec.open(row[column], "rb") as f:
                sample[ext] = f.read()
    return sample
