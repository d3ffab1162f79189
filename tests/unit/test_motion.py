"""Motion scores on generated media with known motion: frozen, and one pattern scrolling at the same
speed in frame widths per second at different sizes and frame rates."""

import subprocess

import pyarrow as pa
import pytest

from schemas import CLIPS
from stages.motion import MotionConfig, ScoreMotion, measure


def _make(ffmpeg, path, w, h, fps, seconds, widths_per_s):
    """testsrc's first frame, scrolled sideways by `widths_per_s` frame widths per second (0: frozen)."""
    n = round(fps * seconds)
    graph = f"testsrc=s={w}x{h}:r={fps},trim=end_frame=1,loop=loop={n - 1}:size=1,setpts=N/({fps}*TB)"
    if widths_per_s:
        graph += f",scroll=h={widths_per_s / fps:.6f}"
    subprocess.run([ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i", graph, "-frames:v", str(n), "-c:v", "libx264",
                    "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", str(path)], check=True)
    return str(path)


@pytest.fixture(scope="module")
def media(tmp_path_factory, ffmpeg):
    d = tmp_path_factory.mktemp("motion")
    return {
        "frozen": _make(ffmpeg, d / "frozen.mp4", 320, 240, 25, 2, 0),
        "small_25": _make(ffmpeg, d / "small_25.mp4", 320, 240, 25, 2, 0.05),
        "large_25": _make(ffmpeg, d / "large_25.mp4", 640, 480, 25, 2, 0.05),
        "small_50": _make(ffmpeg, d / "small_50.mp4", 320, 240, 50, 2, 0.05),
        "fast": _make(ffmpeg, d / "fast.mp4", 320, 240, 25, 2, 0.15),
    }


@pytest.mark.parametrize("method", ["vectors", "flow"])
def test_frozen_is_zero_and_scores_compare_across_size_and_frame_rate(media, method):
    cfg = MotionConfig(method=method)
    s = {k: measure(p, cfg).score for k, p in media.items()}
    assert s["frozen"] < 0.02 * s["small_25"]
    # 0.05 frame widths per second = 4% of the diagonal (4:3) per second: the unit of motion_score
    assert 2.0 < s["small_25"] < 6.0, s
    assert s["large_25"] == pytest.approx(s["small_25"], rel=0.3)
    assert s["small_50"] == pytest.approx(s["small_25"], rel=0.3)
    assert s["fast"] == pytest.approx(3 * s["small_25"], rel=0.35)


def test_stage_scores_kept_clips_and_leaves_the_rest(media, tmp_path):
    rows = [
        {"clip_id": "a", "source_id": "s", "status": "kept", "clip_uri": media["small_25"]},
        {"clip_id": "b", "source_id": "s", "status": "filtered", "reason": "too_short", "clip_uri": None},
        {"clip_id": "c", "source_id": "s", "status": "kept", "clip_uri": str(tmp_path / "gone.mp4")},
    ]
    table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in CLIPS} for r in rows], schema=CLIPS)
    out = ScoreMotion(MotionConfig())(table).to_pylist()
    assert out[0]["motion_score"] > 1 and out[0]["motion_min_region"] <= out[0]["motion_score"] and out[0]["motion_method"] == "vectors"
    assert out[1]["motion_score"] is None and out[1]["status"] == "filtered" and out[1]["reason"] == "too_short"
    assert out[2]["motion_score"] is None and (out[2]["status"], out[2]["reason"]) == ("error", "score_error")
    assert "gone.mp4" in out[2]["error"] and out[2]["error"].startswith("motion:")


def test_frames_are_freed_while_vectors_are_read(media, monkeypatch):
    """PyAV's frame.side_data makes a Frame <-> side data reference cycle; without collecting it as we
    go, ~100 full-size decoded frames pile up between the collector's own runs (memory and time)."""
    import gc

    import av

    import stages.motion as motion

    alive, seen = [], [0]
    real = motion.frame_vectors

    def counting(frame):
        seen[0] += 1
        if seen[0] % 10 == 0:
            alive.append(sum(1 for o in gc.get_objects() if isinstance(o, av.VideoFrame)))
        return real(frame)

    monkeypatch.setattr(motion, "frame_vectors", counting)
    maps = motion.vector_windows(media["fast"], 0.5)
    assert seen[0] == 50 and len(maps) == 4
    assert max(alive) <= 20, alive
    assert not gc.isenabled() or gc.get_freeze_count() == 0  # everything frozen for the read is unfrozen


def test_vectors_are_read_without_frame_threads(media):
    """FFmpeg's frame-threaded H.264 decoding exported different vectors for a B-frame from run to
    run under load; vectors are read with slice threads, and the same clip scores the same every time."""
    from stages.motion import VECTOR_THREADS, open_with_vectors, vector_windows

    c, s = open_with_vectors(media["fast"])
    with c:
        assert VECTOR_THREADS == "SLICE" and "FRAME" not in str(s.thread_type)
    first = vector_windows(media["fast"], 0.5)
    for _ in range(3):
        again = vector_windows(media["fast"], 0.5)
        assert all((a == b).all() for a, b in zip(first, again)) and len(first) == len(again)
