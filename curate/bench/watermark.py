"""ROC AUC of the watermark score on overlay pairs made from real videos.

Each pair is the same short segment of a real video twice, re-encoded with x264: once clean, once
with an overlay burned in by ffmpeg (a filled box, a box outline, or a text logo rendered to a PNG
and overlaid), at a varied position, size and opacity. AUC = the chance that an overlaid clip
scores above a clean one (ties count half).

    python -m curate.bench.watermark [--videos ../shared/data/videos] [--pairs 28] [-v]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import tempfile
import time

import av
import cv2
import numpy as np

from stages.media import ffmpeg_exe
from stages.watermark import WatermarkConfig, detect, sample_grey

# (file, start_s, seconds): segments inside one shot, picture moving. vtest/traffic: static cameras.
SEGMENTS = [
    ("bikes.mp4", 1.3, 1.8), ("bikes.mp4", 3.1, 2.4), ("bikes.mp4", 5.5, 1.9), ("bikes.mp4", 7.6, 2.1),
    ("bigbuckbunny.mp4", 0.0, 4.0), ("testvideo.mp4", 1.2, 4.5), ("testvideo.mp4", 6.2, 4.0),
    ("goldeneye-vfr-drop3.mp4", 0.0, 3.5), ("goldeneye-vfr-drop3.mp4", 4.0, 4.0),
    ("carphone_pristine.mp4", 0.0, 3.0), ("issue-134-rotate.mp4", 0.0, 3.0), ("vtest.avi", 10.0, 4.0),
    ("traffic_camera.mp4", 0.5, 4.0), ("delayed_start.mp4", 0.0, 2.0),
]


def _logo(path: str, text: str, w: int, h: int) -> None:
    img = np.zeros((h, w, 4), np.uint8)
    cv2.putText(img, text, (2, h - max(2, h // 5)), cv2.FONT_HERSHEY_DUPLEX, h / 32, (255, 255, 255, 255), max(1, h // 16), cv2.LINE_AA)
    cv2.imwrite(path, img)


def make_pairs(videos: str, out: str, n: int, seed: int = 0, width: int = 480) -> list[tuple[str, str, dict]]:
    """n (clean clip, overlaid clip, overlay box in clip pixels) from the segments, cycling through them."""
    rng = random.Random(seed)
    ff = ffmpeg_exe()
    pairs = []
    for i in range(n):
        name, start, dur = SEGMENTS[i % len(SEGMENTS)]
        src = os.path.join(videos, name)
        clean, marked = os.path.join(out, f"{i:03d}_clean.mp4"), os.path.join(out, f"{i:03d}_mark.mp4")
        enc = ["-an", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "20", "-pix_fmt", "yuv420p", "-threads", "1"]
        scale = f"scale={width}:-2"
        cut = ["-ss", f"{start:.3f}", "-t", f"{dur:.3f}", "-i", src]
        subprocess.run([ff, "-v", "error", "-y", *cut, "-vf", scale, *enc, clean], check=True)
        with av.open(clean) as c:
            H = c.streams.video[0].codec_context.height
        kind = ["box", "outline", "logo"][i % 3]
        bw = int(width * rng.uniform(0.08, 0.25))
        bh = int(bw * rng.uniform(0.25, 0.6)) if kind != "box" else int(bw * rng.uniform(0.3, 1.0))
        corner = rng.choice(["tl", "tr", "bl", "br", "c"])
        m = int(width * 0.03)
        x = {"tl": m, "bl": m, "tr": width - bw - m, "br": width - bw - m, "c": (width - bw) // 2}[corner]
        y = {"tl": m, "tr": m, "bl": H - bh - m, "br": H - bh - m, "c": (H - bh) // 2}[corner]
        opacity = rng.uniform(0.3, 0.9)
        colour = rng.choice(["white", "black", "yellow"])
        if kind == "box":
            graph = f"[0:v]{scale},drawbox=x={x}:y={y}:w={bw}:h={bh}:color={colour}@{opacity:.2f}:t=fill[v]"
            extra = []
        elif kind == "outline":
            graph = f"[0:v]{scale},drawbox=x={x}:y={y}:w={bw}:h={bh}:color={colour}@{opacity:.2f}:t={max(2, bh // 8)}[v]"
            extra = []
        else:
            logo = os.path.join(out, f"{i:03d}_logo.png")
            _logo(logo, rng.choice(["TV1", "NEWS", "cam 7", "LOGO", "HD"]), bw, bh)
            graph = f"[1:v]format=rgba,colorchannelmixer=aa={opacity:.2f}[l];[0:v]{scale}[b];[b][l]overlay={x}:{y}[v]"
            extra = ["-i", logo]
        subprocess.run([ff, "-v", "error", "-y", *cut, *extra, "-filter_complex", graph, "-map", "[v]", *enc, marked], check=True)
        pairs.append((clean, marked, {"x": x, "y": y, "w": bw, "h": bh, "kind": kind, "opacity": round(opacity, 2), "source": name}))
    return pairs


def auc(positive: list[float], negative: list[float]) -> float:
    """ROC AUC: P(a positive scores above a negative), ties half."""
    p, n = np.asarray(positive, float)[:, None], np.asarray(negative, float)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


def score_file(path: str, cfg: WatermarkConfig):
    frames, w, h = sample_grey(path, cfg.frames, cfg.width)
    return detect(frames, cfg, w, h)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", default=os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "videos"))
    ap.add_argument("--pairs", type=int, default=28)
    ap.add_argument("--verbose", "-v", action="store_true")
    args = ap.parse_args(argv)
    cfg = WatermarkConfig()
    with tempfile.TemporaryDirectory(prefix="curate-bench-wm-") as tmp:
        t0 = time.time()
        pairs = make_pairs(os.path.abspath(args.videos), tmp, args.pairs)
        t1 = time.time()
        pos, neg, hits = [], [], 0
        for clean, marked, box in pairs:
            a, b = score_file(clean, cfg), score_file(marked, cfg)
            neg.append(a.score)
            pos.append(b.score)
            got = b.box
            if got:
                ix = max(0, min(got["x"] + got["w"], box["x"] + box["w"]) - max(got["x"], box["x"]))
                iy = max(0, min(got["y"] + got["h"], box["y"] + box["h"]) - max(got["y"], box["y"]))
                iou = ix * iy / (got["w"] * got["h"] + box["w"] * box["h"] - ix * iy)
                hits += iou >= 0.3
            if args.verbose:
                print(f"  {box['source']:28s} {box['kind']:8s} op {box['opacity']:.2f}  clean {a.score:.3f}  overlay {b.score:.3f}  box {got} want {box}")
        t2 = time.time()
    print(f"watermark (edges): {len(pairs)} pairs, ROC AUC {auc(pos, neg):.3f} (target >= 0.95); "
          f"box IoU >= 0.3 on {hits}/{len(pairs)} overlays; at threshold 0.5: "
          f"{sum(p >= 0.5 for p in pos)}/{len(pos)} overlays caught, {sum(n >= 0.5 for n in neg)}/{len(neg)} clean flagged")
    print(f"  making pairs {t1 - t0:.1f} s, scoring {2 * len(pairs)} clips {t2 - t1:.1f} s ({(t2 - t1) / (2 * len(pairs)) * 1000:.0f} ms/clip)")


if __name__ == "__main__":
    main()
