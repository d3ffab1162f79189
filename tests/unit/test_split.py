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
