"""Camera-motion labels (stages/camera.py) against known camera moves, on real pictures.

Simulated moves: a crop window moves over a real frame (pan and tilt both ways, zoom in and out, held
still, held by hand: a small random shake), encoded with libx264 through PyAV so the codec's own motion
vectors come out, at two speeds. Real static cameras with people and cars moving in front of them:
vtest.avi and traffic_camera.mp4 (and a brightness change with no motion), cut into segments and
measured from the source's own vectors as the one-pass split does. Prints the confusion matrix and the
accuracy (target >= 95%).

    python -m curate.bench.camera [--seconds 2] [--method vectors|flow]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import av
import cv2
import numpy as np

from stages.camera import LABELS
from stages.motion import MotionConfig, VectorWindows, frame_cycles_collected, frame_vectors, measure, open_with_vectors, summarize

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(os.environ.get("CURATE_SHARED", os.path.join(ROOT, "..", "shared")), "data", "videos")
MOVES = ("static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out", "diagonal", "roll")
TRUTH = {"diagonal": "complex", "roll": "complex"}  # pan right + tilt up at once; a roll about the centre
# (video, second) of the stills the moves are simulated over
STILLS = [("bigbuckbunny.mp4", 2.0), ("testvideo.mp4", 3.0), ("bikes.mp4", 1.6), ("goldeneye-vfr-drop3.mp4", 1.0),
          ("carphone_pristine.mp4", 1.0)]
STATIC_REAL = ["vtest.avi", "traffic_camera.mp4", "issue53_brightness_change.avi"]


def still(path: str, at_s: float) -> np.ndarray:
    """The RGB frame of `path` at `at_s` seconds (the last one when the video is shorter)."""
    with av.open(path) as c:
        img = None
        for f in c.decode(c.streams.video[0]):
            img = f.to_ndarray(format="rgb24")
            if f.time is not None and f.time >= at_s:
                break
    return img


def simulate(path: str, img: np.ndarray, move: str, speed: float, seconds: float = 2.0, fps: int = 25,
             size: tuple[int, int] = (320, 180), shake_px: float = 0.0, seed: int = 0) -> str:
    """Write `path`: a `size` camera moving over `img` for `seconds`, H.264 (libx264).

    `move` names the camera's movement (stages.camera.LABELS, or `diagonal`: pan right and tilt up at
    once, `roll`: a turn about the centre); `speed`: pan/tilt in frame widths per second, zoom in
    relative scale change per second, roll in radians per second. `shake_px`: a hand-held shake (random walk, output
    px per frame, pulled back to the centre).
    """
    w, h = size
    H, W = img.shape[:2]
    base = 0.7 * min(W / w, H / h)  # source px per output px: the window has room to move
    n = round(seconds * fps)
    rng = np.random.default_rng(seed)
    c = av.open(path, "w")
    s = c.add_stream("libx264", rate=fps)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    s.options = {"crf": "23", "preset": "veryfast"}
    jitter = np.zeros(2)
    for i in range(n):
        u = (i - (n - 1) / 2) / fps  # seconds from the middle of the clip
        cx, cy, sc = W / 2, H / 2, base
        step = speed * w * base * u  # source px from the centre
        if move == "pan_right":
            cx += step
        elif move == "pan_left":
            cx -= step
        elif move == "tilt_down":
            cy += step
        elif move == "tilt_up":
            cy -= step
        elif move == "zoom_in":
            sc = base * np.exp(-speed * u)  # the window shrinks: the picture grows
        elif move == "zoom_out":
            sc = base * np.exp(speed * u)
        elif move == "diagonal":
            cx, cy = cx + step, cy - step
        a = speed * u if move == "roll" else 0.0
        if shake_px:
            jitter = 0.8 * jitter + rng.normal(0, shake_px, 2)
            cx, cy = cx + jitter[0] * sc, cy + jitter[1] * sc
        ca, sa = sc * np.cos(a), sc * np.sin(a)
        m = np.array([[ca, -sa, cx - ca * w / 2 + sa * h / 2], [sa, ca, cy - sa * w / 2 - ca * h / 2]])
        frame = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_AREA | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)
        for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return path


def segments(path: str, seconds: float, cfg: MotionConfig, max_s: float | None = None) -> list[str]:
    """Camera labels of consecutive `seconds`-long pieces of `path` (its first `max_s` seconds), from the
    source's own vectors, as the one-pass split measures a clip (a VectorWindows per piece)."""
    c, s = open_with_vectors(path)
    labels, win, t0, start = [], None, None, None
    rate = float(s.average_rate or 0) or None
    with c, frame_cycles_collected() as collect:
        for frame in c.decode(s):
            t = float(frame.pts * s.time_base) if frame.pts is not None else None
            if max_s is not None and t is not None and start is not None and t - start >= max_s - 1e-9:
                break
            if win is None or (t is not None and t - t0 >= seconds):
                if win is not None:
                    labels.append(_label(win, cfg))
                win, t0 = VectorWindows(cfg.window_s, rate), t
                start = t0 if start is None else start
            win.push(t, frame_vectors(frame), float(np.hypot(frame.width, frame.height)))
            del frame
            collect()
    if win is not None and t0 is not None:
        labels.append(_label(win, cfg))
    return labels


def _label(win: VectorWindows, cfg: MotionConfig) -> str:
    m = summarize(win.finish(), cfg)
    return m.camera.motion if m is not None and m.camera is not None else "static"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0, help="length of each simulated clip and real segment")
    ap.add_argument("--method", choices=["vectors", "flow"], default="vectors")
    ap.add_argument("--data", default=DATA)
    args = ap.parse_args(argv)
    cfg = MotionConfig(method=args.method)
    cases: list[tuple[str, str, str]] = []  # (family, truth, predicted)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="curate-bench-camera-") as tmp:
        for k, (name, at) in enumerate(STILLS):
            img = still(os.path.join(args.data, name), at)
            for move in MOVES:
                speeds = [0.0] if move == "static" else ([0.06, 0.2] if move.startswith(("pan", "tilt", "diag")) else [0.08, 0.25])
                for speed in speeds:
                    shakes = [0.0, 0.3] if move == "static" else [0.0]
                    for shake in shakes:
                        p = simulate(os.path.join(tmp, f"{k}_{move}_{speed}_{shake}.mp4"), img, move, speed, args.seconds, shake_px=shake, seed=k)
                        m = measure(p, cfg)
                        pred = m.camera.motion if m and m.camera else "static"
                        cases.append((f"simulated {'hand-held' if shake else move}", TRUTH.get(move, move), pred))
        if args.method == "vectors":
            for name in STATIC_REAL:
                for pred in segments(os.path.join(args.data, name), args.seconds, cfg):
                    cases.append((f"real {name}", "static", pred))
    wall = time.time() - t0
    labels = [x for x in LABELS]
    idx = {x: i for i, x in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), int)
    for _, truth, pred in cases:
        cm[idx[truth], idx[pred]] += 1
    print(f"camera motion ({args.method}), {len(cases)} clips of {args.seconds:g} s, {wall:.1f} s in all")
    print("truth \\ predicted " + " ".join(f"{x[:9]:>9}" for x in labels))
    for i, x in enumerate(labels):
        if cm[i].sum():
            print(f"{x:<17} " + " ".join(f"{v:>9}" for v in cm[i]))
    fam: dict[str, list[int]] = {}
    for f, truth, pred in cases:
        fam.setdefault(f, []).append(truth == pred)
    for f, ok in sorted(fam.items()):
        print(f"  {f:<40} {sum(ok)}/{len(ok)}")
    acc = np.trace(cm) / max(1, cm.sum())
    print(f"accuracy {acc:.1%} (target >= 95%)")


if __name__ == "__main__":
    main()
