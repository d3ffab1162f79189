"""The caption step of the plan: CPU preparation and generation as two actor pools.

    kept clips ──► _Prepare pool (CPU)          decode, resize, processor
               ──► _Generate pool (a GPU share) the model: generate, check, retry, CLIP

Ray streams blocks between the two pools, so the next batch is being decoded while the model
generates. `num_gpus` is asked for per generation actor only when the cluster has GPUs. A cluster
without GPUs runs both steps in one pool of `actors` actors (`_Both`, one CPU each): there the split
would only make two CPU pools compete for the same cores, load the processor twice, and need two
CPUs where the cluster may have one.

A caption is paid for once: the plan commits every caption under OUT/commit/caption/<key>/, the key
naming what shapes the text (model and its exact revision, prompt, decoding, frames, checks); a committed
caption is reused for the same clip (clip_id names the source's content hash, the frame range and the
encode settings), the same clip bytes and the same prompt as filled in for the clip. A rerun or a resume
captions only what is not there; a change of the CLIP model re-scores the alignment of the captions it
has, without generating them again.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging

import pyarrow as pa
import pyarrow.compute as pc

from schemas import CAPTION_FIELDS, CaptionReason, ClipStatus
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
    from ray.data import ActorPoolStrategy

    kept = rows.filter(pc.equal(rows["status"], ClipStatus.KEPT)) if rows.num_rows else rows
    if kept.num_rows == 0:
        return pa.table({"clip_id": pa.array([], pa.string())})
    size = block_rows or cfg.batch_size
    blocks = [kept.slice(i, size) for i in range(0, kept.num_rows, size)]
    gpus = cfg.num_gpus if cluster_gpus() > 0 else 0
    ds = ray.data.from_arrow(blocks)
    if two_pools if two_pools is not None else gpus > 0:
        ds = ds.map_batches(_Prepare, fn_constructor_args=(cfg, make_model), compute=ActorPoolStrategy(size=cfg.prep_actors),
                            batch_format="pyarrow", batch_size=None, num_cpus=1)
        # A GPU pool needs a concrete batch_size (Ray rejects None with num_gpus).
        ds = ds.map_batches(_Generate, fn_constructor_args=(cfg, make_model, make_rewriter), compute=ActorPoolStrategy(size=cfg.actors),
                            batch_format="pyarrow", batch_size=cfg.batch_size * 4, num_gpus=gpus,
                            num_cpus=0 if gpus else 1)
    else:
        ds = ds.map_batches(_Both, fn_constructor_args=(cfg, make_model, make_rewriter), compute=ActorPoolStrategy(size=cfg.actors),
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


def caption_step_pools(cfg: CaptionConfig, make_model=None, make_rewriter=None, two_pools: bool | None = None) -> tuple:
    """The caption step's pools in the plan: with GPUs, CPU preparation then generation on a GPU share;
    without, both in one pool (two CPU pools would only compete for the same cores)."""
    from curate.plan import Pool

    gpus = cluster_gpus() if two_pools is None else float(two_pools)
    if gpus > 0:
        return (Pool(_Prepare, (cfg, make_model), actors=(1, cfg.prep_actors), batch_size=cfg.batch_size),
                # a concrete batch_size: Ray rejects None in a pool that asks for GPUs
                Pool(_Generate, (cfg, make_model, make_rewriter), actors=(1, cfg.actors), gpu=True, batch_size=cfg.batch_size))
    return (Pool(_Both, (cfg, make_model, make_rewriter), actors=(1, cfg.actors), batch_size=cfg.batch_size),)


def caption_step(cfg: CaptionConfig, make_model=None, make_rewriter=None, two_pools: bool | None = None):
    """The plan's caption step. Its commit log is keyed by what shapes the text; a committed caption is
    reused for the same clip bytes and the same prompt as filled in for the clip; one scored by another
    CLIP (or by none) keeps its text and only its alignment is scored again. Captions made, or failed for
    good, are committed; a read error that may pass is not."""
    from curate.plan import Step

    text_key, clip_key = caption_keys(cfg)

    def revisit(row: dict, committed: dict) -> dict | None:
        if committed.get("caption") is None or committed.get("clip_key") == clip_key:
            return None
        return {RESCORE: True}

    return Step("caption", caption_step_pools(cfg, make_model, make_rewriter, two_pools), tuple(COLUMNS), text_key,
                match=lambda row: [row.get("clip_bytes"), prompt_sha(cfg, row)], revisit=revisit,
                keep=lambda r: r.get("caption_status") is not None and r.get("caption_reason") != CaptionReason.DECODE_ERROR,
                stamp=lambda r: {"clip_key": clip_key if r.get("caption_clip_model") else None})


# ------------------------------------------------------------------------------------------- the cache

# Bumped when the stage's code makes another caption from the same settings (checks, retry rules).
CAPTION_RULES = 1
# Settings that change where and how fast a caption is made, not what it says (or, for clip_*, only its
# alignment score, which is re-scored on its own).
NOT_IN_KEY = ("device", "num_gpus", "actors", "prep_actors", "batch_size", "clip_model", "clip_weights")
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


__all__ = ["caption_rows", "caption_step", "caption_step_pools", "caption_keys", "PREPARED"]
