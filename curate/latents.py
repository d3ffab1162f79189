"""The encode step of the plan: VAE latents (and caption embeddings) of the kept clips, on Ray Data.

Runs in actors that load the VAE once, one GPU each when the cluster has GPUs (one CPU actor
otherwise). The job stops at start when the weights are missing or a bucket does not fit the VAE. A
clip encoded before with the same settings, VAE and clip bytes is reused from OUT/work/latents.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math

import pyarrow as pa

from curate.config import ConfigError, to_dict
from curate.storage import Output
from schemas import CLIPS, LATENT_FIELDS, SAMPLE_FILES, TEXT_EMBEDDING_FIELDS, ClipStatus, Reason, conform
from stages.latents import PRETRAINED, EncodeLatents, LatentsConfig, WeightsError, check_buckets, geometry_of, resolve_vae, vae_config

log = logging.getLogger("curate")

CACHE = "work/latents.json"
# What the stage decides for a clip: reused as a whole on a rerun.
DECIDED = ["status", "reason", "error", *(f.name for f in LATENT_FIELDS), *(f.name for f in TEXT_EMBEDDING_FIELDS)]
# Settings that do not change a latent's bytes.
NOT_IN_KEY = ("batch_size", "slicing", "tiling", "device")


def check_latents(cfg: LatentsConfig) -> None:
    """Cheap (no weights loaded): the VAE's config can be found and every bucket fits its frame rule and factors."""
    try:
        check_buckets(cfg, geometry_of(cfg.vae_class, vae_config(cfg)))
    except (WeightsError, ValueError, OSError) as e:
        raise ConfigError(str(e)) from e


def settings_key(cfg: LatentsConfig) -> str:
    """A hash of everything that shapes a latent's bytes: the settings and the VAE's revision."""
    settings = {k: v for k, v in to_dict(cfg).items() if k not in NOT_IN_KEY}
    revision = resolve_vae(cfg)[2] if cfg.weights == PRETRAINED else None
    return hashlib.sha256(json.dumps([settings, revision], sort_keys=True, default=str).encode()).hexdigest()[:16]


class _EncodeActor:
    """One VAE per actor, loaded once and kept for every batch the actor gets."""

    def __init__(self, cfg: LatentsConfig, out_root: str):
        self.stage = EncodeLatents(cfg, out_root)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)


def encode_clips(cfg: LatentsConfig, out: Output, clips: pa.Table, start_ray=lambda: None) -> pa.Table:
    """`clips` with the latent columns filled for its kept clips (other rows unchanged); `start_ray` is
    called before Ray is first needed (not at all when every clip is reused)."""
    import ray

    clips = conform(clips, CLIPS)
    key = settings_key(cfg)
    cache = json.loads(out.fs.cat_file(out.path(CACHE))) if out.exists(CACHE) else {}
    cache = cache.get("entries", {}) if cache.get("key") == key else {}
    rows, todo = clips.to_pylist(), []
    for i, row in enumerate(rows):
        if row["status"] != ClipStatus.KEPT:
            continue
        hit = cache.get(row["clip_id"])
        # the caption too when its embedding is part of what was made (a new caption needs a new embedding)
        same_text = cfg.text is None or hit is not None and hit.get("caption") == row["caption"]
        if hit and hit["clip_bytes"] == row["clip_bytes"] and same_text and all(out.fs.exists(hit["row"][c]) for c in SAMPLE_FILES if hit["row"].get(c)):
            row.update(hit["row"])
        else:
            todo.append(i)
    if todo:
        start_ray()
        gpus = int(ray.cluster_resources().get("GPU", 0))
        extra = {"num_gpus": 1, "concurrency": gpus} if gpus else {"concurrency": 1}
        kept = pa.Table.from_pylist([rows[i] for i in todo], schema=CLIPS)
        # blocks of a few batches each, so that every actor stays busy
        size = max(cfg.batch_size, math.ceil(kept.num_rows / max(1, 4 * max(gpus, 1))))
        parts = [kept.slice(i, size) for i in range(0, kept.num_rows, size)]
        ds = ray.data.from_arrow(parts).map_batches(
            # a concrete batch_size: Ray rejects batch_size=None in a pool that asks for GPUs
            _EncodeActor, fn_constructor_args=(cfg, out.url), batch_format="pyarrow", batch_size=size, **extra
        )
        done = [r for t in ray.get(list(ds.to_arrow_refs())) for r in conform(t, CLIPS).to_pylist()]
        log.debug("latents: %d clips on %d actor(s)%s", len(done), max(gpus, 1), ", 1 GPU each" if gpus else "")
        by_id = {r["clip_id"]: r for r in done}
        for i in todo:
            rows[i] = by_id[rows[i]["clip_id"]]
    entries = {r["clip_id"]: {"clip_bytes": r["clip_bytes"], "caption": r["caption"], "row": {c: r[c] for c in DECIDED}}
               for r in rows if r["latent_uri"] or r["reason"] == Reason.NO_BUCKET}
    out.write_text(CACHE, json.dumps({"key": key, "entries": entries}, sort_keys=True))
    return pa.Table.from_pylist(rows, schema=CLIPS)
