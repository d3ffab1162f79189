"""A worker's memory stays flat as videos get longer: the split streams frames, it never holds a video."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT

MEASURE = """
import resource, sys, pyarrow as pa
from stages.ingest import Ingest
from stages.media import EncodeSettings
from stages.split import Split, SplitConfig
sources = Ingest()(pa.table({"uri": [sys.argv[1]], "license": ["MIT"]}))
row = Split(SplitConfig(max_clip_s=60.0, encode=EncodeSettings(preset="ultrafast")), sys.argv[2])(sources).to_pylist()[0]
assert row["status"] == "ok", row["error"]
print(row["n_frames"], len(row["clips"]), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak(video, clips_dir):
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(video), str(clips_dir)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    frames, clips, kib = proc.stdout.split()
    return int(frames), int(clips), int(kib) / 1024


@pytest.fixture(scope="module")
def videos_short_and_long(tmp_path_factory, ffmpeg):
    folder = tmp_path_factory.mktemp("long")
    made = {}
    for name, seconds in [("short.mp4", 30), ("long.mp4", 360)]:
        path = folder / name
        subprocess.run(
            [ffmpeg, "-v", "error", "-f", "lavfi", "-i", f"testsrc2=s=320x240:r=25:d={seconds}",
             "-c:v", "libx264", "-preset", "ultrafast", "-g", "250", str(path)],
            check=True,
        )
        made[name] = path
    return made


def test_split_memory_is_flat_in_video_length(videos_short_and_long, tmp_path):
    short = peak(videos_short_and_long["short.mp4"], tmp_path / "a")
    long = peak(videos_short_and_long["long.mp4"], tmp_path / "b")
    assert long[0] == 12 * short[0] == 9000  # every frame of the 6-minute video was decoded
    assert long[1] == 6
    # 12x the frames may not cost more than a few MB more peak memory (what grows: one float per frame)
    print(f"peak RSS: 30 s video {short[2]:.0f} MiB, 6 min video {long[2]:.0f} MiB")
    assert long[2] - short[2] < 25, (short, long)
