"""The learned overlay detector (watermark `method: net`; in `both`, the default, with the edges model
beside it): a small fully convolutional network over per-pixel maps of what stays put in a clip,
trained by this project on synthetic overlays composited over real footage.

Why learned: the hand-set cues of the `edges` method (a drawn edge is a one-pixel step, still while the
picture moves) hold for overlays drawn by ffmpeg and fail on what image libraries render: antialiased
words and emblems scaled down, whose edges are spread over several pixels like filmed ones (measured
left out of its fit: emblems ROC AUC 0.70, antialiased words 0.82). The network sees, for every pixel,
the cues together with their shapes around it, and learns how they combine from thousands of overlays
instead of a hundred.

Input (`overlay_maps`, MAP_CHANNELS, every channel in 0..1 at the sampled frames' size, at most 480
wide): the mean frame, the picture's temporal deviation, how persistently an edge is there (among the
frames that show contrast around the pixel), how coherent its gradient direction is over time, the mean
frame's sharpness and one-pixel step share, gradient strength and its variation over time, the mean
chroma and chroma-edge persistence, and two numbers of the whole clip (share of changing pixels, share
of persistent edges) broadcast. Output: an overlay logit per 4x4 pixels; the clip's score is the
sigmoid of the largest (after the calibration `offset` stored with the weights), its box the connected
region around that maximum. A frozen clip (nothing changes) scores 0 as with `edges`.

The weights (`watermark_net.pt` beside this file, about 300 kB) and their provenance
(`watermark_net.json`: command, seed, data, validation figures) are made by
`python -m curate.bench.watermark_train`; the overlay families it trains on are its own (see that
module) and the bench's seven families (`python -m curate.bench.watermark --styles`) are never fitted on.
"""

from __future__ import annotations

import functools
import json
import os

import cv2
import numpy as np

MAP_CHANNELS = (
    "mean",  # the mean grey frame
    "dev",  # temporal deviation of the brightness-normalised frames (log)
    "persist",  # share of the frames with contrast around the pixel in which it is an edge
    "coherence",  # |sum of gradient vectors| / sum of their lengths: 1 for an edge that stays the same
    "sharp",  # mean frame: gradient / 5x5 range
    "step",  # mean frame: largest one-pixel difference / 5x5 range
    "grad",  # mean per-frame gradient strength (log)
    "gcv",  # how much the gradient strength varies over time (std / mean)
    "u", "v",  # the mean frame's chroma
    "cpersist",  # chroma-edge persistence (the larger of U and V)
    "moving",  # the clip's share of changing pixels (log), everywhere
    "crowd",  # the clip's share of persistent-edge pixels (log), everywhere
)
STRIDE = 4  # the network's output is one logit per STRIDE x STRIDE pixels
NET_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "watermark_net.pt")


def _persistence(stack: np.ndarray, edge: float, contrast: float, seen_share: float):
    """Per pixel of frames (n, h, w float32): edge persistence among the frames with contrast around the
    pixel, gradient coherence, mean gradient strength, and its variation over time."""
    from stages.watermark import edge_persistence

    n = len(stack)
    gx = np.stack([cv2.Sobel(f, cv2.CV_32F, 1, 0, ksize=3) for f in stack]) / 8.0
    gy = np.stack([cv2.Sobel(f, cv2.CV_32F, 0, 1, ksize=3) for f in stack]) / 8.0
    grads = np.hypot(gx, gy)
    persist = edge_persistence(stack, grads, edge, contrast, seen_share)
    total = grads.sum(axis=0)
    coherence = np.hypot(gx.sum(axis=0), gy.sum(axis=0)) / (total + 2.0 * n)
    gmean = total / n
    gcv = grads.std(axis=0) / (gmean + 1.0)
    return persist.astype(np.float32), coherence, gmean, gcv


def overlay_maps(frames: list[np.ndarray], chroma: list[np.ndarray] | None, cfg) -> tuple[np.ndarray | None, bool]:
    """MAP_CHANNELS (C, h, w float32, each in 0..1) of grey frames (all one size; `chroma`: their
    half-size U, V planes stacked on the last axis, or None) and whether the clip is frozen (then None).
    `cfg` is the WatermarkConfig (blank, frozen, moving_level, edge_threshold, contrast, seen)."""
    from stages.watermark import mean_frame_cues, shown_frames  # (stages.watermark imports this module when it scores)

    shown = shown_frames(frames, cfg)
    if shown is None:
        return None, True
    stack, keep, dev, moving = shown
    h, w = stack.shape[1:]
    persist, coherence, gmean, gcv = _persistence(stack, cfg.edge_threshold, cfg.contrast, cfg.seen)
    mean = stack.mean(axis=0)
    local_range, mgx, mgy, big = mean_frame_cues(mean)
    sharp = np.hypot(mgx, mgy) / (local_range + 4.0)
    step = big / (local_range + 4.0)
    if chroma is not None:
        cst = np.stack(chroma).astype(np.float32)[keep]
        cmean = cst.mean(axis=0)
        cp = np.maximum(*[_persistence(np.ascontiguousarray(cst[..., k]), cfg.edge_threshold / 2, cfg.contrast / 2, cfg.seen)[0] for k in range(2)])
        u, v, cpersist = (cv2.resize(np.ascontiguousarray(x), (w, h), interpolation=cv2.INTER_LINEAR)
                          for x in (cmean[..., 0], cmean[..., 1], cp))
    else:
        u = v = np.full((h, w), 128.0, np.float32)
        cpersist = np.zeros((h, w), np.float32)
    crowd = float((persist >= cfg.persist).mean())
    maps = np.stack([
        mean / 255.0,
        np.log1p(dev) / 4.0,
        persist,
        coherence,
        np.clip(sharp / 0.6, 0, 1),
        np.clip(step, 0, 1),
        np.log1p(gmean) / 5.0,
        np.clip(gcv / 3.0, 0, 1),
        np.clip((u - 128.0) / 128.0 + 0.5, 0, 1),
        np.clip((v - 128.0) / 128.0 + 0.5, 0, 1),
        cpersist,
        np.full((h, w), np.log(moving + 1e-3) / 7.0 + 1.0),
        np.full((h, w), np.log(crowd + 1e-3) / 7.0 + 1.0),
    ]).astype(np.float32)
    return np.clip(maps, 0.0, 1.0), False


def build_net(members: int = 1):
    """The network: MAP_CHANNELS in, one overlay logit per STRIDE x STRIDE pixels out (receptive field
    about 90 pixels: a logo's parts together with the picture around them). Borders are padded by
    repeating the edge pixels: a zero pad would be a strong edge at every frame border. With
    `members` > 1: that many such networks, their calibrated logits averaged (`watermark_train --combine`)."""
    import torch
    from torch import nn

    def conv(a, b, stride=1, dilation=1):
        return nn.Conv2d(a, b, 3, stride=stride, padding=dilation, dilation=dilation, padding_mode="replicate")

    def one():
        c = len(MAP_CHANNELS)
        return nn.Sequential(
            conv(c, 24), nn.LeakyReLU(0.1),
            conv(24, 32, stride=2), nn.LeakyReLU(0.1),
            conv(32, 32, dilation=2), nn.LeakyReLU(0.1),
            conv(32, 48, stride=2), nn.LeakyReLU(0.1),
            conv(48, 48, dilation=2), nn.LeakyReLU(0.1),
            conv(48, 48, dilation=4), nn.LeakyReLU(0.1),
            nn.Conv2d(48, 1, 1),
        )

    if members == 1:
        return one()

    class Mean(nn.Module):
        """Networks trained apart (other seeds, other pairs), each with its own calibration offset
        (`shift`): the mean of their calibrated logits. They err on different clean clips."""

        def __init__(self):
            super().__init__()
            self.members = nn.ModuleList(one() for _ in range(members))
            self.register_buffer("shift", torch.zeros(members))

        def forward(self, x):
            return torch.stack([m(x) + self.shift[k] for k, m in enumerate(self.members)]).mean(dim=0)

    return Mean()


@functools.lru_cache(maxsize=4)
def load_net(path: str = NET_FILE):
    """(network in eval mode, calibration offset) from a state dict saved by the training script:
    {"net": state dict, "offset": float, "channels": MAP_CHANNELS, "members": networks averaged (1)}."""
    import torch

    saved = torch.load(path, map_location="cpu", weights_only=True)
    if tuple(saved.get("channels", ())) != MAP_CHANNELS:
        raise ValueError(f"{path}: made for map channels {saved.get('channels')}, this code has {MAP_CHANNELS}")
    net = build_net(int(saved.get("members", 1)))
    net.load_state_dict(saved["net"])
    net.eval()
    return net, float(saved["offset"])


def provenance(path: str = NET_FILE) -> dict:
    """What the training script recorded about the weights at `path` (the JSON beside them), or {}."""
    side = os.path.splitext(path)[0] + ".json"
    if not os.path.exists(side):
        return {}
    with open(side) as f:
        return json.load(f)


def logit_map(maps: np.ndarray, net, offset: float = 0.0) -> np.ndarray:
    """The calibrated overlay logits (h / STRIDE, w / STRIDE) of one clip's maps. On one thread: the
    same bits whatever else the process runs (a convolution split over threads may sum in another
    order), and the network is small (tens of ms a clip)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            out = net(torch.from_numpy(np.ascontiguousarray(maps) * 2.0 - 1.0)[None])[0, 0]
    finally:
        torch.set_num_threads(threads)
    return out.numpy().astype(np.float64) + offset


REGION = -4.0  # calibrated logit down to which the box takes in the region around the peak


def region_box(logits: np.ndarray, frame_size: tuple[int, int], clip_size: tuple[int, int], margin: float = 2.0) -> dict:
    """The box (clip pixels) of the connected region around the largest logit of the pixels whose
    calibrated logit is >= REGION or within `margin` of the largest. (REGION was chosen on calibration
    pairs of the training script, another seed: box IoU with the mark's mean 0.60, >= 0.5 on 66 %;
    a region of the positive logits only: 0.19.)"""
    j = np.unravel_index(int(np.argmax(logits)), logits.shape)
    on = (logits >= min(logits[j] - margin, REGION)).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(on, connectivity=8)
    x, y, bw, bh = (int(v) for v in stats[labels[j], :4])
    (w, h), (cw, ch) = frame_size, clip_size
    sx, sy = cw / w * STRIDE, ch / h * STRIDE
    x0, y0 = int(x * sx), int(y * sy)
    return {"x": x0, "y": y0, "w": min(cw, int(np.ceil((x + bw) * sx))) - x0, "h": min(ch, int(np.ceil((y + bh) * sy))) - y0}
