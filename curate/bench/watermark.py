"""ROC AUC of the watermark score on overlay pairs made from real videos.

Each pair is the same short segment of a real video twice, re-encoded with x264: once clean, once
with an overlay burned in. AUC = the chance that an overlaid clip scores above a clean one (ties count
half). Two sets of pairs:

- the four ffmpeg kinds (`make_pairs`): a filled box, a box outline, a text logo drawn by OpenCV into a
  PNG and overlaid, ffmpeg drawtext; clips 480 wide, encoded once;
- the seven style families (`--styles`, `make_style_pairs`): those four plus overlays made the way
  broadcasters and uploaders make them, rendered by an image library with antialiasing and alpha:
  words in TrueType fonts (some with a stroke), words on a rounded translucent plate, wordless emblems
  (a ring with a shape inside); made as a video reaches curate: scaled to a distribution width
  (480-960), composited and encoded at crf 20, then encoded again as the split encodes a clip.

    python -m curate.bench.watermark [--method both|net|edges] [--net PATH] [--videos ../shared/data/videos] [--pairs 42] [--seeds 1 2 3] [-v]
    python -m curate.bench.watermark --styles --seeds 0 1 --loso --words   # the default (both) on the seven styles, 28 pairs each, + left out
    python -m curate.bench.watermark --method net --styles --seeds 0 1 --net HELD.pt --only bikes.mp4 vtest.avi   # on videos HELD.pt never saw
    python -m curate.bench.watermark --method edges [--lovo]
    python -m curate.bench.watermark --method edges --styles --loso    # the edges model, seven styles, + leave-one-style-out
    python -m curate.bench.watermark --method edges --styles --loso --words   # ... with the words cues folded in (static words, the mean frame's)
    python -m curate.bench.watermark --method edges --fit      # refit stages.watermark.WEIGHTS/BIAS on seed 0 of both sets
    python -m curate.bench.watermark --fit                     # ... and stages.watermark.AGREEMENT after them (both)

The learned detector (`--method net`; stages/watermark_net.py) is trained by
`python -m curate.bench.watermark_train` on overlay families of its own over the same real videos and
never on any pair or style made here: every style this bench reports is left out of its fit, so it
needs no refits. (Its videos are the bench's too: `watermark_train --hold-out VIDEO ... --out PATH`,
then `--net PATH` here, measures it on footage it never saw.) `--method both` (the default, as the job
runs) is the highest of the network's finding, the edges model's, and where both point at the same
place the two together (stages.watermark.higher: their logits added, plus AGREEMENT); its `--loso`
and `--lovo` refit the edges half and the agreement constant after it (`fit_agreement`) and keep the
network's.

The detector scores candidate blobs with a small logistic model (stages.watermark.FEATURES, WEIGHTS)
and a clip by its best blob. `--fit` fits that model on seed 0 of both sets (28 + 98 calibration pairs)
to the clips' labels (`fit_clips`: a clip's logit is the smooth maximum of its blobs', so no blob has
to be told which it is; started from the blob-level fit, blobs on the drawn overlay positive and every
blob of a clean clip negative), puts 0.5 at the clip threshold that best separates those clips among
those flagging none of the clean ones (MAX_CLEAN), and prints the constants to paste. The default run
reports seeds 1, 2 and 3 (other positions, sizes, colours and opacities), per overlay kind and opacity
band too. The clean clips are the same 14 segments in every seed, so a held-out seed is not new
content: `--lovo` also refits without each source video's pairs and scores that video's pairs with the
model that never saw it; `--loso` refits without each style (and, stricter, without that style and
that video) and reports each style's AUC and its share caught and clean flagged at 0.5, against the
target (AUC >= 0.95, >= 80% caught, <= 5% clean).
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import subprocess
import tempfile
import time

import av
import cv2
import numpy as np

from stages.media import ffmpeg_exe
from stages.watermark import (AGREEMENT, FEATURES, Overlay, WatermarkConfig, best_overlay, blob_features, detect_net, find_overlay, higher, mean_words, mean_words_model,
                              joint_logit, sample_yuv, with_words, words_score)

# (file, start_s, seconds): segments inside one shot, picture moving. vtest/traffic: static cameras;
# goldeneye: a still screen whose text changes; testvideo 6.2: a still photo fading in; delayed_start:
# a flat field brightening. (testvideo's 1-6 s shot is a frozen photo: nothing there can tell an
# overlay from the picture, so a frozen clip scores 0 and the bench leaves that shot out.)
SEGMENTS = [
    ("bikes.mp4", 1.3, 1.8), ("bikes.mp4", 3.1, 2.4), ("bikes.mp4", 5.5, 1.9), ("bikes.mp4", 7.6, 2.1),
    ("bigbuckbunny.mp4", 0.0, 4.0), ("traffic_camera.mp4", 14.5, 4.0), ("testvideo.mp4", 6.2, 4.0),
    ("goldeneye-vfr-drop3.mp4", 0.0, 3.5), ("goldeneye-vfr-drop3.mp4", 4.0, 4.0),
    ("carphone_pristine.mp4", 0.0, 3.0), ("issue-134-rotate.mp4", 0.0, 3.0), ("vtest.avi", 10.0, 4.0),
    ("traffic_camera.mp4", 0.5, 4.0), ("delayed_start.mp4", 0.0, 2.0),
]
# testvideo.mp4 has a real watermark (a copyright line along the bottom): its clean clips leave it out.
CROP = {"testvideo.mp4": "crop=iw:trunc(ih*0.8/2)*2:0:0,"}


def _logo(path: str, text: str, w: int, h: int) -> None:
    img = np.zeros((h, w, 4), np.uint8)
    cv2.putText(img, text, (2, h - max(2, h // 5)), cv2.FONT_HERSHEY_DUPLEX, h / 32, (255, 255, 255, 255), max(1, h // 16), cv2.LINE_AA)
    cv2.imwrite(path, img)


def font_file() -> str | None:
    """A TrueType font for ffmpeg's drawtext (fontconfig's sans, else a common path), or None."""
    try:
        found = subprocess.run(["fc-match", "-f", "%{file}", "sans"], capture_output=True, text=True, timeout=10).stdout.strip()
        if found.lower().endswith((".ttf", ".otf")) and os.path.exists(found):
            return found
    except (OSError, subprocess.SubprocessError):
        pass
    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf",
                 "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf", "/System/Library/Fonts/Helvetica.ttc"):
        if os.path.exists(path):
            return path
    return None


def _text_box(ff: str, drawtext: str, W: int, H: int) -> dict | None:
    """Where drawtext puts its glyphs: rendered once on a black frame, the box of the lit pixels."""
    out = subprocess.run([ff, "-v", "error", "-f", "lavfi", "-i", f"color=black:s={W}x{H}:d=0.04", "-vf",
                          drawtext, "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "gray", "-"], capture_output=True, check=True).stdout
    ys, xs = np.nonzero(np.frombuffer(out, np.uint8).reshape(H, W) > 8)
    if not len(xs):
        return None
    return {"x": int(xs.min()), "y": int(ys.min()), "w": int(xs.max() - xs.min() + 1), "h": int(ys.max() - ys.min() + 1)}


KINDS = ("box", "outline", "logo", "text")
OPACITY_BANDS = ((0.25, 0.45), (0.45, 0.7), (0.7, 1.0))  # low, mid, high; pairs cycle through them


def make_pairs(videos: str, out: str, n: int, seed: int = 0, width: int = 480, segments=SEGMENTS) -> list[tuple[str, str, dict]]:
    """n (clean clip, overlaid clip, overlay box in clip pixels + kind, opacity, source) from the segments.

    Pair i uses segment i mod 14 (of `segments`), kind i mod 4 (a filled box, a box outline, a text logo PNG laid
    over, ffmpeg drawtext; drawtext falls back to the PNG logo when no font is found) and opacity
    band i mod 3; the seed draws position (a corner or the centre), size, colour, text and the exact
    opacity in the band. Clips are `width` wide, x264, no audio.
    """
    rng = random.Random(seed)
    ff = ffmpeg_exe()
    font = font_file()
    pairs = []
    for i in range(n):
        name, start, dur = segments[i % len(segments)]
        src = os.path.join(videos, name)
        clean, marked = os.path.join(out, f"{i:03d}_clean.mp4"), os.path.join(out, f"{i:03d}_mark.mp4")
        enc = ["-an", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "20", "-pix_fmt", "yuv420p", "-threads", "1"]
        scale = f"{CROP.get(name, '')}scale={width}:-2"
        cut = ["-ss", f"{start:.3f}", "-t", f"{dur:.3f}", "-i", src]
        subprocess.run([ff, "-v", "error", "-y", *cut, "-vf", scale, *enc, clean], check=True)
        with av.open(clean) as c:
            H = c.streams.video[0].codec_context.height
        kind = KINDS[i % len(KINDS)]
        if kind == "text" and font is None:
            kind = "logo"
        lo, hi = OPACITY_BANDS[i % len(OPACITY_BANDS)]
        bw = int(width * rng.uniform(0.08, 0.25))
        bh = int(bw * rng.uniform(0.25, 0.6)) if kind != "box" else int(bw * rng.uniform(0.3, 1.0))
        corner = rng.choice(["tl", "tr", "bl", "br", "c"])
        m = int(width * 0.03)
        x = {"tl": m, "bl": m, "tr": width - bw - m, "br": width - bw - m, "c": (width - bw) // 2}[corner]
        y = {"tl": m, "tr": m, "bl": H - bh - m, "br": H - bh - m, "c": (H - bh) // 2}[corner]
        opacity = round(rng.uniform(lo, hi), 2)
        colour = rng.choice(["white", "black", "yellow"])
        text = rng.choice(["TV1", "NEWS", "cam 7", "LOGO", "HD", "LIVE 24", "© studio"])
        box = {"x": x, "y": y, "w": bw, "h": bh}
        extra = []
        if kind == "box":
            graph = f"[0:v]{scale},drawbox=x={x}:y={y}:w={bw}:h={bh}:color={colour}@{opacity:.2f}:t=fill[v]"
        elif kind == "outline":
            graph = f"[0:v]{scale},drawbox=x={x}:y={y}:w={bw}:h={bh}:color={colour}@{opacity:.2f}:t={max(2, bh // 8)}[v]"
        elif kind == "logo":
            logo = os.path.join(out, f"{i:03d}_logo.png")
            _logo(logo, text, bw, bh)
            graph = f"[1:v]format=rgba,colorchannelmixer=aa={opacity:.2f}[l];[0:v]{scale}[b];[b][l]overlay={x}:{y}[v]"
            extra = ["-i", logo]
        else:  # burned-in text, sometimes with a dark border as captions and channel marks have
            border = rng.choice([0, 0, 2])
            draw = (f"drawtext=fontfile='{font}':text='{text}':fontsize={max(10, bh)}:fontcolor={colour}@{opacity:.2f}"
                    f":borderw={border}:bordercolor=black@{opacity:.2f}:x={x}:y={y}")
            box = _text_box(ff, draw, width, H) or box
            graph = f"[0:v]{scale},{draw}[v]"
        subprocess.run([ff, "-v", "error", "-y", *cut, *extra, "-filter_complex", graph, "-map", "[v]", *enc, marked], check=True)
        pairs.append((clean, marked, {**box, "kind": kind, "opacity": opacity, "source": name}))
    return pairs


# ------------------------------------------------------------------------------ overlay style families

# Families for leave-one-style-out: the four above (ffmpeg drawbox/drawtext, an OpenCV-drawn PNG) and
# overlays made the way broadcasters and uploaders make them, rendered by an image library (PIL) with
# antialiasing and alpha: words in TrueType fonts (some with a stroke), words on a rounded translucent
# plate, and wordless emblems (a ring with a shape inside). These clips are made as a video reaches
# curate: the source scaled to a distribution width (480-960) with the overlay composited and encoded
# at crf 20, then re-encoded the way the split encodes a clip (crf 18, veryfast).
STYLES = ("box", "outline", "logo", "text", "pil_text", "pil_plate", "emblem")
FONT_FILES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSerif-Bold.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSansCondensed-Oblique.ttf",
)
WORDS = ("TV1", "NEWS", "cam 7", "LOGO", "HD", "LIVE 24", "© studio", "SPORT", "channel9", "@user", "WORLD", "kids", "FILM+")
COLOURS = ((255, 255, 255), (255, 220, 0), (230, 30, 40), (40, 160, 255), (20, 20, 20), (255, 255, 255))


def _font(rng: random.Random, px: int):
    """One of FONT_FILES at `px`. The draw is over all six whichever are installed, so the seed draws
    the same pairs (positions, widths, words) on every machine: drawn over the installed ones only, a
    machine without the Liberation fonts drew other pairs from the same seed. A missing font is
    replaced by the first installed one (PIL's own where none is); `made_with` names the missing."""
    from PIL import ImageFont

    want = rng.choice(FONT_FILES)
    have = [f for f in FONT_FILES if os.path.exists(f)]
    if not have:
        return ImageFont.load_default(px)
    return ImageFont.truetype(want if want in have else have[0], px)


def render_overlay(style: str, w: int, h: int, rng: random.Random):
    """An RGBA overlay w x h (PIL image) of an image-library style: `pil_text`, `pil_plate` or `emblem`."""
    from PIL import Image, ImageDraw

    colour = rng.choice(COLOURS)
    if style == "emblem":  # drawn 4x and scaled down: antialiased like an exported PNG
        s = 4
        img = Image.new("RGBA", (w * s, h * s), (0, 0, 0, 0))
        d = ImageDraw.Draw(img)
        r = min(w, h) * s // 2 - s
        cx, cy = w * s // 2, h * s // 2
        d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=colour + (255,), width=max(s, r // rng.choice([5, 7, 10])))
        q = int(r * 0.55)
        shape = rng.choice(["triangle", "square", "star", "dot", "bar"])
        if shape == "triangle":
            d.polygon([(cx, cy - q), (cx + q, cy + q * 0.8), (cx - q, cy + q * 0.8)], fill=colour + (255,))
        elif shape == "square":
            d.rectangle((cx - q * 0.7, cy - q * 0.7, cx + q * 0.7, cy + q * 0.7), fill=colour + (255,))
        elif shape == "star":
            pts = [(cx + (q if k % 2 == 0 else q * 0.45) * np.sin(k * np.pi / 5), cy - (q if k % 2 == 0 else q * 0.45) * np.cos(k * np.pi / 5)) for k in range(10)]
            d.polygon(pts, fill=colour + (255,))
        elif shape == "dot":
            d.ellipse((cx - q * 0.6, cy - q * 0.6, cx + q * 0.6, cy + q * 0.6), fill=colour + (255,))
        else:
            d.rectangle((cx - q, cy - q * 0.25, cx + q, cy + q * 0.25), fill=colour + (255,))
        return img.resize((w, h), Image.LANCZOS)
    img = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    text = rng.choice(WORDS)
    pad = max(2, h // 6) if style == "pil_plate" else 1
    px = max(8, h - 2 * pad)
    font = _font(rng, px)
    while px > 8 and d.textlength(text, font=font) > w - 2 * pad:
        px -= 1
        font = font.font_variant(size=px)
    if style == "pil_plate":
        plate = rng.choice([(0, 0, 0), (20, 40, 120), (180, 20, 30), (255, 255, 255)])
        d.rounded_rectangle((0, 0, w - 1, h - 1), radius=h // 3, fill=plate + (rng.randint(110, 210),))
        colour = (20, 20, 20) if plate == (255, 255, 255) else (255, 255, 255)
    stroke = rng.choice([0, 0, 1, 2]) if style == "pil_text" else 0
    box = d.textbbox((0, 0), text, font=font, stroke_width=stroke)
    x, y = (w - (box[2] - box[0])) // 2 - box[0], (h - (box[3] - box[1])) // 2 - box[1]
    d.text((x, y), text, font=font, fill=colour + (255,), stroke_width=stroke, stroke_fill=(0, 0, 0, 255))
    return img


def make_style_pairs(videos: str, out: str, styles=STYLES, per_style: int = 14, seed: int = 0, segments=SEGMENTS) -> list[tuple[str, str, dict]]:
    """`per_style` pairs of each style (segment k mod 14 for the k-th pair of a style, so each style sees
    every segment): (clean clip, overlaid clip, overlay box in clip pixels + kind (the style), opacity,
    source). The seed draws the distribution width, position, size, colour, font, words and opacity
    (0.3-0.9). Made as a video reaches curate: composited and encoded at crf 20, re-encoded at crf 18."""
    rng = random.Random(seed)
    ff = ffmpeg_exe()
    font = font_file()
    pairs = []
    for style in styles:
        for k in range(per_style):
            name, start, dur = segments[k % len(segments)]
            tag = f"{style}_{k:03d}"
            src = os.path.join(videos, name)
            with av.open(src) as c:
                sw = c.streams.video[0].codec_context.width
            width = min(sw, rng.choice([480, 640, 854, 960])) // 2 * 2
            first = ["-an", "-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p", "-threads", "1"]
            again = ["-an", "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", "-threads", "1"]
            scale = f"{CROP.get(name, '')}scale={width}:-2"
            cut = ["-ss", f"{start:.3f}", "-t", f"{dur:.3f}", "-i", src]
            clean0, mark0 = os.path.join(out, f"{tag}_clean0.mp4"), os.path.join(out, f"{tag}_mark0.mp4")
            subprocess.run([ff, "-v", "error", "-y", *cut, "-vf", scale, *first, clean0], check=True)
            with av.open(clean0) as c:
                H = c.streams.video[0].codec_context.height
            opacity = round(rng.uniform(0.3, 0.9), 2)
            bw = max(16, int(width * rng.uniform(0.08, 0.22)))
            bh = int(bw * rng.uniform(0.8, 1.0)) if style == "emblem" else int(bw * rng.uniform(0.25, 0.5))
            if style in ("box", "outline", "logo"):
                bh = int(bw * rng.uniform(0.3, 0.8))
            corner = rng.choice(["tl", "tr", "bl", "br", "c"])
            m = int(width * 0.03)
            x = {"tl": m, "bl": m, "tr": width - bw - m, "br": width - bw - m, "c": (width - bw) // 2}[corner]
            y = {"tl": m, "tr": m, "bl": H - bh - m, "br": H - bh - m, "c": (H - bh) // 2}[corner]
            box = {"x": x, "y": y, "w": bw, "h": bh}
            colour = rng.choice(["white", "black", "yellow"])
            extra = []
            if style == "box":
                graph = f"[0:v]{scale},drawbox=x={x}:y={y}:w={bw}:h={bh}:color={colour}@{opacity:.2f}:t=fill[v]"
            elif style == "outline":
                graph = f"[0:v]{scale},drawbox=x={x}:y={y}:w={bw}:h={bh}:color={colour}@{opacity:.2f}:t={max(2, bh // 8)}[v]"
            elif style == "text" and font is not None:
                draw = (f"drawtext=fontfile='{font}':text='{rng.choice(WORDS[:7])}':fontsize={max(10, bh)}:fontcolor={colour}@{opacity:.2f}"
                        f":borderw={rng.choice([0, 0, 2])}:bordercolor=black@{opacity:.2f}:x={x}:y={y}")
                box = _text_box(ff, draw, width, H) or box
                graph = f"[0:v]{scale},{draw}[v]"
            else:
                logo = os.path.join(out, f"{tag}_logo.png")
                if style in ("logo", "text"):
                    _logo(logo, rng.choice(WORDS[:7]), bw, bh)
                else:
                    render_overlay(style, bw, bh, rng).save(logo)
                graph = f"[1:v]format=rgba,colorchannelmixer=aa={opacity:.2f}[l];[0:v]{scale}[b];[b][l]overlay={x}:{y}[v]"
                extra = ["-i", logo]
            subprocess.run([ff, "-v", "error", "-y", *cut, *extra, "-filter_complex", graph, "-map", "[v]", *first, mark0], check=True)
            made = {}
            for which, tmp in (("clean", clean0), ("mark", mark0)):  # the split's encode of the clip
                made[which] = os.path.join(out, f"{tag}_{which}.mp4")
                subprocess.run([ff, "-v", "error", "-y", "-i", tmp, *again, made[which]], check=True)
                os.remove(tmp)
            pairs.append((made["clean"], made["mark"], {**box, "kind": style, "opacity": opacity, "source": name}))
    return pairs


def auc(positive: list[float], negative: list[float]) -> float:
    """ROC AUC: P(a positive scores above a negative), ties half; NaN when either side is empty (an
    opacity band no pair fell in)."""
    p, n = np.asarray(positive, float)[:, None], np.asarray(negative, float)[None, :]
    if not p.size or not n.size:
        return float("nan")
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


def score_file(path: str, cfg: WatermarkConfig):
    frames, chroma, w, h = sample_yuv(path, cfg.frames, cfg.width)
    return find_overlay(frames, chroma, cfg, w, h)


def iou(got: dict | None, want: dict) -> float:
    if not got:
        return 0.0
    ix = max(0, min(got["x"] + got["w"], want["x"] + want["w"]) - max(got["x"], want["x"]))
    iy = max(0, min(got["y"] + got["h"], want["y"] + want["h"]) - max(got["y"], want["y"]))
    return ix * iy / (got["w"] * got["h"] + want["w"] * want["h"] - ix * iy)


def clip_features(pairs, cfg: WatermarkConfig, words: bool = False) -> list[dict]:
    """Per clip of each pair (clean, then overlaid): its blobs' features, boxes (clip pixels), whether
    it is frozen (to the edges model), what the shipped detector gives it (`found`, the same as
    score_file's) and, with the network on (`net`, `both`), what the network gives it (`net`). With
    `words`, the text scorer (the job's defaults) runs on the clip too, and `words` holds what its static
    words say (`stages.watermark.words_score`, None when nothing), folded into `found` as the job does."""
    out = []
    text = None
    if words:
        from stages.text import OcrModel, ScoreText, TextConfig

        text = ScoreText(TextConfig(), OcrModel(TextConfig()))
        reader = mean_words_model(cfg)  # as the watermark step loads it
    for clean, marked, box in pairs:
        for path, overlay in ((clean, False), (marked, True)):
            frames, chroma, w, h = sample_yuv(path, cfg.frames, cfg.width)
            net = detect_net(frames, chroma, cfg, w, h) if cfg.method in ("net", "both") else None
            if cfg.method == "net":
                found = net
                feats, boxes, frozen = np.zeros((0, len(FEATURES))), [], found.frozen
            else:
                feats, frame_boxes, frozen = blob_features(frames, cfg, chroma)
                fh, fw = frames[0].shape[:2]
                found = best_overlay(feats, frame_boxes, frozen, (fw, fh), (w, h))
                boxes = [{"x": x * w / fw, "y": y * h / fh, "w": bw * w / fw, "h": bh * h / fh} for x, y, bw, bh in frame_boxes]
                if net is not None:  # both: as find_overlay
                    found = higher(net, found, w / fw)
            said = None
            if text is not None and not found.frozen:  # both words cues, as a job with a text section
                said = words_score(*_text_stats(text, path), cfg)
                read = mean_words(frames, chroma, reader, cfg, w, h) if cfg.mean_words else None
                found = with_words(found, said, read)
                said = max(said or 0.0, read.score if read else 0.0) or None
            out.append({"feats": feats, "boxes": boxes, "frozen": frozen, "overlay": overlay, "truth": box, "found": found, "words": said,
                        "net": net, "frame_boxes": frame_boxes if cfg.method != "net" else [], "sizes": (frames[0].shape[1::-1], (w, h))})
    return out


def _text_stats(text, path: str) -> tuple[float | None, float | None]:
    """(text_static, text_area) of one clip file by the text scorer."""
    import pyarrow as pa

    from schemas import CLIPS, conform

    row = text(conform(pa.Table.from_pylist([{"clip_id": "c", "source_id": "s", "clip_uri": path, "status": "kept"}]), CLIPS)).to_pylist()[0]
    return row["text_static"], row["text_area"]


def _blob_labels(clips: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Blobs of clean clips: 0; blobs of overlaid clips lying on the drawn overlay: 1; the others left out
    (an overlaid clip's scenery is scenery, but the same scenery is already there from its clean twin)."""
    X, y = [], []
    for c in clips:
        for f, b in zip(c["feats"], c["boxes"]):
            if not c["overlay"]:
                X.append(f), y.append(0.0)
                continue
            t = c["truth"]
            ix = max(0.0, min(b["x"] + b["w"], t["x"] + t["w"]) - max(b["x"], t["x"]))
            iy = max(0.0, min(b["y"] + b["h"], t["y"] + t["h"]) - max(b["y"], t["y"]))
            if ix * iy > 0.3 * b["w"] * b["h"] and ix * iy > 0.2 * t["w"] * t["h"]:
                X.append(f), y.append(1.0)
    return np.asarray(X, np.float64).reshape(-1, len(FEATURES)), np.asarray(y)


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1.0, steps: int = 3000) -> tuple[tuple[float, ...], float]:
    """Class-balanced, L2-regularised logistic regression by gradient descent on standardised features
    (deterministic), returned as weights and bias on the raw features."""
    if not 0 < y.sum() < len(y):
        raise ValueError(f"need positive and negative blobs, got {int(y.sum())} of {len(y)}")
    mu, sd = X.mean(axis=0), X.std(axis=0) + 1e-9
    Z = (X - mu) / sd
    balance = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    w, b = np.zeros(Z.shape[1]), 0.0
    for _ in range(steps):
        g = balance * (1.0 / (1.0 + np.exp(-(Z @ w + b))) - y)
        w -= 0.1 * (Z.T @ g + l2 * w) / len(y)
        b -= 0.1 * g.mean()
    w = w / sd
    return tuple(float(v) for v in w), float(b - w @ mu)


def fit_clips(clips: list[dict], l2: float = 1.0, steps: int = 500, lr: float = 0.5) -> tuple[tuple[float, ...], float]:
    """The logistic model fitted to what it is used for, one score per clip: a clip's logit is the
    smooth maximum (log-sum-exp) of its blobs' logits, fitted to the clips' labels (overlaid or clean;
    class-balanced log loss, L2, gradient descent with momentum on standardised features, deterministic)
    from the blob-level fit (`fit_logistic` on `_blob_labels`). Frozen and blob-less clips score 0
    whatever the weights and are left out. Returns weights and bias on the raw features."""
    X = [np.asarray(c["feats"], np.float64).reshape(-1, len(FEATURES)) for c in clips]
    use = [k for k, (x, c) in enumerate(zip(X, clips)) if len(x) and not c["frozen"]]
    labels = np.array([float(c["overlay"]) for c in clips])
    if not 0 < labels.sum() < len(labels) or not use:
        raise ValueError(f"need overlaid and clean clips with blobs, got {int(labels.sum())} overlaid of {len(labels)}")
    w0, b0 = fit_logistic(*_blob_labels(clips), l2=l2)
    allx = np.concatenate([X[k] for k in use])
    mu, sd = allx.mean(axis=0), allx.std(axis=0) + 1e-9
    Z = (allx - mu) / sd
    clip_of = np.concatenate([np.full(len(X[k]), j) for j, k in enumerate(use)])
    y = labels[use]
    balance = np.where(y == 1, 0.5 / labels.mean(), 0.5 / (1 - labels.mean())) / len(clips)
    w, b = np.asarray(w0) * sd, b0 + float(np.asarray(w0) @ mu)
    vw, vb = np.zeros_like(w), 0.0
    for _ in range(steps):
        logit = Z @ w + b
        top = np.full(len(use), -np.inf)
        np.maximum.at(top, clip_of, logit)
        e = np.exp(logit - top[clip_of])
        total = np.bincount(clip_of, e, len(use))
        z = top + np.log(total)  # the clip's smooth-max logit
        g = (balance * (1.0 / (1.0 + np.exp(-z)) - y))[clip_of] * e / total[clip_of]  # d loss / d blob logit
        vw = 0.9 * vw + Z.T @ g + 2 * l2 * w / len(clips)
        vb = 0.9 * vb + g.sum()
        w, b = w - lr * vw, b - lr * vb
    w = w / sd
    return tuple(float(v) for v in w), float(b - w @ mu)


# The calibration flags none of the fit's clean clips at 0.5 (`calibrate`, `fit_agreement`): the fit's
# clean rate understates the rate on clips it was not fitted on, and the target is at most 5 % there.
# Measured left out over seeds 0-3 of the seven styles (README, Benchmarks), at most 3 % of the fit's
# clean clips against none: 7 -> 0 of 392 left-out clean clips flagged, 333 -> 329 overlays caught;
# with the video left out too, 53 -> 42 and 349 -> 343. (Chosen on the pairs the seeds drew with four
# of the six fonts installed, before _font drew over all six: most words, plates and emblems were
# other pairs. There 12 -> 0, 331 -> 327; 46 -> 32, 341 -> 338; at most 1 %: 3, 328; 32, 338.) The
# shipped constants (stages.watermark) are what either rule gives them: the shipped weights
# recalibrated on seed 0 of both calibration sets give BIAS -3.16, AGREEMENT 4.49 (shipped -3.17,
# 4.48), flagging none of its 126 clean clips (with four fonts: -3.22, 4.55 here; at 3 % -2.42, 3.76).
MAX_CLEAN = 0.0


def calibrate(clips: list[dict], weights, bias, max_clean: float = MAX_CLEAN) -> float:
    """The bias shifted so that score 0.5 is the clip-level threshold that best separates the clips'
    overlaid from clean copies (largest true- minus false-positive rate; midway between neighbours)
    among those flagging at most `max_clean` of the clean clips: a filter at 0.5 should cost few clean
    clips (the job templates drop clips at 0.5). MAX_CLEAN says why none by default."""
    logits = [(c["feats"] @ np.asarray(weights) + bias).max() if len(c["boxes"]) and not c["frozen"] else -np.inf for c in clips]
    pos = np.array([x for x, c in zip(logits, clips) if c["overlay"]])
    neg = np.array([x for x, c in zip(logits, clips) if not c["overlay"]])
    return bias - best_cut(pos, neg, max_clean)


def best_cut(pos: np.ndarray, neg: np.ndarray, max_clean: float = MAX_CLEAN) -> float:
    """The clip-level threshold that best separates overlaid (`pos`) from clean (`neg`) clip logits
    (largest true- minus false-positive rate; midway between neighbouring finite values) among those
    flagging at most `max_clean` of the clean clips. When none does (with no budget, a clean clip above
    every overlaid one), 1 above every finite logit: better to catch nothing than to flag more clean
    clips than the budget (0 when none is finite)."""
    both = np.concatenate([pos, neg])
    cuts = np.unique(both[np.isfinite(both)])
    best, at = -1.0, float(cuts[-1]) + 1.0 if len(cuts) else 0.0
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        t = (lo + hi) / 2
        flagged = (neg > t).mean() if len(neg) else 0.0
        gain = (pos > t).mean() - flagged
        if flagged <= max_clean + 1e-9 and gain > best + 1e-9:
            best, at = gain, t
    return at


def clip_scores(clips: list[dict], weights, bias) -> list[float]:
    """What detect() gives each clip under these weights."""
    out = []
    for c in clips:
        if c["frozen"] or not len(c["boxes"]):
            out.append(0.0)
        else:
            out.append(float(1.0 / (1.0 + np.exp(-(c["feats"] @ np.asarray(weights) + bias).max()))))
    return out


def made_with() -> str:
    """What the pairs and scores depend on beyond this code: the ffmpeg that encodes the pairs (its x264
    and scalers) and the libraries that decode and score them. Another build encodes other bytes, so the
    figures move by a few clips a style. And the fonts: a missing one of FONT_FILES is drawn in another."""
    import importlib.metadata as md

    first = subprocess.run([ffmpeg_exe(), "-version"], capture_output=True, text=True).stdout.split("\n")[0].split(" Copyright")[0]
    libs = []
    for name in ("imageio-ffmpeg", "av", "opencv-python-headless", "numpy", "torch", "onnxruntime", "rapidocr", "pillow"):
        try:
            libs.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            pass
    missing = [os.path.basename(f) for f in FONT_FILES if not os.path.exists(f)]
    return f"{first}; {', '.join(libs)}" + (f"; fonts missing: {', '.join(missing)}" if missing else "")


def _report(name: str, pairs, pos, neg, ious=None) -> None:
    print(f"{name}: {len(pairs)} pairs, ROC AUC {auc(pos, neg):.3f} (target >= 0.95); overlaid above its clean twin in "
          f"{sum(p > n for p, n in zip(pos, neg))}/{len(pairs)}; at threshold 0.5: {sum(p >= 0.5 for p in pos)}/{len(pos)} "
          f"overlays caught, {sum(n >= 0.5 for n in neg)}/{len(neg)} clean flagged")
    kinds = sorted({b["kind"] for _, _, b in pairs}, key=STYLES.index)
    print("  AUC per kind (its overlays vs all clean clips): " + ", ".join(
        f"{k} {auc([p for p, (_, _, b) in zip(pos, pairs) if b['kind'] == k], neg):.3f}" for k in kinds))
    print("  AUC per opacity: " + ", ".join(
        f"{lo:.2f}-{hi:.2f} {auc([p for p, (_, _, b) in zip(pos, pairs) if lo <= b['opacity'] < hi or (hi == 1.0 and b['opacity'] == 1.0)], neg):.3f}"
        for lo, hi in OPACITY_BANDS))
    if ious is not None:
        print(f"  box IoU vs the drawn box: mean {np.mean(ious):.2f}, >= 0.5 on {sum(i >= 0.5 for i in ious)}/{len(ious)}, "
              f">= 0.3 on {sum(i >= 0.3 for i in ious)}/{len(ious)}")


def _fit(clips: list[dict]) -> tuple[tuple[float, ...], float, float | None]:
    """The edges model's weights and calibrated bias, and with the network's findings in the clips
    (`both`) the agreement constant fitted after them (`fit_agreement`; else None)."""
    weights, bias = fit_clips(clips)
    bias = calibrate(clips, weights, bias)
    return weights, bias, fit_agreement(clips, weights, bias) if any(c.get("net") is not None for c in clips) else None


def _joint(c: dict, weights, bias) -> tuple[Overlay, Overlay, float]:
    """(the network's finding, the edges' under these constants, the scale) of a clip from clip_features."""
    edges = best_overlay(c["feats"], c["frame_boxes"], c["frozen"], *c["sizes"], weights, bias)
    return c["net"], edges, c["sizes"][1][0] / c["sizes"][0][0]


def fit_agreement(clips: list[dict], weights, bias, max_clean: float = MAX_CLEAN) -> float:
    """`both`'s agreement constant (stages.watermark.higher): the two logits where the network and the
    edges point at the same place, plus the constant, flag a clip past 0.5; the constant puts that at
    the threshold on their sum that best separates the overlaid clips from the clean ones (largest
    true- minus false-positive rate, midway between neighbours) among those flagging at most
    `max_clean` of the clean clips that neither the network nor the edges alone flag already (those
    are flagged whatever the constant: counted, one clean clip of the edges' would switch the
    agreement off under MAX_CLEAN's default of none)."""
    pos, neg = [], []
    for c in clips:
        if c.get("net") is None:
            continue
        net, edges, scale = _joint(c, weights, bias)
        if higher(net, edges, scale, agreement=-np.inf).score >= 0.5:
            s = np.inf  # flagged by one alone, whatever the constant
        else:
            together = joint_logit(net, edges, scale)
            s = -np.inf if together is None else together  # None: nothing to agree on (frozen, no edges box, a thin one)
        (pos if c["overlay"] else neg).append(s)
    pos, neg = np.array(pos), np.array(neg)
    both = np.concatenate([pos, neg])
    if not np.isfinite(both).any():
        return AGREEMENT
    return -best_cut(pos, neg[neg != np.inf], max_clean)


def leave_one_out(pairs, clips, group, files_out: bool = False) -> list[float]:
    """Each clip scored by an edges model fitted and calibrated without the pairs that share anything of
    its group (`group(box)`: a tuple, e.g. (style,), (video,) or (style, video): neither that style nor
    that video); with `both`, the network's finding beside it as the job combines them, the agreement
    constant refitted too (the network is fitted on none of these pairs). A clean clip is the same
    file in every style and seed that drew its segment and width, so a style's clean clips are also in
    the other styles' pairs, and in the fit; `files_out`: nor is the fit given any clip file that the
    held-out pairs hold (fitted on the few clean clips left, it is calibrated on too few)."""
    keys = [group(b) for _, _, b in pairs for _ in (0, 1)]
    files = [_digest(path) for pair in pairs for path in pair[:2]]
    scores = [0.0] * len(clips)
    for key in sorted(set(keys)):
        held = [i for i, k in enumerate(keys) if k == key]
        seen = {files[i] for i in held} if files_out else set()
        weights, bias, agreement = _fit([c for c, k, f in zip(clips, keys, files) if not any(a == b for a, b in zip(k, key)) and f not in seen])
        for i, sc in zip(held, clip_scores([clips[i] for i in held], weights, bias)):
            c, net = clips[i], clips[i].get("net")
            if net is not None:  # both: as find_overlay, the edges' box from the refitted model
                sc = higher(*_joint(c, weights, bias), agreement=agreement).score
            scores[i] = max(sc, clips[i].get("words") or 0.0)  # static words (with --words) need no fit
    return scores


@functools.lru_cache(maxsize=None)
def _digest(path: str) -> str:
    """A clip file's content hash, once per file: a clean clip depends only on its segment and width, so
    the same file comes back in other styles and seeds."""
    from stages.text import file_sha256

    return file_sha256(path)


def _per_style(name: str, pairs, scores) -> None:
    """Each style's ROC AUC, overlays caught and clean clips flagged at 0.5 (and how many distinct clean
    files those are, of how many distinct: the same clean clip recurs in seeds that drew its width)."""
    print(f"{name}:")
    for style in STYLES:
        idx = [i for i, (_, _, b) in enumerate(pairs) if b["kind"] == style]
        if not idx:
            continue
        pos, neg = [scores[2 * i + 1] for i in idx], [scores[2 * i] for i in idx]
        cleans = [_digest(pairs[i][0]) for i in idx]
        flagged = {f for f, n in zip(cleans, neg) if n >= 0.5}
        ok = auc(pos, neg) >= 0.95 and sum(p >= 0.5 for p in pos) >= 0.8 * len(pos) and sum(n >= 0.5 for n in neg) <= 0.05 * len(neg)
        print(f"  {style:10s} ROC AUC {auc(pos, neg):.3f}; at 0.5: {sum(p >= 0.5 for p in pos):2d}/{len(pos)} overlays caught, "
              f"{sum(n >= 0.5 for n in neg)}/{len(neg)} clean flagged ({len(flagged)} of {len(set(cleans))} distinct)"
              f"{'' if ok else '  (target: AUC >= 0.95, >= 80% caught, <= 5% clean)'}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", default=os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "videos"))
    ap.add_argument("--pairs", type=int, default=42)
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="positions, sizes, colours, opacities (seed 0 is the calibration set); "
                    "default 1 2 3, with --styles 1")
    ap.add_argument("--fit", action="store_true", help="fit the logistic model on seed 0 and print the constants")
    ap.add_argument("--lovo", action="store_true", help="also leave-one-video-out over seed 0's and the reported seeds' pairs")
    ap.add_argument("--styles", action="store_true", help="the seven style families (14 pairs each a seed, made as a video reaches curate: "
                    "encoded twice) instead of the four ffmpeg kinds; the shipped constants are fitted on their seed 0")
    ap.add_argument("--loso", action="store_true", help="with --styles: leave-one-style-out (and leave-one-style-and-video-out) over seed 0 and the reported seeds")
    ap.add_argument("--words", action="store_true", help="run the text scorer too and fold its static words into the score, and the words "
                    "read on the mean frame, as a job with both the text and watermark sections does (watermark.words, watermark.mean_words; "
                    "no fit: the rules' thresholds are the job's)")
    ap.add_argument("--method", choices=("both", "net", "edges"), default="both", help="the detector measured: both (the default, as "
                    "the job runs it: the higher of the network's and the edges model's scores), the learned network alone ("
                    "fitted on none of these pairs' styles, so every style is left out of its fit) or the weight-free edges model")
    ap.add_argument("--net", default=None, help="net, both: weights to measure instead of the shipped ones (e.g. a model trained with --hold-out)")
    ap.add_argument("--only", nargs="+", default=None, metavar="VIDEO", help="report only the pairs made from these videos (the same pairs "
                    "as in the whole run): e.g. the videos a network was trained without (watermark_train --hold-out)")
    ap.add_argument("--footage", default=None, metavar="DIR", help="make the pairs from the videos Debian ships (curate.bench.footage: "
                    "`python -m curate.bench.footage --dir DIR` fetches them; 14 segments, 7 of them fixed cameras) instead of --videos")
    ap.add_argument("--verbose", "-v", action="store_true")
    args = ap.parse_args(argv)
    args.styles = args.styles or args.loso
    seeds = args.seeds or ([1] if args.styles else [1, 2, 3])
    cfg = WatermarkConfig(method=args.method, net_weights=args.net)
    if args.method == "net" and (args.fit or args.lovo or args.loso):
        ap.error("--fit, --lovo and --loso refit the edges model: add --method edges or both (the net is fitted on none of these styles or pairs: "
                 "every report of it is already left out; see python -m curate.bench.watermark_train --hold-out for videos)")
    videos = os.path.abspath(args.footage or args.videos)
    segments = SEGMENTS
    if args.footage:
        from curate.bench.footage import SEGMENTS as segments

        missing = sorted({n for n, _, _ in segments if not os.path.exists(os.path.join(videos, n))})
        if missing:
            ap.error(f"--footage {args.footage}: {', '.join(missing)} missing (python -m curate.bench.footage --dir {args.footage} fetches them)")
        if args.fit:
            ap.error("--fit fits on the calibration pairs of ../shared/data's videos; --footage measures on others")
    bench_videos = {name for name, _, _ in segments}
    unknown = set(args.only or ()) - bench_videos
    if unknown or (args.only and args.fit):
        ap.error(f"--only: {', '.join(sorted(unknown))} not among the bench's videos ({', '.join(sorted(bench_videos))})"
                 if unknown else "--only reports on some videos' pairs; --fit fits on all of seed 0's")

    measured = {"net": "the shipped weights", "edges": "the shipped constants", "both": "the shipped weights and edges constants"}[args.method]
    if args.net and args.method != "edges":
        measured = measured.replace("the shipped weights", f"the weights {args.net}")

    def made(seed, tmp):
        out = os.path.join(tmp, f"s{seed}")
        os.makedirs(out, exist_ok=True)
        pairs = (make_style_pairs(videos, out, seed=seed, segments=segments) if args.styles
                 else make_pairs(videos, out, 28 if seed == 0 else args.pairs, seed=seed, segments=segments))
        return pairs if args.only is None else [p for p in pairs if p[2]["source"] in args.only]

    print(f"made with {made_with()}")
    with tempfile.TemporaryDirectory(prefix="curate-bench-wm-") as tmp:
        if args.fit:  # both calibration sets: seed 0 of the four ffmpeg kinds and of the seven styles
            for sub in ("k0", "s0"):
                os.makedirs(os.path.join(tmp, sub))
            pairs = make_pairs(videos, os.path.join(tmp, "k0"), 28, seed=0) + make_style_pairs(videos, os.path.join(tmp, "s0"), seed=0)
            clips = clip_features(pairs, cfg)
            weights, bias, agreement = _fit(clips)
            print(f"fitted on seed 0's {len(pairs)} pairs (28 of the ffmpeg kinds, 98 of the seven styles): {sum(len(c['boxes']) for c in clips)} blobs in {len(clips)} clips")
            print(f"WEIGHTS = ({', '.join(f'{w:.3g}' for w in weights)})  # {', '.join(FEATURES)}")
            print(f"BIAS = {bias:.3g}")
            if agreement is not None:
                print(f"AGREEMENT = {agreement:.3g}")
            return
        all_pairs, all_clips = [], []
        held = ([], [], [], [])  # pairs, overlaid scores, clean scores, IoUs of the reported seeds
        for seed in seeds:
            t0 = time.time()
            pairs = made(seed, tmp)
            t1 = time.time()
            clips = clip_features(pairs, cfg, args.words)
            pos, neg, ious = [], [], []
            for (clean, marked, box), ca, cb in zip(pairs, clips[0::2], clips[1::2]):
                a, b = ca["found"], cb["found"]
                neg.append(a.score)
                pos.append(b.score)
                ious.append(iou(b.box, box))
                if args.verbose:
                    said = f"  static words: clean {ca['words'] or 0:.3f}, overlay {cb['words'] or 0:.3f}" if args.words else ""
                    print(f"  {box['source']:24s} {box['kind']:9s} op {box['opacity']:.2f}  clean {a.score:.3f}  overlay {b.score:.3f}  IoU {ious[-1]:.2f}{said}")
            t2 = time.time()
            _report(f"watermark ({args.method}{' + static words' if args.words else ''}), seed {seed}", pairs, pos, neg, ious)
            if args.styles:
                _per_style(f"  per style, seed {seed} ({measured})", pairs,
                           [x for ab in zip(neg, pos) for x in ab])
            for acc, part in zip(held, (pairs, pos, neg, ious)):
                acc.extend(part)
            print(f"  making pairs {t1 - t0:.1f} s, scoring {2 * len(pairs)} clips {t2 - t1:.1f} s ({(t2 - t1) / (2 * len(pairs)) * 1000:.0f} ms/clip, "
                  f"{cfg.frames} frames at width {cfg.width}, decoding included)")
            all_pairs += pairs
            all_clips += clips
        if len(seeds) > 1:
            _report(f"seeds {', '.join(map(str, seeds))} together ({measured}{'' if args.method == 'net' else ', the edges constants fitted on seed 0'})", *held)
            if args.styles:
                _per_style(f"  per style, seeds {', '.join(map(str, seeds))}", held[0], [x for ab in zip(held[2], held[1]) for x in ab])
        if args.lovo or args.loso:
            if 0 not in seeds:
                pairs = made(0, tmp)
                all_pairs, all_clips = pairs + all_pairs, clip_features(pairs, cfg, args.words) + all_clips
            names = f"seeds {', '.join(map(str, sorted(set([0, *seeds]))))}"
            if args.lovo:
                scores = leave_one_out(all_pairs, all_clips, lambda b: (b["source"],))
                _report(f"leave-one-video-out ({names}; each video's pairs scored by a model fitted without that video)",
                        all_pairs, scores[1::2], scores[0::2])
            if args.loso:
                _per_style(f"leave-one-style-out ({names}; each style's pairs scored by an edges model fitted and calibrated on the other six, "
                           "whose pairs hold the same clean clips"
                           + (", with the network, which no style is fitted in, beside it)" if args.method == "both" else ")"),
                           all_pairs, leave_one_out(all_pairs, all_clips, lambda b: (b["kind"],)))
                _per_style(f"leave-one-style-out with none of its clip files in the fit ({names}; its clean clips recur in the other styles' pairs: "
                           "left out too here, the fit keeps the few clean clips that style did not draw)",
                           all_pairs, leave_one_out(all_pairs, all_clips, lambda b: (b["kind"],), files_out=True))
                _per_style(f"leave-one-style-and-video-out ({names}; fitted without that style and without that video)",
                           all_pairs, leave_one_out(all_pairs, all_clips, lambda b: (b["kind"], b["source"])))


if __name__ == "__main__":
    main()
