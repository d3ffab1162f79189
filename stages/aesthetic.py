"""Aesthetic scores: CLIP image embeddings of a few frames per clip -> a LAION aesthetic head.

The backbone is an open_clip model (ViT-L-14 by default) loaded from a local path; the head is one
of LAION's predictors: the improved MLP (768 -> 1024 -> 128 -> 64 -> 16 -> 1, dropout off, no
activation for the `linearMSE` heads, ReLU for `reluMSE`) or a linear v1 head. Embeddings are
L2-normalised before the head, as LAION trained them. Frame scores are aggregated by mean or min.

Where the weights come from is pinned in `PINNED`; nothing here downloads. `weights: random` builds
the architecture with random weights (smoke tests, throughput), and `aesthetic_model` says so.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa

from schemas import AESTHETIC_FIELDS
from stages.columns import ScoreError, scorable, mark_errors, set_columns
from stages.media import MediaError, local_copy, sample_evenly

# The one place that names upstream weights (what to download; nothing here fetches it).
PINNED = {
    "clip": {
        # open_clip model name -> (open_clip pretrained tag, where the file lives)
        "ViT-L-14": ("openai", "open_clip.create_model_and_transforms('ViT-L-14', pretrained='openai') downloads it"),
        "ViT-B-32": ("openai", "open_clip.create_model_and_transforms('ViT-B-32', pretrained='openai') downloads it"),
        "ViT-B-16": ("openai", "open_clip.create_model_and_transforms('ViT-B-16', pretrained='openai') downloads it"),
    },
    # Heads: the files on the repositories' main branches (no release tags exist); check them against
    # reference_scores.json (tests/real/test_aesthetic_real.py does) after downloading.
    "heads": {
        "sac+logos+ava1-l14-linearMSE": "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
                                        "sac+logos+ava1-l14-linearMSE.pth",
        "sa_0_4_vit_l_14_linear": "https://github.com/LAION-AI/aesthetic-predictor/raw/main/sa_0_4_vit_l_14_linear.pth",
        "sa_0_4_vit_b_32_linear": "https://github.com/LAION-AI/aesthetic-predictor/raw/main/sa_0_4_vit_b_32_linear.pth",
        "sa_0_4_vit_b_16_linear": "https://github.com/LAION-AI/aesthetic-predictor/raw/main/sa_0_4_vit_b_16_linear.pth",
    },
}

RANDOM = "random"


class WeightsError(ValueError):
    """Weights that are not there; the message says what to download or set."""


@dataclass(frozen=True)
class AestheticConfig:
    clip_model: str = "ViT-L-14"  # an open_clip architecture name
    weights: str | None = None  # CLIP weights: a folder (open_clip_config.json + open_clip_pytorch_model.bin), a .pt/.bin/.safetensors file, or `random`
    head: str | None = None  # LAION head .pth file; `random` (only with weights: random) for a random MLP head
    head_activation: Literal["auto", "none", "relu"] = "auto"  # auto: relu when the head's file name says reluMSE
    frames: int = 4  # frames per clip, evenly spaced
    aggregate: Literal["mean", "min"] = "mean"
    batch_size: int = 32  # images per CLIP forward pass
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when there is one

    def __post_init__(self):
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def check(self) -> None:
        """Raise WeightsError unless the weights and head can be found; cheap (no loading)."""
        if self.weights is None:
            tag, where = PINNED["clip"].get(self.clip_model, ("?", "open_clip's pretrained tags for this model"))
            raise WeightsError(
                f"aesthetic.weights is not set: download the {self.clip_model} CLIP weights ({where}) and set "
                f"aesthetic.weights=PATH, or set aesthetic.weights=random for a smoke run (scores marked random)"
            )
        if self.weights != RANDOM and not os.path.exists(self.weights):
            raise WeightsError(f"aesthetic.weights: no such file or folder: {self.weights}")
        if self.head is None or (self.head == RANDOM and self.weights != RANDOM):
            raise WeightsError(
                "aesthetic.head is not set: download a LAION aesthetic head (default "
                f"{PINNED['heads']['sac+logos+ava1-l14-linearMSE']}) and set aesthetic.head=PATH"
                + (", or aesthetic.head=random together with weights: random" if self.weights == RANDOM else "")
            )
        if self.head != RANDOM and not os.path.exists(self.head):
            raise WeightsError(f"aesthetic.head: no such file: {self.head}")


# ------------------------------------------------------------------------------------------- heads


def load_head(path: str, activation: str = "auto"):
    """A LAION aesthetic head (torch module, eval mode) from its .pth state dict.

    Improved predictor: keys `layers.{i}.weight/bias` for the Linear layers of an nn.Sequential (the
    missing indices are Dropouts, identity at inference), applied in index order. v1: `weight`, `bias`.
    """
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=True)
    if activation == "auto":
        activation = "relu" if "relu" in os.path.basename(path).lower() else "none"
    return head_from_state_dict(sd, activation)


def head_from_state_dict(sd: dict, activation: str = "none"):
    import torch
    from torch import nn

    if set(sd) == {"weight", "bias"}:
        layer = nn.Linear(sd["weight"].shape[1], sd["weight"].shape[0])
        layer.load_state_dict(sd)
        return layer.eval()
    index = sorted({int(m.group(1)) for k in sd if (m := re.fullmatch(r"layers\.(\d+)\.weight", k))})
    if not index:
        raise ValueError(f"not a LAION aesthetic head: keys {sorted(sd)[:6]}")
    mods: list[nn.Module] = []
    for j, i in enumerate(index):
        w = sd[f"layers.{i}.weight"]
        lin = nn.Linear(w.shape[1], w.shape[0])
        lin.load_state_dict({"weight": w, "bias": sd[f"layers.{i}.bias"]})
        mods.append(lin)
        if activation == "relu" and j < len(index) - 1:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods).eval().to(torch.float32)


def random_head(dim: int, seed: int = 0):
    """The improved predictor's shape over a `dim`-wide embedding, random (seeded) weights."""
    return head_from_state_dict(random_head_state(dim, seed))


def random_head_state(dim: int, seed: int = 0) -> dict:
    """A state dict laid out like LAION's improved predictor files (`layers.{i}.weight`), random weights."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sizes = [dim, 1024, 128, 64, 16, 1]
    sd = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        sd[f"layers.{2 * i}.weight"] = torch.randn(b, a, generator=g) / a**0.5  # odd indices: LAION's Dropouts
        sd[f"layers.{2 * i}.bias"] = torch.zeros(b)
    return sd


# ------------------------------------------------------------------------------------------- CLIP


class AestheticModel:
    """frames (RGB uint8 arrays) -> aesthetic scores: CLIP image embedding, L2-normalised, then the head."""

    def __init__(self, clip, preprocess, head, name: str, device: str = "cpu", batch_size: int = 32):
        import torch

        self.torch = torch
        self.device = device
        self.clip = clip.eval().to(device)
        self.preprocess = preprocess
        self.head = head.eval().to(device)
        self.name = name
        self.batch_size = batch_size

    def embed(self, frames: list[np.ndarray]) -> np.ndarray:
        from PIL import Image

        torch = self.torch
        out = []
        with torch.no_grad():
            for i in range(0, len(frames), self.batch_size):
                x = torch.stack([self.preprocess(Image.fromarray(f)) for f in frames[i : i + self.batch_size]])
                out.append(self.clip.encode_image(x.to(self.device)).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)

    def head_scores(self, embeddings: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.no_grad():
            e = torch.from_numpy(np.asarray(embeddings, np.float32)).to(self.device)
            e = e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            return self.head(e).squeeze(-1).float().cpu().numpy()

    def __call__(self, frames: list[np.ndarray]) -> np.ndarray:
        return self.head_scores(self.embed(frames)) if frames else np.zeros(0, np.float32)


def load_model(cfg: AestheticConfig) -> AestheticModel:
    """The configured CLIP + head; raises WeightsError naming what is missing."""
    import torch

    cfg.check()
    clip, preprocess, clip_name = load_clip(cfg.clip_model, cfg.weights)
    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    dim = int(clip.visual.output_dim)
    if cfg.head == RANDOM:
        head, head_name = random_head(dim), "random-head"
    else:
        head = load_head(cfg.head, cfg.head_activation)
        head_name = os.path.splitext(os.path.basename(cfg.head))[0]
        first = next(m for m in head.modules() if isinstance(m, torch.nn.Linear))
        if first.in_features != dim:
            raise WeightsError(f"aesthetic.head {cfg.head} takes {first.in_features}-wide embeddings; {clip_name} gives {dim}")
    return AestheticModel(clip, preprocess, head, f"{clip_name}+{head_name}", device, cfg.batch_size)


def load_clip(clip_model: str, weights: str):
    """(open_clip model, its preprocess, a name) from `weights`: a local folder, a file, or `random`
    (seeded: the same random weights every run)."""
    import open_clip
    import torch

    if weights == RANDOM:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same random weights every run: reruns give the same tables
            clip, _, preprocess = open_clip.create_model_and_transforms(clip_model, pretrained=None)
        clip_name = f"{clip_model}/random"
    elif os.path.isdir(weights):
        # open_clip's local folder layout: open_clip_config.json + open_clip_pytorch_model.bin
        clip, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + os.path.abspath(weights))
        with open(os.path.join(weights, "open_clip_config.json")) as f:
            arch = json.load(f).get("model_name") or clip_model
        clip_name = f"{arch}/{os.path.basename(os.path.normpath(weights))}"
    else:
        clip, _, preprocess = open_clip.create_model_and_transforms(clip_model, pretrained=weights)
        clip_name = f"{clip_model}/{os.path.basename(weights)}"
    return clip, preprocess, clip_name


# ------------------------------------------------------------------------------------------- frames


def sample_frames(path: str, n: int, n_frames: int | None = None, short_side: int = 256) -> list[np.ndarray]:
    """`n` evenly spaced RGB frames (decode order) of the video at `path`, the short side scaled to `short_side`."""

    def rgb(frame):
        scale = short_side / min(frame.width, frame.height)
        w = max(2, round(frame.width * scale / 2) * 2)
        h = max(2, round(frame.height * scale / 2) * 2)
        return frame.to_ndarray(format="rgb24", width=w, height=h)

    try:
        return sample_evenly(path, n, rgb, n_frames)
    except MediaError as e:
        raise ScoreError(str(e)) from e


EMBEDDING_COLUMN = "_clip_embedding"  # the aesthetic step's log only: each clip's CLIP embedding (stages.dedup.embedding_bytes)


class ScoreAesthetic:
    """CLIPS rows -> the same rows with aesthetic_score and aesthetic_model. Each clip's frames go through
    CLIP together (at most batch_size images per forward pass), on the GPU when there is one. With
    `embeddings`, also EMBEDDING_COLUMN: the clip's mean CLIP image embedding, for dedup (computed once,
    here, and committed with the score)."""

    def __init__(self, cfg: AestheticConfig, model: AestheticModel | None = None, embeddings: bool = False):
        self.cfg = cfg
        self.model = model
        self.embeddings = embeddings

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.model is None:
            self.model = load_model(self.cfg)
        from stages.dedup import embedding_bytes

        rows = batch.to_pylist()
        per: dict[int, list[float]] = {}
        emb: dict[int, bytes] = {}
        errors = {}
        for i, row in enumerate(rows):
            if not scorable(row):
                continue
            try:
                with local_copy(row["clip_uri"]) as path:
                    n = (row.get("end_frame") or 0) - (row.get("start_frame") or 0)
                    got = sample_frames(path, self.cfg.frames, n if n > 0 else None)
            except (OSError, MediaError, ScoreError) as e:
                errors[i] = f"cannot read {row['clip_uri']}: {e}"
                continue
            # One clip's frames per pass: its score depends on its own frames only, not on which clips
            # share the block (batched CPU kernels round differently by batch shape and position), so
            # scores are the same bytes however the stream forms blocks.
            if got:
                e = self.model.embed(got)
                per[i] = self.model.head_scores(e).tolist()
                emb[i] = embedding_bytes(e)
        agg = np.mean if self.cfg.aggregate == "mean" else np.min
        out = [
            {"aesthetic_score": float(agg(per[i])), "aesthetic_model": self.model.name} if i in per else {}
            for i in range(len(rows))
        ]
        scored = mark_errors(set_columns(batch, AESTHETIC_FIELDS, out), errors, "aesthetic")
        if self.embeddings:
            scored = scored.append_column(pa.field(EMBEDDING_COLUMN, pa.binary()), pa.array([emb.get(i) for i in range(len(rows))], pa.binary()))
        return scored
