"""Shared test fixtures: paths to ../shared/data, one local Ray instance per session, media makers."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CURATE_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data"
VIDEOS = DATA / "videos"


def _ground_truth() -> dict:
    path = DATA / "ground_truth.json"
    if not path.exists():
        raise RuntimeError(f"real test data not found at {DATA}: clone the project beside ../shared or set CURATE_SHARED")
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def ground_truth() -> dict:
    return _ground_truth()


@pytest.fixture(scope="session")
def videos() -> Path:
    _ground_truth()
    return VIDEOS


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_out(ray_session, tmp_path_factory) -> Path:
    """The demo job, run once per session (fast encoder settings)."""
    from curate.cli import main

    out = tmp_path_factory.mktemp("demo")
    assert main(["run", str(ROOT / "jobs" / "demo.yaml"), "--set", f"output={out}", "--set", "split.encode.preset=ultrafast"]) == 0
    return out


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    from stages.media import ffmpeg_exe

    return ffmpeg_exe()


def make_bad_files(folder: Path, ffmpeg: str) -> dict[str, str]:
    """Files that must become `sources` error rows, with the reason each must get."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("this is a text file, not a video\n" * 20)
    bikes = (VIDEOS / "bikes.mp4").read_bytes()
    # moov atom at the end (as ffmpeg writes by default): half the file has no index at all
    (folder / "cut_in_half.mp4").write_bytes(bikes[: len(bikes) // 2])
    # moov first (faststart): the index survives, the frames it declares do not
    faststart = folder / "faststart.tmp"
    subprocess.run(
        [ffmpeg, "-v", "error", "-y", "-i", str(VIDEOS / "bikes.mp4"), "-c", "copy", "-movflags", "+faststart", "-f", "mp4", str(faststart)],
        check=True,
    )
    data = faststart.read_bytes()
    (folder / "faststart_cut.mp4").write_bytes(data[: len(data) * 2 // 5])
    faststart.unlink()
    return {
        "empty.mp4": "empty_file",
        "notes.mp4": "not_media",
        "cut_in_half.mp4": "truncated",
        "faststart_cut.mp4": "truncated",
    }


def copy_video(name: str, dest: Path) -> Path:
    """A temporary copy of a real video for a test that needs it in a folder of its own."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(VIDEOS / name, dest)
    return dest


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, str]:
    """The tiny random Qwen2-VL (vlm), open_clip CLIP (clip), T5 (t5) and Qwen2 LM (lm) a job names `tiny`: from the cache
    folder (`$CURATE_CACHE/tiny`), made there on first use and shared with the demo and later sessions."""
    from curate.tiny import tiny_model

    return {name: tiny_model(name) for name in ("vlm", "clip", "t5", "lm")}


@contextlib.contextmanager
def busy_cpu(n: int | None = None, nice: int = 0):
    """Saturate the CPU with `n` busy loops (default: one more than the cores) at niceness `nice` while
    the block runs: determinism must hold on a loaded machine, where thread timing differs from an idle
    one. Ray runs its workers at niceness 15: loops at 0 would starve a job's workers, not load them."""
    loop = ["nice", "-n", str(nice), "bash", "-c", "while :; do :; done"]
    procs = [subprocess.Popen(loop) for _ in range(n or (os.cpu_count() or 1) + 1)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()
