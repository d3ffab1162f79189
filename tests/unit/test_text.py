"""Burned-in text and NSFW scores with the real models from the rapidocr and nudenet wheels, on clips
generated here with text drawn at a known place (OpenCV putText, encoded with PyAV)."""

import socket

import av
import cv2
import numpy as np
import pyarrow as pa
import pytest

from stages.nsfw import EXPOSED, NsfwConfig, NsfwModel, ScoreNsfw, nsfw_stats
from stages.text import OcrModel, ScoreText, TextConfig, packaged_models, text_masks, text_stats

W, H = 640, 360
TITLE = "HELLO WORLD"
TITLE_AT = (170, 80)  # putText's origin: the baseline's left end
LINES = ["the quick brown fox", "jumps over the lazy dog", "seven silver swans", "a bright blue kite"]


def _background(i: int) -> np.ndarray:
    """A smooth colour field that drifts from frame to frame (no edges that look like letters)."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    r = 110 + 60 * np.sin((x + 4 * i) / 90.0)
    g = 120 + 50 * np.cos((y + 3 * i) / 70.0)
    b = 140 + 40 * np.sin((x + y + 5 * i) / 120.0)
    return np.clip(np.dstack([b, g, r]), 0, 255).astype(np.uint8)


def _write(path, n=40, title=False, subtitles=False):
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.options = {"crf": "18", "preset": "ultrafast"}
        for i in range(n):
            f = _background(i)
            if title:
                cv2.putText(f, TITLE, TITLE_AT, cv2.FONT_HERSHEY_SIMPLEX, 1.6, (255, 255, 255), 4, cv2.LINE_AA)
            if subtitles:  # a different line every 10 frames, bottom centre, with a dark border
                line = LINES[(i // 10) % len(LINES)]
                (tw, _), _ = cv2.getTextSize(line, cv2.FONT_HERSHEY_DUPLEX, 1.0, 2)
                org = ((W - tw) // 2, H - 30)
                cv2.putText(f, line, org, cv2.FONT_HERSHEY_DUPLEX, 1.0, (0, 0, 0), 6, cv2.LINE_AA)
                cv2.putText(f, line, org, cv2.FONT_HERSHEY_DUPLEX, 1.0, (255, 255, 255), 2, cv2.LINE_AA)
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="bgr24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("text")
    return {
        "clean": _write(d / "clean.mp4"),
        "title": _write(d / "title.mp4", title=True),
        "subtitles": _write(d / "subtitles.mp4", subtitles=True),
        "broken": str(d / "broken.mp4"),
    }


@pytest.fixture(scope="module")
def ocr():
    return OcrModel(TextConfig())


def _rows(paths):
    return pa.Table.from_pylist([{"clip_id": f"c{i}", "source_id": "s", "status": "kept", "clip_uri": p, "n_frames": 40}
                                 for i, p in enumerate(paths)])


def test_packaged_models_load_offline_without_a_download(monkeypatch):
    import rapidocr.utils.download_file as dl

    def refuse(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(dl.DownloadFile, "run", classmethod(refuse))
    monkeypatch.setattr(socket.socket, "connect", refuse)
    paths = packaged_models()
    assert all("/rapidocr/models/" in p for p in paths.values())
    model = OcrModel(TextConfig())
    frame = _background(0)
    cv2.putText(frame, TITLE, TITLE_AT, cv2.FONT_HERSHEY_SIMPLEX, 1.6, (255, 255, 255), 4, cv2.LINE_AA)
    boxes = model.detect([frame])
    assert len(boxes[0]) >= 1 and any(model.read([frame], boxes)[0])
    nsfw = NsfwModel(NsfwConfig())
    assert nsfw([frame]) == [[]]
    assert nsfw.detector.onnx_session.get_session_options().intra_op_num_threads == 1


def test_drawn_text_is_found_where_it_was_drawn_and_read(clips, ocr):
    out = ScoreText(TextConfig(), ocr)(_rows([clips["title"]])).to_pylist()[0]
    (tw, th), base = cv2.getTextSize(TITLE, cv2.FONT_HERSHEY_SIMPLEX, 1.6, 4)
    drawn = np.zeros((H, W), bool)
    drawn[TITLE_AT[1] - th:TITLE_AT[1] + base, TITLE_AT[0]:TITLE_AT[0] + tw] = True
    # the boxes of a frame cover the drawn text and not much more
    frame = _background(0)
    cv2.putText(frame, TITLE, TITLE_AT, cv2.FONT_HERSHEY_SIMPLEX, 1.6, (255, 255, 255), 4, cv2.LINE_AA)
    boxes = ocr.detect([frame])[0]
    found = np.zeros((H, W), np.uint8)
    cv2.fillPoly(found, [b.reshape(-1, 1, 2) for b in boxes], 1)
    iou = (drawn & found.astype(bool)).sum() / (drawn | found.astype(bool)).sum()
    assert iou > 0.5, iou
    assert out["text_frames"] == 1.0
    assert 0.5 * drawn.mean() < out["text_area"] < 2.5 * drawn.mean()
    assert out["text_static"] > 0.7  # the title stays put
    assert "HELLO" in out["ocr_text"].upper() and "WORLD" in out["ocr_text"].upper()


def test_changing_subtitles_are_text_that_does_not_stay(clips, ocr):
    out = ScoreText(TextConfig(frames=4), ocr)(_rows([clips["subtitles"], clips["clean"]])).to_pylist()
    sub, clean = out
    assert sub["text_frames"] == 1.0 and sub["text_area"] > 0.02
    assert sub["text_static"] < 0.5  # four different lines: their boxes differ
    assert len(sub["ocr_text"].splitlines()) >= 3
    assert clean["text_area"] == 0.0 and clean["text_frames"] == 0.0 and clean["ocr_text"] == ""


def test_unreadable_clip_gets_nulls_and_a_reason_and_the_rest_is_scored(clips, ocr):
    with open(clips["broken"], "wb") as f:
        f.write(b"\x00\x00\x00\x18ftypmp42" + bytes(2000))
    batch = _rows([clips["title"], clips["broken"], "/nonexistent/clip.mp4"])
    out = ScoreText(TextConfig(), ocr)(batch).to_pylist()
    assert out[0]["status"] == "kept" and out[0]["text_area"] > 0
    for r in out[1:]:
        assert r["status"] == "error" and r["reason"] == "score_error" and r["error"].startswith("text: cannot read")
        assert r["text_area"] is None and r["ocr_text"] is None
    out = ScoreNsfw(NsfwConfig())(batch).to_pylist()
    assert out[0]["nsfw_score"] == 0.0 and [r["status"] for r in out] == ["kept", "error", "error"]
    assert out[1]["nsfw_score"] is None and out[1]["error"].startswith("nsfw: cannot read")


def test_detection_only_leaves_ocr_text_null(clips):
    out = ScoreText(TextConfig(recognize=False))(_rows([clips["title"]])).to_pylist()[0]
    assert out["text_area"] > 0 and out["ocr_text"] is None


def test_rows_that_are_not_kept_are_not_scored(clips, ocr):
    batch = pa.Table.from_pylist([{"clip_id": "a", "source_id": "s", "status": "filtered", "clip_uri": clips["title"]}])
    out = ScoreText(TextConfig(), ocr)(batch).to_pylist()[0]
    assert out["status"] == "filtered" and out["text_area"] is None


def test_text_static_ignores_blank_frames_and_needs_the_same_text():
    grey = np.full((40, 100, 3), 100, np.uint8) + np.arange(100, dtype=np.uint8)[None, :, None]
    frames = [np.zeros((40, 100, 3), np.uint8), grey, grey.copy()]  # a black frame of a fade, then two shown
    box = np.array([[10, 10], [90, 10], [90, 30], [10, 30]], np.int32)
    boxes = [np.zeros((0, 4, 2), np.int32), box[None], (box + 1)[None]]  # one pixel of jitter
    masks = text_masks(frames, boxes)
    got = text_stats(masks, frames, boxes, None)
    assert got["text_static"] == 1.0 and got["text_frames"] == pytest.approx(2 / 3)
    assert text_stats(masks, frames, boxes, [[], ["ABC"], ["ABC"]])["text_static"] == 1.0
    assert text_stats(masks, frames, boxes, [[], ["ABC"], ["XYZ"]])["text_static"] == 0.0  # a new line at the same place
    empty = [np.zeros((0, 4, 2), np.int32)] * 3
    assert text_stats(text_masks(frames, empty), frames, empty, None) == {"text_area": 0.0, "text_frames": 0.0, "text_static": 0.0}


def test_nsfw_score_counts_only_the_configured_classes():
    dets = [[{"class": "FACE_FEMALE", "score": 0.9, "box": [0, 0, 1, 1]}],
            [{"class": "FEET_EXPOSED", "score": 0.7, "box": [0, 0, 1, 1]}, {"class": "BUTTOCKS_EXPOSED", "score": 0.3, "box": [0, 0, 1, 1]}]]
    assert nsfw_stats(dets, EXPOSED, 0.5) == {"nsfw_score": 0.3, "nsfw_labels": ["FACE_FEMALE", "FEET_EXPOSED"]}
    assert nsfw_stats(dets, ("FEET_EXPOSED",), 0.8)["nsfw_score"] == 0.7
    assert nsfw_stats([[], []], EXPOSED, 0.5) == {"nsfw_score": 0.0, "nsfw_labels": []}
    with pytest.raises(ValueError, match="unknown"):
        NsfwConfig(classes=("NOT_A_CLASS",))


def test_the_score_step_decodes_each_clip_once_for_text_and_nsfw(clips, monkeypatch):
    import curate.score as score

    calls = []
    real = score.read_frames

    def counting(batch, n, size):
        calls.append((n, size))
        return real(batch, n, size)

    monkeypatch.setattr(score, "read_frames", counting)
    out = score._ImageModelsActor(TextConfig(), NsfwConfig())(_rows([clips["title"], clips["clean"]])).to_pylist()
    assert calls == [(4, 480)]  # one decode, at the larger of the two sizes
    assert out[0]["text_area"] > 0 and out[1]["text_area"] == 0 and all(r["nsfw_score"] == 0 for r in out)
    calls.clear()
    score._ImageModelsActor(TextConfig(frames=2), NsfwConfig(frames=3))(_rows([clips["clean"]]))
    assert sorted(calls) == [(2, 480), (3, 320)]  # different frames: each decodes its own
