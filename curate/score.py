"""The score step of the plan: motion, aesthetics and watermarks over the clip rows, on Ray Data.

Each enabled scorer is one `map_batches` over the clips table (columns added, no row dropped). The
CPU scorers run as tasks; the aesthetic scorer runs in actors that load CLIP once, asking Ray for a
GPU each when the cluster has GPUs (and on the CPU otherwise).
"""

from __future__ import annotations

import math

import pyarrow as pa

from curate.config import ConfigError, JobConfig
from schemas import CLIPS, conform
from stages.aesthetic import ScoreAesthetic, WeightsError
from stages.motion import ScoreMotion
from stages.watermark import ScoreWatermark


def check_scorers(cfg: JobConfig) -> None:
    """Stop the job at start when a scorer's weights are missing (the message says what to set)."""
    try:
        if cfg.aesthetic is not None:
            cfg.aesthetic.check()
        if cfg.watermark is not None:
            cfg.watermark.check()
    except (WeightsError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e


class _AestheticActor:
    """One CLIP per actor, loaded on first use and kept for every batch the actor gets."""

    def __init__(self, cfg):
        self.stage = ScoreAesthetic(cfg)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)


def score_clips(cfg: JobConfig, clips: pa.Table, blocks: int) -> pa.Table:
    import ray

    clips = conform(clips, CLIPS)
    if clips.num_rows == 0:
        return clips
    n = clips.num_rows
    size = max(1, math.ceil(n / max(1, blocks)))
    parts = [clips.slice(i, size) for i in range(0, n, size)]
    ds = ray.data.from_arrow(parts)
    if cfg.motion is not None:
        ds = ds.map_batches(ScoreMotion(cfg.motion), batch_format="pyarrow", batch_size=None)
    if cfg.watermark is not None:
        ds = ds.map_batches(ScoreWatermark(cfg.watermark), batch_format="pyarrow", batch_size=None)
    if cfg.aesthetic is not None:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        extra = {"num_gpus": 1, "concurrency": gpus} if gpus else {"concurrency": 1}
        ds = ds.map_batches(
            _AestheticActor, fn_constructor_args=(cfg.aesthetic,), batch_format="pyarrow",
            batch_size=max(1, cfg.aesthetic.batch_size // cfg.aesthetic.frames), **extra,
        )
    out = [t for t in ray.get(list(ds.to_arrow_refs())) if t.num_rows]
    return pa.concat_tables([conform(t, CLIPS) for t in out]) if out else clips
