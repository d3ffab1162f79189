"""Camera motion labels: known camera moves simulated over a generated picture and a real frame (encoded
with libx264, so the codec's own vectors are read), static cameras with things moving in front of them,
and the robust fit itself on fields with outliers."""

import numpy as np
import pyarrow as pa
import pytest

from curate.bench.camera import segments, simulate, still
from schemas import CLIPS
from stages.camera import CameraWindow, fit_window, label, summarize_camera
from stages.motion import MotionConfig, ScoreMotion, measure

MOVES = {"static": "static", "pan_left": "pan_left", "pan_right": "pan_right", "tilt_up": "tilt_up",
         "tilt_down": "tilt_down", "zoom_in": "zoom_in", "zoom_out": "zoom_out", "diagonal": "complex", "roll": "complex"}


def _generated_picture() -> np.ndarray:
    """Random blobs and lines on a gradient: texture everywhere, nothing periodic."""
    import cv2

    rng = np.random.default_rng(3)
    h, w = 540, 960
    img = np.dstack([np.tile(np.linspace(40, 200, w), (h, 1))] * 3).astype(np.uint8)
    for _ in range(300):
        c = tuple(int(v) for v in rng.integers(0, 255, 3))
        if rng.random() < 0.5:
            cv2.circle(img, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(4, 40)), c, -1)
        else:
            cv2.line(img, (int(rng.integers(0, w)), int(rng.integers(0, h))), (int(rng.integers(0, w)), int(rng.integers(0, h))), c, 3)
    return img


@pytest.fixture(scope="module")
def pictures(videos):
    return {"generated": _generated_picture(), "real": still(str(videos / "bigbuckbunny.mp4"), 2.0)}


@pytest.mark.parametrize("picture", ["generated", "real"])
@pytest.mark.parametrize("move", list(MOVES))
def test_each_camera_move_gets_its_label(pictures, move, picture, tmp_path):
    speed = 0.12 if move in ("pan_left", "pan_right", "tilt_up", "tilt_down", "diagonal") else 0.15
    path = simulate(str(tmp_path / f"{move}.mp4"), pictures[picture], move, 0.0 if move == "static" else speed, seconds=1.2, size=(256, 144))
    m = measure(path, MotionConfig())
    assert m.camera.motion == MOVES[move], (move, m.camera)
    if move in ("pan_right", "tilt_up", "zoom_in"):  # signs are the camera's
        assert max(m.camera.pan, m.camera.tilt, m.camera.zoom) > 0
    if move in ("pan_left", "tilt_down", "zoom_out"):
        assert min(m.camera.pan, m.camera.tilt, m.camera.zoom) < 0


def test_flow_method_labels_the_same_moves(pictures, tmp_path):
    for move in ("pan_right", "tilt_down", "zoom_in", "static"):
        path = simulate(str(tmp_path / f"{move}.mp4"), pictures["real"], move, 0.0 if move == "static" else 0.12, seconds=1.2, size=(256, 144))
        assert measure(path, MotionConfig(method="flow")).camera.motion == move


@pytest.mark.parametrize("name", ["vtest.avi", "traffic_camera.mp4"])
def test_static_camera_with_people_and_cars_moving_is_static(videos, name):
    """Real static cameras: people walking (vtest.avi), cars passing (traffic_camera.mp4). The first 6 s,
    in 2 s pieces measured from the source's vectors as the one-pass split does."""
    import av

    cut = str(videos / name)
    cfg = MotionConfig()
    with av.open(cut) as c:
        fps = float(c.streams.video[0].average_rate)
    labels = segments(cut, 2.0, cfg, max_s=6.0)
    assert len(labels) == 3 and set(labels) == {"static"}, (labels, fps)


def test_fit_ignores_foreground_moving_on_its_own():
    rng = np.random.default_rng(0)
    gh, gw = 30, 40
    dx = np.full((gh, gw), -2.0, np.float32)  # the picture moves 2 px left a frame: the camera pans right
    dy = rng.normal(0, 0.1, (gh, gw)).astype(np.float32)
    dx[5:20, 10:25] = 6.0  # a car going the other way, 19% of the frame
    dy[5:20, 10:25] = 1.0
    dx.ravel()[rng.choice(gh * gw, 120, replace=False)] = 0.0  # intra blocks without vectors
    w = fit_window(dx, dy, 16, float(np.hypot(gw * 16, gh * 16)), 25.0)
    assert w.pan == pytest.approx(2.0 / np.hypot(640, 480) * 25 * 100, rel=0.05)
    assert abs(w.tilt) < 0.2 and abs(w.zoom) < 0.01 and 0.6 < w.inliers < 0.9
    assert label(w, 2.0, 0.5) == "pan_right"


def test_clip_label_is_complex_when_windows_disagree_and_none_without_windows():
    left, right = CameraWindow(-10, 0, 0, 0, 1), CameraWindow(10, 0, 0, 0, 1)
    still_w = CameraWindow(0, 0, 0, 0, 1)
    assert summarize_camera([left, left, still_w], 2.0, 0.5).motion == "pan_left"
    # the medians say pan_right, but only one window of five pans right alone (two also tilt, two stand still)
    diag = CameraWindow(10, 6, 0, 0, 1)
    assert summarize_camera([diag, diag, right, still_w, still_w], 2.0, 0.5).motion == "complex"
    assert summarize_camera([right, right, right, still_w, still_w], 2.0, 0.5).motion == "pan_right"
    assert summarize_camera([], 2.0, 0.5) is None and summarize_camera([None], 2.0, 0.5) is None


def test_stage_writes_camera_columns(pictures, tmp_path):
    path = simulate(str(tmp_path / "p.mp4"), pictures["real"], "pan_left", 0.12, seconds=1.2, size=(256, 144))
    table = pa.Table.from_pylist([{**{f.name: None for f in CLIPS}, "clip_id": "a", "source_id": "s", "status": "kept", "clip_uri": path}], schema=CLIPS)
    row = ScoreMotion(MotionConfig())(table).to_pylist()[0]
    assert row["camera_motion"] == "pan_left" and row["camera_pan"] < -2.0
    assert row["camera_tilt"] is not None and row["camera_zoom"] is not None
