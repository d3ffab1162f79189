"""One streaming pass per source: decode once, detect on a small frame, encode clips as frames go by.

Each decoded frame is scaled to the analysis width for the detector and the frame statistics, and
the full frame waits in a short look-ahead queue until its fate is known: which scene (the detector
has seen far enough past it), which label (blank / transition / content, which needs the frames
around it), which clip window. Then it goes straight to that window's encoder (PyAV, libx264 by
default) or is dropped. Memory is the look-ahead queue, whatever the length of the video.

    decoded   ... j ........... H ..... k        (k: last decoded; H: scenes and labels known below it)
    decided   ... ^ frames up to j have a scene, a label and a window; they are encoded
    pending       [j+1 .. k] full frames held; their small copies already went to the detector

Content runs (one scene, one label) are cut into windows of `max_clip_s`, except at a run's end: when
that would leave a rest shorter than `min_clip_s` (which would be `too_short`, lost), the window before
it ends early so that the last one is `min_clip_s` long (run 11 s, max 5, min 2: 5 + 4 + 2, not
5 + 5 + 1). To see a run's end in time, a frame is decided only once every frame up to `min_clip_s`
after it is known (H - j >= min_clip_s of frames): that is the memory this costs, `min_clip_s` x fps
full decoded frames more (yuv420p: 2 s at 25 fps is 50 frames, 69 MB at 720p, 155 MB at 1080p).
Where that cannot leave both windows at least `min_clip_s` long (possible only when max_clip_s <
2 x min_clip_s), the rest stays `too_short`. (`one_pass: false` knows every scene first and cuts the same
windows: `run_windows`.)

With `encode.fps` the encoder resamples each window to that constant rate (see `_Encoder`).

With `motion` given (method `vectors`), the decoder also exports the source's motion vectors and
each content window's motion score is measured from them on the way (stages.motion), so scoring
needs no second decode of the clip.

"""

from __future__ import annotations

import bisect
import contextlib
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from schemas import Reason
from stages.media import DETERMINISTIC_OPTIONS, Decoded, EncodeSettings, MediaError, _open, prefetch, small_bgr, video_stream
from stages.motion import MotionConfig, VectorWindows, columns, export_vectors, frame_cycles_collected, frame_vectors, settings_key, summarize
from stages.shots import FrameStats, LabelSettings, confirm_hard_cuts, label_frames

DECIDE_EVERY = 8  # frames between two decisions: small batches keep the encoder fed while the decoder runs ahead (32: 1.12x the floor, 8: 1.02-1.08x)


@dataclass
class Piece:
    """A run of frames [a, b) of one scene with one fate. `path` is the encoded file of a content window."""

    kind: str  # "clip" | "blank" | "transition" | "too_short"
    a: int
    b: int
    path: str | None = None
    motion: dict | None = None  # a clip's MOTION_FIELDS (+ motion_key) from the source's vectors


class EncodeError(RuntimeError):
    """The clip encoder failed (unknown codec, no NVENC device, bad options): not the source's fault."""


class _Encoder:
    """One clip file: frames in, H.264 (or the configured codec) mp4 with +faststart out.

    Without `settings.fps` every frame is encoded with its source timestamp (VFR stays VFR). With it,
    the clip is resampled to that constant rate: tick k (time k/fps from the clip's first frame) shows
    the last frame at or before it, so frames between ticks are dropped (never converted) and a frame
    spanning several ticks is repeated; `close(duration_s)` fills the ticks up to the clip's end.
    """

    def __init__(self, *args):
        try:
            self._open(*args)
        except (av.FFmpegError, ValueError) as e:
            raise EncodeError(f"cannot open encoder {args[1].codec}: {e}") from e

    def _open(self, path: str, settings: EncodeSettings, template: av.VideoFrame, rotation: int, time_base, rate):
        self.path = path
        self.settings = settings
        self.k = (round(rotation / 90) % 4) if rotation else 0  # np.rot90 turns, to store the picture upright
        w, h = (template.height, template.width) if self.k % 2 else (template.width, template.height)
        if settings.max_height and h > settings.max_height:
            w, h = max(2, round(w * settings.max_height / h / 2) * 2), settings.max_height
        self.size = (w - w % 2, h - h % 2)
        self.out_rate = settings.rate  # None: source timing
        self.src_tb = Fraction(time_base)
        if self.out_rate:
            rate, time_base = self.out_rate, 1 / self.out_rate
        self.container = av.open(path, "w", format="mp4", options={"movflags": "+faststart"})
        s = self.container.add_stream(settings.codec, rate=rate or Fraction(25))
        s.width, s.height = self.size
        s.pix_fmt = "yuv420p"
        s.time_base = time_base
        s.codec_context.time_base = time_base
        opts = {}
        if settings.codec in ("libx264", "libx265"):
            opts = {"crf": str(settings.crf), "preset": settings.preset, **DETERMINISTIC_OPTIONS.get(settings.codec, {})}
        s.options = opts
        # PyAV asks for slice threads; the ffmpeg CLI gives x264 frame threads (faster, same as the floor).
        s.thread_type = "FRAME"
        self.stream = s
        self.time_base = time_base  # the muxer changes the stream's own time base once it writes the header
        self.first_pts = None
        self.held = None  # resampling: the latest frame, shown until the next one's time
        self.tick = 0  # resampling: the next output tick
        self.n = 0  # frames encoded

    def add(self, frame: av.VideoFrame, pts: int) -> None:
        """Frame `frame` of the clip, at `pts` in the source's time base."""
        try:
            self._add(frame, pts)
        except av.FFmpegError as e:
            raise EncodeError(f"encoding {os.path.basename(self.path)} failed: {e}") from e

    def _add(self, frame: av.VideoFrame, pts: int) -> None:
        if self.first_pts is None:
            self.first_pts = pts
        if self.out_rate is None:
            self._encode(frame, pts - self.first_pts)
            return
        t = (pts - self.first_pts) * self.src_tb  # exact: ticks before t show the held frame
        self._emit_until(lambda k: k < t * self.out_rate)
        self.held = frame

    def _emit_until(self, before) -> None:
        if self.held is None:
            return
        converted = None
        while before(self.tick):
            if converted is None:
                converted = self._convert(self.held)
            self._encode(converted, self.tick, convert=False)
            self.tick += 1

    def _convert(self, frame: av.VideoFrame) -> av.VideoFrame:
        if self.k:
            img = np.rot90(frame.to_ndarray(format="rgb24"), self.k)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        w, h = self.size
        if (frame.width, frame.height, frame.format.name) != (w, h, "yuv420p"):
            frame = frame.reformat(width=w, height=h, format="yuv420p", interpolation="BICUBIC")
        return frame

    def _encode(self, frame: av.VideoFrame, pts: int, convert: bool = True) -> None:
        if convert:
            frame = self._convert(frame)
        frame.pts = pts
        frame.time_base = self.time_base
        for p in self.stream.encode(frame):
            self.container.mux(p)
        self.n += 1

    def close(self, duration_s: float | None = None) -> None:
        """Finish the file; `duration_s` (the clip's length in source time) places the last ticks."""
        try:
            if self.out_rate is not None and self.held is not None:
                n = self.settings.frames_out(0, duration_s or 0.0)
                self._emit_until(lambda k: k < n)
                self.held = None
            for p in self.stream.encode():
                self.container.mux(p)
            self.container.close()
        except av.FFmpegError as e:
            raise EncodeError(f"finishing {os.path.basename(self.path)} failed: {e}") from e

    def discard(self) -> None:
        self.held = None
        self.close()
        os.remove(self.path)


def _decode_small(c, s, width: int, vectors: bool = False, size: int | None = None):
    """(full frame, BGR copy `width` wide, motion-vector field or None) for every frame of stream `s`.

    Reading a frame's vectors ties it in PyAV's side-data reference cycle (see stages.motion), so
    with `vectors` the cycles are collected as frames go by (the frames themselves are freed once
    the encoder and the look-ahead are done with them). A last packet cut short by the end of the
    file (`size` bytes: a truncated file) is not decoded: the frame count then says `truncated`,
    whatever the decoder's threading would make of the broken packet.
    """
    height = None
    with frame_cycles_collected() if vectors else contextlib.nullcontext(lambda: None) as collect:
        for packet in c.demux(s):
            if packet.is_corrupt and size and packet.pos is not None and packet.pos + packet.size >= size:
                continue
            for frame in packet.decode():
                if height is None:
                    height = max(2, round(frame.height * width / frame.width / 2) * 2)
                field = frame_vectors(frame) if vectors else None
                collect()
                yield frame, small_bgr(frame, width, height), field


def stream_split(
    path: str,
    fps: float,
    cfg,
    detector,
    labels: LabelSettings | None,
    decoded: Decoded,
    workdir: str,
    rotation: int = 0,
    motion: MotionConfig | None = None,
) -> tuple[list[int], list[float], list[Piece]]:
    """Decode `path` once; return (hard cuts, frame times from frame 0, pieces in frame order).

    `cfg` is the SplitConfig (analysis_width, min/max_clip_s, hard_cut_ratio, detector, encode);
    content windows are encoded under `workdir` as piece files. `labels` None: every frame is content.
    `motion` (method vectors): each clip piece gets its motion from the source's vectors.
    """
    vectors = motion is not None and motion.method == "vectors"
    pad = (labels.ramp_min_frames + labels.margin_frames + 4) if labels else 0
    look_s = cfg.min_clip_s  # frames are decided this far behind the known ones: a content run's end is seen in time
    look_max = round(4 * look_s * (fps or 25.0)) + DECIDE_EVERY  # ... but never more frames behind (timestamps jumping back)
    confirm = cfg.detector not in ("stride", "threshold")
    stats = FrameStats()
    times: list[float] = []
    pts_of: list[int] = []
    pending: deque = deque()  # (index, frame, vector field or None)
    cuts: list[int] = []  # confirmed hard cuts, sorted
    cut_set: set[int] = set()
    seen: set[int] = set()  # detector cuts already looked at
    labs = bytearray()  # labels (CONTENT / TRANSITION / BLANK) of frames [0, len(labs)), fixed once computed
    pieces: list[Piece] = []
    # the open piece: its kind, first frame, encoder; `split` where a content window is to end early
    state = {"kind": None, "a": 0, "enc": None, "split": None, "motion": None}
    done = 0  # frames decided
    known = 0  # frames whose label and cut are known (the decision horizon)
    nxt = [0]  # the next run boundary after the frame being decided (a cache; see run_end)
    diag = 1.0  # the decoded picture's diagonal (motion is in % of it)

    with _open(path) as c, _Finisher() as finisher:
        s, tb, rate, default_dur = video_stream(c, decoded)
        if vectors:
            export_vectors(s)

        def t_at(k: int) -> float:
            return times[k] if k < len(times) else decoded.end_s

        def close_piece(b: int) -> None:
            kind, a, enc = state["kind"], state["a"], state["enc"]
            if kind is None or b <= a:
                return
            if enc is None:
                pieces.append(Piece(kind, a, b))
                return
            duration = t_at(b) - times[a]
            if duration < cfg.min_clip_s - 1e-9:
                finisher.submit(enc.discard)
                pieces.append(Piece("too_short", a, b))
            else:
                finisher.submit(enc.close, duration)
                pieces.append(Piece("clip", a, b, enc.path, _clip_motion(state["motion"], motion)))
            state["enc"] = state["motion"] = None

        def open_piece(kind: str, j: int, frame) -> None:
            state["kind"], state["a"], state["split"] = kind, j, None
            if kind == "clip":
                state["enc"] = _Encoder(os.path.join(workdir, f"{j:08d}.mp4"), cfg.encode, frame, rotation, tb, rate)
                if vectors:
                    state["motion"] = VectorWindows(motion.window_s, float(rate) if rate else None)

        def run_end(j: int, final: bool) -> int | None:
            """The first frame after j that starts a new scene or has another label; None if not known yet."""
            e = max(nxt[0], j + 1)
            while e < known and e not in cut_set and labs[e] == labs[e - 1]:
                e += 1
            nxt[0] = e
            return e if (e < known or final) else None

        def decide(horizon: int, final: bool) -> None:
            nonlocal done, known
            # hard cuts among the detector's cuts whose neighbourhood has been seen
            diff = None
            for k in sorted(set(detector.cuts) - seen):
                if not (final or k + 3 <= len(times)):
                    continue
                seen.add(k)
                if diff is None:
                    diff = np.asarray(stats._diff, np.float64)
                if done <= k < len(times) and k > 0 and (not confirm or confirm_hard_cuts([k], diff, cfg.hard_cut_ratio)):
                    bisect.insort(cuts, k)
                    cut_set.add(k)
            # labels up to the horizon, each computed once with `pad` frames of context on both sides
            if horizon > len(labs):
                if labels:
                    lo, hi = max(0, len(labs) - pad), len(times) if final else min(len(times), horizon + pad)
                    labs.extend(label_frames(stats.slice(lo, hi), labels)[len(labs) - lo : horizon - lo].astype(np.int8).tobytes())
                else:
                    labs.extend(bytes(horizon - len(labs)))
            known = horizon
            upto = horizon
            if not final:  # decide frame j once every frame less than look_s after frame j+1 is known
                upto = done
                while upto + 1 < horizon and (times[upto + 1] + look_s <= times[horizon - 1] or horizon - upto > look_max):
                    upto += 1
            for j in range(done, upto):
                _, frame, field = pending.popleft()
                kind = ("clip", "transition", "blank")[labs[j]]
                new_scene = j in cut_set
                new_window = False
                if kind == "clip" and state["kind"] == "clip" and not new_scene:
                    if state["split"] is None:
                        e = run_end(j, final)
                        if e is not None:
                            state["split"] = early_split(times, state["a"], e, t_at(e), cfg.min_clip_s, cfg.max_clip_s) or -1
                    new_window = j == state["split"] or times[j] - times[state["a"]] >= cfg.max_clip_s - 1e-9
                if j == 0 or new_scene or kind != state["kind"] or new_window:
                    close_piece(j)
                    open_piece(kind, j, frame)
                if state["enc"] is not None:
                    state["enc"].add(frame, pts_of[j])
                    if state["motion"] is not None:
                        state["motion"].push(times[j], field, diag)
            done = max(done, upto)

        try:
            last = 0
            for frame, small, field in prefetch(_decode_small(c, s, cfg.analysis_width, vectors, os.path.getsize(path))):
                if frame.pts is None:
                    pts_s = (decoded.last_pts_s + default_dur) if decoded.last_pts_s is not None else 0.0
                    pts = round(pts_s / tb)
                else:
                    pts, pts_s = frame.pts, float(frame.pts * tb)
                if decoded.first_pts_s is None:
                    decoded.first_pts_s = pts_s
                decoded.n_frames += 1
                if decoded.n_frames == 1:
                    diag = float(np.hypot(frame.width, frame.height))
                decoded.last_pts_s = pts_s
                decoded.last_duration_s = float(frame.duration * tb) if frame.duration else default_dur
                t = pts_s - decoded.first_pts_s
                detector.push(t, small)
                stats.push(small)
                times.append(t)
                pts_of.append(pts)
                pending.append((len(times) - 1, frame, field))
                safe = min(detector.known(), len(times) - 3) - pad
                if safe - last >= DECIDE_EVERY:
                    decide(safe, final=False)
                    last = safe
        except av.FFmpegError as e:
            raise MediaError(Reason.DECODE_ERROR, f"decoding failed after {decoded.n_frames} frames: {e}") from e
        if not times:
            return [], [], []
        detector.cuts = detector.finish()
        decide(len(times), final=True)
        close_piece(len(times))
    return cuts, times, pieces


def early_split(times, a: int, e: int, end: float, min_clip_s: float, max_clip_s: float) -> int | None:
    """Where the content window starting at frame `a` ends, in a run [a, e) that ends at `end` seconds
    (`times`: the frames' seconds), when cutting it at max_clip_s would leave less than min_clip_s at
    the end: the last min_clip_s (or a little more) become the last window. None: no such frame (the
    window ends at max_clip_s as usual)."""
    g = bisect.bisect_left(times, times[a] + max_clip_s - 1e-9, a + 1, e)  # where max_clip_s would cut
    if g >= e or end - times[g] >= min_clip_s - 1e-9:
        return None
    split = bisect.bisect_right(times, end - min_clip_s + 1e-9, a + 1, e) - 1
    return split if split > a and times[split] - times[a] >= min_clip_s - 1e-9 else None


def run_windows(times, a: int, e: int, end: float, min_clip_s: float, max_clip_s: float) -> tuple[list[tuple[int, int]], tuple[int, int] | None]:
    """The windows the one pass cuts a content run [a, e) ending at `end` seconds into, the run known
    whole (`one_pass: false` cuts the same): windows [a, b) of max_clip_s, the one before the last ending
    early where that keeps the last at least min_clip_s (`early_split`); and the rest [a, e) too short
    to keep, if any (the whole run when it is shorter than min_clip_s)."""
    windows = []
    while True:
        g = bisect.bisect_left(times, times[a] + max_clip_s - 1e-9, a + 1, e)
        if g >= e:
            if end - times[a] < min_clip_s - 1e-9:
                return windows, (a, e)
            return windows + [(a, e)], None
        b = early_split(times, a, e, end, min_clip_s, max_clip_s) or g
        windows.append((a, b))
        a = b


class _Finisher:
    """Finishes clip encoders in a background thread: flushing an encoder (its look-ahead and frame
    threads drain, the file is written) then overlaps with encoding the next clip instead of stalling
    the pass (PyAV releases the GIL inside the encoder). Leaving the `with` waits for every file and
    raises the first encoder error, unless an exception is already on its way."""

    def __init__(self):
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="curate-finish")
        self.futures: list = []

    def submit(self, fn, *args) -> None:
        self.futures.append(self.pool.submit(fn, *args))

    def __enter__(self) -> "_Finisher":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.pool.shutdown(wait=True)
        if exc_type is None:
            for f in self.futures:
                f.result()
        return False


def _clip_motion(windows: VectorWindows | None, cfg: MotionConfig | None) -> dict | None:
    """A clip's motion columns from its windows; None when the source's decoder exports no vectors
    (the score step then measures the clip file)."""
    if windows is None or not windows.seen_vectors:
        return None
    return {**columns(summarize(windows.finish(), cfg), cfg), "motion_key": settings_key(cfg)}


__all__ = ["EncodeError", "Piece", "stream_split"]
