"""Motion-vector reading against its floor, a plain decode of the same video.

The codec's motion vectors come out of decoding, so reading them should cost little more than
decoding: target <= 1.10x. Both sides use PyAV with the same threading (slice threads: exported
vectors are not deterministic with frame threads) and no pixel conversion; the
vector side also turns every frame's vectors into the per-cell field and window maps that
`motion_score` is made of. Also printed: Farneback flow (the alternative method) on the same video.

    python -m curate.bench.motion [--video PATH] [--seconds 50] [--repeat 5]

Without --video it loops ../shared/data/videos/traffic_camera.mp4 (1280x720, 25 fps, H.264) to
--seconds by stream copy (no re-encode).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time

import av

from stages.media import ffmpeg_exe
from stages.motion import VECTOR_THREADS, MotionConfig, frame_cycles_collected, measure, open_with_vectors


def plain_decode(path: str, threads: str = "AUTO") -> int:
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = threads
        return sum(1 for _ in c.decode(s))


def read_vectors(path: str) -> int:
    """Decode with vectors exported and read every frame's vectors into numpy (no scoring)."""
    c, s = open_with_vectors(path)
    n = 0
    with c, frame_cycles_collected() as collect:
        for frame in c.decode(s):
            sd = frame.side_data.get("MOTION_VECTORS")
            if sd is not None:
                sd.to_ndarray()
            del frame, sd
            collect()
            n += 1
    return n


def best_of(fns: dict, path: str, repeat: int) -> dict[str, float]:
    """Fastest of `repeat` runs of each function, the functions taking turns (fair under a varying load)."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn(path)
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--video", help="a video to measure on (default: traffic_camera.mp4 looped to --seconds)")
    ap.add_argument("--seconds", type=float, default=50.0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--flow", action="store_true", help="also time the optical-flow method")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="curate-bench-motion-") as tmp:
        path = args.video
        if not path:
            src = os.path.join(here, "..", "..", "..", "shared", "data", "videos", "traffic_camera.mp4")
            path = os.path.join(tmp, "looped.mp4")
            subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-stream_loop", "-1", "-i", src, "-t", f"{args.seconds}",
                            "-c", "copy", "-an", path], check=True)
        with av.open(path) as c:
            s = c.streams.video[0]
            desc = f"{s.codec_context.name} {s.codec_context.width}x{s.codec_context.height}, {float(s.duration * s.time_base) if s.duration else 0:.1f} s"
        n = plain_decode(path)  # warm the page cache
        t = best_of({"floor": lambda p: plain_decode(p, VECTOR_THREADS), "threaded": plain_decode, "vectors": read_vectors,
                     "score": lambda p: measure(p, MotionConfig(method="vectors"))}, path, args.repeat)
        floor, vectors, score, threaded = t["floor"], t["vectors"], t["score"], t["threaded"]
        print(f"motion vectors on {desc} ({n} frames), best of {args.repeat}:")
        rows = [(f"plain decode, {VECTOR_THREADS.lower()} threads (floor)", floor, ""),
                ("decode + read vectors", vectors, "   (target <= 1.10x)"),
                ("motion_score, method vectors", score, ""),
                ("plain decode, frame threads", threaded, "   (vectors read this way are not deterministic: see stages.motion.VECTOR_THREADS)")]
        for label, secs, note in rows:
            print(f"  {label:<36} {secs:6.2f} s   {secs / floor:.2f}x{note}")
        if args.flow:
            flow = best_of({"flow": lambda p: measure(p, MotionConfig(method="flow"))}, path, 1)["flow"]
            print(f"  {'motion_score, method flow':<36} {flow:6.2f} s   {flow / floor:.2f}x   (one run)")


if __name__ == "__main__":
    main()
