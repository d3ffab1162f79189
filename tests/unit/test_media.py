import subprocess
from fractions import Fraction

import av
import fsspec
import numpy as np
import pyarrow as pa
import pytest

from stages.ingest import Ingest
from stages.media import EncodeSettings, MediaError, hash_file, probe, write_clip


@pytest.fixture(scope="module")
def with_audio(tmp_path_factory, ffmpeg):
    path = tmp_path_factory.mktemp("media") / "tone.mp4"
    subprocess.run(
        [ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=160x120:r=25:d=2", "-f", "lavfi", "-i", "sine=f=440:d=2",
         "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-shortest", str(path)],
        check=True,
    )
    return path


def streams(path):
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        return v.frames, v.codec_context.width, v.codec_context.height, len(c.streams.audio)


def test_write_clip_scales_and_counts_frames(videos, tmp_path):
    dst = tmp_path / "clip.mp4"
    write_clip(str(videos / "counter.mp4"), str(dst), 0.95, 10, EncodeSettings(max_height=64, preset="ultrafast"))
    assert streams(dst) == (10, 114, 64, 0)  # 1920x1080 -> 64 high, width even, no audio


def test_audio_kept_or_dropped(with_audio, tmp_path):
    assert probe(str(with_audio)).has_audio
    kept, dropped = tmp_path / "a.mp4", tmp_path / "b.mp4"
    write_clip(str(with_audio), str(kept), 0.0, 25, EncodeSettings(audio=True, preset="ultrafast"), has_audio=True)
    write_clip(str(with_audio), str(dropped), 0.0, 25, EncodeSettings(audio=False, preset="ultrafast"), has_audio=True)
    assert streams(kept)[3] == 1 and streams(dropped)[3] == 0
    # the audio ends with the clip's 25 frames (1 s of the 2 s source), give or take one AAC frame
    with av.open(str(kept)) as c:
        a = c.streams.audio[0]
        assert abs(float(a.duration * a.time_base) - 1.0) < 0.05, float(a.duration * a.time_base)


def test_encoder_failure_is_a_clear_error(videos, tmp_path):
    with pytest.raises(RuntimeError, match="ffmpeg failed writing clip.mp4"):
        write_clip(str(videos / "counter.mp4"), str(tmp_path / "clip.mp4"), 0.0, 5, EncodeSettings(codec="no_such_encoder"))
    assert not list(tmp_path.iterdir())  # no temporary file left behind


def test_audio_only_file_has_no_video_stream(tmp_path, ffmpeg):
    path = tmp_path / "tone.m4a"
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "sine=d=1", "-c:a", "aac", str(path)], check=True)
    with pytest.raises(MediaError) as e:
        probe(str(path))
    assert e.value.reason == "no_video_stream"


def test_fsspec_uris_are_read(videos):
    fs = fsspec.filesystem("memory")
    fs.pipe("/curate-test/bikes.mp4", (videos / "bikes.mp4").read_bytes())
    sha, size = hash_file("memory://curate-test/bikes.mp4")
    assert size == (videos / "bikes.mp4").stat().st_size
    row = Ingest()(pa.table({"uri": ["memory://curate-test/bikes.mp4"], "license": ["MIT"]})).to_pylist()[0]
    assert (row["status"], row["n_frames"], row["sha256"]) == ("ok", 250, sha)


def test_encode_fps_counts_ticks_and_keeps_old_clip_ids():
    enc = EncodeSettings(fps=10.0)
    assert enc.frames_out(50, 2.0) == 20  # ticks 0.0 .. 1.9
    assert enc.frames_out(51, 2.04) == 21  # tick 2.0 is inside a 2.04 s clip
    assert enc.frames_out(1, 0.04) == 1
    assert EncodeSettings().frames_out(51, 2.04) == 51  # no fps: frames pass one for one
    assert EncodeSettings(fps=29.97).rate == Fraction(2997, 100)
    # without fps the settings fingerprint (and so every clip id) is what it was before encode.fps existed
    assert EncodeSettings().fingerprint() == "libx264-crf18-veryfast-h0-a0"
    assert EncodeSettings(fps=10.0).fingerprint() != EncodeSettings().fingerprint()
    with pytest.raises(ValueError, match="encode.fps"):
        EncodeSettings(fps=0)


def test_write_clip_resamples_to_fps(videos, tmp_path):
    """counter.mp4 is 10 fps (a counter; colour changes at frames 10 and 20): at 4 fps, ticks 0.0, 0.25, 0.5, ...
    show frames 0, 2, 5, 7, 10, ... (the last frame at or before each tick); 3 s from frame 0 is 12 frames."""
    dst = tmp_path / "clip.mp4"
    write_clip(str(videos / "counter.mp4"), str(dst), 0.0, 12, EncodeSettings(preset="ultrafast", crf=12, fps=4.0, max_height=64))
    with av.open(str(dst)) as c:
        s = c.streams.video[0]
        pts = sorted(p.pts * s.time_base for p in c.demux(s) if p.pts is not None)
    with av.open(str(dst)) as c:
        got = [f.to_ndarray(format="gray").astype(np.float32) for f in c.decode(video=0)]
    assert pts == [Fraction(k, 4) for k in range(12)]
    with av.open(str(videos / "counter.mp4")) as c:
        src = [f.to_ndarray(format="gray", width=114, height=64).astype(np.float32) for f in c.decode(video=0)]
    nearest = [int(np.argmin([np.abs(g - s).mean() for s in src])) for g in got]
    assert nearest == [0, 2, 5, 7, 10, 12, 15, 17, 20, 22, 25, 27]


def test_clip_encoder_options_are_deterministic_unless_asked_not_to_be():
    from stages.media import EncodeSettings

    default, fast = EncodeSettings(), EncodeSettings(deterministic=False)
    assert default.codec_options()["x264-params"] == "mbtree=0"
    assert "x264-params" not in fast.codec_options()
    assert fast.fingerprint() != default.fingerprint()  # other bytes, other clip ids
    assert EncodeSettings(codec="h264_nvenc").codec_options() == {}
