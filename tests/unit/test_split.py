import numpy as np
import pytest

from stages.split import SplitConfig, clip_windows, detect_cuts, make_clip_id, scenes_from_cuts


def solid(value, n):
    return [(i / 25, np.full((24, 32, 3), value, np.uint8)) for i in range(n)]


def noisy(seed, n):
    """A smooth random picture panning one pixel per frame (pixel noise would change as much per frame as a cut)."""
    import cv2

    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.uniform(0, 255, (4, 5, 3)).astype(np.float32), (32, 24), interpolation=cv2.INTER_CUBIC)
    base = base.clip(0, 255).astype(np.uint8)
    return [(i / 25, np.roll(base, i, axis=1)) for i in range(n)]


def test_detect_cuts_reports_decode_indices():
    frames = noisy(0, 40) + solid(200, 30) + noisy(1, 40)
    assert detect_cuts(frames, 25.0, SplitConfig()) == [40, 70]


def test_min_scene_length_suppresses_close_cuts():
    frames = noisy(0, 40) + solid(200, 5) + noisy(1, 40)
    assert detect_cuts(frames, 25.0, SplitConfig(min_scene_s=0.5)) == [40]


def test_scenes_cover_every_frame_once():
    times = np.arange(100) / 25
    scenes = scenes_from_cuts([30, 76], times, end_s=4.0)
    assert [(s["start_frame"], s["end_frame"]) for s in scenes] == [(0, 30), (30, 76), (76, 100)]
    assert scenes[1]["start_s"] == pytest.approx(1.2) and scenes[-1]["end_s"] == 4.0


@pytest.mark.parametrize(
    "frames, expected",
    [
        (40, []),  # 1.6 s < min 2 s
        (50, [(0, 50)]),  # exactly 2 s
        (250, [(0, 250)]),  # exactly max 10 s
        (251, [(0, 126), (126, 251)]),
        (625, [(0, 208), (208, 417), (417, 625)]),  # 25 s -> three equal windows
    ],
)
def test_clip_windows(frames, expected):
    scene = {"start_frame": 0, "end_frame": frames, "start_s": 0.0, "end_s": frames / 25}
    assert clip_windows(scene, SplitConfig(min_clip_s=2.0, max_clip_s=10.0)) == expected


def test_clip_ids_are_deterministic_keys():
    cid = make_clip_id("0123456789abcdef", 30, 76, "a1b2c3")
    assert cid == "0123456789abcdef_000030_000076_a1b2c3"
    assert "." not in cid


def test_config_checks():
    with pytest.raises(ValueError, match="min_clip_s"):
        SplitConfig(min_clip_s=5, max_clip_s=2)
    with pytest.raises(ValueError, match="analysis_width"):
        SplitConfig(analysis_width=7)


@pytest.mark.parametrize(
    "seconds, min_clip_s, max_clip_s, expected",
    [
        (12.0, 2.0, 5.0, [(0, 125, "kept"), (125, 250, "kept"), (250, 300, "kept")]),  # the rest is 2 s: as cut
        # a 1 s rest would be lost: the window before it ends early, so the last one is min_clip_s
        (11.0, 2.0, 5.0, [(0, 125, "kept"), (125, 225, "kept"), (225, 275, "kept")]),
        (11.52, 2.0, 5.0, [(0, 125, "kept"), (125, 238, "kept"), (238, 288, "kept")]),
        (4.4, 2.0, 3.0, [(0, 60, "kept"), (60, 110, "kept")]),
        # no way to make two windows of at least 2 s out of 3.6 s with none over 3 s: the rest is too_short
        (3.6, 2.0, 3.0, [(0, 75, "kept"), (75, 90, "filtered")]),
    ],
)
def test_one_pass_windows_lose_no_content_at_run_ends(tmp_path, ffmpeg, seconds, min_clip_s, max_clip_s, expected):
    """One shot of `seconds` (25 fps, no cut, no blank): one-pass windows of max_clip_s, except that a rest
    shorter than min_clip_s is avoided by ending the window before it early (seen through the look-ahead)."""
    import subprocess

    import pyarrow as pa

    from stages.ingest import Ingest
    from stages.media import EncodeSettings
    from stages.split import Split

    path = tmp_path / "shot.mp4"
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", f"testsrc2=s=128x72:r=25:d={seconds}",
                    "-c:v", "libx264", "-preset", "ultrafast", str(path)], check=True)  # fmt: skip
    src = Ingest()(pa.table({"uri": [str(path)], "license": ["CC0-1.0"]}))
    cfg = SplitConfig(min_clip_s=min_clip_s, max_clip_s=max_clip_s, encode=EncodeSettings(preset="ultrafast"))
    row = Split(cfg, str(tmp_path / "clips"))(src).to_pylist()[0]
    assert row["status"] == "ok", row["error"]
    assert [(s["start_frame"], s["end_frame"]) for s in row["scenes"]] == [(0, round(seconds * 25))]
    assert [(c["start_frame"], c["end_frame"], c["status"]) for c in row["clips"]] == expected
    for c in row["clips"]:
        assert (c["reason"] == "too_short") == (c["status"] == "filtered")
        assert c["status"] != "kept" or min_clip_s - 1e-9 <= c["duration_s"] <= max_clip_s + 1e-9
