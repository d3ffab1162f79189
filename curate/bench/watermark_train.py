"""Train the learned overlay detector (stages/watermark_net.py) on synthetic overlays over real footage.

    python -m curate.bench.watermark_train [--videos ../shared/data/videos] [--footage DIR] [--pairs 1500] [--steps 8000]
        [--hold-out bikes.mp4 vtest.avi ...] [--still 0.3] [--out stages/watermark_net.pt] [--seed 0]
    python -m curate.bench.watermark_train --combine A.pt B.pt ... --seed 9 [--val-pairs 400] --out stages/watermark_net.pt

The shipped weights: `python -m curate.bench.footage --dir DIR`, then `--seed 0 --footage DIR`.

What it makes, all from real footage (../shared/data/videos, and with --footage the videos Debian ships,
curate.bench.footage; never copied into the project, read upright as players show it): pairs of the same
stretch of one shot (16-40 consecutive frames, every frame or every second or third, at least 1.5 s
where the shot is that long; crop, mirror, brightness, a quarter of them turned a quarter turn: portrait
pictures), scaled once from the footage's own size to 480-854 wide with one of four scalers (bicubic as
ffmpeg's default, area, bilinear, Lanczos), once clean and once with an overlay composited with alpha,
both encoded with x264 at the rate they were filmed at (crf 16-28, preset ultrafast to medium, then half
the time again at veryfast, as a video reaches curate and is split), then read back exactly as the
watermark scorer reads a clip (`stages.watermark.sample_yuv`, `stages.watermark_net.overlay_maps`).
Where the overlay changes the picture by at least VISIBLE grey levels (mean over the frames), scaled to
the sampled frames, is the per-pixel label.

The overlay families are this module's own (`draw_mark`), kept apart from the watermark bench's seven
(`curate.bench.watermark`, which are only ever used to measure): words in fonts the bench does not use
(the DejaVu faces it leaves out, Pillow's Aileron, OpenCV's Hershey faces other than its DUPLEX), with
strokes and shadows; compositions of shapes (polygons, stars, rings, arcs, crosses, bars), filled or
outlined; badges (a translucent plate with words or shapes on it, flat or gradient); thin outlines;
drawn aliased or supersampled (antialiased); opacity 0.25-1, in corners, centred or anywhere, 6-35% of
the width.

The network is fitted with per-pixel and per-clip losses (AdamW, fixed seeds; random 128-pixel crops,
most of the overlaid ones around the mark), then calibrated on pairs it did not fit (another seed): 0.5 is put at
the clip threshold that best separates them among those flagging at most 3% of the clean clips. It
writes the weights (`--out`, about 300 kB) and beside them a JSON of their provenance (this command,
seed, videos, counts, validation ROC AUC and rates, library versions).

`--combine` trains nothing: it joins networks trained apart (other seeds, other data) into one file
whose logit is the mean of theirs, each after its own calibration, and calibrates that mean the same
way on pairs of `--seed` (take one no member was trained or calibrated on: seed s makes training pairs
from seed 2s+1 and calibration pairs from 2s+2). Networks trained apart err on different clean clips
(a fixed camera's still scene, a screen of rendered UI), so their mean flags fewer of them at the same
catch rate. The provenance lists each member's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing
import os
import random
import sys
import tempfile
import time

import av
import cv2
import numpy as np

from curate.bench.watermark import auc, best_cut
from stages.watermark import WatermarkConfig, sample_yuv
from stages.watermark_net import MAP_CHANNELS, NET_FILE, STRIDE, build_net, load_net, logit_map, overlay_maps, provenance

# (video, shots as [first, end) decode indices, crop of the picture as (top, bottom) shares kept).
# Shots from ../shared/data/ground_truth.json (cuts, fades and black stretches left out); testvideo's
# bottom fifth holds its real copyright line, a real watermark: cropped away, as the bench does.
FOOTAGE = {
    "bikes.mp4": ([(0, 30), (30, 76), (76, 137), (137, 187), (187, 242)], (0.0, 1.0)),
    "testvideo.mp4": ([(30, 180), (240, 331), (423, 542), (558, 664)], (0.0, 0.8)),
    "goldeneye-vfr-drop3.mp4": ([(0, 60), (60, 140), (140, 160)], (0.0, 1.0)),
    "bigbuckbunny.mp4": ([(0, 132)], (0.0, 1.0)),
    "vtest.avi": ([(0, 795)], (0.0, 1.0)),
    "traffic_camera.mp4": ([(0, 576)], (0.0, 1.0)),
    "carphone_pristine.mp4": ([(0, 120)], (0.0, 1.0)),
    "carphone_distorted.mp4": ([(0, 120)], (0.0, 1.0)),
    "issue-134-rotate.mp4": ([(0, 240)], (0.0, 1.0)),
    "delayed_start.mp4": ([(0, 24)], (0.0, 1.0)),
    "issue53_brightness_change.avi": ([(0, 59)], (0.0, 1.0)),
}
TURNED = 0.25  # share of training stretches turned a quarter turn (portrait)
VISIBLE = 8.0  # grey levels a mark must change the picture by (mean over the frames) to be labelled there
DECODE_WIDTH = 1280  # frames are kept at most this wide (the footage's own size); a clip is scaled from it once
WIDTHS = (480, 540, 640, 720, 854)  # a clip's width, as uploads come (never wider than its crop)
# The scalers a clip may have been made with (ffmpeg's scale defaults to bicubic; area and bilinear are
# other tools'): a network that had only seen footage scaled twice by area gave vtest's clean segment,
# scaled to 480 by ffmpeg, a logit of -0.2, +1.1 or +2.6 with the bilinear, bicubic or area scaler.
SCALERS = (cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_LANCZOS4)
FONT_DIR = "/usr/share/fonts/truetype/dejavu"
# The DejaVu faces the watermark bench does not draw with (it uses Sans, Sans-Bold, Serif, SansMono,
# SansCondensed-Oblique), Pillow's own Aileron (None), and OpenCV's Hershey faces but its DUPLEX.
TRAIN_FONTS = ("DejaVuSans-ExtraLight.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf", "DejaVuSansCondensed.ttf",
               "DejaVuSansCondensed-Bold.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
               "DejaVuSerifCondensed-Bold.ttf", "DejaVuSerifCondensed-Italic.ttf", None)
HERSHEY = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, cv2.FONT_HERSHEY_PLAIN)
CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
SYMBOLS = "©®@#+&!|:-"
FAMILIES = ("words", "shapes", "badge", "combo", "thin")
FAMILY_WEIGHTS = (0.3, 0.2, 0.2, 0.2, 0.1)


def _colour(rng: random.Random) -> tuple[int, int, int]:
    if rng.random() < 0.4:
        return rng.choice([(255, 255, 255), (0, 0, 0), (235, 235, 235), (30, 30, 30)])
    h = rng.random() * 180
    s, v = rng.uniform(0.4, 1.0), rng.uniform(0.5, 1.0)
    hsv = np.uint8([[[h, s * 255, v * 255]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def _text(rng: random.Random) -> str:
    n = rng.randint(2, 10)
    s = "".join(rng.choice(CHARS) for _ in range(n))
    s = s.upper() if rng.random() < 0.4 else s
    if rng.random() < 0.3:
        s = rng.choice(SYMBOLS) + " " + s if rng.random() < 0.5 else s[: n // 2] + " " + s[n // 2:]
    return s


def _words(img, rng: random.Random, box: tuple[int, int, int, int], colour) -> None:
    """Words fitted into box (x0, y0, x1, y1) of a PIL RGBA image."""
    from PIL import ImageDraw, ImageFont

    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    text = _text(rng)
    d = ImageDraw.Draw(img)
    face = rng.choice(TRAIN_FONTS)
    px = max(6, int(h * rng.uniform(0.6, 1.0)))

    def font(size):
        return ImageFont.load_default(size) if face is None else ImageFont.truetype(os.path.join(FONT_DIR, face), size)

    f = font(px)
    stroke = rng.choice([0, 0, 0, 1, 2, 3]) * max(1, h // 40)
    while px > 6 and d.textlength(text, font=f) + 2 * stroke > w:
        px = max(6, int(px * 0.9))
        f = font(px)
    tb = d.textbbox((0, 0), text, font=f, stroke_width=stroke)
    tx, ty = x0 + (w - (tb[2] - tb[0])) // 2 - tb[0], y0 + (h - (tb[3] - tb[1])) // 2 - tb[1]
    if rng.random() < 0.2:  # drop shadow
        off = max(1, h // 12)
        d.text((tx + off, ty + off), text, font=f, fill=(0, 0, 0, rng.randint(120, 255)))
    d.text((tx, ty), text, font=f, fill=colour + (255,), stroke_width=stroke, stroke_fill=_colour(rng) + (255,))


def _hershey(rgba: np.ndarray, rng: random.Random, colour) -> None:
    """Words in an OpenCV Hershey face, filling an RGBA array."""
    h, w = rgba.shape[:2]
    text, face = _text(rng), rng.choice(HERSHEY)
    thick = max(1, int(h * rng.uniform(0.04, 0.12)))
    scale = 1.0
    (tw, th), base = cv2.getTextSize(text, face, scale, thick)
    scale = min(w * 0.95 / max(tw, 1), h * 0.8 / max(th + base, 1))
    (tw, th), base = cv2.getTextSize(text, face, scale, thick)
    cv2.putText(rgba, text, ((w - tw) // 2, (h + th) // 2), face, scale, colour + (255,), thick,
                cv2.LINE_AA if rng.random() < 0.6 else cv2.LINE_8)


def _shape(d, rng: random.Random, box, colour, outline: bool | None = None) -> None:
    """One primitive in box (x0, y0, x1, y1) of a PIL ImageDraw."""
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    width = max(1, int(min(rx, ry) * rng.uniform(0.08, 0.3)))
    outline = rng.random() < 0.4 if outline is None else outline
    fill, line = (None, colour + (255,)) if outline else (colour + (255,), None)
    kind = rng.choice(["ellipse", "ring", "poly", "star", "rect", "round", "arc", "cross", "bars", "chevron"])
    if kind == "ellipse":
        d.ellipse(box, fill=fill, outline=line, width=width)
    elif kind == "ring":
        d.ellipse(box, outline=colour + (255,), width=width)
    elif kind in ("poly", "star"):
        k = rng.randint(3, 8)
        a0 = rng.random() * math.tau
        pts = []
        for i in range(k * (2 if kind == "star" else 1)):
            r = 1.0 if kind == "poly" or i % 2 == 0 else rng.uniform(0.35, 0.6)
            a = a0 + i * math.tau / (k * (2 if kind == "star" else 1))
            pts.append((cx + rx * r * math.cos(a), cy + ry * r * math.sin(a)))
        d.polygon(pts, fill=fill, outline=line, width=width)
    elif kind == "rect":
        d.rectangle(box, fill=fill, outline=line, width=width)
    elif kind == "round":
        d.rounded_rectangle(box, radius=int(min(rx, ry) * rng.uniform(0.2, 0.9)), fill=fill, outline=line, width=width)
    elif kind == "arc":
        a = rng.randint(0, 359)
        d.arc(box, a, a + rng.randint(90, 300), fill=colour + (255,), width=width)
    elif kind == "cross":
        t = max(1, int(min(rx, ry) * rng.uniform(0.15, 0.4)))
        d.rectangle((cx - t, y0, cx + t, y1), fill=colour + (255,))
        d.rectangle((x0, cy - t, x1, cy + t), fill=colour + (255,))
    elif kind == "bars":
        n = rng.randint(2, 5)
        for i in range(n):
            bx = x0 + (x1 - x0) * i / n
            d.rectangle((bx, y1 - (y1 - y0) * rng.uniform(0.3, 1.0), bx + (x1 - x0) / n * 0.7, y1), fill=colour + (255,))
    else:
        d.line([(x0, y0), (cx, cy), (x0, y1)], fill=colour + (255,), width=width)
        d.line([(cx, y0), (x1, cy), (cx, y1)], fill=colour + (255,), width=width)


def draw_mark(rng: random.Random, w: int, h: int, family: str | None = None) -> np.ndarray:
    """An RGBA mark w x h (uint8 array) of one of this module's FAMILIES (random when None)."""
    from PIL import Image, ImageDraw

    family = family or rng.choices(FAMILIES, FAMILY_WEIGHTS)[0]
    s = rng.choice([1, 1, 3, 4])  # drawn at s x and scaled down: antialiased like an exported PNG
    W, H = w * s, h * s
    img = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    colour = _colour(rng)
    if family == "words":
        if rng.random() < 0.3:
            arr = np.zeros((H, W, 4), np.uint8)
            _hershey(arr, rng, colour)
            img = Image.fromarray(arr, "RGBA")
        else:
            _words(img, rng, (0, 0, W, H), colour)
    elif family == "shapes":
        for _ in range(rng.randint(1, 3)):
            f = rng.uniform(0.5, 1.0)
            bw, bh = int(W * f), int(H * f)
            x0, y0 = rng.randint(0, W - bw), rng.randint(0, H - bh)
            _shape(d, rng, (x0, y0, x0 + bw - 1, y0 + bh - 1), colour if rng.random() < 0.6 else _colour(rng))
    elif family == "badge":
        plate = _colour(rng) + (rng.randint(80, 230),)
        kind = rng.choice(["rect", "round", "ellipse", "slant"])
        if kind == "rect":
            d.rectangle((0, 0, W - 1, H - 1), fill=plate)
        elif kind == "round":
            d.rounded_rectangle((0, 0, W - 1, H - 1), radius=int(min(W, H) * rng.uniform(0.1, 0.5)), fill=plate)
        elif kind == "ellipse":
            d.ellipse((0, 0, W - 1, H - 1), fill=plate)
        else:
            k = int(W * 0.15)
            d.polygon([(k, 0), (W - 1, 0), (W - 1 - k, H - 1), (0, H - 1)], fill=plate)
        if rng.random() < 0.3:  # a gradient over the plate
            g = np.linspace(rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0), W if rng.random() < 0.5 else H, dtype=np.float32)
            arr = np.asarray(img).astype(np.float32)
            arr[..., :3] *= g[None, :, None] if len(g) == W else g[:, None, None]
            img = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGBA")
            d = ImageDraw.Draw(img)
        ink = (255, 255, 255) if sum(plate[:3]) < 380 else (20, 20, 20)
        inner = (int(W * 0.1), int(H * 0.15), int(W * 0.9), int(H * 0.85))
        if rng.random() < 0.7:
            _words(img, rng, inner, ink if rng.random() < 0.7 else _colour(rng))
        else:
            _shape(d, rng, inner, ink, outline=False)
    elif family == "combo":
        split = int(W * rng.uniform(0.25, 0.4))
        side = min(split, H)
        _shape(d, rng, (0, (H - side) // 2, side - 1, (H + side) // 2 - 1), colour)
        _words(img, rng, (split + max(1, W // 30), 0, W, H), colour if rng.random() < 0.5 else _colour(rng))
    else:  # thin outlines
        width = max(1, s * rng.choice([1, 1, 2]))
        for _ in range(rng.randint(1, 2)):
            kind = rng.choice(["rect", "round", "ellipse"])
            inset = rng.randint(0, max(0, min(W, H) // 6))
            b = (inset, inset, W - 1 - inset, H - 1 - inset)
            if kind == "rect":
                d.rectangle(b, outline=colour + (255,), width=width)
            elif kind == "round":
                d.rounded_rectangle(b, radius=min(W, H) // 4, outline=colour + (255,), width=width)
            else:
                d.ellipse(b, outline=colour + (255,), width=width)
    if s > 1:
        img = img.resize((w, h), rng.choice([Image.LANCZOS, Image.BILINEAR, Image.BOX]))
    return np.asarray(img, np.uint8)


def place_marks(rng: random.Random, W: int, H: int) -> np.ndarray:
    """An RGBA canvas W x H (float32, 0..1) holding one mark (sometimes two) at a broadcaster's places."""
    canvas = np.zeros((H, W, 4), np.float32)
    for _ in range(1 if rng.random() < 0.85 else 2):
        family = rng.choices(FAMILIES, FAMILY_WEIGHTS)[0]
        bw = max(12, int(W * rng.uniform(0.06, 0.35)))
        aspect = {"words": (0.15, 0.5), "shapes": (0.6, 1.2), "badge": (0.2, 0.6), "combo": (0.2, 0.45), "thin": (0.3, 1.0)}[family]
        bh = min(H - 4, max(8, int(bw * rng.uniform(*aspect))))
        bw = min(bw, W - 4)
        where = rng.random()
        m = int(W * rng.uniform(0.01, 0.06))
        if where < 0.6:  # a corner
            x = m if rng.random() < 0.5 else W - bw - m
            y = m if rng.random() < 0.5 else H - bh - m
        elif where < 0.8:  # centred, or centred low (a bottom bug)
            x = (W - bw) // 2
            y = (H - bh) // 2 if rng.random() < 0.5 else H - bh - m
        else:
            x, y = rng.randint(0, W - bw), rng.randint(0, H - bh)
        x, y = min(max(0, x), W - bw), min(max(0, y), H - bh)
        mark = draw_mark(rng, bw, bh, family).astype(np.float32) / 255.0
        mark[..., 3] *= rng.uniform(0.25, 1.0)
        region = canvas[y:y + bh, x:x + bw]
        a = mark[..., 3:4]
        region[..., :3] = mark[..., :3] * a + region[..., :3] * (1 - a)
        region[..., 3:4] = a + region[..., 3:4] * (1 - a)
    return canvas


# ----------------------------------------------------------------------------------------- footage


_FOOTAGE: dict[str, list[np.ndarray]] = {}
_RATE: dict[str, float] = {}
_SHOTS: dict[str, list[tuple[int, int]]] = {}


def footage(videos: str, more: str | None = None) -> dict[str, tuple[str, list[tuple[int, int]], tuple[float, float]]]:
    """Every video training may use: name -> (path, shots, crop). FOOTAGE's in `videos`, and with `more`
    the videos Debian ships (curate.bench.footage, fetched into that folder), whole pictures."""
    table = {name: (os.path.join(videos, name), shots, crop) for name, (shots, crop) in FOOTAGE.items()}
    if more:
        from curate.bench.footage import SHOTS

        table.update({name: (os.path.join(more, name), shots, (0.0, 1.0)) for name, shots in SHOTS.items()})
    return table


def load_footage(videos: str, names, more: str | None = None) -> int:
    """Decode each video into the tables `make_pair` reads (the fork workers share them): `_FOOTAGE`,
    every frame, RGB, upright as players show it (the clips curate writes are stored upright:
    stages/stream.py), at most DECODE_WIDTH wide, cropped as its table says (`footage`); `_RATE`, the
    rate it was filmed at; `_SHOTS`, its shots. Returns the number of frames decoded."""
    table = footage(videos, more)
    for name in names:
        path, _SHOTS[name], (top, bottom) = table[name]
        frames = []
        with av.open(path) as c:
            s = c.streams.video[0]
            _RATE[name] = float(s.average_rate or s.guessed_rate or 25)
            for f in c.decode(s):
                turns = round((f.rotation or 0) / 90) % 4
                fw, fh = (f.height, f.width) if turns % 2 else (f.width, f.height)
                w = min(DECODE_WIDTH, fw) // 2 * 2
                h = round(fh * w / fw / 2) * 2
                img = f.to_ndarray(format="rgb24", width=h if turns % 2 else w, height=w if turns % 2 else h)
                img = np.ascontiguousarray(np.rot90(img, turns)) if turns else img
                frames.append(img[int(h * top) // 2 * 2:int(h * bottom) // 2 * 2])
        _FOOTAGE[name] = frames
    return sum(len(_FOOTAGE[name]) for name in names)


def _encode(frames: list[np.ndarray], path: str, crf: int, preset: str = "veryfast", rate: int = 10) -> None:
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        s.options = {"crf": str(crf), "preset": preset, "threads": "1"}
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _decode(path: str) -> list[np.ndarray]:
    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def stretch(rng: random.Random, name: str, a: int, b: int) -> tuple[range, int]:
    """Which frames of shot [a, b) of `name` a clip is made of, and the rate it is encoded at: 16-40
    consecutive frames, every frame or every second or third, spanning at least 1.5 s where the shot is
    that long, at the rate they were filmed at over that step."""
    fps = _RATE.get(name, 25.0)
    step, n = rng.choice([1, 2, 3]), rng.randint(16, 40)
    step = max(step, math.ceil(1.5 * fps / n))
    step = max(1, min(step, (b - a) // n))
    n = max(4, min(n, (b - a) // step))
    start = rng.randint(a, b - (n - 1) * step - 1)
    return range(start, start + n * step, step), max(1, round(fps / step))


def still_scene(rng: random.Random, clip: list[np.ndarray]) -> list[np.ndarray]:
    """The clip as a fixed camera would have filmed it: one of its frames held still everywhere but in
    one to four soft-edged regions where its own frames move (people, cars, leaves), with sensor noise
    over the whole picture. The still scene's filmed edges stay put as an overlay's do and are labelled
    clean. Measured (--still 0.3, bikes.mp4 and vtest.avi held out, seed 0): on the held-out videos'
    bench pairs no better than without (ROC AUC 0.892 vs 0.893, 28/70 clean flagged either way; vtest's
    fixed camera scored higher), on the other videos' pairs better (0.954 vs 0.926, 0 vs 6/126 clean
    flagged): it does not teach an unseen fixed camera, so it is off by default."""
    h, w = clip[0].shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    weight = np.zeros((h, w), np.float32)
    for _ in range(rng.randint(1, 4)):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.18) * w
        weight = np.maximum(weight, np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * r * r)))
    weight = np.clip((weight - 0.25) / 0.5, 0.0, 1.0)[..., None]
    still = clip[rng.randrange(len(clip))].astype(np.float32)
    noise = np.random.default_rng(rng.randrange(2**32))
    sigma = rng.uniform(0.5, 2.5)
    return [(still * (1 - weight) + f * weight + noise.normal(0, sigma, f.shape)).round().clip(0, 255).astype(np.uint8) for f in clip]


def make_pair(seed: int, names: tuple[str, ...], still: float = 0.0):
    """One training pair (clean, overlaid) as [(maps uint8 (C, h, w), label uint8 (h/STRIDE, w/STRIDE))],
    or None when the stretch is frozen. Deterministic in `seed`. With `still` > 0 that share of the
    clips are made fixed-camera clips (`still_scene`) before the marks go on.

    A clip is made as uploads are: a stretch of one shot (`stretch`), cropped, scaled once from the
    footage's own size with one of SCALERS, encoded at the rate it was filmed at; the scorer then
    samples its frames from the clip."""
    rng = random.Random(seed)
    cfg = WatermarkConfig()
    name = rng.choice(names)
    shots = [s for s in _SHOTS[name] if s[1] - s[0] >= 4]
    a, b = rng.choice(shots)
    video = _FOOTAGE[name]
    b = min(b, len(video))
    idx, rate = stretch(rng, name, a, b)
    # A quarter of the stretches are turned a quarter turn (portrait pictures, filmed lines that run up
    # the frame) before the marks go on, upright, as on a phone video.
    turn = rng.choice([1, 3]) if rng.random() < TURNED else 0
    h0, w0 = video[0].shape[1::-1] if turn else video[0].shape[:2]
    f = rng.uniform(0.65, 1.0)
    cw, ch = int(w0 * f) // 2 * 2, int(h0 * rng.uniform(f * 0.85, min(1.0, f * 1.15))) // 2 * 2
    x0, y0 = rng.randint(0, w0 - cw), rng.randint(0, h0 - ch)
    width = max(2, min(cw, rng.choice(WIDTHS)) // 2 * 2)
    height = max(2, round(ch * width / cw / 2) * 2)
    scaler = rng.choice(SCALERS)
    flip = rng.random() < 0.5
    gain, gamma = rng.uniform(0.8, 1.15), rng.uniform(0.8, 1.25)
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma * gain, 0, 255).astype(np.uint8)
    clip = []
    for i in idx:
        src = np.rot90(video[i], turn) if turn else video[i]
        img = cv2.resize(np.ascontiguousarray(src[y0:y0 + ch, x0:x0 + cw]), (width, height), interpolation=scaler)
        clip.append(lut[img[:, ::-1] if flip else img])
    if still and rng.random() < still:
        clip = still_scene(rng, clip)
    canvas = place_marks(rng, width, height)
    a = canvas[..., 3:4]
    marked = [(img.astype(np.float32) * (1 - a) + canvas[..., :3] * 255.0 * a).round().clip(0, 255).astype(np.uint8) for img in clip]
    # The label: where the mark shows, i.e. changes the picture by >= VISIBLE grey levels on average over
    # the frames (a faint mark over the same colour, or a plate's clear corner, is not asked for).
    shown = np.mean([np.abs(m.astype(np.int16) - c.astype(np.int16)).max(axis=2) for m, c in zip(marked, clip)], axis=0).astype(np.float32)
    # The upload's encode (ultrafast has no deblocking: its block edges stay put in a still scene, as an
    # old encoder's do), then, half the time, the split's (veryfast).
    crfs = [rng.randint(16, 28)] + ([rng.randint(16, 24)] if rng.random() < 0.5 else [])
    presets = [rng.choice(["ultrafast", "superfast", "veryfast", "medium"]), "veryfast"]
    out = []
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        for frames, seen in ((clip, None), (marked, shown)):
            path = os.path.join(tmp, "c.mp4")
            for k, crf in enumerate(crfs):
                _encode(frames if k == 0 else _decode(path), path if k == 0 else path + ".2.mp4", crf, presets[k], rate)
                if k:
                    os.replace(path + ".2.mp4", path)
            grey, chroma, _, _ = sample_yuv(path, cfg.frames, cfg.width)
            maps, frozen = overlay_maps(grey, chroma, cfg)
            if frozen:
                return None
            hh, ww = maps.shape[1:]
            label = np.zeros((hh, ww), np.float32) if seen is None else cv2.resize(seen, (ww, hh), interpolation=cv2.INTER_AREA)
            q = np.zeros((-(-hh // STRIDE) * STRIDE, -(-ww // STRIDE) * STRIDE), np.float32)
            q[:hh, :ww] = label >= VISIBLE
            q = q.reshape(q.shape[0] // STRIDE, STRIDE, q.shape[1] // STRIDE, STRIDE).max(axis=(1, 3))
            out.append(((maps * 255).round().astype(np.uint8), q.astype(np.uint8)))
    return out


def _make(args):
    seed, names, still = args
    try:
        return make_pair(seed, names, still)
    except Exception as e:  # a failed pair is reported and left out; it never stops the run
        print(f"pair {seed}: {type(e).__name__}: {e}", file=sys.stderr)
        return None


def make_pairs(n: int, seed: int, names: tuple[str, ...], workers: int, still: float = 0.0) -> list:
    jobs = [(seed * 1_000_003 + i, names, still) for i in range(n)]
    if workers <= 1:
        got = [_make(j) for j in jobs]
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            got = pool.map(_make, jobs, chunksize=4)
    return [s for pair in got if pair for s in pair]


# ----------------------------------------------------------------------------------------- fitting


def _batch(samples, rng: np.random.Generator, n: int, size: int):
    import torch

    C = len(MAP_CHANNELS)
    X = np.zeros((n, C, size, size), np.float32)
    Y = np.zeros((n, size // STRIDE, size // STRIDE), np.float32)
    M = np.zeros_like(Y)
    for k in range(n):
        maps, label = samples[int(rng.integers(len(samples)))]
        _, h, w = maps.shape
        qh, qw = label.shape
        if label.any() and rng.random() < 0.7:  # centred near the overlay
            ys, xs = np.nonzero(label)
            j = int(rng.integers(len(ys)))
            cy, cx = ys[j] - size // STRIDE // 2 + int(rng.integers(-8, 9)), xs[j] - size // STRIDE // 2 + int(rng.integers(-8, 9))
        else:
            cy, cx = int(rng.integers(-4, max(1, qh - size // STRIDE + 5))), int(rng.integers(-4, max(1, qw - size // STRIDE + 5)))
        cy, cx = min(max(cy, min(0, qh - size // STRIDE)), max(0, qh - size // STRIDE)), min(max(cx, min(0, qw - size // STRIDE)), max(0, qw - size // STRIDE))
        sy, sx = max(0, cy), max(0, cx)
        th, tw = min(size // STRIDE, qh - sy), min(size // STRIDE, qw - sx)
        X[k, :, :min(size, h - sy * STRIDE), :min(size, w - sx * STRIDE)] = maps[:, sy * STRIDE:sy * STRIDE + size, sx * STRIDE:sx * STRIDE + size] / 127.5 - 1.0
        Y[k, :th, :tw] = label[sy:sy + th, sx:sx + tw]
        M[k, :th, :tw] = 1.0
    return torch.from_numpy(X), torch.from_numpy(Y), torch.from_numpy(M)


def fit(samples, steps: int, seed: int, batch: int = 12, size: int = 128, log=print):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    net = build_net()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    for step in range(steps):
        X, Y, M = _batch(samples, rng, batch, size)
        out = net(X)[:, 0]
        pix = F.binary_cross_entropy_with_logits(out, Y, reduction="none") * M * (1.0 + 2.0 * Y)
        pix = pix.sum() / M.sum()
        masked = out.masked_fill(M == 0, -1e4)
        top = masked.flatten(1).max(dim=1).values
        has = (Y * M).flatten(1).amax(dim=1)
        clip = F.binary_cross_entropy_with_logits(top, has)
        # the clean pixels the network is surest are an overlay (a still sign in a fixed camera's scene,
        # a screen's rendered UI): a clip's score is its largest logit, so these decide false alarms
        neg = out.masked_fill((M == 0) | (Y > 0), -1e4).flatten(1).topk(16, dim=1).values
        hard = F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg), reduction="none")[neg > -1e3].mean()
        loss = pix + clip + 0.5 * hard
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps - 1:
            log(f"  step {step:5d}  loss {loss.item():.4f} (pixels {pix.item():.4f}, clip {clip.item():.4f}, hard {hard.item():.4f})  {time.time() - t0:.0f} s")
    net.eval()
    return net


def combine(paths: list[str]):
    """One network of several trained apart: the mean of their calibrated logits (stages.watermark_net.build_net)."""
    import torch

    nets = [load_net(os.path.abspath(p)) for p in paths]
    mean = build_net(len(nets))
    for member, (net, _) in zip(mean.members, nets):
        member.load_state_dict(net.state_dict())
    mean.shift.copy_(torch.tensor([offset for _, offset in nets], dtype=torch.float32))
    return mean.eval()


def clip_logits(net, samples) -> tuple[np.ndarray, np.ndarray]:
    """(largest logit, has an overlay) of each sample, over the whole frame as the scorer sees it."""
    got, lab = [], []
    for maps, label in samples:
        got.append(float(logit_map(maps.astype(np.float32) / 255.0, net).max()))
        lab.append(bool(label.any()))
    return np.array(got), np.array(lab)


def calibrate(logits: np.ndarray, labels: np.ndarray, max_clean: float = 0.03) -> float:
    """The offset that puts 0.5 at the clip threshold that best separates overlaid from clean (largest
    true- minus false-positive rate, midway between neighbours) among those flagging <= max_clean; above
    every clip when none does (`best_cut`)."""
    return -float(best_cut(logits[labels], logits[~labels], max_clean))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", default=os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "videos"))
    ap.add_argument("--pairs", type=int, default=1500, help="training pairs (clean + overlaid)")
    ap.add_argument("--val-pairs", type=int, default=200, help="calibration pairs (another seed)")
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--still", type=float, default=0.0, help="share of the clips made fixed-camera clips (still_scene): a frame held still "
                    "but for soft regions that move")
    ap.add_argument("--footage", default=None, metavar="DIR", help="train over the videos Debian ships too (curate.bench.footage: "
                    "`python -m curate.bench.footage --dir DIR` fetches them): 11 videos, 6 of them fixed cameras")
    ap.add_argument("--hold-out", nargs="*", default=[], help="videos left out of training and calibration (to measure on them)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=NET_FILE)
    ap.add_argument("--combine", nargs="+", default=None, metavar="WEIGHTS",
                    help="instead of training: average these trained networks' calibrated logits and calibrate the mean on "
                         "--val-pairs pairs of --seed (pick one no member trained or calibrated on)")
    args = ap.parse_args(argv)
    videos, more = os.path.abspath(args.videos), args.footage and os.path.abspath(args.footage)
    table = footage(videos, more)
    unknown = set(args.hold_out) - set(table)
    if unknown:  # a misspelt name would hold nothing out, and the measurement after it would not be left out
        ap.error(f"--hold-out: {', '.join(sorted(unknown))} not among the training footage ({', '.join(table)})")
    missing = [name for name, (path, _, _) in table.items() if name not in args.hold_out and not os.path.exists(path)]
    if missing:
        ap.error(f"missing footage: {', '.join(missing)}" + (f" (python -m curate.bench.footage --dir {args.footage} fetches it)" if args.footage else ""))
    if not 0.0 <= args.still <= 1.0:
        ap.error(f"--still is a share: 0..1, got {args.still}")
    if args.combine is not None and len(args.combine) < 2:
        ap.error("--combine takes two or more weight files")
    import torch

    torch.set_num_threads(max(1, args.workers))
    names = tuple(n for n in table if n not in set(args.hold_out))
    t0 = time.time()
    frames = load_footage(videos, names, more)
    print(f"decoded {frames} frames of {len(names)} videos in {time.time() - t0:.0f} s")
    t0 = time.time()
    train = [] if args.combine else make_pairs(args.pairs, args.seed * 2 + 1, names, args.workers, args.still)
    val = make_pairs(args.val_pairs, args.seed * 2 + 2, names, args.workers, args.still)
    print(f"made {len(train)} training and {len(val)} calibration clips in {time.time() - t0:.0f} s")
    t0 = time.time()
    if args.combine:
        net = combine(args.combine)
    else:
        net = fit(train, args.steps, args.seed)
        print(f"fitted in {time.time() - t0:.0f} s")
    logits, labels = clip_logits(net, val)
    offset = calibrate(logits, labels)
    scores = 1 / (1 + np.exp(-(logits + offset)))
    pos, neg = scores[labels], scores[~labels]
    val_auc = auc(pos, neg)
    print(f"calibration pairs: ROC AUC {val_auc:.3f}; at 0.5 {(pos >= 0.5).mean():.1%} of overlays caught, {(neg >= 0.5).mean():.1%} of clean flagged (offset {offset:.3f})")
    members = len(args.combine) if args.combine else 1
    torch.save({"net": net.state_dict(), "offset": offset, "channels": MAP_CHANNELS, "members": members}, args.out)
    info = {
        "what": "curate's learned overlay (watermark) detector: stages/watermark_net.py",
        "made_by": " ".join(["python -m curate.bench.watermark_train", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.date.today().isoformat(),
        "seed": args.seed,
        "footage": {"videos": list(names), "held_out": list(args.hold_out), "source": "../shared/data/videos (see its README and licences)"
                    + ("; the videos Debian ships, curate.bench.footage.VIDEOS (each with its package, sha256 and licence)" if args.footage else "")},
        "overlays": "synthetic, this module's families " + ", ".join(FAMILIES) + "; none of the watermark bench's seven styles",
        "still_share": args.still,
        "training_clips": len(train), "calibration_clips": len(val), "steps": 0 if args.combine else args.steps,
        "members": [provenance(p) for p in args.combine] if args.combine else None,
        "calibration": {"roc_auc": round(val_auc, 4), "caught_at_0.5": round(float((pos >= 0.5).mean()), 4),
                        "clean_flagged_at_0.5": round(float((neg >= 0.5).mean()), 4), "offset": round(offset, 4)},
        "parameters": sum(p.numel() for p in net.parameters()),
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "opencv": cv2.__version__, "av": av.__version__},
        "license": "Apache-2.0 (this project's); trained on the test footage, which is for tests and measurements only",
    }
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out} and its provenance {os.path.splitext(args.out)[0]}.json")


if __name__ == "__main__":
    main()
