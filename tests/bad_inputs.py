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


# ------------------------------------------------------------------------------ timestamps from the wild


def packed_bframes_avi(out: Path, ffmpeg: str, seconds: float = 4) -> None:
    """An MPEG-4 Part 2 AVI with DivX-style packed B-frames: each P-frame chunk also carries the
    B-frame shown before it, and a placeholder chunk (an N-VOP) follows, as DivX 5 and Xvid wrote them.
    FFmpeg decodes it with pts swapped in pairs (1, 3, 2, 5, 4 ...)."""
    import re
    from fractions import Fraction

    import av

    raw = out.with_suffix(".m4v")
    _ff(ffmpeg, "-f", "lavfi", "-i", f"testsrc2=s=320x240:r=25:d={seconds}", "-c:v", "mpeg4", "-bf", "1", "-g", "50",
        "-q:v", "4", "-f", "m4v", str(raw))
    data = raw.read_bytes()
    raw.unlink()
    starts = [m.start() for m in re.finditer(b"\x00\x00\x01\xb6", data)]  # VOP start codes
    header, vops = data[: starts[0]], [data[a:b] for a, b in zip(starts, starts[1:] + [len(data)])]
    kinds = ["IPBS"[v[4] >> 6] for v in vops]
    header += b"\x00\x00\x01\xb2DivX503b1393p"  # user data: how a decoder knows the bitstream is packed
    chunks, i = [header + vops[0]], 1
    while i < len(vops):
        if i + 1 < len(vops) and kinds[i + 1] == "B":
            chunks += [vops[i] + vops[i + 1], b"\x00\x00\x01\xb6\x50\x00\x00\x00"]  # P + B, then an N-VOP
            i += 2
        else:
            chunks.append(vops[i])
            i += 1
    with av.open(str(out), "w", format="avi") as o:
        s = o.add_stream("mpeg4", rate=25)
        s.width, s.height, s.time_base = 320, 240, Fraction(1, 25)
        s.codec_context.codec_tag = "DX50"
        for k, chunk in enumerate(chunks):
            p = av.Packet(chunk)
            p.stream, p.time_base, p.pts, p.dts = s, Fraction(1, 25), k, k
            p.is_keyframe = k == 0
            o.mux(p)


def make_timestamp_corpus(folder: Path, ffmpeg: str) -> dict[str, dict]:
    """Valid files whose timestamps are not the textbook kind, made the way people make them.

    name -> what each must give: `frames` decoded, `duration_s` of content (gaps not counted),
    `timestamps` (`ok` | `repaired`) and the scene cuts a discontinuity must start (`breaks`).
    """
    folder.mkdir(parents=True, exist_ok=True)
    expect: dict[str, dict] = {}
    packed_bframes_avi(folder / "packed_bframes.avi", ffmpeg)
    expect["packed_bframes.avi"] = {"frames": 100, "duration_s": 4.0, "timestamps": "repaired", "breaks": []}
    # re-timed by a filter chain and muxed with passthrough timing: 0, 3, 2, 1536, 1536, 2560 ... (1/12800)
    retime = "setpts='if(eq(N,1),3/12800/TB,if(eq(N,2),2/12800/TB,if(eq(N,4),(N-1)/25/TB,N/25/TB)))'"
    _lavfi(ffmpeg, folder / "retimed_passthrough.mp4", "-fps_mode", "passthrough", "-c:v", "libx264",
           "-video_track_timescale", "12800", seconds=4, vf=retime)
    expect["retimed_passthrough.mp4"] = {"frames": 100, "duration_s": 4.0, "timestamps": "repaired", "breaks": []}
    # cut by stream copy between keyframes: the edit list hides the leading frames, as players do
    whole = folder / "tmp_whole.mp4"
    _lavfi(ffmpeg, whole, "-c:v", "libx264", "-g", "50", seconds=10)
    _ff(ffmpeg, "-ss", "3.3", "-i", str(whole), "-t", "6", "-c", "copy", str(folder / "stream_copy_cut.mp4"))
    whole.unlink()
    expect["stream_copy_cut.mp4"] = {"frames": 152, "duration_s": 6.08, "timestamps": "ok", "breaks": []}
    # MPEG-TS segments concatenated byte-wise: timestamps restart half way
    parts = []
    for k, src in enumerate(["testsrc2", "smptebars"]):
        seg = folder / f"tmp_seg{k}.ts"
        _ff(ffmpeg, "-f", "lavfi", "-i", f"{src}=s=320x240:r=25:d=4", "-c:v", "libx264", "-f", "mpegts", str(seg))
        parts.append(seg.read_bytes())
        seg.unlink()
    (folder / "concatenated.ts").write_bytes(b"".join(parts))
    expect["concatenated.ts"] = {"frames": 200, "duration_s": 8.0, "timestamps": "repaired", "breaks": [100]}
    # pts jump forward by 40 minutes after frame 100
    _lavfi(ffmpeg, folder / "forward_jump.mp4", "-fps_mode", "passthrough", "-c:v", "libx264", seconds=10,
           vf="setpts='PTS+if(gte(N,100),2400/TB,0)'")
    expect["forward_jump.mp4"] = {"frames": 250, "duration_s": 10.0, "timestamps": "repaired", "breaks": [100]}
    # an MPEG-2 program stream (DVD, broadcast captures)
    _lavfi(ffmpeg, folder / "program_stream.mpg", "-c:v", "mpeg2video", "-q:v", "4", "-f", "vob", seconds=4)
    expect["program_stream.mpg"] = {"frames": 100, "duration_s": 4.0, "timestamps": "ok", "breaks": []}
    return expect
