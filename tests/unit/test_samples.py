"""The sample videos hold the answers ground_truth.json claims: cuts, frozen/moving, overlay."""

import hashlib
import json
import os

import av
import numpy as np
import pytest
from scenedetect import AdaptiveDetector
from scenedetect.common import FrameTimecode

from curate.samples import SamplesConfig, generate_samples
from stages.media import ffmpeg_exe


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    out = tmp_path_factory.mktemp("samples")
    return str(out), generate_samples(str(out))


def decode(path):
    """Every frame in decode order: luma planes as int16 [n, h, w], 128x96 BGR for the detector."""
    lumas, small = [], []
    with av.open(path) as c:
        s = c.streams.video[0]
        for f in c.decode(s):
            lumas.append(f.to_ndarray(format="yuv420p")[: f.height].astype(np.int16))
            small.append(f.to_ndarray(width=128, height=96, format="bgr24"))
    return np.stack(lumas), small


def adaptive_cuts(small, fps):
    det, cuts = AdaptiveDetector(), []
    for n, img in enumerate(small):
        cuts += [tc.frame_num for tc in det.process_frame(FrameTimecode(n, fps), img)]
    cuts += [tc.frame_num for tc in det.post_process(FrameTimecode(len(small), fps))]
    return cuts


def sha256s(folder):
    return {n: hashlib.sha256(open(os.path.join(folder, n), "rb").read()).hexdigest()
            for n in sorted(os.listdir(folder))}


def test_videos_match_ground_truth(samples):
    out, videos = samples
    cfg = SamplesConfig()
    assert [os.path.basename(v["uri"]) for v in videos] == [f"sample_{i:02d}.mp4" for i in range(4)]
    with open(os.path.join(out, "ground_truth.json")) as f:
        truth = json.load(f)["videos"]
    assert any(s["content"] == "frozen" for v in videos for s in v["scenes"])
    assert {v["overlay_box"] is None for v in videos} == {True, False}
    for v in videos:
        assert os.path.isabs(v["uri"]) and v["license"] == "CC0-1.0" and v["source_url"] is None
        assert truth[os.path.basename(v["uri"])]["cuts"] == v["cuts"]
        with av.open(v["uri"]) as c:
            s = c.streams.video[0]
            assert (s.codec_context.name, s.codec_context.pix_fmt) == ("h264", "yuv420p")
            assert (s.width, s.height, s.average_rate) == (cfg.width, cfg.height, cfg.fps)
            fps = s.average_rate  # a Fraction: FrameTimecode refuses a plain int
            assert not c.streams.audio
        lumas, small = decode(v["uri"])
        assert len(lumas) == v["n_frames"] == v["scenes"][-1]["end_frame"]
        starts = [sc["start_frame"] for sc in v["scenes"]]
        assert adaptive_cuts(small, fps) == v["cuts"] == starts[1:]

        # Mean absolute luma change between consecutive frames: x264 leaves a held frame within ~0.05,
        # the slowest moving pattern (mandelbrot zoom) changes by > 1 per frame.
        step = np.abs(np.diff(lumas, axis=0)).mean(axis=(1, 2))
        for sc in v["scenes"]:
            inside = step[sc["start_frame"]: sc["end_frame"] - 1]
            if sc["content"] == "frozen":
                assert inside.max() < 0.5, (v["uri"], sc)
            else:
                assert inside.min() > 0.5, (v["uri"], sc)
            assert lumas[sc["start_frame"]].std() > 20, "scene looks blank"


def test_overlay_is_blended_into_every_frame(samples):
    _, videos = samples
    box = next(v["overlay_box"] for v in videos if v["overlay_box"])
    x, y, w, h = box["x"], box["y"], box["w"], box["h"]
    for v in videos:
        lumas, _ = decode(v["uri"])
        inner = lumas[:, y + 2: y + h - 2, x + 2: x + w - 2]  # 2 px in from the edge: codec blur
        below = lumas[:, y + h + 2: y + h + 6, x: x + w]
        assert all(s["overlay"] == (v["overlay_box"] is not None) for s in v["scenes"])
        if v["overlay_box"] is None:
            # The same corner gets dark without a logo, so the floor below is not the content's.
            assert inner.min() < 100
            continue
        assert v["overlay_box"] == box
        # white@0.5 in limited-range YUV: Y = (Y_in + 235) / 2 >= (16 + 235) / 2 = 125.5 on every
        # frame (-8 for compression); just below the box the content is as dark as it likes.
        assert inner.min(axis=(1, 2)).min() >= 118
        assert below.min() < 100
        # Semi-transparent, not opaque: what is behind shows through, so the box follows the scene.
        per_scene = [inner[s["start_frame"]: s["end_frame"]].mean() for s in v["scenes"]]
        assert max(per_scene) - min(per_scene) > 10


def test_idempotent_and_deterministic(samples, tmp_path):
    out, videos = samples
    before = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in os.listdir(out)}
    assert generate_samples(out) == videos
    assert {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in os.listdir(out)} == before

    other = tmp_path / "again"
    generate_samples(str(other))
    assert sha256s(str(other)) == sha256s(out)

    # A damaged file is not "the expected content": it is made again, identical.
    damaged = other / "sample_01.mp4"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    generate_samples(str(other))
    assert sha256s(str(other)) == sha256s(out)
    assert not [n for n in os.listdir(other) if "tmp" in n]


@pytest.mark.parametrize("kwargs", [
    {"n_videos": 0}, {"width": 321}, {"height": 0}, {"fps": 0},
    {"scene_s": ()}, {"scene_s": (2.0, -1.0)}, {"scene_s": (0.01,)},
])
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        SamplesConfig(**kwargs)


def test_ffmpeg_lookup_and_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATE_FFMPEG", "/opt/my/ffmpeg")
    assert ffmpeg_exe() == "/opt/my/ffmpeg"
    with pytest.raises(RuntimeError, match="ffmpeg failed"):
        generate_samples(str(tmp_path), SamplesConfig(n_videos=1), ffmpeg="false")
    assert not os.path.exists(tmp_path / "sample_00.mp4")
    monkeypatch.delenv("CURATE_FFMPEG")
    monkeypatch.setenv("PATH", str(tmp_path))  # no ffmpeg on PATH: the build imageio-ffmpeg ships
    assert "imageio_ffmpeg" in ffmpeg_exe()
