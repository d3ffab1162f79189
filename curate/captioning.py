"""The caption step on Ray Data: CPU preparation and generation as two actor pools.

    kept clips ──► map_batches(_Prepare, concurrency=prep_actors)          CPU: decode, resize, processor
               ──► map_batches(_Generate, concurrency=actors, num_gpus=…)  the model: generate, check, retry, CLIP
               ──► caption columns joined back onto `clips` by clip_id

Ray streams blocks between the two pools, so the next batch is being decoded while the model
generates. `num_gpus` is asked for per generation actor only when the cluster has GPUs. A cluster
without GPUs runs both steps in one pool of `actors` actors (`_Both`, one CPU each): there the split
would only make two CPU pools compete for the same cores, load the processor twice, and need two
CPUs where the cluster may have one.

A caption is paid for once: `CaptionCache` keeps every caption under OUT/work/captions/, keyed by the
clip (clip_id, which names the source's content hash, the frame range and the encode settings; and the
clip file's size) and by what shapes the text (model and its exact revision, prompt, decoding, frames,
checks). A rerun or a resume captions only what is not there; a change of the CLIP model re-scores the
alignment of the captions it has, without generating them again.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import logging
import math
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas import CAPTION_FIELDS, CaptionReason, ClipStatus, conform
from stages.caption import (
    PREPARED,
    RESCORE,
    CaptionConfig,
    ClipAlignment,
    GenerateCaptions,
    PrepareCaptions,
    load_vlm,
    weights_revision,
)

log = logging.getLogger("curate")

COLUMNS = ["caption", *(f.name for f in CAPTION_FIELDS)]


class _Prepare:
    def __init__(self, cfg: CaptionConfig, make_model=None):
        self.stage = PrepareCaptions(cfg, (make_model or functools.partial(load_vlm, cfg))())

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)


class _Generate:
    def __init__(self, cfg: CaptionConfig, make_model=None, make_rewriter=None):
        model = (make_model or functools.partial(load_vlm, cfg))()
        rewriter = make_rewriter() if make_rewriter is not None else None
        self.stage = GenerateCaptions(cfg, model, ClipAlignment(cfg) if cfg.clip_model else None, rewriter)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)


class _Both:
    """Preparation and generation in one actor (clusters without GPUs)."""

    def __init__(self, cfg: CaptionConfig, make_model=None, make_rewriter=None):
        self.prepare = _Prepare(cfg, make_model)
        self.generate = _Generate(cfg, lambda: self.prepare.stage.model, make_rewriter)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.generate(self.prepare(batch))


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def caption_rows(cfg: CaptionConfig, rows: pa.Table, make_model=None, block_rows: int | None = None, on_block=None,
                 make_rewriter=None, two_pools: bool | None = None) -> pa.Table:  # fmt: skip
    """Caption every kept row of `rows` through the actor pools; returns clip_id + caption columns.

    `make_model` (a picklable zero-argument callable) replaces the configured model in every actor: tests
    inject a fake there (and `make_rewriter` for the rewrite pass). Blocks of `block_rows` rows (default:
    batch_size) travel between the pools. `on_block(table)` is called on the driver with each block's
    result as it arrives (to commit it). `two_pools`: default, two when the cluster has GPUs, else one."""
    import ray

    kept = rows.filter(pc.equal(rows["status"], ClipStatus.KEPT)) if rows.num_rows else rows
    if kept.num_rows == 0:
        return pa.table({"clip_id": pa.array([], pa.string())})
    size = block_rows or cfg.batch_size
    blocks = [kept.slice(i, size) for i in range(0, kept.num_rows, size)]
    gpus = cfg.num_gpus if cluster_gpus() > 0 else 0
    ds = ray.data.from_arrow(blocks)
    if two_pools if two_pools is not None else gpus > 0:
        ds = ds.map_batches(_Prepare, fn_constructor_args=(cfg, make_model), concurrency=cfg.prep_actors,
                            batch_format="pyarrow", batch_size=None, num_cpus=1)
        # A GPU pool needs a concrete batch_size (Ray rejects None with num_gpus).
        ds = ds.map_batches(_Generate, fn_constructor_args=(cfg, make_model, make_rewriter), concurrency=cfg.actors,
                            batch_format="pyarrow", batch_size=cfg.batch_size * 4, num_gpus=gpus,
                            num_cpus=0 if gpus else 1)
    else:
        ds = ds.map_batches(_Both, fn_constructor_args=(cfg, make_model, make_rewriter), concurrency=cfg.actors,
                            batch_format="pyarrow", batch_size=None, num_cpus=1)
    cols = ["clip_id", *COLUMNS]
    parts = []
    for t in ds.iter_batches(batch_size=None, batch_format="pyarrow"):  # streamed: results arrive as made
        if t.num_rows:
            parts.append(t.select(cols))
            if on_block is not None:
                on_block(parts[-1])
    if not parts:
        return pa.table({"clip_id": pa.array([], pa.string())})
    out = pa.concat_tables(parts)
    log.debug("caption: %d clips on %d actor(s)%s", out.num_rows, cfg.actors, f", {gpus:g} GPU each" if gpus else "")
    return out


def merge_captions(clips: pa.Table, captions: pa.Table) -> pa.Table:
    """`clips` with the caption columns of `captions` (clip_id + COLUMNS) filled in by clip_id."""
    if captions.num_rows == 0:
        return clips
    by_id = {r["clip_id"]: r for r in captions.to_pylist()}
    ids = clips["clip_id"].to_pylist()
    types = {"caption": pa.string(), **{f.name: f.type for f in CAPTION_FIELDS}}
    for name in COLUMNS:
        old = clips[name].to_pylist() if name in clips.column_names else [None] * clips.num_rows
        values = pa.array([by_id[c][name] if c in by_id else o for c, o in zip(ids, old)], types[name])
        i = clips.schema.get_field_index(name)
        clips = clips.set_column(i, name, values) if i >= 0 else clips.append_column(name, values)
    return clips


def caption_step(cfg: CaptionConfig, runner, clips: pa.Table, out=None, make_model=None) -> pa.Table:
    """The plan's caption step: kept clips captioned, every clip row kept. With `out` (an Output),
    captions made before with the same settings are reused and new ones committed as they arrive."""
    cfg.check()
    cache = CaptionCache(out, cfg) if out is not None else None
    clips, todo = cache.split(clips) if cache is not None else (clips, clips)
    kept = int(pc.sum(pc.equal(todo["status"], ClipStatus.KEPT)).as_py() or 0) if todo.num_rows else 0
    if not kept:
        return clips
    runner.start()  # Ray up (the plan's Runner), then the two pools run on it
    pending, last = [], [time.monotonic()]

    def commit(block: pa.Table, force: bool = False) -> None:
        if block.num_rows:
            pending.append(block)
        rows = sum(t.num_rows for t in pending)
        if cache is not None and rows and (force or rows >= COMMIT_ROWS or time.monotonic() - last[0] >= COMMIT_S):
            cache.save(pa.concat_tables(pending))
            pending.clear()
            last[0] = time.monotonic()

    block_rows = max(1, min(cfg.batch_size, math.ceil(kept / max(1, cfg.prep_actors))))
    captions = caption_rows(cfg, todo, make_model=make_model, block_rows=block_rows, on_block=commit)
    commit(captions.slice(0, 0), force=True)
    if captions.num_rows:
        status = captions["caption_status"].to_pylist()
        log.info("caption: %d ok, %d failed (%s)", status.count("ok"), status.count("failed"), captions["caption_model"][0].as_py())
    return merge_captions(clips, captions)


# ------------------------------------------------------------------------------------------- the cache

# Bumped when the stage's code makes another caption from the same settings (checks, retry rules).
CAPTION_RULES = 1
# Settings that change where and how fast a caption is made, not what it says (or, for clip_*, only its
# alignment score, which is re-scored on its own).
NOT_IN_KEY = ("device", "num_gpus", "actors", "prep_actors", "batch_size", "clip_model", "clip_weights")
COMMIT_ROWS, COMMIT_S = 256, 60.0  # a cache part is written after this many captions or seconds
MAX_PARTS = 16  # more parts than this are folded into one at the next start


def prompt_sha(cfg: CaptionConfig, row: dict) -> str:
    """What the prompt of one clip says (its {column}s filled, the camera hint added)."""
    return hashlib.sha256(cfg.prompt_for(row).encode()).hexdigest()[:16]


def caption_keys(cfg: CaptionConfig) -> tuple[str, str | None]:
    """(key of what shapes a caption's text, key of the CLIP that scores it or None without one)."""
    settings = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in NOT_IN_KEY}
    rewrite = weights_revision(cfg.rewrite.model, cfg.rewrite.revision) if cfg.rewrite is not None else None
    text = [settings, cfg.text, weights_revision(cfg.model, cfg.revision), rewrite, CAPTION_RULES]
    key = hashlib.sha256(json.dumps(text, sort_keys=True, default=str).encode()).hexdigest()[:16]
    if not cfg.clip_model:
        return key, None
    clip = [cfg.clip_model, cfg.clip_weights, weights_revision(cfg.clip_model), weights_revision(cfg.clip_weights or "")]
    return key, hashlib.sha256(json.dumps(clip, default=str).encode()).hexdigest()[:16]


CACHE_SCHEMA = pa.schema([
    pa.field("clip_id", pa.string()), pa.field("clip_bytes", pa.int64()),
    pa.field("key", pa.string()), pa.field("clip_key", pa.string()),
    pa.field("prompt_sha", pa.string()),  # the prompt as filled in for the clip ({column} placeholders)
    pa.field("caption", pa.string()), *CAPTION_FIELDS,
])  # fmt: skip


class CaptionCache:
    """OUT/work/captions/part-*.parquet: every caption made, with the keys it was made under.

    `split(clips)` fills in the captions it has and returns what is left to do; `save(captions)` commits
    one part (a temporary name, then a rename). Parts are numbered in the order they were written (a later
    part wins). Parts of every setting stay, so going back to an earlier prompt finds its captions again.
    The file count stays bounded: more than MAX_PARTS parts are folded into one at the start of a run, and
    a run that has written more than MAX_PARTS parts folds its own into one as it goes."""

    DIR = "work/captions"

    def __init__(self, out, cfg: CaptionConfig):
        self.out, (self.key, self.clip_key) = out, caption_keys(cfg)
        self.rows: dict[tuple[str, int | None], dict] = {}
        found = [p for p in out.fs.find(out.path(self.DIR)) if p.endswith(".parquet") and ".tmp-" not in p] if out.exists(self.DIR) else []
        parts = sorted(found, key=lambda p: (_number(p), p))
        self.next = _number(parts[-1]) + 1 if parts else 0
        tables = []
        for p in parts:
            with out.fs.open(p, "rb") as f:
                tables.append(conform(pq.read_table(f), CACHE_SCHEMA))  # a part from before a column was added: nulls
        if len(parts) > MAX_PARTS:
            last = {(r["clip_id"], r["clip_bytes"], r["key"]): r for t in tables for r in t.to_pylist()}
            tables = [pa.Table.from_pylist(list(last.values()), schema=CACHE_SCHEMA)]
            self._write(tables[0], "fold")  # written before the parts it replaces go: a crash loses nothing
            for p in parts:
                out.fs.rm(p)
        for t in tables:  # later parts win
            for r in t.filter(pc.equal(t["key"], self.key)).to_pylist():
                self.rows[(r["clip_id"], r["clip_bytes"])] = r
        self.run_parts: list[str] = []  # parts this run wrote
        self.run_rows: dict[tuple[str, int | None], dict] = {}  # what they hold
        self.reused = self.rescored = 0
        self.bytes_of: dict[str, int | None] = {}  # clip_id -> clip_bytes of the clips handed out by split
        self.prompt_of: dict[str, str] = {}  # clip_id -> prompt_sha of the same
        self.cfg = cfg

    def split(self, clips: pa.Table) -> tuple[pa.Table, pa.Table]:
        """(clips with every cached caption filled in, kept clips still to caption or to re-score). A row to
        re-score carries its caption and `_caption_rescore` = true."""
        rows, todo = clips.to_pylist(), []
        for row in rows:
            if row["status"] != ClipStatus.KEPT or not row.get("clip_uri"):
                continue
            self.bytes_of[row["clip_id"]] = row.get("clip_bytes")
            hit = self.rows.get((row["clip_id"], row.get("clip_bytes")))
            self.prompt_of[row["clip_id"]] = prompt_sha(self.cfg, row)
            if hit is not None and hit["prompt_sha"] != self.prompt_of[row["clip_id"]]:
                hit = None  # a column the prompt names changed (a rescored clip): its caption is made again
            if hit is None:
                todo.append({**row, RESCORE: False})
                continue
            row.update({k: hit[k] for k in COLUMNS})
            if hit["clip_key"] != self.clip_key and hit["caption"] is not None:
                todo.append({**row, RESCORE: True})  # the caption stays; only its CLIP score is made again
                self.rescored += 1
            else:
                if hit["clip_key"] != self.clip_key:  # no caption to score: nothing to do but clear the score
                    row.update(caption_clip_score=None, caption_clip_model=None)
                self.reused += 1
        schema = clips.schema
        todo_schema = schema.append(pa.field(RESCORE, pa.bool_()))
        log.info("caption: %d reused, %d to re-score, %d to caption", self.reused, self.rescored, len(todo) - self.rescored)
        return pa.Table.from_pylist(rows, schema=schema), pa.Table.from_pylist(todo, schema=todo_schema)

    def save(self, captions: pa.Table) -> None:
        """Commit these caption rows (clip_id + caption columns) as one part."""
        rows = []
        for r in captions.to_pylist():
            if r.get("caption_status") is None or r.get("caption_reason") == CaptionReason.DECODE_ERROR:
                continue  # not captioned, or a read error that may pass: not a result to keep
            rows.append({**{k: r.get(k) for k in COLUMNS}, "clip_id": r["clip_id"], "clip_bytes": self.bytes_of.get(r["clip_id"]),
                         "key": self.key, "clip_key": self.clip_key if r.get("caption_clip_model") else None,
                         "prompt_sha": self.prompt_of.get(r["clip_id"])})
        if not rows:
            return
        self.run_parts.append(self._write(pa.Table.from_pylist(rows, schema=CACHE_SCHEMA), f"{time.time_ns():x}"))
        for r in rows:
            self.rows[(r["clip_id"], r["clip_bytes"])] = self.run_rows[(r["clip_id"], r["clip_bytes"])] = r
        if len(self.run_parts) > MAX_PARTS:  # a long run: its parts become one
            folded = self._write(pa.Table.from_pylist(list(self.run_rows.values()), schema=CACHE_SCHEMA), "fold")
            for p in self.run_parts:
                self.out.fs.rm(self.out.path(p))
            self.run_parts = [folded]

    def _write(self, table: pa.Table, tag: str) -> str:
        """Write the next numbered part; returns its path relative to the output."""
        rel = f"{self.DIR}/part-{self.next:06d}-{tag}.parquet"
        self.next += 1
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self.out.write_bytes(rel, buf.getvalue())
        return rel


def _number(path: str) -> int:
    """The order number of a part (part-NNNNNN-...)."""
    return int(path.rsplit("/", 1)[-1].split("-")[1])


__all__ = ["caption_rows", "caption_step", "merge_captions", "CaptionCache", "PREPARED"]
