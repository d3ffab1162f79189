"""Watermark and overlay scores: what stays put across the clip and was drawn, not filmed (logos, channel marks, text).

The default detector needs no weights. On a few frames spread over the clip (grey, at most 480 wide,
never upscaled) it keeps the edges that are there in >= `persist` (80%) of the frames with some
contrast around them, and asks of each how it looks in the mean frame: a drawn edge (drawbox,
drawtext, an overlaid PNG, at any opacity) is a one-pixel step, its gradient half the grey-level range
around it; optics, motion blur and scaling spread a filmed edge over several pixels. Still, sharp
edge pixels are closed into blobs (text strokes, a box's sides); a blob's evidence per pixel of its
width + height (a drawn box: about 2) less half the runner-up's (a screen full of UI text has many
such blobs, none standing out), over `full_mass`, is the score; its bounding box is the box.

A frozen clip scores 0: nothing moves, so nothing tells an overlay from the picture. Blobs spanning
most of the frame, and full-width or full-height lines (letterbox and pillarbox bars), are not overlays.
The earlier edge-persistence x motion score (AUC 0.60) could not tell a static camera's scenery from
an overlay; still scenery is mostly soft-edged, which this one uses. Measured with
`python -m curate.bench.watermark` (42 pairs of seed 1; the constants were chosen on seed 0's 28):
see the README's Benchmarks section. Still sharp scenery (a computer screen's UI, signs in a static
shot) and faint overlays over similar colours are its misses.

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
    width: int = 480  # edges: frames scaled to this width (sharpness is judged at this scale)
    edge_threshold: float = 10.0  # edges: gradient (grey levels per pixel) that counts as an edge
    persist: float = 0.8  # edges: an edge in at least this share of the frames stays still
    contrast: float = 16.0  # edges: a still edge needs this grey-level range in its 5x5 neighbourhood
    sharp_low: float = 0.30  # edges: gradient / local range at which an edge starts to count as a drawn step
    sharp_high: float = 0.45  # edges: ... and fully counts (a one-pixel step gives 0.5)
    full_mass: float = 3.0  # edges: evidence per pixel of a blob's (width + height) that scores 1 (a drawn box: ~2)
    moving_level: float = 6.0  # edges: per-pixel temporal standard deviation (grey levels, normalised frames) that counts as moving
    frozen: float = 0.005  # edges: a clip where fewer pixels than this share move is frozen: score 0
    classifier_arch: str | None = None  # classifier: "timm:<model name>" or "open_clip:<model name>"
    classifier_weights: str | None = None  # classifier: state dict path (timm: the model's; open_clip: backbone.* + head.*)
    classifier_size: int = 224  # classifier: input size

    def __post_init__(self):
        if self.frames < 2:
            raise ValueError(f"frames must be >= 2, got {self.frames}")
        if self.width < 64:
            raise ValueError(f"width must be >= 64, got {self.width}")
        if not 0 < self.persist <= 1 or not 0 <= self.frozen < 1:
            raise ValueError("persist must be in (0, 1] and frozen in [0, 1)")
        if not 0 <= self.sharp_low < self.sharp_high or self.full_mass <= 0:
            raise ValueError(f"need 0 <= sharp_low < sharp_high and full_mass > 0, got {self.sharp_low}, {self.sharp_high}, {self.full_mass}")
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
    """`n` evenly spaced grey frames `width` wide (or the clip's width if smaller), and the clip's width and height."""
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
                    fw = min(width, frame.width) // 2 * 2  # never upscaled: that would soften drawn edges
                    h = max(2, round(frame.height * fw / frame.width / 2) * 2)
                    frames.append(frame.to_ndarray(format="gray", width=fw, height=h))
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
    n, h, w = stack.shape
    # Zero mean, fixed contrast per frame for the motion measure: a fade is not the picture moving.
    norm = (stack - stack.mean(axis=(1, 2), keepdims=True)) / (stack.std(axis=(1, 2), keepdims=True) + 1.0) * 48.0 + 128.0
    if float((norm.std(axis=0) > cfg.moving_level).mean()) < cfg.frozen:
        return Overlay(score=0.0, box=None)  # nothing moves: an overlay cannot be told from the scene
    freq = np.zeros((h, w), np.float32)
    for g in stack:
        freq += _gradient(g) > cfg.edge_threshold
    freq /= n
    mean = stack.mean(axis=0)
    kernel = np.ones((5, 5), np.uint8)
    local_range = cv2.dilate(mean, kernel) - cv2.erode(mean, kernel)
    still = (freq >= cfg.persist - 1e-6) & (local_range > cfg.contrast)
    # Letterbox / pillarbox: persistent lines across most of the frame are borders, not overlays.
    still[still.mean(axis=1) > 0.6, :] = False
    still[:, still.mean(axis=0) > 0.6] = False
    # A drawn edge is a step one pixel wide: its gradient is half the range around it (0.5); optics,
    # motion blur and scaling spread a filmed edge over several pixels (0.2-0.35).
    sharp = np.clip((_gradient(mean) / (local_range + 1e-3) - cfg.sharp_low) / (cfg.sharp_high - cfg.sharp_low), 0.0, 1.0)
    evidence = sharp * still
    # Blobs: evidence pixels closed over a 5x5 neighbourhood (text strokes, a box's four sides).
    on = (evidence > 0.5).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(cv2.morphologyEx(on, cv2.MORPH_CLOSE, kernel), connectivity=8)
    if count <= 1:
        return Overlay(score=0.0, box=None)
    mass = np.bincount(labels.ravel(), weights=(evidence * on).ravel(), minlength=count)
    bw, bh = stats[:, 2].astype(np.float64), stats[:, 3].astype(np.float64)
    value = mass / (bw + bh + 8.0)  # evidence per pixel of half-perimeter: a drawn box outline gives ~2
    value[0] = 0.0
    value[(bw > 0.7 * w) | (bh > 0.7 * h)] = 0.0  # spans the frame: scenery or a border
    order = np.argsort(value)[::-1]
    # What stands out: the best blob against the runner-up (a screen full of UI text has many).
    second = value[order[1]] if count > 2 else 0.0
    score = float(np.clip((value[order[0]] - 0.5 * second) / cfg.full_mass, 0.0, 1.0))
    j = int(order[0])
    box = None
    if value[j] > 0:
        sx, sy = clip_w / w, clip_h / h
        x0, y0 = int(stats[j, 0] * sx), int(stats[j, 1] * sy)
        x1, y1 = int(np.ceil((stats[j, 0] + bw[j]) * sx)), int(np.ceil((stats[j, 1] + bh[j]) * sy))
        box = {"x": x0, "y": y0, "w": min(clip_w, x1) - x0, "h": min(clip_h, y1) - y0}
    return Overlay(score=score, box=box)


def _gradient(g: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude in grey levels per pixel."""
    return np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)) / 8.0


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
