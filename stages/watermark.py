"""Watermark and overlay scores: what stays still while the picture moves (logos, channel marks, text).

The default detector needs no weights. On a few frames spread over the clip it finds edges (Sobel on
small grey frames) and measures, per pixel, how often an edge is there (persistence). Picture content
that moves leaves edges that come and go; an overlay burned into the video keeps its edges in place,
even when it is semi-transparent. Per grid cell:

    persistence  share of the cell's edge pixels that are edges in >= `persist` (80%) of the frames
    score        max over cells of persistence x how much of the picture moves (0..1)
    box          the connected cells around the best one, tightened to their persistent pixels

A frozen clip scores 0. Still scenery in a moving picture (a static camera's background, a fence in
front of traffic, a dashboard) keeps its edges in place like an overlay does, and this detector cannot
tell them apart: on the real overlay pairs of `python -m curate.bench.watermark` its ROC AUC is 0.60.
Full-width or full-height persistent lines (letterbox and pillarbox bars) are not overlays.

`method: classifier` loads a learned watermark classifier instead (a timm or open_clip image model,
two classes, weights from a path); it gives a score and no box.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import av
import cv2
import numpy as np
import pyarrow as pa

from schemas import WATERMARK_FIELDS
from stages.columns import ScoreError, score_rows
from stages.media import MediaError, local_copy


@dataclass(frozen=True)
class WatermarkConfig:
    method: Literal["edges", "classifier"] = "edges"
    frames: int = 16  # frames per clip, evenly spaced
    width: int = 256  # edges: frames scaled to this width
    cell: int = 16  # edges: grid cell size in pixels of the scaled frame
    edge_threshold: float = 25.0  # edges: Sobel magnitude (grey levels, normalised frames) that counts as an edge
    persist: float = 0.8  # edges: an edge in at least this share of the frames stays still
    moving_level: float = 6.0  # edges: per-pixel temporal standard deviation (grey levels, normalised frames) that counts as moving
    moving_full: float = 0.3  # edges: the picture counts as fully moving when this share of its pixels moves
    classifier_arch: str | None = None  # classifier: "timm:<model name>" or "open_clip:<model name>"
    classifier_weights: str | None = None  # classifier: state dict path (timm: the model's; open_clip: backbone.* + head.*)
    classifier_size: int = 224  # classifier: input size

    def __post_init__(self):
        if self.frames < 2:
            raise ValueError(f"frames must be >= 2, got {self.frames}")
        if self.width < 64 or self.cell < 4:
            raise ValueError(f"width must be >= 64 and cell >= 4, got {self.width} and {self.cell}")
        if not 0 < self.persist <= 1 or not 0 < self.moving_full <= 1:
            raise ValueError("persist and moving_full must be in (0, 1]")
        if self.method == "classifier":
            if not self.classifier_arch or ":" not in self.classifier_arch or self.classifier_arch.split(":")[0] not in ("timm", "open_clip"):
                raise ValueError(f"classifier_arch must be timm:<name> or open_clip:<name>, got {self.classifier_arch!r}")
            if not self.classifier_weights:
                raise ValueError("method classifier needs classifier_weights: the path of the classifier's weights")

    def check(self) -> None:
        if self.method == "classifier" and not os.path.exists(self.classifier_weights):
            raise FileNotFoundError(f"watermark.classifier_weights: no such file: {self.classifier_weights}")


@dataclass(frozen=True)
class Overlay:
    score: float
    box: dict | None  # x, y, w, h in clip pixels


# ------------------------------------------------------------------------------------------- frames


def sample_grey(path: str, n: int, width: int) -> tuple[list[np.ndarray], int, int]:
    """`n` evenly spaced grey frames `width` wide, and the clip's width and height."""
    try:
        with av.open(path, metadata_errors="ignore") as c:
            if not c.streams.video:
                raise ScoreError("no video stream")
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            total = s.frames or 0
            want = set(np.linspace(0, total - 1, n).round().astype(int).tolist()) if total >= n else None
            frames, size = [], (0, 0)
            for i, frame in enumerate(c.decode(s)):
                if want is None or i in want:
                    h = max(2, round(frame.height * width / frame.width / 2) * 2)
                    frames.append(frame.to_ndarray(format="gray", width=width, height=h))
                    size = (frame.width, frame.height)
                if want is not None and len(frames) == len(want):
                    break
    except av.FFmpegError as e:
        raise ScoreError(f"decoding failed: {e}") from e
    if want is None and len(frames) > n:
        frames = [frames[i] for i in np.linspace(0, len(frames) - 1, n).round().astype(int)]
    return frames, size[0], size[1]


# ------------------------------------------------------------------------------------------- edges


def detect(frames: list[np.ndarray], cfg: WatermarkConfig, clip_w: int, clip_h: int) -> Overlay | None:
    """The weight-free detector on grey frames (all the same size). None with fewer than 2 frames."""
    if len(frames) < 2:
        return None
    stack = np.stack(frames).astype(np.float32)
    # Zero mean, fixed contrast per frame: a fade or a brightness change is not the picture moving.
    stack = (stack - stack.mean(axis=(1, 2), keepdims=True)) / (stack.std(axis=(1, 2), keepdims=True) + 1.0) * 48.0 + 128.0
    edges = np.zeros(stack.shape, np.float32)
    for i, g in enumerate(stack):
        g = cv2.GaussianBlur(g, (3, 3), 0)
        gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
        edges[i] = np.hypot(gx, gy) / 4.0 > cfg.edge_threshold  # /4: the 3x3 Sobel's gain
    freq = edges.mean(axis=0)
    still = freq >= cfg.persist - 1e-6
    # Letterbox / pillarbox: persistent lines across most of the frame are borders, not overlays.
    still[still.mean(axis=1) > 0.6, :] = False
    still[:, still.mean(axis=0) > 0.6] = False
    ever = freq > 0
    moving = float((stack.std(axis=0) > cfg.moving_level).mean())
    motion_factor = min(1.0, moving / cfg.moving_full)

    h, w = freq.shape
    c = cfg.cell
    gh, gw = -(-h // c), -(-w // c)
    pad = ((0, gh * c - h), (0, gw * c - w))
    n_still = np.pad(still, pad).reshape(gh, c, gw, c).sum(axis=(1, 3)).astype(np.float32)
    n_ever = np.pad(ever, pad).reshape(gh, c, gw, c).sum(axis=(1, 3)).astype(np.float32)
    # Share of a cell's edge pixels that never move; a cell needs a short line's worth of edges to count.
    persistence = np.where(n_ever >= c, n_still / np.maximum(n_ever, 1), 0.0)
    best = float(persistence.max())
    box = None
    if best > 0:
        mask = (persistence >= 0.5 * best).astype(np.uint8)
        _, labels = cv2.connectedComponents(mask, connectivity=8)
        by, bx = np.unravel_index(int(np.argmax(persistence)), persistence.shape)
        cells = np.kron(labels == labels[by, bx], np.ones((c, c), bool))[:h, :w]
        ys, xs = np.nonzero(still & cells)
        if len(xs):
            sx, sy = clip_w / w, clip_h / h
            x0, y0 = int(xs.min() * sx), int(ys.min() * sy)
            x1, y1 = int(np.ceil((xs.max() + 1) * sx)), int(np.ceil((ys.max() + 1) * sy))
            box = {"x": x0, "y": y0, "w": min(clip_w, x1) - x0, "h": min(clip_h, y1) - y0}
    return Overlay(score=float(np.clip(best * motion_factor, 0.0, 1.0)), box=box)


# ------------------------------------------------------------------------------------------- classifier


def load_classifier(arch: str, weights: str, size: int = 224):
    """A learned watermark classifier: frames (RGB uint8) -> P(watermark), mean over the frames.

    `arch` is `timm:<name>` (the model built with num_classes=2, its state dict at `weights`) or
    `open_clip:<name>` (the image tower as `backbone.*`, a Linear `head.*` to 2 classes). Class 1 is
    "watermark".
    """
    import torch
    from torch import nn

    kind, name = arch.split(":", 1)
    if kind == "timm":
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=2)
        cfg = timm.data.resolve_data_config({}, model=model)
        mean, std = cfg["mean"], cfg["std"]
    elif kind == "open_clip":
        import open_clip

        clip = open_clip.create_model(name, pretrained=None)
        model = nn.ModuleDict({"backbone": clip.visual, "head": nn.Linear(clip.visual.output_dim, 2)})
        mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
        size = clip.visual.image_size[0] if isinstance(clip.visual.image_size, tuple) else clip.visual.image_size
    else:
        raise ValueError(f"unknown classifier kind {kind!r}: use timm:<name> or open_clip:<name>")
    sd = torch.load(weights, map_location="cpu", weights_only=True)
    sd = sd.get("state_dict", sd.get("model", sd)) if isinstance(sd, dict) else sd
    model.load_state_dict(sd)
    model.eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    mean_t = torch.tensor(mean).view(1, 3, 1, 1).to(device)
    std_t = torch.tensor(std).view(1, 3, 1, 1).to(device)

    def forward(x):
        return model(x) if kind == "timm" else model["head"](model["backbone"](x))

    def classify(frames: list[np.ndarray]) -> float:
        x = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])
        x = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255).to(device)
        with torch.no_grad():
            p = torch.softmax(forward((x - mean_t) / std_t).float(), dim=-1)[:, 1]
        return float(p.mean())

    return classify


# ------------------------------------------------------------------------------------------- the stage


class ScoreWatermark:
    """CLIPS rows -> the same rows with watermark_score (0..1) and watermark_box."""

    def __init__(self, cfg: WatermarkConfig, classifier=None):
        self.cfg = cfg
        self.classifier = classifier

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.cfg.method == "classifier" and self.classifier is None:
            self.classifier = load_classifier(self.cfg.classifier_arch, self.cfg.classifier_weights, self.cfg.classifier_size)
        return score_rows(batch, WATERMARK_FIELDS, "watermark", self.score_one)

    def score_one(self, row: dict) -> dict:
        try:
            with local_copy(row["clip_uri"]) as path:
                if self.cfg.method == "classifier":
                    from stages.aesthetic import sample_frames

                    frames = sample_frames(path, self.cfg.frames, None, self.cfg.classifier_size)
                    return {"watermark_score": self.classifier(frames)} if frames else {}
                frames, w, h = sample_grey(path, self.cfg.frames, self.cfg.width)
        except (OSError, MediaError) as e:
            raise ScoreError(f"cannot read {row['clip_uri']}: {e}") from e
        found = detect(frames, self.cfg, w, h)
        if found is None:
            return {}
        return {"watermark_score": found.score, "watermark_box": found.box}
