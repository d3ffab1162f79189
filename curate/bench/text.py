"""Burned-in text and NSFW on real footage: quality (subtitle pairs, title cards, NSFW distribution) and speed.

Pairs: each of the watermark bench's 14 segments of ../shared/data/videos (`bench.watermark.SEGMENTS`,
testvideo's own copyright line cropped away) is re-encoded three times at `--width` (x264): clean; with
burned-in subtitles (ffmpeg drawtext: a different line every 1-2 s at the bottom, size 3.5-8% of
the height, white or yellow, with a black border, a translucent box behind, or neither); and with a
title card (large centred words, sometimes on a darkened frame, for the first 1-2.5 s). Styles,
lines and timings are drawn from `--seeds` (nothing in the scorer was fitted to them). It prints the
ROC AUC of text_area for clean vs subtitled and clean vs title card (over all segments, and over
the segments whose picture shows no words: `TEXT_IN_PICTURE`), and how many clips of each pass
`text_area < 0.01`.

NSFW: every clip the split makes of every real video (default split settings), scored with the job
defaults (4 frames) and with 16 frames: the distribution of nsfw_score (all the footage is safe).

Speed: on those clips, ms per clip for decoding the sampled frames (PyAV, what the scorers share),
text detection, recognition and the NSFW detector, each as a ratio to the decode.

    python -m curate.bench.text [--videos ../shared/data/videos] [--seeds 1 2] [--width 640] [--size 480] [--no-recognize] [--skip-nsfw]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import tempfile
import time

import av
import numpy as np
import pyarrow as pa

from curate.bench.watermark import CROP, SEGMENTS, auc, font_file
from stages.frames import read_frames
from stages.media import ffmpeg_exe
from stages.nsfw import NsfwConfig, NsfwModel, nsfw_stats
from stages.text import OcrModel, ScoreText, TextConfig

LINES = [
    "I told you we should have left earlier", "Where are you going?", "It's not what it looks like",
    "We have to get out of here, now!", "Did you hear that?", "Nobody knows what happened that night",
    "Take the left road, it's shorter", "I'll be back before dinner", "Look at the birds over the lake",
    "That was the last time I saw him", "Are you sure about this?", "Keep walking and don't look back",
]
# Segments whose picture itself shows words (checked by eye): goldeneye's computer screen ("Initiate Search
# Program", "Enter Password", "Send Spike"), also in issue-134-rotate (the same footage, rotated). An OCR
# rightly finds text there, so their "clean" clips are not text-free; the AUC is printed with and without them.
TEXT_IN_PICTURE = {"goldeneye-vfr-drop3.mp4", "issue-134-rotate.mp4"}
TITLES = ["CHAPTER ONE", "The Long Road", "PART II", "A Summer Story", "EPISODE 4", "Morning Light"]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("'", "\u2019").replace(",", "\\,")


def make_triples(videos: str, out: str, seed: int, width: int = 640) -> list[dict]:
    """For each segment: {clean, subtitled, title} clip paths (+ what was drawn)."""
    rng = random.Random(seed)
    ff, font = ffmpeg_exe(), font_file()
    if font is None:
        raise SystemExit("no TrueType font for ffmpeg drawtext (apt-get install fonts-dejavu-core)")
    enc = ["-an", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "20", "-pix_fmt", "yuv420p", "-threads", "1"]
    triples = []
    for i, (name, start, dur) in enumerate(SEGMENTS):
        cut = ["-ss", f"{start:.3f}", "-t", f"{dur:.3f}", "-i", os.path.join(videos, name)]
        scale = f"{CROP.get(name, '')}scale={width}:-2"
        paths = {k: os.path.join(out, f"s{seed}_{i:02d}_{k}.mp4") for k in ("clean", "subtitled", "title")}
        subprocess.run([ff, "-v", "error", "-y", *cut, "-vf", scale, *enc, paths["clean"]], check=True)
        with av.open(paths["clean"]) as c:
            H = c.streams.video[0].codec_context.height
        # subtitles: consecutive lines, each 1-2 s, one style per clip
        size = max(10, int(H * rng.uniform(0.035, 0.08)))
        colour = rng.choice(["white", "white", "yellow"])
        style = rng.choice(["border", "box", "plain"])
        deco = {"border": f":borderw={max(1, size // 12)}:bordercolor=black", "box": f":box=1:boxcolor=black@0.5:boxborderw={size // 4}",
                "plain": ""}[style]
        draws, t = [], 0.0
        lines = rng.sample(LINES, len(LINES))
        while t < dur:
            shown = rng.uniform(1.0, 2.0)
            draws.append(f"drawtext=fontfile='{font}':text='{_escape(lines[len(draws) % len(lines)])}':fontsize={size}:fontcolor={colour}{deco}"
                         f":x=(w-text_w)/2:y=h-text_h-{int(H * rng.uniform(0.04, 0.1))}:enable='between(t,{t:.2f},{t + shown:.2f})'")
            t += shown + rng.uniform(0.0, 0.2)
        subprocess.run([ff, "-v", "error", "-y", *cut, "-vf", ",".join([scale, *draws]), *enc, paths["subtitled"]], check=True)
        # a title card: big centred words for the first 1-2.5 s, sometimes over a darkened picture
        until = min(dur, rng.uniform(1.0, 2.5))
        tsize = max(14, int(H * rng.uniform(0.08, 0.16)))
        dark = f"drawbox=x=0:y=0:w=iw:h=ih:color=black@0.6:t=fill:enable='lt(t,{until:.2f})'," if rng.random() < 0.5 else ""
        title = (f"{dark}drawtext=fontfile='{font}':text='{_escape(rng.choice(TITLES))}':fontsize={tsize}:fontcolor=white"
                 f":borderw={rng.choice([0, 2])}:bordercolor=black:x=(w-text_w)/2:y=(h-text_h)/2:enable='lt(t,{until:.2f})'")
        subprocess.run([ff, "-v", "error", "-y", *cut, "-vf", f"{scale},{title}", *enc, paths["title"]], check=True)
        triples.append({**paths, "source": name, "style": style, "size": size})
    return triples


def _table(paths: list[str]) -> pa.Table:
    return pa.Table.from_pylist([{"clip_id": str(i), "source_id": "s", "status": "kept", "clip_uri": p} for i, p in enumerate(paths)])


def text_areas(paths: list[str], stage: ScoreText) -> list[dict]:
    return stage(_table(paths)).select(["text_area", "text_frames", "text_static", "ocr_text"]).to_pylist()


def split_clips(videos: str, out: str) -> list[str]:
    """Every kept clip the split (default settings, fast encoder) makes of every video in `videos`."""
    from stages.ingest import Ingest
    from stages.media import EncodeSettings
    from stages.split import Split, SplitConfig, flatten

    paths = sorted(os.path.join(videos, f) for f in os.listdir(videos))
    sources = Ingest()(pa.table({"uri": paths, "license": ["CC-BY-4.0"] * len(paths)}))
    split = Split(SplitConfig(encode=EncodeSettings(preset="ultrafast")), out)(sources)
    _, _, clips = flatten(split)
    return [c["clip_uri"] for c in clips.to_pylist() if c["status"] == "kept" and c["clip_uri"]]


def _describe(name: str, values: list[float]) -> str:
    v = np.asarray(values)
    q = np.quantile(v, [0.5, 0.9, 1.0]) if len(v) else [np.nan] * 3
    return f"{name}: n={len(v)} median {q[0]:.3f} p90 {q[1]:.3f} max {q[2]:.3f}; >= 0.5: {int((v >= 0.5).sum())}"


def speed(paths: list[str], text_cfg: TextConfig, nsfw_cfg: NsfwConfig) -> None:
    """ms per clip of each part, decode included once (as in the job: one decode for both)."""
    ocr, nsfw = OcrModel(text_cfg), NsfwModel(nsfw_cfg)
    t = {"decode": 0.0, "detect": 0.0, "recognize": 0.0, "nsfw": 0.0}
    for p in paths:  # one clip at a time, as a worker's batch of one
        t0 = time.perf_counter()
        frames, _ = read_frames(_table([p]), text_cfg.frames, max(text_cfg.size, nsfw_cfg.size))
        t1 = time.perf_counter()
        f = frames.get(0, [])
        boxes = ocr.detect(f)
        t2 = time.perf_counter()
        if text_cfg.recognize:
            ocr.read(f, boxes)
        t3 = time.perf_counter()
        nsfw(f)
        t4 = time.perf_counter()
        for k, a, b in (("decode", t0, t1), ("detect", t1, t2), ("recognize", t2, t3), ("nsfw", t3, t4)):
            t[k] += b - a
    n = len(paths)
    print(f"speed over {n} clips ({text_cfg.frames} frames, text at {text_cfg.size} px, nsfw at {nsfw_cfg.size}, "
          f"{text_cfg.threads} onnxruntime thread): ms per clip, ratio to the decode")
    for k, v in t.items():
        print(f"  {k:10s} {1000 * v / n:7.1f} ms   {v / t['decode']:.2f}x")


def main(argv: list[str] | None = None) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    default_videos = os.path.join(os.environ.get("CURATE_SHARED", os.path.join(here, "..", "..", "..", "shared")), "data", "videos")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", default=default_videos)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--size", type=int, default=TextConfig.size, help="text.size: longer side the detector sees")
    ap.add_argument("--no-recognize", action="store_true", help="text.recognize: false (detection only)")
    ap.add_argument("--skip-nsfw", action="store_true", help="no split, no NSFW distribution, no speed")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)

    text_cfg = TextConfig(size=args.size, recognize=not args.no_recognize)
    stage = ScoreText(text_cfg)
    with tempfile.TemporaryDirectory(prefix="curate-text-bench-") as tmp:
        t0 = time.perf_counter()
        triples = [t for seed in args.seeds for t in make_triples(args.videos, tmp, seed, args.width)]
        made = time.perf_counter() - t0
        clean = text_areas([t["clean"] for t in triples], stage)
        subs = text_areas([t["subtitled"] for t in triples], stage)
        titles = text_areas([t["title"] for t in triples], stage)
        print(f"{len(triples)} segments x (clean, subtitled, title card), seeds {args.seeds}, {args.width} px wide "
              f"(made in {made:.0f} s, scored in {time.perf_counter() - t0 - made:.0f} s)")
        c, s, ti = ([r["text_area"] for r in rows] for rows in (clean, subs, titles))
        print(f"ROC AUC text_area clean vs subtitled: {auc(s, c):.3f}   clean vs title card: {auc(ti, c):.3f}")
        free = [i for i, t in enumerate(triples) if t["source"] not in TEXT_IN_PICTURE]
        cf = [c[i] for i in free]
        print(f"  segments whose picture shows no words ({len(free)} of {len(triples)}): clean vs subtitled "
              f"{auc([s[i] for i in free], cf):.3f}, clean vs title card {auc([ti[i] for i in free], cf):.3f}")
        print(f"  paired: subtitled above its own clean twin {sum(a > b for a, b in zip(s, c))}/{len(c)}, "
              f"title card {sum(a > b for a, b in zip(ti, c))}/{len(c)}")
        print(f"text_area < 0.01: clean {sum(x < 0.01 for x in c)}/{len(c)}, subtitled {sum(x < 0.01 for x in s)}/{len(s)}, "
              f"title {sum(x < 0.01 for x in ti)}/{len(ti)}")
        print(f"text_static: subtitled median {np.median([r['text_static'] for r in subs]):.2f}, "
              f"clean clips with text median {np.median([r['text_static'] for r in clean if r['text_area'] > 0] or [np.nan]):.2f}")
        for style in ("border", "box", "plain"):
            idx = [i for i, t in enumerate(triples) if t["style"] == style]
            if idx:
                print(f"  subtitles {style:6s}: AUC vs all clean {auc([s[i] for i in idx], c):.3f} ({len(idx)} clips)")
        if args.verbose:
            for t, a, b, d in zip(triples, clean, subs, titles):
                print(f"  {t['source']:26s} {t['style']:6s} {t['size']:3d}px clean {a['text_area']:.4f} sub {b['text_area']:.4f} "
                      f"title {d['text_area']:.4f} | {(b['ocr_text'] or '').splitlines()[:2]} | clean read {(a['ocr_text'] or '')[:40]!r}")
        if args.skip_nsfw:
            return
        t0 = time.perf_counter()
        clips = split_clips(args.videos, os.path.join(tmp, "split"))
        print(f"\nsplit: {len(clips)} clips of the real footage ({time.perf_counter() - t0:.0f} s)")
        table = _table(clips)
        for n in (4, 16):
            cfg = NsfwConfig(frames=n)
            model = NsfwModel(cfg)
            frames, errors = read_frames(table, n, cfg.size)
            scores = []
            worst = (0.0, "", [])
            for i, f in frames.items():
                st = nsfw_stats(model(f), cfg.classes, cfg.label_score)
                scores.append(st["nsfw_score"])
                worst = max(worst, (st["nsfw_score"], os.path.basename(clips[i]), st["nsfw_labels"]))
            print(_describe(f"nsfw_score, {n} frames a clip", scores) + f"; highest {worst[0]:.2f} on {worst[1]} {worst[2]}"
                  + (f"; {len(errors)} unreadable" if errors else ""))
        speed(clips, text_cfg, NsfwConfig())


if __name__ == "__main__":
    main()
