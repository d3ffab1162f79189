"""A corpus of awkward and broken inputs, generated with ffmpeg, with what each must give.

Each entry: file name -> (status, reason) for the `sources` row, plus for good files the number of
frames that must decode. Nothing here is copied from ../shared except through a test's tmp folder.
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

from tests.conftest import VIDEOS, make_bad_files


def _ff(ffmpeg: str, *args: str) -> None:
    subprocess.run([ffmpeg, "-v", "error", "-y", *args], check=True)


def _lavfi(ffmpeg: str, out: Path, *enc: str, size: str = "160x120", seconds: float = 2.0, vf: str | None = None) -> None:
    args = ["-f", "lavfi", "-i", f"testsrc2=s={size}:r=25:d={seconds}"]
    if vf:
        args += ["-vf", vf]
    _ff(ffmpeg, *args, *enc, str(out))


def make_corpus(folder: Path, ffmpeg: str) -> dict[str, tuple[str, str | None, int | None]]:
    folder.mkdir(parents=True, exist_ok=True)
    expect: dict[str, tuple[str, str | None, int | None]] = {
        name: ("error", reason, None) for name, reason in make_bad_files(folder, ffmpeg).items()
    }
    rng = random.Random(0)
    (folder / "random_bytes.mp4").write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
    expect["random_bytes.mp4"] = ("error", "not_media", None)
    # ftyp + mdat and no moov: the index was never written
    good = folder / "tmp_good.mp4"
    _lavfi(ffmpeg, good, "-c:v", "libx264")
    data = good.read_bytes()
    (folder / "no_moov.mp4").write_bytes(data[: data.rfind(b"moov") - 4])
    # a codec no decoder knows: the sample entry renamed
    i = data.rfind(b"avc1")
    (folder / "unknown_codec.mp4").write_bytes(data[:i] + b"zzzz" + data[i + 4 :])
    good.unlink()
    expect["no_moov.mp4"] = ("error", "truncated", None)
    expect["unknown_codec.mp4"] = ("error", "unsupported_codec", None)

    _ff(ffmpeg, "-f", "lavfi", "-i", "sine=d=1", "-c:a", "aac", str(folder / "audio_only.mp4"))
    expect["audio_only.mp4"] = ("error", "no_video_stream", None)
    _lavfi(ffmpeg, folder / "zero_duration.mp4", "-frames:v", "0", "-c:v", "libx264")
    expect["zero_duration.mp4"] = ("error", "no_video_stream", None)
    (folder / "absurd_size.y4m").write_bytes(b"YUV4MPEG2 W99999 H99999 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + bytes(3000))
    expect["absurd_size.y4m"] = ("error", "not_media", None)
    # corrupt bytes in the middle of the picture data
    mid = folder / "tmp_mid.mp4"
    _lavfi(ffmpeg, mid, "-c:v", "libx264", "-g", "25", size="320x240", seconds=4)
    b = bytearray(mid.read_bytes())
    for k in range(len(b) // 2, len(b) // 2 + 3000):
        b[k] = rng.randrange(256)
    (folder / "corrupt_middle.mp4").write_bytes(bytes(b))
    mid.unlink()
    expect["corrupt_middle.mp4"] = ("error", "decode_error", None)

    # awkward but valid: all must be processed
    _lavfi(ffmpeg, folder / "one_frame.mp4", "-frames:v", "1", "-c:v", "libx264")
    expect["one_frame.mp4"] = ("ok", None, 1)
    _lavfi(ffmpeg, folder / "odd_size.mp4", "-c:v", "libx264", "-pix_fmt", "yuv444p", vf="scale=161:121")
    _lavfi(ffmpeg, folder / "ten_bit.mp4", "-c:v", "libx264", "-pix_fmt", "yuv420p10le")
    _lavfi(ffmpeg, folder / "interlaced.mp4", "-c:v", "libx264", "-flags", "+ildct+ilme", "-x264opts", "interlaced=1")
    _lavfi(ffmpeg, folder / "container.mkv", "-c:v", "libx264")
    _lavfi(ffmpeg, folder / "container.webm", "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8")
    _lavfi(ffmpeg, folder / "container.avi", "-c:v", "mpeg4")
    _lavfi(ffmpeg, folder / "container.mov", "-c:v", "libx264")
    _lavfi(ffmpeg, folder / "ünïcode name with spaces.mp4", "-c:v", "libx264", vf="hue=h=90")
    for name in ["odd_size.mp4", "ten_bit.mp4", "interlaced.mp4", "container.mkv", "container.webm", "container.avi",
                 "container.mov", "ünïcode name with spaces.mp4"]:
        expect[name] = ("ok", None, 50)
    (folder / "a folder.mp4").mkdir()  # a directory with a video's name: unreadable as a file
    expect["a folder.mp4"] = ("error", "unreadable", None)
    if os.geteuid() != 0:  # root reads whatever the mode says
        locked = folder / "no_permission.mp4"
        locked.write_bytes(b"x" * 100)
        locked.chmod(0)
        expect["no_permission.mp4"] = ("error", "unreadable", None)
    # a symlink loop (listed, not followed) and a link to a real file elsewhere (processed)
    (folder / "sub").mkdir()
    os.symlink("..", folder / "sub" / "loop")
    os.symlink(VIDEOS / "counter.mp4", folder / "link_to_counter.mp4")
    expect["link_to_counter.mp4"] = ("ok", None, 30)
    return expect
