"""What a rerun reuses, so a killed job resumes and a finished one reruns in moments.

    OUT/work/ingest.parquet                   SOURCES rows keyed by (uri, size, mtime): files unchanged
                                              since are not hashed or probed again
    OUT/work/split-<settings>/<source>.parquet one SPLIT row per source, written after all its clips:
                                              a source split once (same settings, same SPLIT_RULES) is never decoded again
    OUT/work/shards.json                      each shard's content plan and row: an unchanged shard is
                                              not rewritten

Every file is written through a temporary name, so a kill at any point leaves each either whole or
absent; whatever is absent is simply done again, with the same deterministic result.
"""

from __future__ import annotations

import hashlib
import io
import json

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from curate.config import to_dict
from curate.storage import Output
from schemas import SOURCES, ClipStatus, Reason, SourceStatus
from stages.ingest import INPUT_COLUMNS, normalize_license
from stages.shards import clip_metadata, encode_json
from stages.split import SPLIT, SPLIT_DECIDES, Split, SplitConfig

# Errors that may pass (a network hiccup, a file still being copied): never cached.
_TRANSIENT = {Reason.MISSING, Reason.UNREADABLE}


def _stat_key(uri: str) -> str | None:
    try:
        fs, p = fsspec.core.url_to_fs(uri)
        info = fs.info(p)
    except (OSError, ValueError):
        return None
    mtime = info.get("mtime") or info.get("LastModified") or info.get("updated") or info.get("created")
    if info.get("type") == "directory" or mtime is None:
        return None
    return f"{uri}|{info.get('size')}|{mtime}"


class IngestCache:
    def __init__(self, out: Output):
        self.out = out
        self.rows: dict[str, dict] = {}
        if out.exists("work/ingest.parquet"):
            with out.fs.open(out.path("work/ingest.parquet"), "rb") as f:
                for row in pq.read_table(f).to_pylist():
                    self.rows[row.pop("_key")] = row

    def split(self, inputs: pa.Table) -> tuple[list[dict], pa.Table, list[str | None]]:
        """(source rows reused, input rows still to ingest, the key of each of those)."""
        reused, todo, keys = [], [], []
        for row in inputs.to_pylist():
            key = _stat_key(row["uri"]) if row.get("uri") else None
            hit = self.rows.get(key) if key else None
            if hit is None:
                todo.append(row)
                keys.append(key)
                continue
            # The file is unchanged; what the input says about it (licence, attribution) may not be.
            fresh = {**hit, **{c: row.get(c) for c in INPUT_COLUMNS}}
            fresh["license_raw"], fresh["license"] = row.get("license"), normalize_license(row.get("license"))
            reused.append(fresh)
        return reused, pa.Table.from_pylist(todo, schema=inputs.schema), keys

    def save(self, ingested: pa.Table, keys: list[str | None]) -> None:
        for key, row in zip(keys, ingested.to_pylist()):
            if key and row["reason"] not in _TRANSIENT:
                self.rows[key] = row
        if not self.rows:
            return
        keyed = [{**row, "_key": key} for key, row in sorted(self.rows.items())]
        table = pa.Table.from_pylist(keyed, schema=SOURCES.append(pa.field("_key", pa.string())))
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.out.write_bytes("work/ingest.parquet", buf.getvalue())


# Bumped when the split code cuts other windows from the same settings, so a rerun does not reuse a
# split the current code would not make (2: `one_pass: false` cuts the one-pass windows, not equal ones;
# 3: frame times from the repaired timeline, discontinuities start scenes, edit lists are not truncation).
SPLIT_RULES = 3


def split_dir(cfg: SplitConfig) -> str:
    settings = json.dumps({**to_dict(cfg), "rules": SPLIT_RULES}, sort_keys=True)
    return "work/split-" + hashlib.sha256(settings.encode()).hexdigest()[:12]


class CachedSplit:
    """Split, then record each source's result; runs on Ray workers."""

    def __init__(self, cfg: SplitConfig, out_url: str, motion=None):
        out = Output(out_url)
        self.split = Split(cfg, out.uri("clips"), motion=motion)
        self.root = out.uri(split_dir(cfg))

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for row in batch.to_pylist():
            result = self.split.split_one(row)
            # A clip that failed to encode may succeed next time (a full disk, a dying run deleting
            # files under it): such a source is split again rather than remembered as failed.
            failed_clip = any(c["status"] == ClipStatus.ERROR for c in result["clips"] or [])
            if result["reason"] not in _TRANSIENT and not failed_clip:
                _write_parquet(f"{self.root}/{row['source_id']}.parquet", pa.Table.from_pylist([result], schema=SPLIT))
            rows.append(result)
        return pa.Table.from_pylist(rows, schema=SPLIT)


def cached_splits(out: Output, cfg: SplitConfig, sources: pa.Table) -> tuple[list[dict], pa.Table]:
    """(SPLIT rows already made for these sources, source rows still to split)."""
    done, todo = [], []
    base = split_dir(cfg)
    for row in sources.to_pylist():
        rel = f"{base}/{row['source_id']}.parquet"
        if row["status"] != SourceStatus.OK or not out.exists(rel):
            todo.append(row)
            continue
        with out.fs.open(out.path(rel), "rb") as f:
            cached = pq.read_table(f).to_pylist()[0]
        clips = cached["clips"] or []
        if any(c["clip_uri"] and not fsspec.core.url_to_fs(c["clip_uri"])[0].exists(c["clip_uri"]) for c in clips):
            todo.append(row)  # a clip file went missing: split again (existing clips are kept)
            continue
        result = {**row}
        for key in SPLIT_DECIDES:
            result[key] = cached[key]
        done.append(result)
    return done, pa.Table.from_pylist(todo, schema=sources.schema)


def _write_parquet(uri: str, table: pa.Table) -> None:
    fs, p = fsspec.core.url_to_fs(uri)
    fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
    tmp = f"{p}.tmp-{hashlib.sha256(uri.encode()).hexdigest()[:8]}"
    with fs.open(tmp, "wb") as f:
        pq.write_table(table, f)
    fs.mv(tmp, p)


def shard_plan(rows: pa.Table) -> str:
    """A hash of everything that goes into a shard's tar: keys, clip sizes, metadata, captions."""
    h = hashlib.sha256()
    for row in rows.to_pylist():
        h.update(row["clip_id"].encode())
        h.update(str(row["clip_bytes"]).encode())
        h.update(encode_json(clip_metadata(row)))
        h.update((row.get("caption") or "").encode())
    return h.hexdigest()


class ShardPlans:
    def __init__(self, out: Output):
        self.out = out
        self.plans: dict[str, dict] = {}
        if out.exists("work/shards.json"):
            with out.fs.open(out.path("work/shards.json"), "r") as f:
                self.plans = json.load(f)

    def reusable(self, shard: str, plan: str) -> dict | None:
        known = self.plans.get(shard)
        if not known or known["plan"] != plan or not self.out.exists(shard):
            return None
        return known["row"] if self.out.fs.size(self.out.path(shard)) == known["row"]["bytes"] else None

    def save(self, plans: dict[str, str], rows: pa.Table) -> None:
        self.plans = {r["shard"]: {"plan": plans[r["shard"]], "row": r} for r in rows.to_pylist()}
        self.out.write_text("work/shards.json", json.dumps(self.plans, indent=1, sort_keys=True))
