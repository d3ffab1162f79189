"""Motion scores: how much the picture moves, comparable across resolutions and frame rates.

Two methods, one unit (per cent of the frame diagonal per second):
- `vectors` (default, cheap): the codec's own motion vectors, exported by the decoder (PyAV,
  `flags2=+export_mvs`), so the cost is a plain decode without pixel conversion.
- `flow`: OpenCV Farneback optical flow on small grey frames sampled at a fixed rate; each frame is
  normalised to zero mean and unit contrast first, so a global brightness change is not motion.

Time is cut into windows; the vector field is averaged within a window (encoder noise, which points
anywhere, cancels; things that move keep their direction) and median-filtered in space:

    frames     | | | | | | | | | | | | | | | |        (vectors: every frame; flow: pairs at flow_fps)
    windows    [  window_s  ][  window_s  ][ ...      one magnitude map each
    score      median over windows of the map's mean; motion_min_region: the least moving grid cell

A frozen clip scores 0, and a flash or a brightness ramp that lasts a moment moves only a few
windows, which the median ignores. Each window's field also gets a global motion model fitted to it
(stages.camera): the camera's pan, tilt and zoom, and a label for the clip.
"""

from __future__ import annotations

import gc
import hashlib
import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator, Literal

import av
import cv2
import numpy as np
import pyarrow as pa

from stages.timeline import DEFAULT_FPS
from schemas import MOTION_FIELDS
from stages.camera import Camera, CameraWindow, fit_window, summarize_camera
from stages.columns import ScoreError, score_rows
from stages.media import MediaError, local_copy

FLOW_NOISE_PX = 0.25  # px between sampled frames at flow_width: smaller flow is noise, not motion
CELL = 16  # px: the grid motion vectors are gathered on (the size of an H.264/HEVC macroblock)
# Exported vectors are not deterministic with frame-threaded decoding: under load, FFmpeg's H.264
# decoder exported a different set of vectors for a B-frame in 2 runs of 8 (same file, same build).
# Slice threads (parallel only when the stream has several slices per frame) give the same vectors
# every time; the parallelism that matters comes from scoring many clips at once.
VECTOR_THREADS = "SLICE"


@dataclass(frozen=True)
class MotionConfig:
    method: Literal["vectors", "flow"] = "vectors"
    window_s: float = 0.5  # vectors: fields averaged over windows this long
    flow_fps: float = 5.0  # flow: frames sampled at this rate (one flow field per consecutive pair)
    flow_width: int = 160  # flow: frames scaled to this width
    regions: int = 4  # motion_min_region: the frame cut into regions x regions cells
    # camera_motion: `static` while pan, tilt and zoom (zoom at the frame's corner) all move the picture
    # less than this, in % of the diagonal per second (vectors read ~1.5x the true speed, see _magnitude)
    camera_min_speed: float = 2.0
    camera_dominance: float = 0.5  # a second component above this x the largest: `complex` (a diagonal move)

    def __post_init__(self):
        if not self.window_s > 0:
            raise ValueError(f"window_s must be > 0, got {self.window_s}")
        if not self.flow_fps > 0:
            raise ValueError(f"flow_fps must be > 0, got {self.flow_fps}")
        if self.flow_width < 32:
            raise ValueError(f"flow_width must be >= 32, got {self.flow_width}")
        if self.regions < 1:
            raise ValueError(f"regions must be >= 1, got {self.regions}")
        if not self.camera_min_speed > 0:
            raise ValueError(f"camera_min_speed must be > 0, got {self.camera_min_speed}")
        if not 0 < self.camera_dominance <= 1:
            raise ValueError(f"camera_dominance must be in (0, 1], got {self.camera_dominance}")


@dataclass(frozen=True)
class Motion:
    score: float  # % of the frame diagonal per second
    min_region: float
    windows: int
    camera: Camera | None = None


class WindowMaps(list):
    """Magnitude maps, one per window, with `camera`: the camera fit of each window (None: no fit)."""

    def __init__(self, maps=(), camera=()):
        super().__init__(maps)
        self.camera: list[CameraWindow | None] = list(camera)


# ------------------------------------------------------------------------------------- motion vectors


def open_with_vectors(path: str) -> tuple[av.container.InputContainer, av.VideoStream]:
    """A container whose first video stream's decoder exports motion vectors as frame side data."""
    c = av.open(path, metadata_errors="ignore")
    if not c.streams.video:
        c.close()
        raise ScoreError("no video stream")
    s = c.streams.video[0]
    export_vectors(s)
    return c, s


def export_vectors(s: av.VideoStream) -> None:
    """Set stream `s`'s decoder (before the first packet) to export motion vectors as frame side data,
    decoding with VECTOR_THREADS so the vectors are the same every run."""
    s.thread_type = VECTOR_THREADS
    s.codec_context.options = {"flags2": "+export_mvs"}


def vector_field(mvs: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Motion vectors (PyAV's MOTION_VECTORS records) -> (dx, dy) per 16 px cell, in pixels, area-weighted.

    FFmpeg's vectors point from a block of this frame to where it is in the reference (src = dst +
    motion); those taken from a later frame (`source` > 0) are turned round, so every vector points
    back in time: the picture's motion is minus the field. Cells no vector covers (intra blocks) are 0.
    """
    gw, gh = -(-width // CELL), -(-height // CELL)
    if len(mvs) == 0:
        z = np.zeros((gh, gw), np.float32)
        return z, z.copy()
    scale = np.maximum(mvs["motion_scale"], 1).astype(np.float64)
    forward = np.where(mvs["source"] > 0, -1.0, 1.0)
    area = mvs["w"].astype(np.float64) * mvs["h"]
    cx = np.clip(mvs["dst_x"].astype(np.int64) // CELL, 0, gw - 1)
    cy = np.clip(mvs["dst_y"].astype(np.int64) // CELL, 0, gh - 1)
    idx = cy * gw + cx
    wsum = np.bincount(idx, area, gw * gh)
    dx = np.bincount(idx, mvs["motion_x"] / scale * forward * area, gw * gh)
    dy = np.bincount(idx, mvs["motion_y"] / scale * forward * area, gw * gh)
    with np.errstate(invalid="ignore", divide="ignore"):
        dx = np.where(wsum > 0, dx / wsum, 0.0)
        dy = np.where(wsum > 0, dy / wsum, 0.0)
    return dx.reshape(gh, gw).astype(np.float32), dy.reshape(gh, gw).astype(np.float32)


@contextmanager
def frame_cycles_collected():
    """Free decoded frames promptly while their side data is read: call the yielded `collect` once a frame.

    PyAV's `frame.side_data` makes a reference cycle (Frame -> its side-data container -> Frame), so a
    frame whose vectors were read is freed only by the cyclic garbage collector, not when the loop
    drops it. Left to the default thresholds, ~100 full-size frames pile up between collections: the
    decoder's buffer pool grows by hundreds of MB and every new buffer is page-faulted in (measured on
    50 s of 720p: +11% decode time, 300 MB more memory). Here the collector runs once a frame over the
    objects made since we started (older objects are frozen meanwhile, so each collection is cheap
    however large the process's heap is); the decoder then reuses the buffers it just freed (measured:
    1.08x a plain decode, against 1.10x collecting every 4 frames and 1.15x every 16).
    """
    gc.freeze()
    try:
        yield gc.collect
    finally:
        gc.unfreeze()


class VectorWindows:
    """Per-frame vector fields in, one magnitude map per `window_s` of time out (streaming).

    Push every decoded frame's time and field (None for a frame without vectors: intra frames);
    `maps` holds the finished windows' maps (and `maps.camera` their camera fits), `finish()` closes
    the last one.
    """

    def __init__(self, window_s: float, rate: float | None):
        self.window_s, self.rate = window_s, rate
        self.maps = WindowMaps()
        self.seen_vectors = False
        self._acc: tuple[np.ndarray, np.ndarray] | None = None
        self._n = 0
        self._t0: float | None = None
        self._end = window_s
        self._diag = 1.0

    def push(self, t: float | None, field: tuple[np.ndarray, np.ndarray] | None, diag: float) -> None:
        if t is not None:
            self._t0 = t if self._t0 is None else self._t0
            if t - self._t0 >= self._end - 1e-9:
                self._close()
                while t - self._t0 >= self._end - 1e-9:
                    self._end += self.window_s
        if field is None:
            return
        self.seen_vectors = True
        self._diag = diag
        dx, dy = field
        if self._acc is None or self._acc[0].shape != dx.shape:
            self._acc, self._n = (dx.copy(), dy.copy()), 0
        else:
            np.add(self._acc[0], dx, out=self._acc[0])
            np.add(self._acc[1], dy, out=self._acc[1])
        self._n += 1

    def _close(self) -> None:
        if self._n:
            dx, dy = self._acc[0] / self._n, self._acc[1] / self._n
            self.maps.append(_magnitude(dx, dy, self._diag, self.rate))
            self.maps.camera.append(fit_window(-dx, -dy, CELL, self._diag, self.rate or 25.0))
        self._acc, self._n = None, 0

    def finish(self) -> WindowMaps:
        self._close()
        return self.maps


def frame_vectors(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray] | None:
    """The frame's motion-vector field per 16 px cell, or None when it carries no vectors."""
    sd = frame.side_data.get("MOTION_VECTORS")
    if sd is None:
        return None
    return vector_field(sd.to_ndarray(), frame.width, frame.height)


def vector_windows(path: str, window_s: float) -> WindowMaps:
    """Magnitude maps (% of the diagonal per second, one per window) from the codec's motion vectors."""
    c, s = open_with_vectors(path)
    with c, frame_cycles_collected() as collect:
        tb = s.time_base
        windows = VectorWindows(window_s, float(s.average_rate or s.guessed_rate or 0) or None)
        try:
            for frame in c.decode(s):
                t = float(frame.pts * tb) if frame.pts is not None else None
                windows.push(t, frame_vectors(frame), float(np.hypot(frame.width, frame.height)))
                del frame
                collect()
        except av.FFmpegError as e:
            raise ScoreError(f"decoding failed: {e}") from e
        maps = windows.finish()
        if not windows.seen_vectors and windows._t0 is not None:
            raise ScoreError(f"the {s.codec_context.name} decoder exports no motion vectors; use motion.method: flow")
        return maps


def _magnitude(dx: np.ndarray, dy: np.ndarray, diag: float, rate: float | None) -> np.ndarray:
    if min(dx.shape) >= 3:
        dx, dy = cv2.medianBlur(dx, 3), cv2.medianBlur(dy, 3)
    # Taken as one frame interval: the reference distance is not exported. With B-frames, P-frame
    # vectors span several frames, so x264 clips read about 1.5x the true speed (4.0 reads as ~6).
    return np.hypot(dx, dy) / diag * (rate or DEFAULT_FPS) * 100.0


# ------------------------------------------------------------------------------------------ optical flow


def flow_windows(path: str, fps: float, width: int) -> Iterator[tuple[np.ndarray, CameraWindow | None]]:
    """(magnitude map in % of the diagonal per second, camera fit), one per pair of frames sampled at `fps`."""
    try:
        c = av.open(path, metadata_errors="ignore")
    except av.FFmpegError as e:
        raise ScoreError(f"cannot open: {e}") from e
    with c:
        if not c.streams.video:
            raise ScoreError("no video stream")
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        tb = s.time_base
        prev = None
        t0 = None
        due = 0.0
        try:
            for frame in c.decode(s):
                t = float(frame.pts * tb) if frame.pts is not None else (prev[0] + 1.0 / fps if prev else 0.0)
                t0 = t if t0 is None else t0
                if t - t0 < due - 1e-6:
                    continue
                due += 1.0 / fps
                height = max(2, round(frame.height * width / frame.width / 2) * 2)
                grey = frame.to_ndarray(format="gray", width=width, height=height).astype(np.float32)
                # Zero mean, fixed contrast: a global brightness or contrast change leaves the picture as it was.
                grey = (grey - grey.mean()) / (grey.std() + 1.0) * 48.0 + 128.0
                if prev is not None and t > prev[0]:
                    flow = cv2.calcOpticalFlowFarneback(prev[1], grey, None, 0.5, 3, 15, 3, 5, 1.2, 0)
                    diag = float(np.hypot(width, height))
                    # the camera from the flow on an 8 px grid (the picture's motion, px per sampled pair)
                    cam = fit_window(flow[4::8, 4::8, 0], flow[4::8, 4::8, 1], 8, diag, 1.0 / (t - prev[0]))
                    mag = np.hypot(flow[..., 0], flow[..., 1])
                    mag[mag < FLOW_NOISE_PX] = 0.0  # Farneback's sub-pixel jitter on noise and compression
                    yield mag / diag / (t - prev[0]) * 100.0, cam
                prev = (t, grey)
        except av.FFmpegError as e:
            raise ScoreError(f"decoding failed: {e}") from e


# ------------------------------------------------------------------------------------------- the stage


def summarize(maps, cfg: MotionConfig) -> Motion | None:
    """Motion from magnitude maps (one per window; a WindowMaps adds the camera); None when there are none."""
    means, regions = [], []
    for m in maps:
        means.append(float(m.mean()))
        k = min(cfg.regions, m.shape[0], m.shape[1])
        regions.append(cv2.resize(m, (k, k), interpolation=cv2.INTER_AREA).ravel() if k == cfg.regions else np.full(cfg.regions**2, m.mean()))
    if not means:
        return None
    per_region = np.median(np.stack(regions), axis=0)
    camera = summarize_camera(getattr(maps, "camera", []), cfg.camera_min_speed, cfg.camera_dominance)
    return Motion(score=float(np.median(means)), min_region=float(per_region.min()), windows=len(means), camera=camera)


def settings_key(cfg: MotionConfig) -> str:
    """What a motion score depends on, as a short string (scores made under another key are stale)."""
    return hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:12]


def columns(m: Motion | None, cfg: MotionConfig) -> dict:
    """The MOTION_FIELDS of a clip row."""
    if m is None:
        return {"motion_method": cfg.method}
    cols = {"motion_score": m.score, "motion_min_region": m.min_region, "motion_method": cfg.method}
    if m.camera is not None:
        c = m.camera
        cols.update(camera_pan=c.pan, camera_tilt=c.tilt, camera_zoom=c.zoom, camera_motion=c.motion)
    return cols


def measure(path: str, cfg: MotionConfig) -> Motion | None:
    """Motion of the video at a local path; None when it has too few frames to say."""
    if cfg.method == "vectors":
        maps = vector_windows(path, cfg.window_s)
    else:
        pairs = list(flow_windows(path, cfg.flow_fps, cfg.flow_width))
        maps = WindowMaps([m for m, _ in pairs], [c for _, c in pairs])
    return summarize(maps, cfg)


class ScoreMotion:
    """CLIPS rows -> the same rows with the MOTION_FIELDS (motion_score, ..., camera_pan, ..., camera_motion).

    A clip whose motion the one-pass split already measured from the source's own vectors (same
    method, same settings: the pipeline drops stale ones) keeps it; no second decode.
    """

    def __init__(self, cfg: MotionConfig):
        self.cfg = cfg

    def __call__(self, batch: pa.Table) -> pa.Table:
        return score_rows(batch, MOTION_FIELDS, "motion", self.score_one)

    def score_one(self, row: dict) -> dict:
        if row.get("motion_method") == self.cfg.method and row.get("motion_score") is not None:
            return {f.name: row[f.name] for f in MOTION_FIELDS}
        try:
            with local_copy(row["clip_uri"]) as path:
                m = measure(path, self.cfg)
        except (OSError, av.FFmpegError, MediaError) as e:
            raise ScoreError(f"cannot read {row['clip_uri']}: {e}") from e
        return columns(m, self.cfg)
