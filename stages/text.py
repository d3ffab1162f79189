"""Burned-in text: PP-OCR text detection (+ recognition) on a few frames of each clip, via `rapidocr`.

Subtitles, titles, credits and tickers teach a video model to paint garbled letters. The models are
the ones the `rapidocr` wheel ships (`rapidocr/models/`: PP-OCRv6 small detection and recognition,
ONNX, on onnxruntime); their paths are given to RapidOCR explicitly, so it never looks for (or
downloads) anything. Detection runs on `frames` evenly spaced frames (longer side `size`), frames of
one shape batched through one session run. A box counts when it is no taller than `max_box_height` of
the frame and, with recognition on, its text is read with confidence >= `text_score` (RapidOCR's own
rule for its output); the boxes are filled into a mask per frame:

    text_area    mean over the frames of the share of the frame inside text boxes (0..1)
    text_frames  share of the frames with any text box
    text_static  share of the box area, over the frames (blank ones left out), of boxes found at the
                 same place in every frame, reading the same text when recognition is on: a channel
                 name or logo stays (near 1), subtitles change (near 0); 0 without text. Detection only,
                 two different lines of about the same length at the same place count as the same
    ocr_text     the distinct recognised lines (confidence >= `text_score`), first seen first, joined by
                 newlines and cut at `max_chars`; null when `recognize` is off
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import pyarrow as pa

from schemas import TEXT_FIELDS
from stages.columns import mark_errors, set_columns
from stages.frames import fit, read_frames

# The models inside the rapidocr wheel (rapidocr 3.10: PP-OCRv6 small, multilingual).
DET_MODEL = "PP-OCRv6_det_small.onnx"
REC_MODEL = "PP-OCRv6_rec_small.onnx"


@dataclass(frozen=True)
class TextConfig:
    frames: int = 4  # frames per clip, evenly spaced
    size: int = 480  # longer side of each frame given to the detector (never upscaled)
    recognize: bool = True  # also read the text (ocr_text); off: detection only (cheaper)
    box_score: float = 0.5  # detector: mean text probability inside a box for it to count (rapidocr Det.box_thresh)
    text_score: float = 0.5  # recognition: confidence for a line to go into ocr_text
    max_chars: int = 500  # ocr_text is cut at this many characters
    max_box_height: float = 0.3  # a box taller than this share of the frame is not a line of text (the detector sees "text" in fractal texture)
    batch_size: int = 8  # frames per detector run
    threads: int = 1  # onnxruntime intra-op threads per session (one session per worker: keep cores x workers in mind)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when onnxruntime has its CUDA provider
    actors: int = 1  # scorer actors in a job (each loads the models once)

    def __post_init__(self):
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if self.size < 32:
            raise ValueError(f"size must be >= 32, got {self.size}")
        if not 0 < self.max_box_height <= 1:
            raise ValueError(f"max_box_height must be in (0, 1], got {self.max_box_height}")
        if not 0 < self.box_score < 1 or not 0 <= self.text_score <= 1:
            raise ValueError(f"box_score must be in (0, 1) and text_score in [0, 1], got {self.box_score}, {self.text_score}")
        if self.max_chars < 1 or self.batch_size < 1 or self.threads < 1 or self.actors < 1:
            raise ValueError("max_chars, batch_size, threads and actors must be >= 1")


def use_cuda(device: str) -> bool:
    """Whether an onnxruntime session should run on CUDA for this `device` setting."""
    import onnxruntime as ort

    has = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cuda" and not has:
        raise RuntimeError("device cuda: this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)")
    return device != "cpu" and has


def packaged_models() -> dict[str, str]:
    """Paths of the detection and recognition models inside the installed rapidocr wheel."""
    import rapidocr

    root = os.path.join(os.path.dirname(rapidocr.__file__), "models")
    paths = {"det": os.path.join(root, DET_MODEL), "rec": os.path.join(root, REC_MODEL)}
    for p in paths.values():
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p} is not in the installed rapidocr ({rapidocr.__file__}); rapidocr 3.10 ships it")
    return paths


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def model_info() -> dict:
    """What the data card says about the OCR models: package version, files, sha256."""
    from importlib.metadata import metadata, version

    meta = metadata("rapidocr")
    return {"package": f"rapidocr {version('rapidocr')}", "runtime": f"onnxruntime {version('onnxruntime')}",
            "license": f"{meta.get('License-Expression') or meta.get('License') or '?'} (the package; its MODEL_LICENSES.md for the models)",
            "files": {os.path.basename(p): file_sha256(p)[:16] for p in packaged_models().values()}}


class OcrModel:
    """RapidOCR's PP-OCR detector and recognizer, loaded once; frames (BGR) in, boxes and lines out."""

    def __init__(self, cfg: TextConfig):
        from rapidocr import RapidOCR

        paths = packaged_models()
        self.engine = RapidOCR(params={
            "Global.log_level": "error",
            "Global.use_cls": False,  # frames are upright; no text-direction classifier
            "Global.use_rec": cfg.recognize,
            "Det.model_path": paths["det"],  # explicit paths: RapidOCR downloads only when none is given
            "Rec.model_path": paths["rec"],
            "Det.limit_type": "max",  # frames come scaled to `size`; the detector does not upscale them
            "Det.limit_side_len": cfg.size,
            "Det.box_thresh": cfg.box_score,
            "Rec.rec_batch_num": max(6, cfg.batch_size),
            "EngineConfig.onnxruntime.intra_op_num_threads": cfg.threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            "EngineConfig.onnxruntime.use_cuda": use_cuda(cfg.device),
        })
        self.cfg = cfg
        # RapidOCR loads its models lazily on first use; these are its own loaders.
        self.det = self.engine._load_det_model()
        self.rec = self.engine._load_rec_model() if cfg.recognize else None

    def detect(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Text quadrilaterals ([k, 4, 2] int, frame pixels) of each frame; frames of one shape batched."""
        out: list[np.ndarray] = [np.zeros((0, 4, 2), np.int32)] * len(frames)
        by_shape: dict[tuple, list[int]] = {}
        for i, f in enumerate(frames):
            by_shape.setdefault(f.shape, []).append(i)
        pre = self.det.get_preprocess()
        for shape, idx in by_shape.items():
            for k in range(0, len(idx), self.cfg.batch_size):
                chunk = idx[k:k + self.cfg.batch_size]
                x = np.concatenate([pre(frames[i]) for i in chunk])
                pred = self.det.session(x)
                for j, i in enumerate(chunk):
                    boxes, _ = self.det.postprocess_op(pred[j:j + 1], shape[:2])
                    boxes = [b for b in boxes if np.ptp(np.asarray(b)[:, 1]) <= self.cfg.max_box_height * shape[0]]
                    if boxes:
                        out[i] = self.det.sorted_boxes(np.asarray(boxes)).astype(np.int32)
        return out

    def read(self, frames: list[np.ndarray], boxes: list[np.ndarray]) -> list[list[str]]:
        """The recognised text of each box of each frame, in the boxes' order ("" below `text_score`)."""
        from rapidocr.ch_ppocr_rec import TextRecInput

        crops = []
        for f, b in zip(frames, boxes):
            if len(b):
                crops += self.engine.crop_text_regions(f, b.astype(np.float32))
        if not crops:
            return [[] for _ in frames]
        res = self.rec(TextRecInput(img=crops))
        flat = [t.strip() if s >= self.cfg.text_score else "" for t, s in zip(res.txts, res.scores)]
        out, k = [], 0
        for b in boxes:
            out.append(flat[k:k + len(b)])
            k += len(b)
        return out


def text_masks(frames: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
    """A boolean mask per frame: the pixels inside its text quadrilaterals."""
    masks = []
    for f, b in zip(frames, boxes):
        m = np.zeros(f.shape[:2], np.uint8)
        if len(b):
            cv2.fillPoly(m, [q.reshape(-1, 1, 2).astype(np.int32) for q in b], 1)
        masks.append(m.astype(bool))
    return masks


BLANK_STD = 4.0  # a frame whose grey levels vary less than this (standard deviation) is blank: black, a flat fade
SAME_PLACE_IOU = 0.7  # two frames' boxes are at the same place when their bounding rectangles overlap this much


def _rect_iou(a: tuple, b: tuple) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter) if inter else 0.0


def static_share(boxes: list[np.ndarray], texts: list[list[str]] | None, frames: list[int]) -> float:
    """Share of the box area, over `frames`, of boxes that every other of those frames has a box at the
    same place for (bounding rectangles IoU >= SAME_PLACE_IOU) reading the same text (when read)."""
    rects = {f: [cv2.boundingRect(q.reshape(-1, 1, 2).astype(np.int32)) for q in boxes[f]] for f in frames}
    total = static = 0.0
    for f in frames:
        for j, r in enumerate(rects[f]):
            area = float(cv2.contourArea(boxes[f][j].reshape(-1, 1, 2).astype(np.float32)))
            total += area
            if all(any(_rect_iou(r, o) >= SAME_PLACE_IOU and (texts is None or texts[f][j] == texts[g][k])
                       for k, o in enumerate(rects[g])) for g in frames if g != f):
                static += area
    return static / total if total else 0.0


def text_stats(masks: list[np.ndarray], frames: list[np.ndarray], boxes: list[np.ndarray], texts: list[list[str]] | None) -> dict:
    """text_area, text_frames and text_static of one clip's frames (their text masks, boxes and read text).

    text_static looks at the frames that are not blank (all of them when all are): text cannot be
    seen in a black frame of a fade, which says nothing about whether it moves.
    """
    areas = [float(m.mean()) for m in masks]
    shown = [i for i, f in enumerate(frames) if float(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY).std()) >= BLANK_STD] or list(range(len(frames)))
    return {"text_area": float(np.mean(areas)), "text_frames": float(np.mean([a > 0 for a in areas])),
            "text_static": static_share(boxes, texts, shown)}


def join_lines(texts: list[list[str]], max_chars: int) -> str:
    """The distinct non-empty lines, first seen first, newline-joined and cut at `max_chars`."""
    seen: dict[str, None] = {}
    for frame in texts:
        for line in frame:
            if line:
                seen.setdefault(line, None)
    return "\n".join(seen)[:max_chars]


class ScoreText:
    """CLIPS rows -> the same rows with text_area, text_frames, text_static and ocr_text.

    `score(batch, frames, errors)` takes frames another scorer already decoded (curate's score step
    shares one decode with the NSFW scorer); calling the stage decodes them itself.
    """

    def __init__(self, cfg: TextConfig, model: OcrModel | None = None):
        self.cfg = cfg
        self.model = model

    def __call__(self, batch: pa.Table) -> pa.Table:
        frames, errors = read_frames(batch, self.cfg.frames, self.cfg.size)
        return self.score(batch, frames, errors)

    def score(self, batch: pa.Table, frames: dict[int, list[np.ndarray]], errors: dict[int, str]) -> pa.Table:
        if self.model is None and frames:
            self.model = OcrModel(self.cfg)
        rows: list[dict] = [{} for _ in range(batch.num_rows)]
        order = sorted(frames)
        flat = [fit(f, self.cfg.size) for i in order for f in frames[i]]
        boxes = self.model.detect(flat) if flat else []
        lines = self.model.read(flat, boxes) if flat and self.cfg.recognize else None
        if lines is not None:  # as RapidOCR's own output: a box counts when its text is read with confidence
            boxes = [b[[bool(t) for t in ts]] if len(b) else b for b, ts in zip(boxes, lines)]
            lines = [[t for t in ts if t] for ts in lines]
        k = 0
        for i in order:
            n = len(frames[i])
            texts = lines[k:k + n] if lines is not None else None
            stats = text_stats(text_masks(flat[k:k + n], boxes[k:k + n]), flat[k:k + n], boxes[k:k + n], texts)
            stats["ocr_text"] = join_lines(texts, self.cfg.max_chars) if texts is not None else None
            rows[i] = stats
            k += n
        return mark_errors(set_columns(batch, TEXT_FIELDS, rows), errors, "text")
