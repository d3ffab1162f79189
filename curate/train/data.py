"""Reading curate's shards for training: latents + text embeddings, batches of one latent shape.

Each sample's `latent.npy` (float16 [C, T, H, W]) is the VAE's latent mean; `text_emb.npy` [L, D] and
`text_mask.npy` [L] are its caption's embeddings when the curate job made them; `json` carries the
VAE and its normalisation. Samples without text get an all-False mask: the model puts its learned
empty-text embedding there.

How the stream is cut, every epoch e (an endless sequence of epochs; training counts steps):

    shards --shuffle(seed, e)--> s0 s1 s2 s3 s4 s5 ...     the same order on every rank
    rank r of R, worker w of W:  shards[r*W + w :: R*W]     (each shard read by one reader per epoch)
        when there are fewer shards than R*W readers, every reader reads every shard and keeps
        sample k when k % (R*W) == r*W + w (correct, wasteful; for small data)
    reader: shuffle buffer -> one bucket per latent shape -> a batch whenever a bucket holds batch_size;
            partial buckets carry over into the next epoch (no sample is dropped, no batch mixes shapes)

Every rank reads an endless stream, so all ranks take exactly the same number of batches (the loop's
steps) and none waits at an epoch's end for a rank that ran out. The stream is a pure function of
(shards, seed, rank, world, workers, batch_size): resuming at batch n replays each reader's stream up
to its share of n without decoding a single array (tar bytes and json only), so a resumed run sees
exactly the batches an uninterrupted run would. With DataLoader workers, batch i of a rank comes from
reader i % W (the DataLoader takes its workers in turn), which is how the skip is shared out.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
from collections.abc import Iterator

import numpy as np
import torch
import webdataset as wds

from curate.layout import Layout

log = logging.getLogger("curate.train")


class DataError(ValueError):
    """Shards that cannot train: no latents, mixed text widths, nothing for a reader."""


def shard_urls(source: str | list[str]) -> list[str]:
    """The shards of `source`: a curate output folder (its index.json), a folder of tars (recursive),
    one tar, a brace pattern (`data/shard-{000000..000009}.tar`) or a list of these."""
    if isinstance(source, (list, tuple)):
        return [u for s in source for u in shard_urls(s)]
    if "{" in source:
        return list(wds.shardlists.expand_urls(source))
    if os.path.isdir(source):
        index = os.path.join(source, Layout.INDEX)
        if os.path.exists(index):
            with open(index) as f:
                return [os.path.join(source, s["shard"]) for s in json.load(f)["shards"]]
        urls = sorted(glob.glob(os.path.join(source, "**", "*.tar"), recursive=True))
        if not urls:
            raise DataError(f"no .tar shards under {source}")
        return urls
    if source.endswith(".tar") and ("://" in source or os.path.exists(source)):
        return [source]
    raise DataError(f"{source}: not a curate output folder, a folder of shards, a .tar or a brace pattern")


def reader_shards(urls: list[str], epoch: int, seed: int, reader: int, readers: int) -> tuple[list[str], int | None]:
    """(shards this reader reads in `epoch`, None) or (every shard, k) meaning "keep every k-th sample"."""
    order = [urls[i] for i in np.random.default_rng([seed, epoch]).permutation(len(urls))]
    if len(urls) >= readers:
        return order[reader::readers], None
    return order, readers


def _samples(urls: list[str]) -> Iterator[dict]:
    for url in urls:
        yield from wds.WebDataset([url], shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False)


def latent_norm(meta: dict, channels: int) -> dict | None:
    """How to normalise this VAE's latents (README "Latents"), or None when the sample's json gives no
    usable rule (e.g. per-channel statistics of another width than the latent, as the demo's tiny Wan)."""
    mean, std = meta.get("latent_channel_mean"), meta.get("latent_channel_std")
    scale, shift = meta.get("latent_scaling_factor"), meta.get("latent_shift_factor")
    if mean is not None and std is not None:
        if len(mean) != channels or len(std) != channels:
            return None
        ltx = meta.get("vae_class") == "AutoencoderKLLTXVideo"
        return {"mean": list(mean), "std": list(std), "scale": float(scale or 1.0) if ltx else 1.0, "shift": 0.0}
    if scale is not None:
        return {"mean": None, "std": None, "scale": float(scale), "shift": float(shift or 0.0)}
    return None


def normalize(z: np.ndarray, norm: dict | None) -> np.ndarray:
    if norm is None:
        return z
    if norm["mean"] is not None:
        m = np.asarray(norm["mean"], np.float32).reshape(-1, 1, 1, 1)
        s = np.asarray(norm["std"], np.float32).reshape(-1, 1, 1, 1)
        return (z - m) * norm["scale"] / s
    return (z - norm["shift"]) * norm["scale"]


def denormalize(z: torch.Tensor, norm: dict | None) -> torch.Tensor:
    """The inverse of `normalize` for [B, C, T, H, W] (before the VAE decodes a sampled latent)."""
    if norm is None:
        return z
    if norm["mean"] is not None:
        m = torch.tensor(norm["mean"], dtype=z.dtype, device=z.device).view(1, -1, 1, 1, 1)
        s = torch.tensor(norm["std"], dtype=z.dtype, device=z.device).view(1, -1, 1, 1, 1)
        return z * s / norm["scale"] + m
    return z / norm["scale"] + norm["shift"]


def probe(urls: list[str]) -> dict:
    """What the model needs to know before training, from the first shard's samples: latent channels,
    text embedding width and length (None when that shard has no text), the VAE and its normalisation."""
    info: dict = {"in_channels": None, "text_dim": None, "text_len": None, "latent_shapes": set()}
    for s in _samples(urls[:1]):
        meta = json.loads(s["json"]) if "json" in s else {}
        if "latent.npy" not in s:
            continue
        shape = tuple(meta.get("latent_shape") or np.load(io.BytesIO(s["latent.npy"])).shape)
        info["latent_shapes"].add(shape)
        if info["in_channels"] is None:
            info.update(in_channels=shape[0], vae={k: meta.get(k) for k in ("vae_class", "vae_id", "vae_revision")},
                        norm=latent_norm(meta, shape[0]), latent_fps=meta.get("latent_fps"),
                        text_encoder=None)
        if info["text_dim"] is None and "text_emb.npy" in s:
            emb = np.load(io.BytesIO(s["text_emb.npy"]))
            info.update(text_len=emb.shape[0], text_dim=emb.shape[1], text_encoder=meta.get("text_encoder"))
    if info["in_channels"] is None:
        raise DataError(f"{urls[0]}: no sample has latent.npy; run the curate job with a `latents` section")
    info["latent_shapes"] = sorted(info["latent_shapes"])
    return info


class ShardStream(torch.utils.data.IterableDataset):
    """An endless stream of batches {x [B, C, T, H, W], text [B, L, D], mask [B, L], keys, epochs} for
    one rank (and its DataLoader workers); `start_batch` resumes at a rank's batch position."""

    def __init__(self, urls: list[str], batch_size: int, text_dim: int, rank: int = 0, world: int = 1,
                 seed: int = 0, shuffle_buffer: int = 64, start_batch: int = 0, normalize_latents: bool = True):
        super().__init__()
        if not urls:
            raise DataError("no shards to read")
        self.urls, self.batch_size, self.text_dim = list(urls), batch_size, text_dim
        self.rank, self.world, self.seed = rank, world, seed
        self.shuffle_buffer, self.start_batch, self.normalize_latents = shuffle_buffer, start_batch, normalize_latents

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # The DataLoader takes workers in turn from worker 0, so a resumed loader's worker w serves the
        # batches n + w, n + w + W, ...: those of the reader (n + w) % W, which skips its batches before n.
        reader = (worker + self.start_batch) % workers
        skip = max(0, (self.start_batch - reader + workers - 1) // workers)
        for i, batch in enumerate(self.raw_batches(reader, workers)):
            if i >= skip:
                yield self.collate(batch)

    def raw_batches(self, worker: int = 0, workers: int = 1) -> Iterator[list[dict]]:
        """This reader's endless sequence of batches of undecoded samples (key, meta, file bytes)."""
        reader, readers = self.rank * workers + worker, self.world * workers
        buckets: dict[tuple, list[dict]] = {}
        epoch = 0
        while True:
            urls, every = reader_shards(self.urls, epoch, self.seed, reader, readers)
            rng = np.random.default_rng([self.seed, epoch, reader, readers])
            buffer: list[dict] = []
            seen = 0

            def place(s):
                bucket = buckets.setdefault(s["shape"], [])
                bucket.append(s)
                if len(bucket) == self.batch_size:
                    buckets[s["shape"]] = []
                    return bucket
                return None

            for k, s in enumerate(_samples(urls)):
                if every is not None and k % every != reader:
                    continue
                if "latent.npy" not in s:
                    continue
                meta = json.loads(s["json"]) if "json" in s else {}
                shape = tuple(meta["latent_shape"]) if meta.get("latent_shape") else np.load(io.BytesIO(s["latent.npy"])).shape
                buffer.append({"key": s["__key__"], "meta": meta, "shape": shape, "epoch": epoch,
                               **{f: s[f] for f in ("latent.npy", "text_emb.npy", "text_mask.npy") if f in s}})
                seen += 1
                if len(buffer) >= self.shuffle_buffer:
                    batch = place(buffer.pop(int(rng.integers(len(buffer)))))
                    if batch:
                        yield batch
            for j in rng.permutation(len(buffer)):
                batch = place(buffer[j])
                if batch:
                    yield batch
            if seen == 0:
                raise DataError(f"reader {reader} of {readers} (rank {self.rank}, worker {worker}) got no sample with "
                                f"latents in epoch {epoch}: fewer samples than readers, or shards without latent.npy")
            epoch += 1

    def collate(self, batch: list[dict]) -> dict:
        xs, texts, masks = [], [], []
        for s in batch:
            z = np.load(io.BytesIO(s["latent.npy"])).astype(np.float32)
            if self.normalize_latents:
                z = normalize(z, latent_norm(s["meta"], z.shape[0]))
            xs.append(torch.from_numpy(np.ascontiguousarray(z, np.float32)))
            if "text_emb.npy" in s:
                emb = np.load(io.BytesIO(s["text_emb.npy"])).astype(np.float32)
                if emb.ndim != 2 or emb.shape[1] != self.text_dim:
                    raise DataError(f"sample {s['key']}: text_emb.npy has shape {emb.shape}, the model expects width {self.text_dim}")
                mask = np.load(io.BytesIO(s["text_mask.npy"])).astype(bool) if "text_mask.npy" in s else np.ones(len(emb), bool)
            else:
                emb, mask = np.zeros((0, self.text_dim), np.float32), np.zeros(0, bool)
            texts.append(emb)
            masks.append(mask)
        length = max(1, max(len(m) for m in masks))
        text = torch.zeros(len(batch), length, self.text_dim)
        mask = torch.zeros(len(batch), length, dtype=torch.bool)
        for i, (e, m) in enumerate(zip(texts, masks)):
            text[i, : len(e)] = torch.from_numpy(e)
            mask[i, : len(m)] = torch.from_numpy(m)
        return {"x": torch.stack(xs), "text": text, "mask": mask, "keys": [s["key"] for s in batch],
                "epochs": [s["epoch"] for s in batch]}
