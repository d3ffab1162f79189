import numpy as np
import pytest

from stages.split import SplitConfig, detect_cuts, make_clip_id, scenes_from_cuts
from stages.stream import run_windows


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
    "frames, windows, rest",
    [
        (40, [], (0, 40)),  # 1.6 s < min 2 s: all of it too short
        (50, [(0, 50)], None),  # exactly 2 s
        (250, [(0, 250)], None),  # exactly max 10 s
        (251, [(0, 201), (201, 251)], None),  # 10.04 s: a 0.04 s rest is not left: 8.04 + 2
        (625, [(0, 250), (250, 500), (500, 625)], None),  # 25 s: 10 + 10 + 5
        (275, [(0, 225), (225, 275)], None),  # 11 s: 9 + 2
    ],
)
def test_run_windows(frames, windows, rest):
    """Windows of max_clip_s (25 fps, min 2 s, max 10 s), the one before the last ending early so that no
    rest shorter than min_clip_s is left."""
    times = [k / 25 for k in range(frames)]
    assert run_windows(times, 0, frames, frames / 25, 2.0, 10.0) == (windows, rest)


def test_run_windows_leaves_a_rest_only_when_no_two_windows_fit():
    times = [k / 25 for k in range(90)]  # 3.6 s, min 2, max 3: no two windows of >= 2 s and <= 3 s
    assert run_windows(times, 0, 90, 3.6, 2.0, 3.0) == ([(0, 75)], (75, 90))
    # a run inside a longer list of frames, ending at a later frame's time (the next run's start)
    times = [k / 10 for k in range(100)]
    assert run_windows(times, 20, 70, 7.0, 1.0, 2.0) == ([(20, 40), (40, 60), (60, 70)], None)


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
@pytest.mark.parametrize("one_pass", [True, False], ids=["one-pass", "two-pass"])
def test_windows_lose_no_content_at_run_ends(tmp_path, ffmpeg, seconds, min_clip_s, max_clip_s, expected, one_pass):
    """One shot of `seconds` (25 fps, no cut, no blank): windows of max_clip_s, except that a rest shorter
    than min_clip_s is avoided by ending the window before it early (seen through the look-ahead in one
    pass); both modes cut the same windows."""
    import subprocess

    import pyarrow as pa

    from stages.ingest import Ingest
    from stages.media import EncodeSettings
    from stages.split import Split

    path = tmp_path / "shot.mp4"
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", f"testsrc2=s=128x72:r=25:d={seconds}",
                    "-c:v", "libx264", "-preset", "ultrafast", str(path)], check=True)  # fmt: skip
    src = Ingest()(pa.table({"uri": [str(path)], "license": ["CC0-1.0"]}))
    cfg = SplitConfig(min_clip_s=min_clip_s, max_clip_s=max_clip_s, encode=EncodeSettings(preset="ultrafast"), one_pass=one_pass)
    row = Split(cfg, str(tmp_path / "clips"))(src).to_pylist()[0]
    assert row["status"] == "ok", row["error"]
    assert [(s["start_frame"], s["end_frame"]) for s in row["scenes"]] == [(0, round(seconds * 25))]
    assert [(c["start_frame"], c["end_frame"], c["status"]) for c in row["clips"]] == expected
    for c in row["clips"]:
        assert (c["reason"] == "too_short") == (c["status"] == "filtered")
        assert c["status"] != "kept" or min_clip_s - 1e-9 <= c["duration_s"] <= max_clip_s + 1e-9


def test_split_cache_is_keyed_by_settings_and_split_rules(monkeypatch):
    """A rerun reuses a cached split only when the settings and the code's SPLIT_RULES are the same."""
    import curate.plan as plan

    base = plan.split_key(SplitConfig())
    assert plan.split_key(SplitConfig()) == base
    assert plan.split_key(SplitConfig(max_clip_s=5.0)) != base
    monkeypatch.setattr(plan, "SPLIT_RULES", plan.SPLIT_RULES + 1)
    assert plan.split_key(SplitConfig()) != base
