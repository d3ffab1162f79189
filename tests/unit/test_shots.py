"""Frame statistics, hard-cut confirmation, blank/transition labels and the stride detector on
generated frames with known answers."""

import numpy as np
import pyarrow as pa
import pytest

from stages.shots import BLANK, CONTENT, TRANSITION, FrameStats, LabelSettings, StrideDetector, confirm_hard_cuts, label_frames, runs
from stages.split import SplitConfig, analyse

SETTINGS = LabelSettings(blank_max_std=6.0, ramp_min_frames=6, ramp_min_step=0.3, ramp_max_curve=0.6, margin_frames=2)


def picture(seed):
    """A smooth random picture (blobs, not pixel noise), so that motion changes it a little per frame."""
    import cv2

    rng = np.random.default_rng(seed)
    return cv2.resize(rng.uniform(30, 220, (5, 8, 3)).astype(np.float32), (64, 36), interpolation=cv2.INTER_CUBIC).clip(0, 255)


def moving(seed, n):
    """A pan: the picture slides one pixel per frame."""
    base = picture(seed)
    return [np.roll(base, i, axis=1).round().astype(np.uint8) for i in range(n)]


def fade(img, n, to_black):
    """n frames of a linear fade of `img` (uint8) to black (or from black)."""
    ws = np.linspace(1, 0, n + 2)[1:-1] if to_black else np.linspace(0, 1, n + 2)[1:-1]
    return [(img.astype(np.float32) * w).round().astype(np.uint8) for w in ws]


def black(n):
    return [np.zeros((36, 64, 3), np.uint8) for _ in range(n)]


def stats_of(frames):
    s = FrameStats()
    for f in frames:
        s.push(f)
    return s


def timed(frames, fps=25.0):
    return [(i / fps, f) for i, f in enumerate(frames)]


# A: 40 moving frames, a 20-frame fade to black, 15 black, a 20-frame fade in to B, 40 moving frames of B.
A, B = moving(1, 40), moving(2, 40)
FADE_OUT = fade(A[-1], 20, to_black=True)
FADE_IN = fade(B[0], 20, to_black=False)
SEQUENCE = A + FADE_OUT + black(15) + FADE_IN + B  # 135 frames; fade out 40..59, black 60..74, fade in 75..94


def test_labels_blank_and_transitions_with_margins():
    labels = label_frames(stats_of(SEQUENCE), SETTINGS)
    assert labels[60:75].tolist() == [BLANK] * 15
    # the dark ends of the fades are blank too; nothing of the fades is content, and a margin is trimmed
    assert CONTENT not in labels[40:95].tolist()
    assert TRANSITION in labels[40:60].tolist() and TRANSITION in labels[75:95].tolist()
    assert labels[:36].tolist() == [CONTENT] * 36 and labels[99:].tolist() == [CONTENT] * 36
    assert labels[38:40].tolist() == [TRANSITION] * 2  # margin_frames before the fade's first frame
    kinds = [k for k, _, _ in runs(labels, 0, len(labels))]
    assert kinds[0] == CONTENT and kinds[-1] == CONTENT and BLANK in kinds


def test_motion_is_not_a_transition():
    labels = label_frames(stats_of(moving(3, 60)), SETTINGS)
    assert set(labels.tolist()) == {CONTENT}


def test_dissolve_is_a_transition():
    a, b = picture(4), picture(5)
    frames = [a.astype(np.uint8)] * 20 + [((1 - w) * a + w * b).round().astype(np.uint8) for w in np.linspace(0, 1, 22)[1:-1]]
    frames += [b.astype(np.uint8)] * 20
    labels = label_frames(stats_of(frames), SETTINGS)
    assert CONTENT not in labels[20:40].tolist()
    assert labels[:15].tolist() == [CONTENT] * 15 and labels[-15:].tolist() == [CONTENT] * 15


def test_constant_frames_are_blank_whatever_their_level():
    frames = [np.full((36, 64, 3), v, np.uint8) for v in (0, 128, 255)]
    assert label_frames(stats_of(frames), SETTINGS).tolist() == [BLANK] * 3


def test_hard_cut_confirmation_keeps_spikes_and_drops_fade_steps():
    stats = stats_of(A + B)  # a hard cut at 40
    assert confirm_hard_cuts([40], stats.diff, 1.5) == [40]
    stats = stats_of(SEQUENCE)
    assert confirm_hard_cuts([45, 60, 76], stats.diff, 1.5) == []  # inside fades, start of black
    assert confirm_hard_cuts([45, 60, 76], stats.diff, 0.0) == [45, 60, 76]  # 0 keeps every cut


def test_default_detector_gives_hard_cuts_only():
    frames = A + B + fade(B[-1], 20, to_black=True) + black(15)
    cuts, stats = analyse(timed(frames), 25.0, SplitConfig())
    assert cuts == [40]
    assert len(stats.mean) == len(frames)


@pytest.mark.parametrize("detector", ["content", "adaptive"])
def test_pyscenedetect_detectors_report_decode_indices(detector):
    frames = moving(6, 30) + moving(7, 30) + moving(8, 30)
    assert analyse(timed(frames), 25.0, SplitConfig(detector=detector))[0] == [30, 60]


def test_threshold_detector_cuts_in_fades_to_black():
    frames = A + black(20) + B
    cuts, _ = analyse(timed(frames), 25.0, SplitConfig(detector="threshold"))
    assert len(cuts) == 1 and 40 <= cuts[0] <= 60


def test_stride_cuts_follow_timestamps_not_frame_counts():
    # variable frame rate: steps of 40 ms then 80 ms; a cut at the first frame at or after each 2 s
    times = list(np.arange(0, 2.0, 0.04)) + list(np.arange(2.0, 5.0, 0.08))
    det = StrideDetector(2.0)
    for t in times:
        det.push(float(t), None)
    assert det.finish() == [50, 50 + 25]  # 2.0 s is frame 50, 4.0 s is 25 frames of 80 ms later


def test_split_config_checks_new_keys():
    with pytest.raises(ValueError, match="stride_s"):
        SplitConfig(stride_s=0)
    with pytest.raises(ValueError, match="ramp_min_frames"):
        SplitConfig(ramp_min_frames=1)


def test_blank_and_transition_rows(tmp_path, ffmpeg):
    """The stage makes `filtered` rows with reasons blank / transition and keeps content clips only."""
    import av

    from stages.media import EncodeSettings
    from stages.split import Split

    path = tmp_path / "fade.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 36, "yuv420p"
        s.options = {"crf": "0", "preset": "ultrafast"}  # lossless: the statistics are the generated ones
        for f in SEQUENCE:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="bgr24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    from stages.ingest import Ingest

    src = Ingest()(pa.table({"uri": [str(path)], "license": ["CC0-1.0"]}))
    cfg = SplitConfig(analysis_width=64, min_clip_s=1.0, transition_margin_s=0.08, encode=EncodeSettings(preset="ultrafast"))
    row = Split(cfg, str(tmp_path / "clips"))(src).to_pylist()[0]
    assert row["status"] == "ok", row["error"]
    assert [s["start_frame"] for s in row["scenes"]] == [0]
    clips = row["clips"]
    assert [c["start_frame"] for c in clips] == sorted(c["start_frame"] for c in clips)
    assert sum(c["end_frame"] - c["start_frame"] for c in clips) == len(SEQUENCE)  # every frame accounted once
    kept = [(c["start_frame"], c["end_frame"]) for c in clips if c["status"] == "kept"]
    assert kept and all(b <= 38 or a >= 97 for a, b in kept)
    assert {c["reason"] for c in clips if c["status"] == "filtered"} >= {"blank", "transition"}
    blank = [c for c in clips if c["reason"] == "blank"]
    assert any(c["start_frame"] <= 60 and c["end_frame"] >= 75 for c in blank)


def test_an_unknown_encoder_is_an_encode_error_not_a_bad_source(videos, tmp_path):
    from stages.ingest import Ingest
    from stages.media import EncodeSettings
    from stages.split import Split

    src = Ingest()(pa.table({"uri": [str(videos / "counter.mp4")], "license": ["CC0-1.0"]}))
    row = Split(SplitConfig(min_clip_s=0.3, encode=EncodeSettings(codec="no_such_encoder")), str(tmp_path))(src).to_pylist()[0]
    assert (row["status"], row["reason"]) == ("error", "encode_error")
    assert "no_such_encoder" in row["error"]
