"""The caption step on Ray Data: CPU preparation and generation as two actor pools.

    kept clips ──► map_batches(_Prepare, concurrency=prep_actors)          CPU: decode, resize, processor
               ──► map_batches(_Generate, concurrency=actors, num_gpus=…)  the model: generate, check, retry, CLIP
               ──► caption columns joined back onto `clips` by clip_id

Ray streams blocks between the two pools, so the next batch is being decoded while the model
generates. `num_gpus` is asked for per generation actor only when the cluster has GPUs.
"""

from __future__ import annotations

import functools
import logging
import math

import pyarrow as pa
import pyarrow.compute as pc

from schemas import CAPTION_FIELDS, ClipStatus
from stages.caption import PREPARED, CaptionConfig, ClipAlignment, GenerateCaptions, PrepareCaptions, load_vlm

log = logging.getLogger("curate")

COLUMNS = ["caption", *(f.name for f in CAPTION_FIELDS)]


class _Prepare:
    def __init__(self, cfg: CaptionConfig, make_model=None):
        self.stage = PrepareCaptions(cfg, (make_model or functools.partial(load_vlm, cfg))())

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)


class _Generate:
    def __init__(self, cfg: CaptionConfig, make_model=None):
        model = (make_model or functools.partial(load_vlm, cfg))()
        self.stage = GenerateCaptions(cfg, model, ClipAlignment(cfg) if cfg.clip_model else None)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def caption_rows(cfg: CaptionConfig, rows: pa.Table, make_model=None, block_rows: int | None = None) -> pa.Table:
    """Caption every kept row of `rows` through the two actor pools; returns clip_id + caption columns.

    `make_model` (a picklable zero-argument callable) replaces the configured model in every actor: tests
    inject a fake there. Blocks of `block_rows` rows (default: batch_size) travel between the pools."""
    import ray

    kept = rows.filter(pc.equal(rows["status"], ClipStatus.KEPT)) if rows.num_rows else rows
    if kept.num_rows == 0:
        return pa.table({"clip_id": pa.array([], pa.string())})
    size = block_rows or cfg.batch_size
    blocks = [kept.slice(i, size) for i in range(0, kept.num_rows, size)]
    gpus = cfg.num_gpus if cluster_gpus() > 0 else 0
    ds = ray.data.from_arrow(blocks)
    ds = ds.map_batches(_Prepare, fn_constructor_args=(cfg, make_model), concurrency=cfg.prep_actors,
                        batch_format="pyarrow", batch_size=None, num_cpus=1)
    ds = ds.map_batches(_Generate, fn_constructor_args=(cfg, make_model), concurrency=cfg.actors,
                        batch_format="pyarrow", batch_size=cfg.batch_size * 4, num_gpus=gpus,
                        num_cpus=0 if gpus else 1)
    parts = [t for t in ray.get(list(ds.to_arrow_refs())) if t.num_rows]
    if not parts:
        return pa.table({"clip_id": pa.array([], pa.string())})
    cols = ["clip_id", *COLUMNS]
    out = pa.concat_tables([t.select(cols) for t in parts])
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


def caption_step(cfg: CaptionConfig, runner, clips: pa.Table) -> pa.Table:
    """The plan's caption step: kept clips captioned, every clip row kept."""
    cfg.check()
    kept = int(pc.sum(pc.equal(clips["status"], ClipStatus.KEPT)).as_py() or 0) if clips.num_rows else 0
    if not kept:
        return clips
    runner.start()  # Ray up (the plan's Runner), then the two pools run on it
    captions = caption_rows(cfg, clips, block_rows=max(1, min(cfg.batch_size, math.ceil(kept / max(1, cfg.prep_actors)))))
    if captions.num_rows:
        status = captions["caption_status"].to_pylist()
        log.info("caption: %d ok, %d failed (%s)", status.count("ok"), status.count("failed"), captions["caption_model"][0].as_py())
    return merge_captions(clips, captions)


__all__ = ["caption_rows", "caption_step", "merge_captions", "PREPARED"]
