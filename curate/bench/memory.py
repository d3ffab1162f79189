"""Measure a long split: a worker's peak memory and wall time on a 30-minute 1280x720 25 fps input.

    python -m curate.bench.memory [--minutes 30] [--corpus DIR] [--preset veryfast] [--one-pass|--two-pass]

The input is made quickly from real footage in ../shared/data: testvideo.mp4 (fades, black, a dissolve,
hard cuts), traffic_camera.mp4 and bigbuckbunny.mp4 are scaled to 720p25 and joined once into a segment
of about 52 s (one encode), which is then looped by stream copy (no re-encode) to `--minutes`; every
loop point is a hard cut. `--corpus` keeps the files for the next run.

The split stage (ingest + split with the job defaults, no Ray) runs in a child process, as a worker
would; the child's peak RSS (ru_maxrss from wait4) and the wall time are printed, with the frames
decoded and clips written. Issue 3's target: peak under 2 GB whatever the length.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from curate.bench.split import VIDEOS
from stages.media import ffmpeg_exe

SEGMENT = [("testvideo.mp4", None), ("traffic_camera.mp4", None), ("bigbuckbunny.mp4", None)]

CHILD = """
import json, sys, pyarrow as pa
from stages.ingest import Ingest
from stages.media import EncodeSettings
from stages.split import Split, SplitConfig
uri, out, preset, one_pass = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
sources = Ingest()(pa.table({"uri": [uri], "license": ["CC-BY-3.0"]}))
row = Split(SplitConfig(one_pass=one_pass, encode=EncodeSettings(preset=preset)), out)(sources).to_pylist()[0]
if row["status"] != "ok":
    raise SystemExit(f"split failed: {row['reason']}: {row['error']}")
kept = [c for c in row["clips"] if c["status"] == "kept"]
print(json.dumps({"n_frames": row["n_frames"], "clips": len(row["clips"]), "kept": len(kept),
                  "errors": sum(c["status"] == "error" for c in row["clips"]),
                  "kept_s": sum(c["duration_s"] for c in kept)}))
"""


def make_input(folder: Path, minutes: float, ffmpeg: str) -> Path:
    """A `minutes`-long 720p25 H.264 mp4: one encoded segment of real footage, looped by stream copy."""
    folder.mkdir(parents=True, exist_ok=True)
    segment = folder / "segment-720p25.mp4"
    if not segment.exists():
        inputs, chains = [], []
        for i, (name, _) in enumerate(SEGMENT):
            inputs += ["-i", str(VIDEOS / name)]
            chains.append(f"[{i}:v:0]scale=1280:720,fps=25,setsar=1,format=yuv420p[v{i}]")
        graph = ";".join(chains) + ";" + "".join(f"[v{i}]" for i in range(len(SEGMENT))) + f"concat=n={len(SEGMENT)}:v=1:a=0[v]"
        subprocess.run(
            [ffmpeg, "-v", "error", "-y", *inputs, "-filter_complex", graph, "-map", "[v]", "-an",
             "-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-g", "250", str(segment) + ".tmp.mp4"],
            check=True,
        )  # fmt: skip
        os.replace(str(segment) + ".tmp.mp4", segment)
    dst = folder / f"long-{minutes:g}min-720p25.mp4"
    if not dst.exists():
        subprocess.run(
            [ffmpeg, "-v", "error", "-y", "-stream_loop", "-1", "-i", str(segment), "-t", f"{minutes * 60:.3f}",
             "-c", "copy", "-an", str(dst) + ".tmp.mp4"],
            check=True,
        )  # fmt: skip
        os.replace(str(dst) + ".tmp.mp4", dst)
    return dst


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m curate.bench.memory", description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--corpus", help="folder to keep the generated input in (reused when present)")
    ap.add_argument("--preset", default="veryfast", help="x264 preset of the written clips")
    ap.add_argument("--two-pass", action="store_true", help="split.one_pass false (analysis decode + ffmpeg per clip)")
    args = ap.parse_args(argv)

    import av

    ffmpeg = ffmpeg_exe()
    work = Path(tempfile.mkdtemp(prefix="curate-bench-memory-"))
    try:
        t0 = time.perf_counter()
        video = make_input(Path(args.corpus) if args.corpus else work / "corpus", args.minutes, ffmpeg)
        with av.open(str(video)) as c:
            s = c.streams.video[0]
            seconds = float(c.duration / av.time_base)
            print(f"input: {video.name}, {seconds:.1f} s, {s.width}x{s.height} {s.average_rate} fps, {s.frames} frames "
                  f"({time.perf_counter() - t0:.1f} s to make); {os.cpu_count()} CPUs")
        root = Path(__file__).resolve().parents[2]
        env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        out = work / "clips"
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(video), str(out), args.preset, "0" if args.two_pass else "1"],
            stdout=subprocess.PIPE, env=env, cwd=root,
        )  # fmt: skip
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise SystemExit(f"split child exited {proc.returncode}")
        import json

        facts = json.loads(stdout.decode().strip().splitlines()[-1])
        peak_mb = usage.ru_maxrss / 1024  # KiB on Linux
        # The child's ffmpeg processes (two-pass writer) are its own children; wait4 counts the child alone.
        print(f"split ({'two-pass' if args.two_pass else 'one-pass'}, preset {args.preset}): {facts['n_frames']} frames, "
              f"{facts['clips']} clip rows, {facts['kept']} kept ({facts['kept_s'] / 60:.1f} min), {facts['errors']} errors")
        print(f"wall {wall:.1f} s ({seconds / wall:.2f}x real time), cpu {usage.ru_utime + usage.ru_stime:.1f} s")
        print(f"peak RSS of the worker: {peak_mb:.0f} MiB ({'under' if peak_mb < 2048 else 'OVER'} 2 GiB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
