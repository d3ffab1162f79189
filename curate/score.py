"""The score step of the plan: motion, aesthetics, watermarks, burned-in text and NSFW over the clip rows, on Ray Data.

Each enabled scorer is one `map_batches` over the clips table (columns added, no row dropped). The
CPU scorers run as tasks; the aesthetic scorer runs in actors that load CLIP once, asking Ray for a
GPU each when the cluster has GPUs (and on the CPU otherwise). Text and NSFW run together in actors
that open one session per model once; when both sample the same number of frames, each clip is
decoded once for both.
"""

from __future__ import annotations

import hashlib
import io
import json
import math

import pyarrow as pa
import pyarrow.parquet as pq

from curate.config import ConfigError, JobConfig, to_dict
from curate.storage import Output
from schemas import CLIPS, SCORE_FIELDS, ClipStatus, Reason, conform
from stages.aesthetic import ScoreAesthetic, WeightsError
from stages.frames import read_frames
from stages.motion import ScoreMotion
from stages.nsfw import ScoreNsfw
from stages.nsfw import model_info as nsfw_model_info
from stages.text import ScoreText
from stages.text import model_info as text_model_info
from stages.watermark import BIAS, BOX_MARGIN, WEIGHTS, ScoreWatermark


def check_scorers(cfg: JobConfig) -> None:
    """Stop the job at start when a scorer's weights are missing (the message says what to set)."""
    try:
        if cfg.aesthetic is not None:
            cfg.aesthetic.check()
        if cfg.watermark is not None:
            cfg.watermark.check()
        if cfg.text is not None:
            text_model_info()  # the OCR models must be in the installed rapidocr wheel
        if cfg.nsfw is not None:
            nsfw_model_info()
    except (WeightsError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e


class _AestheticActor:
    """One CLIP per actor, loaded on first use and kept for every batch the actor gets."""

    def __init__(self, cfg):
        self.stage = ScoreAesthetic(cfg)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)


class _ImageModelsActor:
    """The text and NSFW scorers of one worker: one onnxruntime session per model, loaded on first use.
    Scorers that sample the same number of frames share one decode (at the larger of their sizes)."""

    def __init__(self, text_cfg, nsfw_cfg):
        self.stages = [s for s in (ScoreText(text_cfg) if text_cfg else None, ScoreNsfw(nsfw_cfg) if nsfw_cfg else None) if s]

    def __call__(self, batch: pa.Table) -> pa.Table:
        by_frames: dict[int, list] = {}
        for stage in self.stages:
            by_frames.setdefault(stage.cfg.frames, []).append(stage)
        for n, stages in by_frames.items():
            frames, errors = read_frames(batch, n, max(s.cfg.size for s in stages))
            for stage in stages:
                batch = stage.score(batch, frames, errors)
        return batch


def score_clips(cfg: JobConfig, clips: pa.Table, runner, out: Output) -> pa.Table:
    """Scores of every scorable clip; clips scored before with the same scorer settings are reused."""
    clips = conform(clips, CLIPS)
    if clips.num_rows == 0 or all(c is None for c in (cfg.motion, cfg.watermark, cfg.aesthetic, cfg.text, cfg.nsfw)):
        return clips
    cache = ScoreCache(out, cfg)
    reused, todo = cache.split(clips)
    scored = _score(cfg, todo, runner) if todo.num_rows else todo
    cache.save(scored)
    merged = pa.concat_tables([reused, conform(scored, CLIPS)]) if reused.num_rows else conform(scored, CLIPS)
    return merged.sort_by([("source_id", "ascending"), ("start_frame", "ascending")])


def _score(cfg: JobConfig, clips: pa.Table, runner) -> pa.Table:
    import ray

    runner.start()
    n = clips.num_rows
    size = max(1, math.ceil(n / runner.blocks()))
    ds = ray.data.from_arrow([clips.slice(i, size) for i in range(0, n, size)])
    if cfg.motion is not None:
        ds = ds.map_batches(ScoreMotion(cfg.motion), batch_format="pyarrow", batch_size=None)
    if cfg.watermark is not None:
        ds = ds.map_batches(ScoreWatermark(cfg.watermark), batch_format="pyarrow", batch_size=None)
    # Text + NSFW before the aesthetic pool: on the CPU they fuse with the motion/watermark tasks into one
    # actor, so a GPU aesthetic pool (which does not fuse) and they fit in two CPUs; the other order
    # asked for three on a two-CPU instance that declares a GPU, and the tasks waited forever.
    if cfg.text is not None or cfg.nsfw is not None:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        devices = [c.device for c in (cfg.text, cfg.nsfw) if c is not None]
        threads = max(c.threads for c in (cfg.text, cfg.nsfw) if c is not None)
        actors = cfg.text.actors if cfg.text is not None else 1
        extra = {"num_gpus": 1} if gpus and "cpu" not in devices and _ort_has_cuda() else {}
        ds = ds.map_batches(
            _ImageModelsActor, fn_constructor_args=(cfg.text, cfg.nsfw), batch_format="pyarrow",
            batch_size=None, concurrency=min(actors, gpus) if extra else actors, num_cpus=threads, **extra,
        )
    if cfg.aesthetic is not None:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        extra = {"num_gpus": 1, "concurrency": gpus} if gpus else {"concurrency": 1}
        ds = ds.map_batches(
            _AestheticActor, fn_constructor_args=(cfg.aesthetic,), batch_format="pyarrow",
            batch_size=max(1, cfg.aesthetic.batch_size // cfg.aesthetic.frames), **extra,
        )
    out = [t for t in ray.get(list(ds.to_arrow_refs())) if t.num_rows]
    return pa.concat_tables([conform(t, CLIPS) for t in out]) if out else clips


def _ort_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


# What a scorer decides about a clip: its columns, and an error it may have met.
SCORED = [f.name for f in SCORE_FIELDS] + ["status", "reason", "error"]


# Bumped when a scorer's code scores the same clip differently under the same settings, so a rerun does
# not reuse scores the current code would not give (2: the watermark detector's votes and blank rule).
# The watermark model's fitted constants are part of the key too, so a refit invalidates on its own.
SCORE_RULES = 3


class ScoreCache:
    """OUT/work/scores-<settings>.parquet: what each clip (by clip_id) scored, for reruns."""

    def __init__(self, out: Output, cfg: JobConfig):
        code = {"rules": SCORE_RULES, "watermark_model": [WEIGHTS, BIAS, BOX_MARGIN]}
        # The OCR and NSFW models are named by their packages' versions and files' hashes.
        if cfg.text is not None:
            code["text_model"] = text_model_info()
        if cfg.nsfw is not None:
            code["nsfw_model"] = nsfw_model_info()
        settings = json.dumps([to_dict(cfg.motion), to_dict(cfg.aesthetic), to_dict(cfg.watermark),
                               to_dict(cfg.text), to_dict(cfg.nsfw), code], sort_keys=True, default=str)
        self.out, self.rel = out, f"work/scores-{hashlib.sha256(settings.encode()).hexdigest()[:12]}.parquet"
        self.rows: dict[str, dict] = {}
        if out.exists(self.rel):
            with out.fs.open(out.path(self.rel), "rb") as f:
                self.rows = {r["clip_id"]: r for r in pq.read_table(f).to_pylist()}

    def split(self, clips: pa.Table) -> tuple[pa.Table, pa.Table]:
        """(clips with their cached scores filled in, clips still to score)."""
        reused, todo = [], []
        for row in clips.to_pylist():
            hit = self.rows.get(row["clip_id"])
            # Only a kept clip is scored; whether it is kept is the split's decision, not the cache's.
            if hit is not None and row["status"] == ClipStatus.KEPT:
                reused.append({**row, **{k: hit[k] for k in SCORED}})
            else:
                todo.append(row)
        return pa.Table.from_pylist(reused, schema=CLIPS), pa.Table.from_pylist(todo, schema=CLIPS)

    def save(self, scored: pa.Table) -> None:
        fresh = {r["clip_id"]: {k: r[k] for k in ["clip_id", *SCORED]} for r in conform(scored, CLIPS).to_pylist() if scorable_or_scored(r)}
        if not fresh:
            return
        self.rows.update(fresh)
        schema = pa.schema([CLIPS.field("clip_id"), *(CLIPS.field(k) for k in SCORED)])
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(sorted(self.rows.values(), key=lambda r: r["clip_id"]), schema=schema), buf)
        self.out.write_bytes(self.rel, buf.getvalue())


def scorable_or_scored(row: dict) -> bool:
    """A row a scorer looked at: kept with a file, or marked by a scorer's error."""
    return (row["status"] == ClipStatus.KEPT and bool(row.get("clip_uri"))) or row.get("reason") == Reason.SCORE_ERROR
