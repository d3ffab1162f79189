"""The dedup step of the plan: signatures of the kept clips (on Ray), near-duplicate groups, and the
signature index every output keeps so later runs can dedup against it (`dedup.against`).

    OUT/work/signatures-<settings>.parquet   clip_id -> signature, reused by reruns (same fps)
    OUT/dedup/signatures.parquet             the output's kept clips (SIGNATURE_INDEX), read by `against`
"""

from __future__ import annotations

import hashlib
import io
import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.config import ConfigError
from curate.storage import Output
from schemas import SIGNATURE_INDEX, SIGNATURE_ROWS, ClipStatus
from stages.dedup import DedupConfig, Signatures, mark_duplicates

INDEX = "dedup/signatures.parquet"
SIGNATURE_RULES = 3  # bumped when the signature of the same clip changes (views, hash, frame sampling; 2: reference frames only; 3: + mean colour)


def _cache_rel(cfg: DedupConfig) -> str:
    key = json.dumps({"fps": cfg.fps, "rules": SIGNATURE_RULES}, sort_keys=True)
    return f"work/signatures-{hashlib.sha256(key.encode()).hexdigest()[:12]}.parquet"


def _read(fs_url: str, rel: str) -> pa.Table:
    out = Output(fs_url)
    with out.fs.open(out.path(rel), "rb") as f:
        return pq.read_table(f)


def check_against(cfg: DedupConfig) -> None:
    """Stop the job at start when an output named in `dedup.against` has no signature index."""
    for url in cfg.against:
        if not Output(url).exists(INDEX):
            raise ConfigError(f"dedup.against: {url} has no {INDEX} (not a curate output, or made before dedup)")


def load_against(cfg: DedupConfig) -> pa.Table:
    tables = [_read(url, INDEX).cast(SIGNATURE_INDEX) for url in cfg.against]
    return pa.concat_tables(tables) if tables else SIGNATURE_INDEX.empty_table()


def dedup_step(cfg: DedupConfig, runner, clips: pa.Table, out: Output) -> tuple[pa.Table, pa.Table]:
    """(clips with dup_group / duplicate_of and duplicates filtered, signatures of this run's clips)."""
    kept = clips.filter(pc.equal(clips["status"], ClipStatus.KEPT))
    rel = _cache_rel(cfg)
    cached = _read(out.url, rel) if out.exists(rel) else SIGNATURE_ROWS.empty_table()
    cached = cached.filter(pc.is_valid(cached["signature"]))
    todo = kept.filter(pc.invert(pc.is_in(kept["clip_id"], cached["clip_id"])))
    fresh = runner.map(todo, Signatures(cfg), SIGNATURE_ROWS) if todo.num_rows else SIGNATURE_ROWS.empty_table()
    sigs = pa.concat_tables([cached.filter(pc.is_in(cached["clip_id"], kept["clip_id"])), fresh])
    if fresh.num_rows:
        buf = io.BytesIO()
        pq.write_table(pa.concat_tables([cached, fresh.filter(pc.is_valid(fresh["signature"]))]).sort_by("clip_id"), buf)
        out.write_bytes(rel, buf.getvalue())
    return mark_duplicates(clips, sigs, load_against(cfg), cfg), sigs


def write_index(out: Output, clips: pa.Table, sigs: pa.Table) -> int:
    """OUT/dedup/signatures.parquet: signatures of the output's kept clips (what `against` reads). Returns rows."""
    kept = clips.filter(pc.equal(clips["status"], ClipStatus.KEPT)).select(["clip_id", "source_id", "duration_s", "aesthetic_score"])
    index = kept.join(sigs.select(["clip_id", "signature"]), "clip_id", join_type="inner")
    index = index.filter(pc.is_valid(index["signature"])).sort_by("clip_id")
    buf = io.BytesIO()
    pq.write_table(index.select(SIGNATURE_INDEX.names).cast(SIGNATURE_INDEX), buf, compression="zstd")
    out.write_bytes(INDEX, buf.getvalue())
    return index.num_rows


def drop_from_index(out: Output, source_ids: set[str]) -> None:
    """Remove the clips of `source_ids` from the output's signature index (a takedown)."""
    if not out.exists(INDEX):
        return
    index = _read(out.url, INDEX)
    keep = index.filter(pc.invert(pc.is_in(index["source_id"], pa.array(sorted(source_ids), pa.string()))))
    if keep.num_rows != index.num_rows:
        buf = io.BytesIO()
        pq.write_table(keep, buf, compression="zstd")
        out.write_bytes(INDEX, buf.getvalue())
