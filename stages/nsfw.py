"""Unsafe content: NudeNet's detector (the `nudenet` wheel's `320n.onnx`) on a few frames of each clip.

The detector (a small YOLOv8 trained by NudeNet's author; onnxruntime) finds exposed and covered
body parts and faces. `nsfw_score` is the highest confidence, over the sampled frames, of a
detection whose class is in `classes` (by default the exposed sexual body parts: `EXPOSED`), 0 when
there is none; `nsfw_labels` lists every class detected with confidence >= `label_score` (any class:
faces, covered parts too), sorted. Frames go through NudeNet's own `detect_batch` (its letterbox
to `size` x `size`, its box decoding and non-maximum suppression), `batch_size` frames per run, on a
session this module opens on the packaged model with the job's thread count and device.

Known false positive (measured on ../shared/data): Big Buck Bunny's cartoon rabbit, stretching, is
FEMALE_BREAST_EXPOSED at up to 0.80 in about a quarter of its frames.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa

from schemas import NSFW_FIELDS
from stages.columns import mark_errors, set_columns
from stages.frames import read_frames
from stages.text import file_sha256, use_cuda

# Every class the detector knows (nudenet 3.4, in its model's order).
LABELS = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
    "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED",
)  # fmt: skip
# What counts towards nsfw_score by default: exposed sexual body parts (not feet, belly, armpits, a male chest).
EXPOSED = ("FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "BUTTOCKS_EXPOSED", "ANUS_EXPOSED")
MODEL_FILE = "320n.onnx"


@dataclass(frozen=True)
class NsfwConfig:
    frames: int = 4  # frames per clip, evenly spaced
    size: int = 320  # the detector's input (NudeNet's inference_resolution; the model was trained at 320)
    classes: tuple[str, ...] = EXPOSED  # detector classes whose confidence is nsfw_score
    label_score: float = 0.5  # a class goes into nsfw_labels at this confidence
    batch_size: int = 8  # frames per detector run
    threads: int = 1  # onnxruntime intra-op threads per session
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when onnxruntime has its CUDA provider

    def __post_init__(self):
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if self.size < 32 or self.size % 32:
            raise ValueError(f"size must be a multiple of 32 (the model's stride), got {self.size}")
        unknown = [c for c in self.classes if c not in LABELS]
        if unknown or not self.classes:
            raise ValueError(f"classes: unknown {unknown}; the detector's classes are {', '.join(LABELS)}")
        if not 0 <= self.label_score <= 1 or self.batch_size < 1 or self.threads < 1:
            raise ValueError("label_score must be in [0, 1], batch_size and threads >= 1")


def packaged_model() -> str:
    import nudenet

    path = os.path.join(os.path.dirname(nudenet.__file__), MODEL_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is not in the installed nudenet; nudenet 3.4 ships it")
    return path


@functools.lru_cache(maxsize=1)
def model_info() -> dict:
    from importlib.metadata import metadata, version

    import onnxruntime as ort

    path = packaged_model()
    # The package is MIT; the model file's own metadata names the licence of the tool that trained it.
    model_licence = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map.get("license", "?")
    return {"package": f"nudenet {version('nudenet')}", "runtime": f"onnxruntime {version('onnxruntime')}",
            "license": f"{metadata('nudenet').get('License') or '?'} (the package); the model file says: {model_licence}",
            "files": {MODEL_FILE: file_sha256(path)[:16]}}


def _detector(session, size: int):
    from nudenet import NudeDetector

    class Detector(NudeDetector):
        """NudeDetector on a given session: its own constructor opens one with onnxruntime's defaults
        (every core, CPU only); its pre- and post-processing (`detect_batch`) are kept as they are."""

        def __init__(self, session, size: int):
            self.onnx_session = session
            self.input_width = self.input_height = size
            self.input_name = session.get_inputs()[0].name

    return Detector(session, size)


class NsfwModel:
    """NudeNet's detector on a session of our own (threads, device); BGR frames in, detections out."""

    def __init__(self, cfg: NsfwConfig):
        import onnxruntime as ort

        path = packaged_model()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cfg.threads
        opts.inter_op_num_threads = 1
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda(cfg.device) else ["CPUExecutionProvider"]
        self.detector = _detector(ort.InferenceSession(path, opts, providers=providers), cfg.size)
        self.cfg = cfg

    def __call__(self, frames: list[np.ndarray]) -> list[list[dict]]:
        """NudeNet detections ({class, score, box}) of each frame (BGR, as cv2 reads images)."""
        return self.detector.detect_batch(frames, batch_size=self.cfg.batch_size) if frames else []


def nsfw_stats(detections: list[list[dict]], classes: tuple[str, ...], label_score: float) -> dict:
    counted = [d["score"] for frame in detections for d in frame if d["class"] in classes]
    labels = sorted({d["class"] for frame in detections for d in frame if d["score"] >= label_score})
    return {"nsfw_score": float(max(counted, default=0.0)), "nsfw_labels": labels}


class ScoreNsfw:
    """CLIPS rows -> the same rows with nsfw_score and nsfw_labels (`score` takes frames already decoded)."""

    def __init__(self, cfg: NsfwConfig, model: NsfwModel | None = None):
        self.cfg = cfg
        self.model = model

    def __call__(self, batch: pa.Table) -> pa.Table:
        frames, errors = read_frames(batch, self.cfg.frames, self.cfg.size)
        return self.score(batch, frames, errors)

    def score(self, batch: pa.Table, frames: dict[int, list[np.ndarray]], errors: dict[int, str]) -> pa.Table:
        if self.model is None and frames:
            self.model = NsfwModel(self.cfg)
        rows: list[dict] = [{} for _ in range(batch.num_rows)]
        order = sorted(frames)
        dets = self.model([f for i in order for f in frames[i]]) if order else []
        k = 0
        for i in order:
            n = len(frames[i])
            rows[i] = nsfw_stats(dets[k:k + n], self.cfg.classes, self.cfg.label_score)
            k += n
        return mark_errors(set_columns(batch, NSFW_FIELDS, rows), errors, "nsfw")
