"""Small shards of latents (and text embeddings) written the way stages/shards.py writes them, for the trainer's tests."""

from __future__ import annotations

import io
import json
import os

import fsspec
import numpy as np

from stages.shards import encode_json, write_tar


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def write_shards(folder, clips: list[dict], per_shard: list[int], vae_id: str = "AutoencoderKLWan/random-tiny (random weights)") -> list[str]:
    """clips: dicts with `key`, `latent` [C, T, H, W] and optionally `text_emb` [L, D], `text_mask` [L], `caption`.
    per_shard: how many clips go in each shard, in order. Writes folder/shards/shard-NNNNNN.tar and index.json."""
    assert sum(per_shard) == len(clips)
    fs = fsspec.filesystem("file")
    folder = str(folder)
    shards, i = [], 0
    for n, count in enumerate(per_shard):
        samples = []
        for c in clips[i : i + count]:
            meta = {"clip_id": c["key"], "license": "CC0-1.0", "latent_shape": list(c["latent"].shape), "latent_dtype": "float16",
                    "latent_fps": 8.0, "vae_class": "AutoencoderKLWan", "vae_id": vae_id, "schema_version": 1}
            s = {"__key__": c["key"], "mp4": b"not a video", "latent.npy": _npy(np.asarray(c["latent"], np.float16))}
            if c.get("caption"):
                meta["caption"] = c["caption"]
                s["txt"] = c["caption"].encode()
            if c.get("text_emb") is not None:
                meta["text_emb_shape"] = list(c["text_emb"].shape)
                meta["text_encoder"] = c.get("text_encoder", "tiny-t5 (random weights)")
                s["text_emb.npy"] = _npy(np.asarray(c["text_emb"], np.float16))
                s["text_mask.npy"] = _npy(np.asarray(c["text_mask"], np.uint8))
            s["json"] = encode_json(meta)
            samples.append(s)
        name = f"shards/shard-{n:06d}.tar"
        size, sha = write_tar(fs, os.path.join(folder, name), samples)
        shards.append({"shard": name, "n_samples": count, "bytes": size, "sha256": sha, "licenses": ["CC0-1.0"]})
        i += count
    with open(os.path.join(folder, "index.json"), "w") as f:
        json.dump({"shards": shards, "n_shards": len(shards), "n_samples": len(clips)}, f)
    return [os.path.join(folder, s["shard"]) for s in shards]


def random_clips(n: int, shapes=((4, 2, 4, 4),), seed: int = 0, prefix: str = "clip") -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"key": f"{prefix}{i:03d}", "latent": rng.standard_normal(shapes[i % len(shapes)]).astype(np.float16)} for i in range(n)]
