"""Watermark and overlay scores: what stays put across the clip and was drawn, not filmed (logos, channel marks, text).

Four methods. `net`: curate's learned overlay detector, a small convolutional network over per-pixel
maps of what stays put (stages/watermark_net.py; weights shipped beside it, trained by
`python -m curate.bench.watermark_train` on synthetic overlays over real footage, none of the watermark
bench's styles among them). `edges`: the weight-free detector below. `both` (the default): the two on
the same frames, the clip scored by the one that scores it higher, with that one's box, or, where
both point at the same place, by the two together (`higher`). `classifier`: a
timm or open_clip classifier of your own. `net` and `edges` read the same frames (`sample_yuv`), score
a frozen clip 0 and give a box.

Why both: they miss different overlays and false-alarm on few clean clips, so the higher of the two
catches more at the same cost in clean clips. The network misses marks over still scenes, where only
their look tells them apart (a yellow outline over Big Buck Bunny's still sky: 0.001); the edges catch
drawn one-pixel steps wherever they are, and miss antialiased, scaled-down words and emblems, which
the network finds. And where each is unsure but both point at the same place (the network's logits
at the edges' box), their evidence adds up: the two logits plus AGREEMENT, a constant fitted on the
calibration pairs. Measured (`python -m curate.bench.watermark`, README Benchmarks), with the static
words: the bench's seven styles, seeds 0 and 1, overlays caught at 0.5 from 142 (the network alone)
to 163 of 196 with the higher of the two and 171 with their agreement too, 0 of 196 clean clips
flagged (the edges half and the constant refitted without the style they score: 171, 4 clean); those
are the seeds the choices were made on: on seeds 2 and 3, which none of it saw, 156 of 196, 0 clean,
and left out over all four, three of the seven styles meet the targets. Those clean clips are mostly
the same files as seed 0's, which the edges constants were fitted on; with the style's video left out
of the fit too, every style flags 3-10 of 56 clean clips (README: the left-out table). On Debian's footage,
which the edges half was never fitted on (the network was trained on random stretches of those
videos; without the words), from 157 to 168 to 174 of 196, 0 clean flagged.

The `edges` detector needs no weights (a handful of logistic constants in this file). On a few frames
spread over the clip (grey, at most 480 wide, never upscaled; blank frames left out unless all are) it
keeps the edges that are there in >= `persist` (80%) of the frames that show contrast around them (at
least `seen`, half, of the frames must: a dark logo cannot be seen while the picture under it is
black). A drawn edge (drawbox, drawtext, an overlaid PNG, at any opacity) is a step one pixel wide in
the mean frame: one neighbour-to-neighbour difference holds most of the grey-level range around it;
optics, motion blur and scaling spread a filmed edge over several pixels. Still step pixels are closed into blobs (text
strokes, a box's sides). The same is done on the half-size chroma planes (U, V): a coloured overlay
over the same grey (a yellow box on a grey sky) is a step there and not in the grey; where the grey
has no still edge and a chroma plane holds more step evidence, its cues stand for the pixel's. Each
blob is described by FEATURES: its step evidence and sharpness, and "layer" cues, which hold when the
picture changes under the overlay: the picture beside the edge moves while the edge stays put, an
overlay damps (alpha) or stops (opaque) that motion on one side of its edge, and the edge's strength
varies as the background under it changes; plus how much the runner-up blob stands out and how much
of the clip changes, how many candidate blobs the clip has (a fixed camera's still scene has
hundreds) and how far this one stands out of them. A logistic model over these gives each blob
P(overlay); the best blob's is the score and its box the box (WEIGHTS, BIAS: fitted by
`python -m curate.bench.watermark --fit` to the clip labels of seed 0 of both calibration sets, 126
pairs: the four ffmpeg kinds and the seven style families, through that best-blob score; 0.5 put
where it best separates them while flagging none of the clean clips: the bench's MAX_CLEAN).

The picture must change for any of this: a frozen clip (fewer than `frozen` of the pixels change,
raw or after normalising each frame's brightness and contrast) scores 0, since nothing tells an
overlay from a still picture. A flat field brightening under an overlay is change. Blobs spanning
most of the frame, and full-width or full-height lines (letterbox and pillarbox bars), are not overlays.
Measured with `python -m curate.bench.watermark [--lovo] [--styles --loso]` (see the README's
Benchmarks section): ROC AUC 0.967 on held-out seeds of ffmpeg-drawn overlays (0.963 leave-one-video-
out); 0.884 on image-library logos, plates and emblems encoded twice, 0.70-0.98 per style left out
of the fit (target 0.95). Its misses: overlays over a fixed camera's still scene, faint (opacity <
0.45) or antialiased and scaled down to thin strokes, and sharp, still, rendered scenery (a computer
screen's UI, still-life pixel art: drawn too, so it scores high).

Most channel marks and watermarks are words. When the rows carry the text scorer's columns (a job
with a `text` section runs it first), words that stay at the same place in every sampled frame
(`text_static`) and cover enough of the frame raise the score (`words_score`, WatermarkConfig.words):
a cue the edges need no help for on sharp marks, and the one that finds antialiased, scaled-down words
whose strokes are no longer one-pixel steps. The stage also reads the mean of its sampled frames with
the same OCR model (`mean_words`, no text section needed): a mark stays while the picture under it
moves, so the mean shows it over a blur where no single frame does (a faint "LIVE NEWS" at opacity 0.35
over a panning texture is read on the mean and on none of the frames). A line counts when the mean has
few lines (a screen or a page has many) and it is there in every frame (`line_presence`: typed text is
not). The mean is read at twice the sampled frames' scale (`mean_words_size`): a mark's words are a few
pixels tall there.

`method: classifier` loads a learned watermark classifier instead (a timm or open_clip image model,
two classes, weights from a path); it gives a score and no box.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
import pyarrow as pa

from schemas import WATERMARK_FIELDS
from stages.columns import ScoreError, score_rows
from stages.media import MediaError, local_copy, sample_evenly


@dataclass(frozen=True)
class WatermarkConfig:
    method: Literal["both", "net", "edges", "classifier"] = "both"
    net_weights: str | None = None  # net: the learned detector's weights (None: the ones shipped beside stages/watermark_net.py)
    frames: int = 16  # frames per clip, evenly spaced
    width: int = 480  # edges: frames scaled to this width (sharpness is judged at this scale)
    edge_threshold: float = 10.0  # edges: gradient (grey levels per pixel) that counts as an edge
    persist: float = 0.8  # edges: an edge in at least this share of the frames it can be seen in (contrast around it) stays still
    seen: float = 0.5  # edges: ... and it must be seen in at least this share of the frames
    contrast: float = 16.0  # edges: a still edge needs this grey-level range in its 5x5 neighbourhood
    step_low: float = 0.5  # edges: largest one-pixel difference / local range at which an edge starts to count as a drawn step
    step_high: float = 0.8  # edges: ... and fully counts (a one-pixel step gives 1)
    moving_level: float = 6.0  # edges: per-pixel temporal standard deviation (grey levels) that counts as moving
    frozen: float = 0.005  # edges: a clip where fewer pixels than this share change is frozen: score 0
    blank: float = 4.0  # edges: a frame whose grey levels vary less than this (standard deviation) is blank and left out
    classifier_arch: str | None = None  # classifier: "timm:<model name>" or "open_clip:<model name>"
    classifier_weights: str | None = None  # classifier: state dict path (timm: the model's; open_clip: backbone.* + head.*)
    classifier_size: int = 224  # classifier: input size
    # Static words: with the text scorer on (its columns in the rows), words at the same place in every
    # sampled frame (a channel name, "© studio", a date stamp) make the clip an overlay too: score at
    # least 0.5 + text_static / 2 when text_static >= words_static and the static text covers
    # >= words_area of the frame, unless the clip is frozen (then everything is static)
    words: bool = True
    words_static: float = 0.5
    words_area: float = 0.004
    # Words on the mean frame: the mean of the sampled frames read by the text scorer's PP-OCR model
    # (loaded by this stage; no text section needed). A mark stays while the picture under it moves, so
    # the mean shows it over a blur where no single frame does. A line read there counts when it is
    # there in every frame (`line_presence` >= mean_words_presence: typed or scrolling text is not) and
    # the mean frame has at most mean_words_lines lines (a screen, a page or a street of signs has more):
    # score at least 0.5 + presence / 2. Not for frozen clips. The mean frame is read with its longer side
    # scaled to mean_words_size: a mark's words are a few pixels tall in the sampled frames, and PP-OCR's
    # detector misses more of them at 480 (the leave-one-style-out of the bench's ffmpeg text: 44 -> 48
    # of 56 caught with 960, no clean clip flagged; see README, Benchmarks).
    mean_words: bool = True
    mean_words_lines: int = 2
    mean_words_presence: float = 0.3
    mean_words_size: int = 960

    def __post_init__(self):
        if self.frames < 2:
            raise ValueError(f"frames must be >= 2, got {self.frames}")
        if self.width < 64:
            raise ValueError(f"width must be >= 64, got {self.width}")
        if not 0 < self.persist <= 1 or not 0 < self.seen <= 1 or not 0 <= self.frozen < 1:
            raise ValueError(f"persist and seen must be in (0, 1] and frozen in [0, 1), got {self.persist}, {self.seen}, {self.frozen}")
        if self.mean_words_lines < 1 or not 0 <= self.mean_words_presence <= 1 or self.mean_words_size < 32:
            raise ValueError(f"mean_words_lines must be >= 1, mean_words_presence in [0, 1] and mean_words_size >= 32, "
                             f"got {self.mean_words_lines}, {self.mean_words_presence}, {self.mean_words_size}")
        if not 0 <= self.step_low < self.step_high or self.blank < 0:
            raise ValueError(f"need 0 <= step_low < step_high and blank >= 0, got {self.step_low}, {self.step_high}, {self.blank}")
        if self.method == "classifier":
            if not self.classifier_arch or ":" not in self.classifier_arch or self.classifier_arch.split(":")[0] not in ("timm", "open_clip"):
                raise ValueError(f"classifier_arch must be timm:<name> or open_clip:<name>, got {self.classifier_arch!r}")
            if not self.classifier_weights:
                raise ValueError("method classifier needs classifier_weights: the path of the classifier's weights")

    def check(self) -> None:
        if self.method == "classifier" and not os.path.exists(self.classifier_weights):
            raise FileNotFoundError(f"watermark.classifier_weights: no such file: {self.classifier_weights}")
        if self.method in ("both", "net") and not os.path.exists(self.net_file):
            raise FileNotFoundError(f"watermark.net_weights: no such file: {self.net_file}")

    @property
    def net_file(self) -> str:
        from stages.watermark_net import NET_FILE

        return self.net_weights or NET_FILE


@dataclass(frozen=True)
class Overlay:
    score: float
    box: dict | None  # x, y, w, h in clip pixels
    frozen: bool = False  # nothing in the clip moves: nothing tells an overlay from the picture
    logits: np.ndarray | None = field(default=None, compare=False, repr=False)  # net: its calibrated logit map (a cell per STRIDE frame pixels)


def words_score(text_static: float | None, text_area: float | None, cfg: WatermarkConfig) -> float | None:
    """What static burned-in words found by the text scorer say (see WatermarkConfig.words), or None."""
    if not cfg.words or text_static is None or text_area is None:
        return None
    if text_static < cfg.words_static or text_static * text_area < cfg.words_area:
        return None
    return 0.5 + 0.5 * text_static


def mean_frame(frames: list[np.ndarray], chroma: list[np.ndarray]) -> np.ndarray:
    """The mean of sampled frames as a BGR image (uint8), from their grey planes and half-size chroma
    (U, V on the last axis, as sample_yuv gives them)."""
    y = np.mean(np.stack(frames).astype(np.float32), axis=0)
    uv = np.mean(np.stack(chroma).astype(np.float32), axis=0)
    h, w = y.shape
    u, v = (cv2.resize(np.ascontiguousarray(uv[..., k]), (w, h), interpolation=cv2.INTER_LINEAR) for k in range(2))
    return cv2.cvtColor(np.clip(np.round(np.stack([y, v, u], axis=-1)), 0, 255).astype(np.uint8), cv2.COLOR_YCrCb2BGR)


def line_presence(frames: list[np.ndarray], quad: np.ndarray, cells: int = 4, blank: float = 4.0) -> float:
    """How surely a line of text found on the mean frame (`quad`: its 4 corners, frame pixels) is there
    in every frame: its box cut into `cells` columns; in each, the mean gradient over the mean frame's
    strongest 30% of pixels there, in every non-blank frame; the smallest of those over the median of its
    column, the smallest over the columns. About 1 for a mark (a picture moving under it only adds
    gradient); near 0 for text typed or scrolled in during the clip (its late letters are missing in the
    early frames)."""
    x, y, w, h = cv2.boundingRect(np.asarray(quad).reshape(-1, 1, 2).astype(np.int32))
    H, W = frames[0].shape[:2]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(W, x + w), min(H, y + h)
    if x1 - x0 < 3 or y1 - y0 < 3:
        return 0.0
    shown = [f for f in frames if float(f.std()) >= blank] or frames
    stack = np.stack(shown)[:, y0:y1, x0:x1].astype(np.float32)
    grads = np.stack([_gradient(f) for f in stack])
    mean_grad = _gradient(stack.mean(axis=0))
    strong = mean_grad >= np.quantile(mean_grad, 0.7)
    bounds = np.linspace(0, x1 - x0, cells + 1).round().astype(int)
    ratios = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        sel = strong[:, a:b]
        if b > a and sel.any():
            per_frame = grads[:, :, a:b][:, sel]
            energy = per_frame.mean(axis=1)
            ratios.append(float(energy.min() / (np.median(energy) + 1e-6)))
    return min(ratios) if ratios else 0.0


def mean_words(frames: list[np.ndarray], chroma: list[np.ndarray], ocr, cfg: WatermarkConfig, clip_w: int, clip_h: int) -> Overlay | None:
    """What the words read on the mean frame say (WatermarkConfig.mean_words): the score and the box (clip
    pixels) of the line most surely there in every frame, or None. `ocr`: the text scorer's OcrModel, one
    that does not shrink an image of mean_words_size (`mean_words_model`). The mean frame is read with
    its longer side scaled to mean_words_size."""
    image = mean_frame(frames, chroma)
    h0, w0 = image.shape[:2]
    scale = cfg.mean_words_size / max(h0, w0)
    size = (max(1, round(w0 * scale)), max(1, round(h0 * scale)))
    big = image if size == (w0, h0) else cv2.resize(image, size, interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    boxes = ocr.detect([big])[0]
    if not len(boxes):
        return None
    to_frame = np.array([w0 / size[0], h0 / size[1]])  # the read image's pixels to the frames'
    lines = [np.asarray(q) * to_frame for q, t in zip(boxes, ocr.read([big], [boxes])[0]) if t]
    if not lines or len(lines) > cfg.mean_words_lines:
        return None
    presence, quad = max(((line_presence(frames, q, blank=cfg.blank), i) for i, q in enumerate(lines)))
    if presence < cfg.mean_words_presence:
        return None
    x, y, w, h = cv2.boundingRect(np.round(lines[quad]).reshape(-1, 1, 2).astype(np.int32))
    sx, sy = clip_w / w0, clip_h / h0
    return Overlay(score=0.5 + 0.5 * min(1.0, presence), box={"x": round(x * sx), "y": round(y * sy), "w": round(w * sx), "h": round(h * sy)})


def with_words(found: Overlay, words: float | None, read: Overlay | None) -> Overlay:
    """The detectors' finding with both words cues folded in, as a job scores a clip: the mean frame's
    line (`read`, from mean_words) with its box where it scores above the finding and the static words
    (`words`, from words_score), else the finding with its score raised to the static words'."""
    if read is not None and read.score > max(found.score, words or 0.0):
        return Overlay(read.score, read.box, found.frozen)
    return Overlay(max(found.score, words or 0.0), found.box, found.frozen)


# ------------------------------------------------------------------------------------------- frames


# Video range (luma 16-235, chroma 16-240) to full range, as swscale's grey output has it.
_FULL_LUMA = np.clip(np.round((np.arange(256) - 16) * 255 / 219), 0, 255).astype(np.uint8)
_FULL_CHROMA = np.clip(np.round((np.arange(256) - 128) * 255 / 224 + 128), 0, 255).astype(np.uint8)


def sample_yuv(path: str, n: int, width: int) -> tuple[list[np.ndarray], list[np.ndarray], int, int]:
    """`n` evenly spaced frames `width` wide (or the clip's width if smaller): their grey (luma) planes,
    their chroma planes (half size, U and V stacked on the last axis), and the clip's width and height."""

    def planes(frame):
        fw = min(width, frame.width) // 2 * 2  # never upscaled: that would soften drawn edges
        h = max(2, round(frame.height * fw / frame.width / 2) * 2)
        yuv = frame.to_ndarray(format="yuv420p", width=fw, height=h).reshape(-1)
        q = h * fw // 4
        u, v = yuv[h * fw:h * fw + q].reshape(h // 2, fw // 2), yuv[h * fw + q:].reshape(h // 2, fw // 2)
        return _FULL_LUMA[yuv[:h * fw].reshape(h, fw)], _FULL_CHROMA[np.stack([u, v], axis=-1)], (frame.width, frame.height)

    try:
        got = sample_evenly(path, n, planes)
    except MediaError as e:
        raise ScoreError(str(e)) from e
    w, h = got[-1][2] if got else (0, 0)
    return [g for g, _, _ in got], [c for _, c, _ in got], w, h


# ------------------------------------------------------------------------------------------- edges

# What a candidate blob is described by (`blob_features`), and the logistic model over those numbers
# that gives P(overlay). The weights are fitted by `python -m curate.bench.watermark --fit` on seed 0's
# calibration pairs (never on the pairs the bench reports) and pasted here.
FEATURES = (
    "value",  # drawn-step evidence per pixel of the blob's width + height (a drawn box outline: ~2), at most 8
    "sharp",  # mean Sobel gradient / 5x5 range over the blob's still edges (a one-pixel step: 0.5)
    "step",  # mean largest one-pixel difference / 5x5 range (a one-pixel step: 1; a filmed edge spread over 3 px: 0.33)
    "side",  # log(1 + temporal deviation 2 px either side of the edges, the larger side): the picture moves next to a still edge
    "ratio",  # log((smaller side + 0.5) / (larger side + 0.5)): an overlay damps or stops the motion on one side
    "gcv",  # how much the edges' strength varies over time (std / mean): the background changes under an overlay
    "second",  # the clip's best other blob's value: a screen full of UI text has many, none standing out
    "moving",  # log of the clip's share of changing pixels
    "crowd",  # log(1 + the clip's number of candidate blobs): a still scene (a fixed camera) has hundreds
    "stand",  # log((value + 0.1) / (the clip's 90th-percentile blob value + 0.1)): how far the blob stands out of the crowd
)
WEIGHTS = (2.23, 9.09, 1.45, 0.266, -0.857, -9.13, -0.317, 0.531, -1.38, 1.15)
BIAS = -3.17
BOX_MARGIN = 8.0  # the box takes in nearby blobs whose logit is at most this far below the best's (`_grown_box`)


def blob_features(frames: list[np.ndarray], cfg: WatermarkConfig, chroma: list[np.ndarray] | None = None) -> tuple[np.ndarray, list[tuple[int, int, int, int]], bool]:
    """Candidate overlay blobs on grey frames (all the same size; `chroma`: their half-size U, V planes
    stacked on the last axis, or None for grey only): (their FEATURES rows, their boxes x, y, w, h in
    frame pixels, frozen). Frozen (nothing changes, or fewer than 2 frames) comes with no blobs.

    A drawn edge (drawbox, drawtext, an overlaid PNG, at any opacity) stays put while the picture
    changes and is a step one pixel wide; a filmed edge is spread over several pixels by optics,
    motion blur and scaling. Edges present in >= `persist` of the non-blank frames that show
    `contrast` around them are still; still edges whose largest one-pixel difference is most of the grey-level
    range around them are drawn-step evidence, closed into blobs (text strokes, a box's sides).
    """
    none = np.zeros((0, len(FEATURES)), np.float64)
    shown = shown_frames(frames, cfg)
    if shown is None:
        return none, [], True  # nothing changes: an overlay cannot be told from the scene
    stack, keep, dev, moving = shown
    n, h, w = stack.shape
    grads, mean, still, gx, gy, sharp, step, evidence = _steps(stack, cfg)
    strength_cv = grads.std(axis=0) / (grads.mean(axis=0) + 1e-3)
    grey_still = still.copy()
    if chroma is not None:
        # A colour overlay over the same grey (a yellow box on a grey sky) is a step in U or V: half-size
        # planes, their cues taken where the grey has no still edge and they hold more step evidence.
        # (Where the grey has one, it speaks: a filmed colour edge looks sharp in subsampled chroma.)
        cst = np.stack(chroma).astype(np.float32)[keep]
        for plane in range(cst.shape[-1]):
            cg, _, cs, cx, cy, csh, cstep, cev = _steps(np.ascontiguousarray(cst[..., plane]), cfg)
            ccv = cg.std(axis=0) / (cg.mean(axis=0) + 1e-3)
            up = [cv2.resize(x.astype(np.float32), (w, h), interpolation=cv2.INTER_NEAREST) for x in (cs, cx, cy, csh, cstep, cev, ccv)]
            take = (up[5] > evidence) & ~grey_still
            for mine, theirs in zip((still, gx, gy, sharp, step, evidence, strength_cv), up):
                mine[take] = theirs[take]
    # Letterbox / pillarbox: persistent lines across most of the frame are borders, not overlays.
    still[still.mean(axis=1) > 0.6, :] = False
    still[:, still.mean(axis=0) > 0.6] = False
    evidence *= still
    kernel = np.ones((5, 5), np.uint8)
    gm = np.hypot(gx, gy) + 1e-6
    on = (evidence > 0.5).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(cv2.morphologyEx(on, cv2.MORPH_CLOSE, kernel), connectivity=8)
    if count <= 1:
        return none, [], False
    # The picture 2 px either side of each edge (along the mean frame's gradient): how much it moves.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ux, uy = 2.0 * gx / gm, 2.0 * gy / gm
    side_a = cv2.remap(dev, xx + ux, yy + uy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    side_b = cv2.remap(dev, xx - ux, yy - uy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    flat = labels.ravel()
    weight = still.ravel().astype(np.float64)

    def per_blob(x):
        return np.bincount(flat, weights=weight * x.ravel(), minlength=count)

    npx = np.bincount(flat, weights=weight, minlength=count) + 1e-6
    bw, bh = stats[:, 2].astype(np.float64), stats[:, 3].astype(np.float64)
    value = np.bincount(flat, weights=(evidence * on).ravel().astype(np.float64), minlength=count) / (bw + bh + 8.0)
    value[0] = 0.0
    value[(bw > 0.7 * w) | (bh > 0.7 * h)] = 0.0  # spans the frame: scenery or a border
    value = np.minimum(value, 8.0)
    order = np.argsort(value)[::-1]
    hi, lo = per_blob(np.maximum(side_a, side_b)) / npx, per_blob(np.minimum(side_a, side_b)) / npx
    feats = np.stack([
        value,
        per_blob(np.clip(sharp, 0.0, 0.6)) / npx,
        per_blob(step) / npx,
        np.log1p(hi),
        np.log((lo + 0.5) / (hi + 0.5)),
        per_blob(strength_cv) / npx,
        np.where(np.arange(count) == order[0], value[order[1]] if count > 2 else 0.0, value[order[0]]),
        np.full(count, np.log(moving + 1e-3)),
        np.full(count, np.log1p(float((value > 0).sum()))),
        np.log((value + 0.1) / (float(np.percentile(value[value > 0], 90)) + 0.1)) if (value > 0).any() else np.zeros(count),
    ], axis=1)
    keep = np.nonzero(value > 0)[0]
    return feats[keep], [(int(stats[j, 0]), int(stats[j, 1]), int(bw[j]), int(bh[j])) for j in keep], False


def shown_frames(frames: list[np.ndarray], cfg: WatermarkConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, float] | None:
    """What both detectors look at in grey frames (all one size): the stack of the frames that show
    something (n, h, w float32), which of the frames those are, the per-pixel temporal deviation of the
    brightness-normalised frames, and the share of changing pixels; None when the clip is frozen
    (nothing changes, or fewer than 2 frames)."""
    stack = np.stack(frames).astype(np.float32)
    keep = stack.std(axis=(1, 2)) >= cfg.blank
    if keep.sum() < 2:
        keep[:] = True  # a flat field throughout (an overlay on it is all its detail): nothing to leave out
    stack = stack[keep]  # a black frame (a fade's end) shows no overlay edges
    if len(stack) < 2:
        return None
    # Zero mean, fixed contrast per frame: a fade is not the picture moving (but a flat field
    # brightening under an overlay is a change: the raw deviation counts too).
    norm = (stack - stack.mean(axis=(1, 2), keepdims=True)) / (stack.std(axis=(1, 2), keepdims=True) + 1.0) * 48.0 + 128.0
    dev = norm.std(axis=0)
    moving = max(float((dev > cfg.moving_level).mean()), float((stack.std(axis=0) > cfg.moving_level).mean()))
    return None if moving < cfg.frozen else (stack, keep, dev, moving)


def edge_persistence(stack: np.ndarray, grads: np.ndarray, edge: float, contrast: float, seen_share: float) -> np.ndarray:
    """Per pixel of one plane's frames (n, h, w float32) and their gradient strengths: the share of the
    frames with `contrast` around the pixel (a 5x5 range) in which it is an edge (gradient > `edge`); 0
    where fewer than `seen_share` of the frames (or 2) show contrast. Only the frames with contrast
    around a pixel vote on whether its edge is there: a black logo over a picture fading in from black,
    or over a dark patch passing under it, cannot be seen there then."""
    kernel = np.ones((5, 5), np.uint8)
    seen = np.stack([cv2.dilate(g, kernel) - cv2.erode(g, kernel) for g in stack]) > contrast
    votes = seen.sum(axis=0)
    freq = ((grads > edge) & seen).sum(axis=0) / np.maximum(votes, 1)
    freq[votes < max(2.0, seen_share * len(stack))] = 0.0
    return freq


def detect(frames: list[np.ndarray], cfg: WatermarkConfig, clip_w: int, clip_h: int,
           weights: tuple[float, ...] = WEIGHTS, bias: float = BIAS, chroma: list[np.ndarray] | None = None) -> Overlay | None:
    """The weight-free detector on grey frames (all the same size; chroma as in blob_features): the most overlay-like blob's
    P(overlay) under the logistic model, and its box (grown by its overlay-like neighbours) in clip pixels.
    None with fewer than 2 frames."""
    if len(frames) < 2:
        return None
    h, w = frames[0].shape[:2]
    return best_overlay(*blob_features(frames, cfg, chroma), (w, h), (clip_w, clip_h), weights, bias)


def best_overlay(feats: np.ndarray, boxes: list[tuple[int, int, int, int]], frozen: bool, frame_size: tuple[int, int],
                 clip_size: tuple[int, int], weights: tuple[float, ...] = WEIGHTS, bias: float = BIAS) -> Overlay:
    """What `detect` makes of `blob_features`' output on frames of `frame_size` (w, h) from a clip of
    `clip_size`: the best blob's P(overlay), and its box grown by its neighbours, in clip pixels."""
    if frozen or not len(boxes):
        return Overlay(score=0.0, box=None, frozen=bool(frozen))
    logits = feats @ np.asarray(weights, np.float64) + bias
    j = int(np.argmax(logits))
    (w, h), (clip_w, clip_h) = frame_size, clip_size
    sx, sy = clip_w / w, clip_h / h
    x, y, bw, bh = _grown_box(boxes, logits, j, gap=w / 30)
    if bw > 0.7 * w or bh > 0.7 * h:  # grown over most of the frame: drawn scenery (pixel art, a UI), not one overlay
        x, y, bw, bh = boxes[j]
    x0, y0 = int(x * sx), int(y * sy)
    x1, y1 = int(np.ceil((x + bw) * sx)), int(np.ceil((y + bh) * sy))
    box = {"x": x0, "y": y0, "w": min(clip_w, x1) - x0, "h": min(clip_h, y1) - y0}
    return Overlay(score=float(1.0 / (1.0 + np.exp(-logits[j]))), box=box)


def _grown_box(boxes: list[tuple[int, int, int, int]], logits: np.ndarray, j: int, gap: float,
               margin: float = BOX_MARGIN) -> tuple[int, int, int, int]:
    """Blob j's box grown by the blobs within `gap` pixels of it whose logit is at most `margin` below
    its own, until none is left: the letters of a word, the pieces of a logo, the sides of an outline
    broken where the picture under it matched its colour. (Measured on the bench's held-out seeds: box
    IoU with the drawn overlay 0.49 -> 0.56 mean.)"""
    x0, y0, bw, bh = boxes[j]
    x1, y1 = x0 + bw, y0 + bh
    left = [k for k in range(len(boxes)) if k != j and logits[k] >= logits[j] - margin]
    grew = True
    while grew:
        grew = False
        for k in list(left):
            bx, by, bw, bh = boxes[k]
            if max(bx - x1, x0 - (bx + bw), by - y1, y0 - (by + bh)) <= gap:
                x0, y0, x1, y1 = min(x0, bx), min(y0, by), max(x1, bx + bw), max(y1, by + bh)
                left.remove(k)
                grew = True
    return x0, y0, x1 - x0, y1 - y0


def _steps(stack: np.ndarray, cfg: WatermarkConfig):
    """Per pixel of one plane's frames (n, h, w float32): per-frame gradients, the mean frame, still
    (an edge in >= `persist` of the frames with `contrast` around it in that frame, which are >= `seen`
    of the frames, and `contrast` around it in the mean frame), the mean frame's Sobel gx, gy,
    sharpness (gradient / 5x5 range), step (largest one-pixel difference / 5x5 range) and drawn-step
    evidence (step between step_low and step_high, on still pixels)."""
    grads = np.stack([_gradient(g) for g in stack])
    freq = edge_persistence(stack, grads, cfg.edge_threshold, cfg.contrast, cfg.seen)
    mean = stack.mean(axis=0)
    local_range, gx, gy, big = mean_frame_cues(mean)
    still = (freq >= cfg.persist - 1e-6) & (local_range > cfg.contrast)
    sharp = (np.hypot(gx, gy) + 1e-6) / (local_range + 1e-3)
    step = big / (local_range + 1e-3)
    evidence = np.clip((step - cfg.step_low) / (cfg.step_high - cfg.step_low), 0.0, 1.0) * still
    return grads, mean, still, gx, gy, sharp, step, evidence


def mean_frame_cues(mean: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The mean frame's 5x5 grey-level range, Sobel gradient (gx, gy in grey levels per pixel) and
    largest one-pixel step (`largest_step`): what its sharpness and step cues are made of."""
    kernel = np.ones((5, 5), np.uint8)
    local_range = cv2.dilate(mean, kernel) - cv2.erode(mean, kernel)
    gx, gy = cv2.Sobel(mean, cv2.CV_32F, 1, 0, ksize=3) / 8.0, cv2.Sobel(mean, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    return local_range, gx, gy, largest_step(mean)


def largest_step(mean: np.ndarray) -> np.ndarray:
    """Per pixel, the largest difference to a 4-neighbour: a one-pixel step has all of the grey-level
    range around it in one difference."""
    dx, dy = np.abs(np.diff(mean, axis=1)), np.abs(np.diff(mean, axis=0))
    big = np.zeros_like(mean)
    big[:, 1:] = np.maximum(big[:, 1:], dx)
    big[:, :-1] = np.maximum(big[:, :-1], dx)
    big[1:, :] = np.maximum(big[1:, :], dy)
    big[:-1, :] = np.maximum(big[:-1, :], dy)
    return big


def _gradient(g: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude in grey levels per pixel."""
    return np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)) / 8.0


# ------------------------------------------------------------------------------------------- the learned detector


def detect_net(frames: list[np.ndarray], chroma: list[np.ndarray] | None, cfg: WatermarkConfig, clip_w: int, clip_h: int) -> Overlay | None:
    """The learned detector (stages/watermark_net.py) on grey frames (and their chroma planes): the
    sigmoid of the largest calibrated overlay logit, and the box of the region around it in clip
    pixels. A frozen clip scores 0; None with fewer than 2 frames."""
    from stages.watermark_net import logit_map, load_net, overlay_maps, region_box

    if len(frames) < 2:
        return None
    maps, frozen = overlay_maps(frames, chroma, cfg)
    if frozen:
        return Overlay(score=0.0, box=None, frozen=True)
    net, offset = load_net(cfg.net_file)
    logits = logit_map(maps, net, offset)
    h, w = frames[0].shape[:2]
    return Overlay(score=float(1.0 / (1.0 + np.exp(-logits.max()))), box=region_box(logits, (w, h), (clip_w, clip_h)), logits=logits)


def find_overlay(frames: list[np.ndarray], chroma: list[np.ndarray] | None, cfg: WatermarkConfig, clip_w: int, clip_h: int) -> Overlay | None:
    """What the configured frame-map method finds in a clip's sampled frames: `net`, `edges`, or
    `both` (the default): the one of the two that scores the clip higher, its score and its box. A clip
    the network's maps find frozen scores 0 (the edges are not asked)."""
    if cfg.method == "edges":
        return detect(frames, cfg, clip_w, clip_h, chroma=chroma)
    net = detect_net(frames, chroma, cfg, clip_w, clip_h)
    if cfg.method == "net" or net is None or net.frozen:
        return net
    h, w = frames[0].shape[:2]
    return higher(net, detect(frames, cfg, clip_w, clip_h, chroma=chroma), clip_w / w)


MIN_SIDE = 2  # both: an edges box thinner than this (pixels of the sampled frames) is no mark
AGREEMENT = 4.48  # both: added to the two logits where they point at the same place (fitted by `python -m curate.bench.watermark --fit`)
NEAR = 1  # both: the network's logits this many cells (STRIDE frame pixels each) around the edges' box count as pointing at it


def higher(net: Overlay, edges: Overlay, scale: float, agreement: float = AGREEMENT) -> Overlay:
    """`both`: the highest of three findings. The network's; the edges model's, only where its box is at
    least MIN_SIDE pixels of the sampled frames across (`scale`: clip pixels per frame pixel); and, where
    the network sees something at the edges' box too, the two together: P = sigmoid(the edges' logit +
    the network's largest logit over that box, NEAR cells around it included, + `agreement`), with the
    edges' box. Two detectors that look at different things (drawn one-pixel steps; a learned look of
    what stays put) and agree on the place are surer than either: adding their logits is naive Bayes,
    `agreement` its one constant (the prior counted twice, and how far the two are from independent),
    fitted on the calibration pairs (bench `--fit`; refitted without the style left out by `--loso`).

    A one-pixel line of drawn-looking steps is filmed: on a fixed camera's clip of Debian's footage
    (balle1-vp9.avi, which the edges model was never fitted on), the rim of a ceiling lamp, an 8x1 box, scored
    0.79 by the edges model; no overlay of the bench's is caught by an edges box under 3 pixels across.
    A clip the network finds frozen keeps the network's 0."""
    if not counts(net, edges, scale):
        return net
    best = edges if edges.score > net.score else net
    together = joint_logit(net, edges, scale)
    if together is not None:
        joint = float(1.0 / (1.0 + np.exp(-(together + agreement))))
        if joint > best.score:
            best = Overlay(score=joint, box=edges.box)
    return best


def counts(net: Overlay, edges: Overlay, scale: float) -> bool:
    """Whether the edges' finding counts beside the network's (`higher`)."""
    return not (net.frozen or edges.frozen or not edges.box or min(edges.box["w"], edges.box["h"]) < MIN_SIDE * scale)


def joint_logit(net: Overlay, edges: Overlay, scale: float) -> float | None:
    """The edges' logit plus the network's largest logit at the edges' box (`higher`, less the
    agreement constant); None where they have nothing to agree on."""
    if net.logits is None or edges.score <= 0 or not counts(net, edges, scale):
        return None
    p = min(max(edges.score, 1e-12), 1.0 - 1e-12)
    return float(np.log(p / (1.0 - p))) + box_logit(net.logits, edges.box, scale)


def box_logit(logits: np.ndarray, box: dict, scale: float) -> float:
    """The network's largest logit over `box` (clip pixels; `scale` clip pixels per frame pixel) and
    NEAR cells around it; -inf (nothing there to agree with) for a box off the map."""
    from stages.watermark_net import STRIDE

    cell = scale * STRIDE
    y0, x0 = max(0, int(box["y"] // cell) - NEAR), max(0, int(box["x"] // cell) - NEAR)
    y1, x1 = int(np.ceil((box["y"] + box["h"]) / cell)) + NEAR, int(np.ceil((box["x"] + box["w"]) / cell)) + NEAR
    part = logits[y0:y1, x0:x1]
    return float(part.max()) if part.size else -np.inf


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

    def __init__(self, cfg: WatermarkConfig, classifier=None, ocr=None):
        self.cfg = cfg
        self.classifier = classifier
        self.ocr = ocr  # mean_words: the text scorer's OcrModel, loaded on first use

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
                frames, chroma, w, h = sample_yuv(path, self.cfg.frames, self.cfg.width)
        except (OSError, MediaError) as e:
            raise ScoreError(f"cannot read {row['clip_uri']}: {e}") from e
        found = find_overlay(frames, chroma, self.cfg, w, h)
        if found is None:
            return {}
        if not found.frozen:
            words = words_score(row.get("text_static"), row.get("text_area"), self.cfg)
            read = mean_words(frames, chroma, self.text_model(), self.cfg, w, h) if self.cfg.mean_words else None
            found = with_words(found, words, read)
        return {"watermark_score": found.score, "watermark_box": found.box}

    def text_model(self):
        if self.ocr is None:
            self.ocr = mean_words_model(self.cfg)
        return self.ocr


def mean_words_model(cfg: WatermarkConfig):
    """The text scorer's PP-OCR models as mean_words reads with them: on the CPU (one image a clip, in
    the watermark step's CPU tasks), not shrinking the mean frame scaled to mean_words_size."""
    from stages.text import OcrModel, TextConfig

    return OcrModel(TextConfig(device="cpu", size=cfg.mean_words_size))
