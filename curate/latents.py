"""The encode step of the plan: VAE latents (and caption embeddings) of the kept clips, on Ray Data.

Runs in actors that load the VAE once, one GPU each when the cluster has GPUs (one CPU actor
otherwise). The job stops at start when the weights are missing or a bucket does not fit the VAE. A
clip encoded before with the same settings, VAE and clip bytes (and caption, when its embedding is made
too) is reused from the commit log while its files are there.
"""

from __future__ import annotations

import hashlib
import json
import logging

import pyarrow as pa

from curate.config import ConfigError, to_dict
from schemas import SAMPLE_FILES
from stages.latents import PRETRAINED, EncodeLatents, LatentsConfig, WeightsError, check_buckets, geometry_of, resolve_vae, vae_config

log = logging.getLogger("curate")

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

    def __init__(self, cfg: LatentsConfig, folder: str):
        self.stage = EncodeLatents(cfg, folder)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)


def latents_pool(cfg: LatentsConfig, folder: str):
    """The encode step's pool in the plan: actors that load the VAE once (a GPU share each with GPUs),
    writing the latent files into `folder` (a path or URL)."""
    from curate.plan import Pool

    return Pool(_EncodeActor, (cfg, folder), actors=(1, 1 << 10), gpu=True, batch_size=cfg.batch_size)


def latents_valid(committed: dict) -> bool:
    """A committed latent is reused only while its files are there."""
    import fsspec

    for c in SAMPLE_FILES:
        uri = committed.get(c)
        if uri and not fsspec.core.url_to_fs(uri)[0].exists(uri):
            return False
    return True
