"""The encode step of the plan: VAE latents (and caption embeddings) of the kept clips, on Ray Data.

Runs in actors that load the VAE once, one GPU each when the cluster has GPUs (one CPU actor
otherwise). The job stops at start when the weights are missing or a bucket does not fit the VAE.
"""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.compute as pc

from curate.config import ConfigError, JobConfig
from schemas import CLIPS, ClipStatus, conform
from stages.latents import EncodeLatents, LatentsConfig, WeightsError, check_buckets, geometry_of, vae_config


def check_latents(cfg: LatentsConfig) -> None:
    """Cheap (no weights loaded): the VAE's config can be found and every bucket fits its frame rule and factors."""
    try:
        check_buckets(cfg, geometry_of(cfg.vae_class, vae_config(cfg)))
    except (WeightsError, ValueError, OSError) as e:
        raise ConfigError(str(e)) from e


class _EncodeActor:
    """One VAE per actor, loaded once and kept for every batch the actor gets."""

    def __init__(self, cfg: LatentsConfig, out_root: str):
        self.stage = EncodeLatents(cfg, out_root)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)


def encode_clips(cfg: LatentsConfig, out_root: str, clips: pa.Table) -> pa.Table:
    """`clips` with the latent columns filled for its kept clips (other rows unchanged)."""
    import ray

    clips = conform(clips, CLIPS)
    mask = pc.equal(clips["status"], ClipStatus.KEPT)
    kept, rest = clips.filter(mask), clips.filter(pc.invert(mask))
    if kept.num_rows == 0:
        return clips
    gpus = int(ray.cluster_resources().get("GPU", 0))
    extra = {"num_gpus": 1, "concurrency": gpus} if gpus else {"concurrency": 1}
    # blocks of a few batches each, so that one actor per GPU stays busy
    size = max(cfg.batch_size, math.ceil(kept.num_rows / max(1, 4 * max(gpus, 1))))
    parts = [kept.slice(i, size) for i in range(0, kept.num_rows, size)]
    ds = ray.data.from_arrow(parts).map_batches(
        _EncodeActor, fn_constructor_args=(cfg, out_root), batch_format="pyarrow", batch_size=None, **extra
    )
    done = [conform(t, CLIPS) for t in ray.get(list(ds.to_arrow_refs())) if t.num_rows]
    return pa.concat_tables([*done, rest]).sort_by([("source_id", "ascending"), ("start_frame", "ascending")])
