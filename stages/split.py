"""Split sources into scenes and clips, and write each clip once as an mp4.

One low-resolution decode feeds the shot detector (PySceneDetect, fed our own decode indices so cuts
are decode-order frame numbers, right on variable frame rate); scenes become clip windows between
`min_clip_s` and `max_clip_s`; ffmpeg writes each window frame-exactly.

    source frames  0 ......... 29 | 30 ........... 75 | 76 ....
    scenes         [0, 30)          [30, 76)            [76, ...
    clip windows   a scene longer than max_clip_s is cut into equal windows; shorter than
                   min_clip_s gives a `filtered` clip row with reason `too_short` and no file.

The stage returns one row per source (the SOURCES columns, plus `scenes` and `clips` lists), so a
source's split is all or nothing and a source that fails to decode is marked on its own row.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Literal

import av
import fsspec
import numpy as np
import pyarrow as pa

from schemas import CLIP_WINDOW_FIELDS, SCENE_FIELDS, SOURCES, ClipStatus, Reason, SourceStatus
from stages.media import Decoded, EncodeSettings, MediaError, is_local, iter_frames, local_copy, local_path_of, write_clip

SCENE_TYPE = pa.struct(SCENE_FIELDS)
CLIP_WINDOW_TYPE = pa.struct(CLIP_WINDOW_FIELDS)
SPLIT = SOURCES.append(pa.field("scenes", pa.list_(SCENE_TYPE))).append(pa.field("clips", pa.list_(CLIP_WINDOW_TYPE)))


@dataclass(frozen=True)
class SplitConfig:
    detector: Literal["adaptive"] = "adaptive"
    analysis_width: int = 128  # detection decodes frames scaled to this width
    adaptive_threshold: float = 3.0  # PySceneDetect AdaptiveDetector's threshold
    min_scene_s: float = 0.5  # no two cuts closer than this
    min_clip_s: float = 2.0  # a scene shorter than this makes no clip (reason too_short)
    max_clip_s: float = 10.0  # a longer scene is cut into equal windows no longer than this
    encode: EncodeSettings = field(default_factory=EncodeSettings)

    def __post_init__(self):
        if self.analysis_width < 16 or self.analysis_width % 2:
            raise ValueError(f"analysis_width must be an even number >= 16, got {self.analysis_width}")
        if not 0 < self.min_clip_s <= self.max_clip_s:
            raise ValueError(f"need 0 < min_clip_s <= max_clip_s, got {self.min_clip_s} and {self.max_clip_s}")
        if self.min_scene_s < 0:
            raise ValueError(f"min_scene_s must be >= 0, got {self.min_scene_s}")


def make_clip_id(source_id: str, start_frame: int, end_frame: int, settings_tag: str) -> str:
    """Deterministic, readable, and a valid WebDataset key (no dots)."""
    return f"{source_id}_{start_frame:06d}_{end_frame:06d}_{settings_tag}"


def settings_tag(encode: EncodeSettings) -> str:
    return hashlib.sha256(encode.fingerprint().encode()).hexdigest()[:6]


# ------------------------------------------------------------------------------------------ detection


def detect_cuts(frames: Iterable[tuple[float, np.ndarray]], fps: float, cfg: SplitConfig) -> list[int]:
    """Decode indices of the first frame of every new shot (0 excluded), from (t, BGR image) pairs."""
    from scenedetect import AdaptiveDetector
    from scenedetect.common import FrameTimecode

    rate = fps or 25.0
    det = AdaptiveDetector(adaptive_threshold=cfg.adaptive_threshold, min_scene_len=max(1, round(cfg.min_scene_s * rate)))
    cuts: list[int] = []
    n = 0
    for _t, img in frames:
        # Our own decode index, not PySceneDetect's timestamp x nominal rate (wrong on VFR and B-frame AVIs).
        cuts += [tc.frame_num for tc in det.process_frame(FrameTimecode(n, rate), img)]
        n += 1
    if n:
        cuts += [tc.frame_num for tc in det.post_process(FrameTimecode(n, rate))]
    return sorted({c for c in cuts if 0 < c < n})


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


def clip_windows(scene: dict, cfg: SplitConfig) -> list[tuple[int, int]]:
    """Frame windows [a, b) of one scene: none if shorter than min_clip_s, else ceil(d / max_clip_s) equal parts."""
    duration = scene["end_s"] - scene["start_s"]
    if duration < cfg.min_clip_s - 1e-9:
        return []
    k = max(1, math.ceil(duration / cfg.max_clip_s - 1e-9))
    a, b = scene["start_frame"], scene["end_frame"]
    edges = [a + round(i * (b - a) / k) for i in range(k + 1)]
    return list(zip(edges[:-1], edges[1:]))


# ------------------------------------------------------------------------------------------- the stage


class Split:
    """SOURCES rows -> SPLIT rows: scenes detected, clip windows made and written under `clips_root`."""

    def __init__(self, cfg: SplitConfig, clips_root: str):
        self.cfg = cfg
        self.clips_root = clips_root.rstrip("/")
        self.tag = settings_tag(cfg.encode)

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
        except (OSError, av.FFmpegError) as e:
            row.update(status=SourceStatus.ERROR, reason=Reason.UNREADABLE, error=str(e), scenes=[], clips=[])
        return row

    def _split(self, row: dict, path: str) -> None:
        cfg = self.cfg
        decoded = Decoded()
        times: list[float] = []
        frames = _timed(iter_frames(path, cfg.analysis_width, decoded), times)
        cuts = detect_cuts(frames, row.get("fps") or 0.0, cfg)
        declared = row.get("n_frames")
        if decoded.n_frames == 0:
            raise MediaError(Reason.NO_FRAMES, "no frame decodes")
        if (row.get("container") or "").startswith("mov") and declared and decoded.n_frames < declared - max(2, declared // 50):
            # mp4/mov declare an exact sample count: far fewer decoded frames means the file was cut short.
            raise MediaError(Reason.TRUNCATED, f"{decoded.n_frames} of {declared} declared frames decode")
        row["n_frames"] = decoded.n_frames
        t = np.asarray(times, dtype=np.float64)
        end_s = decoded.end_s
        row["scenes"] = scenes_from_cuts(cuts, t, end_s)
        # ffmpeg's -ss counts from the container start; aim half a frame early so rounding never skips a frame.
        offset = decoded.first_pts_s - decoded.container_start_s
        half = 0.5 * float(np.min(np.diff(t))) if len(t) > 1 else 0.0
        clips = []
        for scene in row["scenes"]:
            windows = clip_windows(scene, cfg)
            if not windows:
                clips.append(self._window(row, scene, scene["start_frame"], scene["end_frame"], t, end_s,
                                          status=ClipStatus.FILTERED, reason=Reason.TOO_SHORT))
                continue
            for a, b in windows:
                clip = self._window(row, scene, a, b, t, end_s, status=ClipStatus.KEPT)
                self._write(path, clip, float(t[a]) + offset - half, bool(row.get("has_audio")))
                clips.append(clip)
        row["clips"] = clips

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
        n = clip["end_frame"] - clip["start_frame"]
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
        frames, width, height, size = written
        if frames != n:
            clip.update(status=ClipStatus.ERROR, reason=Reason.ENCODE_ERROR, error=f"wrote {frames} frames, expected {n}")
            return
        clip.update(clip_uri=uri, clip_bytes=size, width=width, height=height)


def _video_facts(path: str) -> tuple[int, int, int, int]:
    """(frame count from the mp4 sample table, width, height, bytes) of a clip we wrote; no decoding."""
    with av.open(path) as c:
        s = c.streams.video[0]
        return s.frames, s.codec_context.width, s.codec_context.height, os.path.getsize(path)


def flatten(split: pa.Table) -> tuple[pa.Table, pa.Table, pa.Table]:
    """SPLIT rows -> (sources, scenes, clip windows with source columns), all plain tables."""
    sources = split.drop_columns(["scenes", "clips"])
    scenes_rows, clip_rows = [], []
    for row in split.select(["source_id", "scenes", "clips"]).to_pylist():
        scenes_rows += [{"source_id": row["source_id"], **s} for s in row["scenes"] or []]
        clip_rows += [{"source_id": row["source_id"], **c} for c in row["clips"] or []]
    scenes = pa.Table.from_pylist(scenes_rows, schema=pa.schema([pa.field("source_id", pa.string()), *SCENE_FIELDS]))
    clips = pa.Table.from_pylist(clip_rows, schema=pa.schema([pa.field("source_id", pa.string()), *CLIP_WINDOW_FIELDS]))
    return sources, scenes, clips
