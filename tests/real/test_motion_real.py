"""Motion on real footage, re-encoded with x264 as the split writes clips (its default preset): a frozen clip scores
near zero, a global brightness change is not motion, people walking before a static camera are, and
the traffic events of traffic_camera.mp4 score above the quiet stretches between them."""

import subprocess

import pytest

from stages.motion import MotionConfig, measure

ENC = ["-an", "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p"]
ROI = (631, 532, 210, 128)  # ground truth's ROI [631, 532, 210, 127], height made even for yuv420p


@pytest.fixture(scope="module")
def clips(tmp_path_factory, videos, ffmpeg):
    d = tmp_path_factory.mktemp("motion-real")

    def enc(name, src, *args):
        subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(videos / src), *args, *ENC, str(d / name)], check=True)
        return str(d / name)

    x, y, w, h = ROI
    out = {
        "walking": enc("walking.mp4", "vtest.avi", "-frames:v", "300"),
        "brightness": enc("brightness.mp4", "issue53_brightness_change.avi"),
        "frozen": enc("frozen.mp4", "vtest.avi", "-vf", "trim=end_frame=1,loop=loop=99:size=1,setpts=N/(10*TB)", "-frames:v", "100"),
    }
    # traffic events at frames [9,149], [358,491], [542,576]; quiet in between
    for name, (a, b) in {"event1": (20, 140), "quiet1": (170, 340), "event2": (370, 480), "quiet2": (495, 540)}.items():
        out[name] = enc(f"{name}.mp4", "traffic_camera.mp4",
                        "-vf", f"trim=start_frame={a}:end_frame={b},setpts=PTS-STARTPTS,crop={w}:{h}:{x}:{y}")
    return out


@pytest.mark.parametrize("method", ["vectors", "flow"])
def test_frozen_brightness_and_walking(clips, method):
    cfg = MotionConfig(method=method)
    s = {k: measure(clips[k], cfg).score for k in ("walking", "brightness", "frozen")}
    assert s["frozen"] < 0.05 * s["walking"], s
    # Measured here: vectors 0.06 vs 0.13, flow 0.05 vs 0.69. What remains in the brightness clip is
    # real: plants moving in the wind at the right (the ramp itself is lost in the median over windows).
    assert s["brightness"] < (0.6 if method == "vectors" else 0.2) * s["walking"], s


@pytest.mark.parametrize("method", ["vectors", "flow"])
def test_traffic_events_score_above_quiet_stretches(clips, method):
    cfg = MotionConfig(method=method)
    s = {k: measure(clips[k], cfg).score for k in ("event1", "quiet1", "event2", "quiet2")}
    assert min(s["event1"], s["event2"]) > 2 * max(s["quiet1"], s["quiet2"]), s
