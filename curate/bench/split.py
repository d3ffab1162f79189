"""Benchmark: curate's split against the floor and against PySceneDetect's CLI, in one run.

    python -m curate.bench.split [--seconds 190] [--corpus DIR] [--keep DIR] [--skip-pyscenedetect]

Corpus: 720p25 H.264 videos with cuts, made from the real footage in ../shared/data (testvideo.mp4,
traffic_camera.mp4, bigbuckbunny.mp4), each looped (a hard cut at every loop point) and re-encoded to
about a third of `--seconds`; cached in `--corpus` when given. On the same inputs, one after the other:

  floor        ffmpeg decodes each input and encodes the frames curate wrote, once, with the same
               encoder settings (libx264, crf, preset, EncodeSettings.codec_options), into one file per input
  pyscenedetect  `scenedetect -i X detect-adaptive split-video` with the same encoder settings
  curate       the split stage (ingest + split, no Ray): detection, labels, every clip written
  + signals    the same split measuring on the way what the job has it measure (motion from the
               codec's vectors with the camera fit, and each clip's dedup signature from the analysis
               frames); the time spent in the camera fit and the signatures is also counted apart

It prints the wall time of each and the ratios curate/floor and curate/pyscenedetect, plus frames
written and curate's peak memory (max RSS of this process), and what the signals add to the split.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from stages.ingest import Ingest
from stages.media import EncodeSettings, ffmpeg_exe
from stages.split import Split, SplitConfig, flatten

ROOT = Path(__file__).resolve().parents[2]
VIDEOS = Path(os.environ.get("CURATE_SHARED", ROOT.parent / "shared")) / "data" / "videos"
SOURCES = {"testvideo.mp4": 24.0, "traffic_camera.mp4": 23.0, "bigbuckbunny.mp4": 5.28}  # seconds each


def make_corpus(folder: Path, seconds: float, ffmpeg: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, length in SOURCES.items():
        target = seconds / len(SOURCES)
        loops = max(1, round(target / length))
        dst = folder / f"{Path(name).stem}-x{loops}.mp4"
        if not dst.exists():
            subprocess.run(
                [ffmpeg, "-v", "error", "-y", "-stream_loop", str(loops - 1), "-i", str(VIDEOS / name), "-an",
                 "-vf", "scale=1280:720,fps=25", "-c:v", "libx264", "-preset", "veryfast", "-crf", "20",
                 "-pix_fmt", "yuv420p", str(dst) + ".tmp.mp4"],
                check=True,
            )  # fmt: skip
            os.replace(str(dst) + ".tmp.mp4", dst)
        out.append(dst)
    return out


def cpu_s(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def run_curate(inputs: list[Path], cfg: SplitConfig, out: Path, **signals) -> tuple[float, dict[str, list[tuple[int, int]]]]:
    t0 = time.perf_counter()
    sources = Ingest()(pa.table({"uri": [str(p) for p in inputs], "license": ["CC-BY-3.0"] * len(inputs)}))
    split = Split(cfg, str(out), **signals)(sources)
    wall = time.perf_counter() - t0
    srcs, _, clips = flatten(split)
    bad = [r for r in srcs.to_pylist() if r["status"] != "ok"]
    if bad:
        raise SystemExit(f"curate failed on {bad[0]['uri']}: {bad[0]['error']}")
    uri = dict(zip(srcs["source_id"].to_pylist(), srcs["uri"].to_pylist()))
    kept: dict[str, list[tuple[int, int]]] = {str(p): [] for p in inputs}
    for c in clips.to_pylist():
        if c["status"] == "kept":
            kept[uri[c["source_id"]]].append((c["start_frame"], c["end_frame"]))
        elif c["status"] == "error":
            raise SystemExit(f"curate clip error: {c['error']}")
    return wall, kept


class Timed:
    """Wraps functions of modules to add up the CPU time spent in them (this thread's)."""

    def __init__(self, *targets: tuple[object, str]):
        self.targets, self.s, self.saved = targets, 0.0, []

    def __enter__(self) -> "Timed":
        for mod, name in self.targets:
            fn = getattr(mod, name)
            self.saved.append((mod, name, fn))

            def timed(*a, _fn=fn, **k):
                c0 = time.thread_time()
                try:
                    return _fn(*a, **k)
                finally:
                    self.s += time.thread_time() - c0

            setattr(mod, name, timed)
        return self

    def __exit__(self, *exc) -> None:
        for mod, name, fn in self.saved:
            setattr(mod, name, fn)


def run_signals(inputs: list[Path], cfg: SplitConfig, out: Path) -> tuple[float, float, float, float]:
    """The split with motion (vectors + camera fit) and dedup signatures: (wall s, cpu s, camera fit cpu s, signature cpu s)."""
    import stages.dedup
    import stages.motion
    from stages.dedup import DedupConfig
    from stages.motion import MotionConfig

    fit = Timed((stages.motion, "fit_window"))
    sig = Timed((stages.dedup.SignatureFrames, "push"), (stages.dedup.SignatureFrames, "finish"))
    c0 = cpu_s(resource.RUSAGE_SELF)
    with fit, sig:
        wall, _ = run_curate(inputs, cfg, out, motion=MotionConfig(method="vectors"), signature=(DedupConfig().fps, "bench"))
    return wall, cpu_s(resource.RUSAGE_SELF) - c0, fit.s, sig.s


def run_floor(inputs: list[Path], kept: dict[str, list[tuple[int, int]]], enc: EncodeSettings, ffmpeg: str, out: Path) -> float:
    """ffmpeg: decode every input once, encode exactly the frames curate wrote (selected by index)."""
    t0 = time.perf_counter()
    for p in inputs:
        ranges = kept[str(p)]
        if not ranges:
            continue
        select = "+".join(f"between(n\\,{a}\\,{b - 1})" for a, b in ranges)
        subprocess.run(
            [ffmpeg, "-v", "error", "-y", "-i", str(p), "-an", "-vf", f"select={select}", "-fps_mode", "passthrough",
             "-c:v", enc.codec, *[a for k, v in enc.codec_options().items() for a in (f"-{k}", v)], "-pix_fmt", "yuv420p",
             "-movflags", "+faststart", str(out / f"{p.stem}.mp4")],
            check=True,
        )  # fmt: skip
    return time.perf_counter() - t0


def run_pyscenedetect(inputs: list[Path], enc: EncodeSettings, ffmpeg: str, out: Path) -> float:
    exe = shutil.which("scenedetect") or str(Path(sys.executable).with_name("scenedetect"))
    env = dict(os.environ)
    bindir = out / "bin"
    bindir.mkdir(exist_ok=True)
    if not shutil.which("ffmpeg"):  # split-video calls `ffmpeg`: give it the one curate uses
        (bindir / "ffmpeg").symlink_to(ffmpeg)
        env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    t0 = time.perf_counter()
    for p in inputs:
        subprocess.run(
            [exe, "-q", "-i", str(p), "-o", str(out / p.stem), "detect-adaptive", "split-video", "-q",
             "-a", f"-map 0:v:0 -c:v {enc.codec} -preset {enc.preset} -crf {enc.crf} -pix_fmt yuv420p -an"],
            check=True, env=env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return time.perf_counter() - t0


def count_frames(folder: Path) -> int:
    import av

    n = 0
    for f in sorted(folder.rglob("*.mp4")):
        with av.open(str(f)) as c:
            n += c.streams.video[0].frames
    return n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m curate.bench.split", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=190.0, help="corpus length (about)")
    ap.add_argument("--corpus", help="folder to keep the generated corpus in (reused when present)")
    ap.add_argument("--keep", help="folder for the outputs (default: a temporary folder, removed)")
    ap.add_argument("--skip-pyscenedetect", action="store_true")
    ap.add_argument("--skip-signals", action="store_true", help="do not run the split again with motion, camera and signatures")
    ap.add_argument("--crf", type=int, default=18)
    ap.add_argument("--preset", default="veryfast")
    args = ap.parse_args(argv)

    ffmpeg = ffmpeg_exe()
    enc = EncodeSettings(crf=args.crf, preset=args.preset)
    cfg = SplitConfig(encode=enc)
    work = Path(args.keep or tempfile.mkdtemp(prefix="curate-bench-"))
    try:
        inputs = make_corpus(Path(args.corpus) if args.corpus else work / "corpus", args.seconds, ffmpeg)
        seconds = 0.0
        import av

        for p in inputs:
            with av.open(str(p)) as c:
                seconds += float(c.duration / av.time_base)
        print(f"corpus: {len(inputs)} videos, {seconds:.1f} s of 1280x720 25 fps; encoder {enc.codec} crf {enc.crf} preset {enc.preset}; {os.cpu_count()} CPUs")

        outs = {k: work / k for k in ("curate", "floor", "pyscenedetect", "signals")}
        for d in outs.values():
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        c0 = cpu_s(resource.RUSAGE_SELF)
        t_curate, kept = run_curate(inputs, cfg, outs["curate"])
        c_curate = cpu_s(resource.RUSAGE_SELF) - c0
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        c0 = cpu_s(resource.RUSAGE_CHILDREN)
        t_floor = run_floor(inputs, kept, enc, ffmpeg, outs["floor"])
        c_floor = cpu_s(resource.RUSAGE_CHILDREN) - c0
        t_psd = c_psd = None
        if not args.skip_pyscenedetect:
            c0 = cpu_s(resource.RUSAGE_CHILDREN)
            t_psd = run_pyscenedetect(inputs, enc, ffmpeg, outs["pyscenedetect"])
            c_psd = cpu_s(resource.RUSAGE_CHILDREN) - c0

        signals = None if args.skip_signals else run_signals(inputs, cfg, outs["signals"])

        # CPU seconds (user + sys, all threads) are printed too: on a machine shared with other work
        # they are steadier than wall times.
        n_curate = count_frames(outs["curate"])
        print(f"{'':16}{'wall s':>9}{'cpu s':>9}{'frames written':>16}")
        print(f"{'floor (ffmpeg)':16}{t_floor:9.1f}{c_floor:9.1f}{count_frames(outs['floor']):16d}")
        if t_psd is not None:
            print(f"{'pyscenedetect':16}{t_psd:9.1f}{c_psd:9.1f}{count_frames(outs['pyscenedetect']):16d}")
        print(f"{'curate split':16}{t_curate:9.1f}{c_curate:9.1f}{n_curate:16d}   (peak RSS {rss_mb:.0f} MB)")
        if signals is not None:
            t_sig, c_sig, fit_s, sig_s = signals
            print(f"{'+ signals':16}{t_sig:9.1f}{c_sig:9.1f}{'':16}   (motion vectors + camera fit + dedup signatures)")
        print(f"curate / floor         = {t_curate / t_floor:.2f} wall, {c_curate / c_floor:.2f} cpu")
        if signals is not None:
            print(f"+ signals / curate     = {t_sig / t_curate:.2f} wall, {c_sig / c_curate:.2f} cpu (reading vectors included)")
            print(f"camera fit             = {fit_s:.2f} cpu s = {100 * fit_s / c_curate:.1f}% of the split's cpu")
            print(f"dedup signatures       = {sig_s:.2f} cpu s = {100 * sig_s / c_curate:.1f}% of the split's cpu")
            print(f"both (target < 5%)     = {100 * (fit_s + sig_s) / c_curate:.1f}%")
        if t_psd is not None:
            print(f"curate / pyscenedetect = {t_curate / t_psd:.2f} wall, {c_curate / c_psd:.2f} cpu")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
