"""Split sources into scenes and clips, and write each clip once as an mp4.

One low-resolution decode feeds the shot detector (PySceneDetect, fed our own decode indices so cuts
are decode-order frame numbers, right on variable frame rate); scenes become clip windows between
`min_clip_s` and `max_clip_s`; ffmpeg writes each window frame-exactly.

    source frames  0 ......... 29 | 30 ........... 75 | 76 ....
    scenes         [0, 30)          [30, 76)            [76, ...
    clip windows   content longer than max_clip_s is cut into windows of max_clip_s, the one before
                   the last ending early where that keeps the last >= min_clip_s (stream.run_windows,
                   the same in both modes); content shorter than min_clip_s gives a `filtered`
                   clip row with reason `too_short` and no file.

The stage returns one row per source (the SOURCES columns, plus `scenes` and `clips` lists), so a
source's split is all or nothing and a source that fails to decode is marked on its own row.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Literal

import av
import fsspec
import numpy as np
import pyarrow as pa

from schemas import CLIP_WINDOW_FIELDS, MOTION_FIELDS, SCENE_FIELDS, SOURCES, ClipStatus, Reason, SourceStatus
from stages.media import Decoded, EncodeSettings, MediaError, is_local, iter_frames, local_copy, local_path_of, write_clip
from stages.motion import MotionConfig
from stages.timeline import DEFAULT_FPS
from stages.stream import EncodeError, run_windows, stream_split
from stages.shots import (
    BLANK,
    CONTENT,
    FrameStats,
    LabelSettings,
    SceneDetectDetector,
    StrideDetector,
    TransNetV2Detector,
    confirm_hard_cuts,
    label_frames,
    runs,
)

SCENE_TYPE = pa.struct(SCENE_FIELDS)
# A clip's motion, when the one-pass split measured it from the source's vectors, and the motion
# settings it was measured with (`flatten` drops it when the job's settings have changed since).
SPLIT_MOTION_FIELDS = [*MOTION_FIELDS, pa.field("motion_key", pa.string())]
MOTION_NAMES = {f.name for f in MOTION_FIELDS}
# A clip's near-duplicate signature (stages.dedup), when the one-pass split made it from its analysis
# frames, and the dedup settings it was made with (the plan commits it as the signature step's result).
SPLIT_SIGNATURE_FIELDS = [pa.field("signature", pa.binary()), pa.field("signature_key", pa.string())]
CLIP_WINDOW_TYPE = pa.struct([*CLIP_WINDOW_FIELDS, *SPLIT_MOTION_FIELDS, *SPLIT_SIGNATURE_FIELDS])
SPLIT = SOURCES.append(pa.field("scenes", pa.list_(SCENE_TYPE))).append(pa.field("clips", pa.list_(CLIP_WINDOW_TYPE)))
# What the split decides of a source row (a cached split restores exactly these).
SPLIT_DECIDES = ("n_frames", "duration_s", "fps", "timestamps", "timestamps_note", "status", "reason", "error", "scenes", "clips")


@dataclass(frozen=True)
class SplitConfig:
    detector: Literal["adaptive", "content", "threshold", "transnetv2", "stride"] = "adaptive"
    analysis_width: int = 128  # detection decodes frames scaled to this width
    adaptive_threshold: float = 3.0  # PySceneDetect AdaptiveDetector's threshold
    min_scene_s: float = 0.5  # no two cuts closer than this
    min_clip_s: float = 2.0  # a scene shorter than this makes no clip (reason too_short)
    max_clip_s: float = 10.0  # longer content is cut into windows of this (see stream.run_windows)
    encode: EncodeSettings = field(default_factory=EncodeSettings)
    content_threshold: float = 27.0  # PySceneDetect ContentDetector's threshold
    threshold_level: float = 12.0  # PySceneDetect ThresholdDetector's threshold (mean pixel level of a fade)
    transnetv2_threshold: float = 0.5  # TransNetV2 probability above which a frame ends a shot
    stride_s: float = 10.0  # detector "stride": a cut every this many seconds
    hard_cut_ratio: float = 1.5  # a detector's cut is kept when its frame difference is this many times its neighbours'; 0 keeps all
    blank_max_std: float = 6.0  # a frame whose luma std (0..255) is at most this is blank (black or nearly constant)
    ramp_min_frames: int = 6  # a gradual transition: luma mean or std moving one way for at least this many frames
    ramp_min_step: float = 0.3  # ... by at least this much per frame (luma levels)
    ramp_max_curve: float = 0.6  # ... with every pixel changing linearly: |second difference| <= this x |first difference|
    transition_margin_s: float = 0.2  # trimmed on each side of a gradual transition
    transitions: bool = True  # label blank and gradual-transition frames; false: every frame of a scene is content
    one_pass: bool = True  # decode once, detect and encode in one streaming pass; false: analysis decode + ffmpeg per clip

    def __post_init__(self):
        if self.analysis_width < 16 or self.analysis_width % 2:
            raise ValueError(f"analysis_width must be an even number >= 16, got {self.analysis_width}")
        if not 0 < self.min_clip_s <= self.max_clip_s:
            raise ValueError(f"need 0 < min_clip_s <= max_clip_s, got {self.min_clip_s} and {self.max_clip_s}")
        if self.min_scene_s < 0:
            raise ValueError(f"min_scene_s must be >= 0, got {self.min_scene_s}")
        if self.stride_s <= 0:
            raise ValueError(f"stride_s must be > 0, got {self.stride_s}")
        if self.ramp_min_frames < 2:
            raise ValueError(f"ramp_min_frames must be >= 2, got {self.ramp_min_frames}")
        if self.transition_margin_s < 0 or self.hard_cut_ratio < 0:
            raise ValueError("transition_margin_s and hard_cut_ratio must be >= 0")


def make_clip_id(source_id: str, start_frame: int, end_frame: int, settings_tag: str) -> str:
    """Deterministic, readable, and a valid WebDataset key (no dots)."""
    return f"{source_id}_{start_frame:06d}_{end_frame:06d}_{settings_tag}"


def settings_tag(encode: EncodeSettings) -> str:
    return hashlib.sha256(encode.fingerprint().encode()).hexdigest()[:6]


# ------------------------------------------------------------------------------------------ detection


def make_detector(cfg: SplitConfig, fps: float | None, model=None):
    """The detector `cfg.detector` names: an object with push(t, bgr) per frame and finish() -> cuts."""
    rate = fps or DEFAULT_FPS
    min_frames = round(cfg.min_scene_s * rate)
    if cfg.detector == "adaptive":
        return SceneDetectDetector("adaptive", rate, min_frames, cfg.adaptive_threshold)
    if cfg.detector == "content":
        return SceneDetectDetector("content", rate, min_frames, cfg.content_threshold)
    if cfg.detector == "threshold":
        return SceneDetectDetector("threshold", rate, min_frames, cfg.threshold_level)
    if cfg.detector == "transnetv2":
        return TransNetV2Detector(cfg.transnetv2_threshold, model)
    return StrideDetector(cfg.stride_s)


def analyse(frames: Iterable[tuple[float, np.ndarray]], fps: float | None, cfg: SplitConfig, model=None) -> tuple[list[int], FrameStats]:
    """One pass over (t, BGR image) pairs: (hard cuts, per-frame statistics).

    Cuts are decode indices of the first frame of every new shot (0 excluded): the detector's cuts,
    of which only hard cuts are kept (see `stages.shots.confirm_hard_cuts`). The threshold detector
    (cuts in the middle of fades to black, by design) and the stride are taken as they are.
    """
    det = make_detector(cfg, fps, model)
    stats = FrameStats()
    for t, img in frames:
        det.push(t, img)
        stats.push(img)
    cuts = det.finish()
    if cfg.detector not in ("stride", "threshold"):
        cuts = confirm_hard_cuts(cuts, stats.diff, cfg.hard_cut_ratio)
    return cuts, stats


def detect_cuts(frames: Iterable[tuple[float, np.ndarray]], fps: float | None, cfg: SplitConfig, model=None) -> list[int]:
    """Hard cuts only (see `analyse`)."""
    return analyse(frames, fps, cfg, model)[0]


def label_settings(cfg: SplitConfig, fps: float | None) -> LabelSettings:
    return LabelSettings(
        blank_max_std=cfg.blank_max_std,
        ramp_min_frames=cfg.ramp_min_frames,
        ramp_min_step=cfg.ramp_min_step,
        ramp_max_curve=cfg.ramp_max_curve,
        margin_frames=round(cfg.transition_margin_s * (fps or DEFAULT_FPS)),
    )


def _timed(frames: Iterator[tuple[float, np.ndarray]], times: list[float]) -> Iterator[tuple[float, np.ndarray]]:
    for t, img in frames:
        times.append(t)
        yield t, img


def scenes_from_cuts(cuts: list[int], times: np.ndarray, end_s: float) -> list[dict]:
    """Scene rows [start, end) from cut indices; `times[i]` is frame i's seconds from frame 0."""
    n = len(times)
    bounds = [0, *cuts, n]
    return [
        {
            "scene_index": i,
            "start_frame": a,
            "end_frame": b,
            "start_s": float(times[a]),
            "end_s": float(times[b]) if b < n else float(end_s),
        }
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))
        if b > a
    ]


# ------------------------------------------------------------------------------------------- the stage


class Split:
    """SOURCES rows -> SPLIT rows: scenes detected, clip windows made and written under `clips_root`."""

    def __init__(self, cfg: SplitConfig, clips_root: str, model=None, motion: MotionConfig | None = None,
                 signature: tuple[float, str] | None = None):
        self.cfg = cfg
        self.motion = motion  # method vectors + one pass: clips' motion from the source's own vectors
        self.signature = signature  # (fps, settings key) + one pass: clips' dedup signatures from the analysis frames
        self.clips_root = clips_root.rstrip("/")
        self.tag = settings_tag(cfg.encode)
        self.model = model  # an injected TransNetV2 (tests); None loads the shipped weights when needed

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [self.split_one(r) for r in batch.to_pylist()]
        return pa.Table.from_pylist(rows, schema=SPLIT)

    def split_one(self, row: dict) -> dict:
        row = {**row, "scenes": [], "clips": []}
        if row["status"] != SourceStatus.OK:
            return row
        try:
            with local_copy(row["uri"]) as path:
                self._split(row, path)
        except MediaError as e:
            row.update(status=SourceStatus.ERROR, reason=e.reason, error=str(e), scenes=[], clips=[])
        except EncodeError as e:  # one pass: the encoder failed, not the source
            row.update(status=SourceStatus.ERROR, reason=Reason.ENCODE_ERROR, error=str(e), scenes=[], clips=[])
        except (OSError, av.FFmpegError) as e:
            row.update(status=SourceStatus.ERROR, reason=Reason.UNREADABLE, error=str(e), scenes=[], clips=[])
        return row

    def _split(self, row: dict, path: str) -> None:
        if self.cfg.one_pass and not (self.cfg.encode.audio and row.get("has_audio")):
            with tempfile.TemporaryDirectory(prefix="curate-split-") as workdir:
                self._split_one_pass(row, path, workdir)
            return
        cfg = self.cfg
        decoded = Decoded()
        times: list[float] = []
        frames = _timed(iter_frames(path, cfg.analysis_width, decoded), times)
        cuts, stats = analyse(frames, row.get("fps"), cfg, self.model)
        self._check_decoded(row, decoded)
        if decoded.repaired:
            # ffmpeg's seek by time cannot be trusted on repaired timestamps: cut the clips in one pass
            # (frame-exact by decode index), without audio; the source row says why.
            with tempfile.TemporaryDirectory(prefix="curate-split-") as workdir:
                self._split_one_pass(row, path, workdir)
            row["timestamps_note"] += "; split in one pass (no audio): seeking by time is not exact here"
            return
        t = np.asarray(times, dtype=np.float64)
        end_s = decoded.end_s
        row["scenes"] = scenes_from_cuts(cuts, t, end_s)
        # ffmpeg's -ss counts from the container start; aim half a frame early so rounding never skips a frame.
        offset = decoded.first_pts_s - decoded.container_start_s
        half = 0.5 * float(np.min(np.diff(t))) if len(t) > 1 else 0.0
        if cfg.transitions:
            labels = label_frames(stats, label_settings(cfg, row.get("fps")))
        else:
            labels = np.full(decoded.n_frames, CONTENT, np.int8)
        clips = []
        for scene in row["scenes"]:
            for kind, a, b in runs(labels, scene["start_frame"], scene["end_frame"]):
                if kind != CONTENT:
                    reason = Reason.BLANK if kind == BLANK else Reason.TRANSITION
                    clips.append(self._window(row, scene, a, b, t, end_s, status=ClipStatus.FILTERED, reason=reason))
                    continue
                windows, rest = run_windows(times, a, b, float(t[b]) if b < len(t) else float(end_s), cfg.min_clip_s, cfg.max_clip_s)
                for wa, wb in windows:
                    clip = self._window(row, scene, wa, wb, t, end_s, status=ClipStatus.KEPT)
                    self._write(path, clip, float(t[wa]) + offset - half, bool(row.get("has_audio")))
                    clips.append(clip)
                if rest:
                    clips.append(self._window(row, scene, *rest, t, end_s, status=ClipStatus.FILTERED, reason=Reason.TOO_SHORT))
        row["clips"] = clips

    def _check_decoded(self, row: dict, decoded: Decoded) -> None:
        declared = row.get("n_frames")
        if decoded.n_frames == 0:
            raise MediaError(Reason.NO_FRAMES, "no frame decodes")
        if (row.get("container") or "").startswith("mov") and declared and decoded.n_packets < declared - max(2, declared // 50):
            # mp4/mov declare an exact sample count: far fewer packets than that means the file was cut
            # short. Packets, not frames: an edit list (a stream copy cut between keyframes) hides
            # leading frames from the decoder's output as players do, and those packets are all there.
            raise MediaError(Reason.TRUNCATED, f"{decoded.n_packets} of {declared} declared packets read")
        row.update(n_frames=decoded.n_frames, duration_s=decoded.end_s, timestamps=decoded.timestamps, timestamps_note=decoded.timestamps_note)
        if decoded.repaired and decoded.end_s > 0:  # the container's average counted the timestamps' gaps too
            row["fps"] = decoded.n_frames / decoded.end_s

    def _split_one_pass(self, row: dict, path: str, workdir: str) -> None:
        """Decode once: detection, labels and clip encoding in one streaming pass (stages.stream)."""
        cfg = self.cfg
        fps = row.get("fps")
        decoded = Decoded()
        detector = make_detector(cfg, fps, self.model)
        labels = label_settings(cfg, fps) if cfg.transitions else None
        sig_fps, sig_key = self.signature or (None, None)
        cuts, times, pieces = stream_split(path, cfg, detector, labels, decoded, workdir, int(row.get("rotation") or 0), self.motion, sig_fps)
        self._check_decoded(row, decoded)
        t = np.asarray(times, dtype=np.float64)
        end_s = decoded.end_s
        row["scenes"] = scenes_from_cuts(cuts, t, end_s)
        starts = [sc["start_frame"] for sc in row["scenes"]]
        reasons = {"blank": Reason.BLANK, "transition": Reason.TRANSITION, "too_short": Reason.TOO_SHORT}
        clips = []
        for p in pieces:
            scene = row["scenes"][bisect.bisect_right(starts, p.a) - 1]
            if p.kind != "clip":
                clips.append(self._window(row, scene, p.a, p.b, t, end_s, status=ClipStatus.FILTERED, reason=reasons[p.kind]))
                continue
            clip = self._window(row, scene, p.a, p.b, t, end_s, status=ClipStatus.KEPT)
            self._store(p.path, clip)
            if p.motion and clip["status"] == ClipStatus.KEPT:
                clip.update(p.motion)
            if p.signature is not None and clip["status"] == ClipStatus.KEPT:
                clip.update(signature=p.signature, signature_key=sig_key)
            clips.append(clip)
        row["clips"] = clips

    def _store(self, local: str, clip: dict) -> None:
        """Move an encoded clip to its final uri (an existing file there is complete and kept)."""
        uri = f"{self.clips_root}/{clip['clip_id']}.mp4"
        try:
            written = _video_facts(local)
            if is_local(uri):
                dst = local_path_of(uri)
                if not os.path.exists(dst):
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    shutil.move(local, f"{dst}.tmp-{os.getpid()}")
                    os.replace(f"{dst}.tmp-{os.getpid()}", dst)
            else:
                fs, p = fsspec.core.url_to_fs(uri)
                if not fs.exists(p):
                    fs.put_file(local, p + ".tmp")
                    fs.mv(p + ".tmp", p)
        except (RuntimeError, OSError, av.FFmpegError) as e:
            clip.update(status=ClipStatus.ERROR, reason=Reason.ENCODE_ERROR, error=str(e))
            return
        self._check_written(clip, uri, written)

    def _check_written(self, clip: dict, uri: str, written: tuple[int, int, int, int]) -> None:
        frames, width, height, size = written
        n = self._frames_out(clip)
        if frames != n:
            clip.update(status=ClipStatus.ERROR, reason=Reason.ENCODE_ERROR, error=f"wrote {frames} frames, expected {n}")
            return
        clip.update(clip_uri=uri, clip_bytes=size, width=width, height=height, n_frames=frames)

    def _frames_out(self, clip: dict) -> int:
        return self.cfg.encode.frames_out(clip["end_frame"] - clip["start_frame"], clip["duration_s"])

    def _window(self, row, scene, a, b, t, end_s, status, reason=None) -> dict:
        start_s = float(t[a])
        stop_s = float(t[b]) if b < len(t) else float(end_s)
        return {
            "clip_id": make_clip_id(row["source_id"], a, b, self.tag),
            "scene_index": scene["scene_index"],
            "start_frame": a,
            "end_frame": b,
            "start_s": start_s,
            "end_s": stop_s,
            "duration_s": stop_s - start_s,
            "fps": self.cfg.encode.fps or row.get("fps"),  # the written file's rate (the source's average without encode.fps)
            "n_frames": None,  # frames in the written file
            "clip_uri": None,
            "clip_bytes": None,
            "width": None,
            "height": None,
            "status": status,
            "reason": reason,
            "error": None,
        }

    def _write(self, src: str, clip: dict, seek_s: float, has_audio: bool) -> None:
        uri = f"{self.clips_root}/{clip['clip_id']}.mp4"
        n = self._frames_out(clip)

        try:
            if is_local(uri):
                dst = local_path_of(uri)
                if not os.path.exists(dst):  # written through a temporary name: existing means complete
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    write_clip(src, dst, seek_s, n, self.cfg.encode, has_audio)
                written = _video_facts(dst)
            else:
                fs, p = fsspec.core.url_to_fs(uri)
                with tempfile.TemporaryDirectory(prefix="curate-clip-") as tmp:
                    dst = os.path.join(tmp, "clip.mp4")
                    if fs.exists(p):
                        fs.get_file(p, dst)
                    else:
                        write_clip(src, dst, seek_s, n, self.cfg.encode, has_audio)
                        fs.put_file(dst, p + ".tmp")
                        fs.mv(p + ".tmp", p)
                    written = _video_facts(dst)
        except (RuntimeError, OSError, av.FFmpegError) as e:
            clip.update(status=ClipStatus.ERROR, reason=Reason.ENCODE_ERROR, error=str(e))
            return
        self._check_written(clip, uri, written)


def _video_facts(path: str) -> tuple[int, int, int, int]:
    """(frame count from the mp4 sample table, width, height, bytes) of a clip we wrote; no decoding."""
    with av.open(path) as c:
        s = c.streams.video[0]
        return s.frames, s.codec_context.width, s.codec_context.height, os.path.getsize(path)


def flatten(split: pa.Table, motion_key: str | None = None) -> tuple[pa.Table, pa.Table, pa.Table]:
    """SPLIT rows -> (sources, scenes, clip windows with source columns), all plain tables.

    Clip windows keep the motion the split measured only when it was measured with the settings
    `motion_key` names (stages.motion.settings_key of the job's motion section); else it is dropped
    and the score step measures the clip file.
    """
    sources = split.drop_columns(["scenes", "clips"])
    scenes_rows, clip_rows = [], []
    for row in split.select(["source_id", "scenes", "clips"]).to_pylist():
        scenes_rows += [{"source_id": row["source_id"], **s} for s in row["scenes"] or []]
        for c in row["clips"] or []:
            key = c.pop("motion_key", None)
            if key is None or key != motion_key:
                c = {k: v for k, v in c.items() if k not in MOTION_NAMES}
            clip_rows.append({"source_id": row["source_id"], **c})
    scenes = pa.Table.from_pylist(scenes_rows, schema=pa.schema([pa.field("source_id", pa.string()), *SCENE_FIELDS]))
    clips = pa.Table.from_pylist(clip_rows, schema=pa.schema([pa.field("source_id", pa.string()), *CLIP_WINDOW_FIELDS, *MOTION_FIELDS]))
    return sources, scenes, clips
