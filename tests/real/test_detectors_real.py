"""Every detector of `split.detector` on real footage, fed the one low-resolution analysis decode."""

import numpy as np
import pytest

from stages.media import Decoded, iter_frames
from stages.shots import FrameStats, TransNetV2Detector, confirm_hard_cuts, load_transnetv2
from stages.split import SplitConfig, analyse

_FRAMES: dict[str, list] = {}


def frames_of(videos, name):
    if name not in _FRAMES:
        _FRAMES[name] = list(iter_frames(str(videos / name), 128, Decoded()))
    return _FRAMES[name]


def hard_cuts(gt, name):
    return gt[name].get("hard_cuts_decode_index", gt[name].get("hard_cuts"))


@pytest.mark.parametrize(
    "detector, name",
    [("content", "bikes.mp4"), ("content", "testvideo.mp4"), ("content", "goldeneye-vfr-drop3.mp4"),
     ("transnetv2", "bikes.mp4"), ("transnetv2", "goldeneye-vfr-drop3.mp4")],
)  # fmt: skip
def test_detectors_give_the_hard_cuts(videos, ground_truth, detector, name):
    cuts, _ = analyse(frames_of(videos, name), 25.0, SplitConfig(detector=detector))
    assert cuts == hard_cuts(ground_truth, name)


def test_transnetv2_on_testvideo(videos, ground_truth):
    """Streamed, TransNetV2 gives what the package's own whole-video prediction gives at 0.5 (ground
    truth; cut = last frame above the threshold + 1), which marks the middle of fades too; hard-cut
    confirmation leaves the two hard cuts."""
    det = TransNetV2Detector(0.5, load_transnetv2())
    stats = FrameStats()
    for t, img in frames_of(videos, "testvideo.mp4"):
        det.push(t, img)
        stats.push(img)
    raw = det.finish()
    assert raw == ground_truth["testvideo.mp4"]["transnetv2_0.5"]
    assert len(det.probabilities) == 720
    assert confirm_hard_cuts(raw, stats.diff, SplitConfig().hard_cut_ratio) == hard_cuts(ground_truth, "testvideo.mp4")


def test_threshold_detector_finds_fades_to_black(videos, ground_truth):
    cuts, _ = analyse(frames_of(videos, "fades.mp4"), 25.0, SplitConfig(detector="threshold"))
    assert cuts == ground_truth["fades.mp4"]["pyscenedetect_expectations"]["ThresholdDetector() default"]


@pytest.mark.parametrize("detector", ["adaptive", "content", "transnetv2"])
def test_no_cut_in_one_shot_footage(videos, detector):
    for name in ("bigbuckbunny.mp4", "fades.mp4") if detector != "transnetv2" else ("bigbuckbunny.mp4",):
        assert analyse(frames_of(videos, name), 25.0, SplitConfig(detector=detector))[0] == [], name


def test_stride_cuts_by_timestamp_on_vfr(videos):
    frames = frames_of(videos, "goldeneye-vfr-drop3.mp4")
    cuts, _ = analyse(frames, 23.976, SplitConfig(detector="stride", stride_s=2.0))
    times = np.array([t for t, _ in frames])
    assert cuts and all(times[c] >= 2.0 * (i + 1) - 1e-6 > times[c - 1] for i, c in enumerate(cuts))


@pytest.mark.gpu
def test_transnetv2_runs_on_the_gpu_with_the_same_cuts(videos, ground_truth):
    import torch

    model = load_transnetv2()
    assert torch.cuda.is_available() and str(model.device).startswith("cuda")
    det = TransNetV2Detector(0.5, model)
    for t, img in frames_of(videos, "testvideo.mp4"):
        det.push(t, img)
    assert det.finish() == ground_truth["testvideo.mp4"]["transnetv2_0.5"]
