"""Generate the demo job's sample videos with ffmpeg, with known answers.

Each video is a few scenes (moving lavfi patterns, or one patterned frame held still) joined by hard
cuts at known frames, some with a fixed semi-transparent "logo" box. The media is the project's own
(CC0-1.0); `ground_truth.json` next to the videos records cuts, scenes and overlay boxes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass

from stages.media import ffmpeg_exe
from stages.text import file_sha256

LICENSE = "CC0-1.0"
AUTHOR = "curate sample generator"

# Scene palette: (name, content, lavfi graph; {w} {h} {r} {w4} {h4} filled in). Frozen holds frame 0.
# Video i, scene j uses entry (3 * i + j) % 7: neighbours in this list must look clearly different.
PALETTE = [
    ("mandelbrot zoom", "moving", "mandelbrot=s={w}x{h}:r={r}"),
    ("SMPTE HD bars", "frozen", "smptehdbars=s={w}x{h}:r={r}"),
    ("testsrc2 pattern", "moving", "testsrc2=s={w}x{h}:r={r}"),
    ("game of life", "moving",
     "life=s={w4}x{h4}:r={r}:seed=7:ratio=0.2:mold=8:life_color=#40ff40:death_color=#802020"
     ":mold_color=#203080,scale={w}:{h}:flags=neighbor"),
    ("testsrc pattern", "frozen", "testsrc=s={w}x{h}:r={r}"),
    ("mandelbrot valley zoom", "moving",
     "mandelbrot=s={w}x{h}:r={r}:start_x=0.275:start_y=0:start_scale=0.05:end_scale=0.0005"
     ":end_pts=400:outer=normalized_iteration_count"),
    ("RGB ramps", "frozen", "rgbtestsrc=s={w}x{h}:r={r}"),
]

# Deterministic output: one encoder thread, no muxer/encoder version strings, no metadata.
ENCODE_ARGS = [
    "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", "-threads", "1",
    "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1", "-an",
]


@dataclass(frozen=True)
class SamplesConfig:
    n_videos: int = 4  # how many sample videos
    width: int = 320
    height: int = 240
    fps: int = 25
    scene_s: tuple[float, ...] = (3.0, 2.0, 4.0)  # scene lengths; video i uses them rotated by i

    def __post_init__(self):
        if not isinstance(self.n_videos, int) or self.n_videos < 1:
            raise ValueError(f"n_videos must be an integer >= 1, got {self.n_videos!r}")
        for name in ("width", "height"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 16 or v % 2:
                raise ValueError(f"{name} must be an even integer >= 16 (yuv420p), got {v!r}")
        if not isinstance(self.fps, int) or self.fps < 1:
            raise ValueError(f"fps must be a positive integer, got {self.fps!r}")
        if not self.scene_s or any(not s > 0 or round(s * self.fps) < 1 for s in self.scene_s):
            raise ValueError(f"scene_s must be a non-empty list of positive lengths of at least "
                             f"one frame, got {self.scene_s!r}")


def overlay_box(cfg: SamplesConfig) -> dict:
    """The logo box in pixels: a quarter of the width, an eighth of the height, top-right corner."""
    # Even sizes and offsets keep the box on whole 2x2 chroma blocks (yuv420p).
    w, h, m = (max(2, v - v % 2) for v in (cfg.width // 4, cfg.height // 8, min(cfg.width, cfg.height) // 24))
    return {"x": cfg.width - w - m, "y": m, "w": w, "h": h}


def _plan(i: int, cfg: SamplesConfig) -> dict:
    """Scenes, frame count, overlay box and ffmpeg filter graph of video i."""
    k = i % len(cfg.scene_s)
    lengths = [round(s * cfg.fps) for s in cfg.scene_s[k:] + cfg.scene_s[:k]]
    box = overlay_box(cfg) if i % 2 == 0 else None
    size = dict(w=cfg.width, h=cfg.height, w4=cfg.width // 4, h4=cfg.height // 4, r=cfg.fps)
    scenes, chains, start = [], [], 0
    for j, n in enumerate(lengths):
        name, content, src = PALETTE[(3 * i + j) % len(PALETTE)]
        hold = f",trim=end_frame=1,loop=loop={n - 1}:size=1" if content == "frozen" else ""
        chains.append(f"{src.format(**size)}{hold},trim=end_frame={n},setpts=N/({cfg.fps}*TB),"
                      f"format=yuv420p,setsar=1[s{j}]")
        scenes.append({"content": content, "overlay": box is not None, "source": name,
                       "start_frame": start, "end_frame": start + n})
        start += n
    graph = ";".join(chains) + ";" + "".join(f"[s{j}]" for j in range(len(lengths)))
    graph += f"concat=n={len(lengths)}:v=1:a=0"
    if box:
        graph += ",drawbox=x={x}:y={y}:w={w}:h={h}:color=white@0.5:t=fill".format(**box)
    return {"scenes": scenes, "n_frames": start, "overlay_box": box, "graph": graph + "[v]"}


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed (exit {proc.returncode}): {proc.stderr[-2000:]}\n"
                           f"command: {cmd}")


def generate_samples(out_dir: str, cfg: SamplesConfig = SamplesConfig(),
                     ffmpeg: str | None = None) -> list[dict]:
    """Write sample_00.mp4 ... and ground_truth.json into out_dir (created if missing).

    Returns one dict per video: uri, license, title, author, attribution, source_url, cuts (frame
    indices that start a new scene, 0 excluded), n_frames, fps, scenes, overlay_box and sha256.
    Scene frames are 0-based in decode order, end_frame exclusive:

        frame   0 ........ 74 | 75 ..... 124 | 125 ...... 224
        scene  [start=0, end=75) [75, 125)     [125, 225)      cuts = [75, 125]

    A video whose file already matches the recipe and hash recorded in ground_truth.json is kept.
    """
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    gt_path = os.path.join(out_dir, "ground_truth.json")
    try:
        with open(gt_path) as f:
            previous = json.load(f)
    except (OSError, ValueError):
        previous = {}
    exe = ffmpeg or ffmpeg_exe()
    videos, recipes = [], {}
    for i in range(cfg.n_videos):
        name, plan = f"sample_{i:02d}.mp4", _plan(i, cfg)
        path = os.path.join(out_dir, name)
        args = ["-filter_complex", plan["graph"],
                "-map", "[v]", "-frames:v", str(plan["n_frames"]), "-r", str(cfg.fps), *ENCODE_ARGS]
        recipes[name] = hashlib.sha256(json.dumps(args).encode()).hexdigest()
        old = previous.get("videos", {}).get(name, {})
        fresh = (os.path.exists(path) and previous.get("recipes", {}).get(name) == recipes[name]
                 and old.get("sha256") == file_sha256(path))
        if not fresh:
            tmp = os.path.join(out_dir, f".{name}.{os.getpid()}.tmp.mp4")
            try:
                _run([exe, "-hide_banner", "-nostdin", "-y", *args, tmp])
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        sources = " / ".join(s["source"] for s in plan["scenes"])
        videos.append({
            "uri": path, "license": LICENSE, "title": f"curate sample {i:02d}: {sources}",
            "author": AUTHOR,
            "attribution": f"{AUTHOR} ({LICENSE}), made from ffmpeg lavfi test sources",
            "source_url": None,
            "cuts": [s["start_frame"] for s in plan["scenes"][1:]],
            "n_frames": plan["n_frames"], "fps": cfg.fps, "scenes": plan["scenes"],
            "overlay_box": plan["overlay_box"], "sha256": file_sha256(path),
        })
    truth = {
        "_conventions": "Frame numbers are 0-based in decode order; a cut k means frame k is the "
                        "first frame of a new scene; scene end_frame is exclusive; overlay_box is "
                        "in pixels.",
        "width": cfg.width, "height": cfg.height,
        "videos": {os.path.basename(v["uri"]): {k: x for k, x in v.items() if k != "uri"}
                   for v in videos},
        "recipes": recipes,
    }
    if truth != previous:
        tmp = gt_path + f".{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(truth, f, indent=1)
        os.replace(tmp, gt_path)
    return videos
