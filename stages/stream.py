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

Frame times come from the repaired timeline (stages.timeline), a few frames behind the decoder: pts
out of order, repeated or missing are fixed on the way, and a restart or a jump of the timestamps
starts a new scene. The encoders get those times, so a clip's timestamps always increase.

With `motion` given (method `vectors`), the decoder also exports the source's motion vectors and
each content window's motion score is measured from them on the way (stages.motion), so scoring
needs no second decode of the clip. With `signature_fps` given, each content window's near-duplicate
signature (stages.dedup) is made from its analysis frames, `signature_fps` a second, turned upright
as the clip file is: dedup needs no second decode either.

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
from stages.dedup import SignatureFrames
from stages.media import Decoded, EncodeSettings, MediaError, _open, decode_video, nominal_fps, prefetch, small_bgr, video_stream
from stages.motion import MotionConfig, VectorWindows, columns, export_vectors, frame_cycles_collected, frame_vectors, settings_key, summarize
from stages.shots import Detector, FrameStats, LabelSettings, confirm_hard_cuts, label_frames
from stages.timeline import Timeline

DECIDE_EVERY = 8  # frames between two decisions: small batches keep the encoder fed while the decoder runs ahead (32: 1.12x the floor, 8: 1.02-1.08x)


@dataclass
class Piece:
    """A run of frames [a, b) of one scene with one fate. `path` is the encoded file of a content window."""

    kind: str  # "clip" | "blank" | "transition" | "too_short"
    a: int
    b: int
    path: str | None = None
    motion: dict | None = None  # a clip's MOTION_FIELDS (+ motion_key) from the source's vectors
    signature: bytes | None = None  # a clip's near-duplicate signature (stages.dedup) from the analysis frames


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
        s.options = settings.codec_options()
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


def _decode_small(c, s, width: int, decoded: Decoded, vectors: bool = False, size: int | None = None):
    """(full frame, BGR copy `width` wide, motion-vector field or None) for every frame of stream `s`.

    Reading a frame's vectors ties it in PyAV's side-data reference cycle (see stages.motion), so
    with `vectors` the cycles are collected as frames go by (the frames themselves are freed once
    the encoder and the look-ahead are done with them).
    """
    height = None
    with frame_cycles_collected() if vectors else contextlib.nullcontext(lambda: None) as collect:
        for frame in decode_video(c, s, decoded, size):
            if height is None:
                height = max(2, round(frame.height * width / frame.width / 2) * 2)
            field = frame_vectors(frame) if vectors else None
            collect()
            yield frame, small_bgr(frame, width, height), field


@dataclass
class _Open:
    """The piece being built: its kind, first frame, encoder and motion windows (content windows);
    `split`: where a content window is to end early (-1: nowhere), None until the run's end is known."""

    kind: str | None = None
    a: int = 0
    enc: _Encoder | None = None
    motion: VectorWindows | None = None
    sig: SignatureFrames | None = None
    split: int | None = None


class StreamSplit:
    """One source, decoded once: frames go to the detector and the frame statistics as they come,
    wait in the look-ahead until their scene, label and window are known, then go to their window's
    encoder or are dropped. `run()` returns (hard cuts, frame times from frame 0, pieces in frame order).

    `cfg` is the SplitConfig (analysis_width, min/max_clip_s, hard_cut_ratio, detector, encode);
    `detector` a stages.shots Detector; content windows are encoded under `workdir` as piece files.
    `labels` None: every frame is content. `motion` (method vectors): each clip piece gets its motion
    from the source's vectors. `signature_fps`: each clip piece gets its near-duplicate signature.
    Frame times come from the repaired timeline (stages.timeline); its
    discontinuities start new scenes.
    """

    def __init__(self, path: str, cfg, detector: Detector, labels: LabelSettings | None, decoded: Decoded,
                 workdir: str, rotation: int = 0, motion: MotionConfig | None = None, signature_fps: float | None = None):
        self.path, self.cfg, self.detector, self.labels, self.decoded = path, cfg, detector, labels, decoded
        self.workdir, self.rotation, self.motion, self.signature_fps = workdir, rotation, motion, signature_fps
        self.turns = (round(rotation / 90) % 4) if rotation else 0  # as _Encoder: the clip file is stored upright
        self.vectors = motion is not None and motion.method == "vectors"
        self.pad = (labels.ramp_min_frames + labels.margin_frames + 4) if labels else 0
        self.confirm = cfg.detector not in ("stride", "threshold")
        self.stats = FrameStats()
        self.times: list[float] = []
        self.pts: list[int] = []  # repaired pts, in the source's time base (what the encoder gets)
        self.pending: deque = deque()  # (frame, vector field or None, analysis frame or None) of frames not decided yet
        self.cuts: list[int] = []  # hard cuts, sorted
        self.cut_set: set[int] = set()
        self.seen: set[int] = set()  # detector cuts already looked at
        self.final_cuts: list[int] | None = None  # the detector's cuts once it has seen every frame
        self.labs = bytearray()  # labels (CONTENT / TRANSITION / BLANK) of frames [0, len(labs)), fixed once computed
        self.pieces: list[Piece] = []
        self.open = _Open()
        self.done = 0  # frames decided
        self.known = 0  # frames whose label and cut are known (the decision horizon)
        self.next_end = 0  # the next run boundary after the frame being decided (a cache; see run_end)
        self.diag = 1.0  # the decoded picture's diagonal (motion is in % of it)
        self.last_duration: float | None = None  # the last frame's own duration, when it has one

    # ---------------------------------------------------------------------------------------- the pass

    def run(self) -> tuple[list[int], list[float], list[Piece]]:
        d = self.decoded
        with _open(self.path) as c, _Finisher() as self.finisher:
            s, tb, self.rate = video_stream(c, d)
            if self.vectors:
                export_vectors(s)
            self.tb = tb
            timeline = Timeline(tb, nominal_fps(s))
            frame_s = timeline.frame_s
            look_s = self.cfg.min_clip_s  # frames are decided this far behind the known ones: a content run's end is seen in time
            self.look_max = round(4 * look_s / frame_s) + DECIDE_EVERY  # ... but never more frames behind
            decoded = prefetch(_decode_small(c, s, self.cfg.analysis_width, d, self.vectors, os.path.getsize(self.path)))
            last = n_breaks = 0
            try:
                for k, pts, (frame, small, field) in timeline.run((f.pts, (f, sm, fi)) for f, sm, fi in decoded):
                    for cut in timeline.cuts[n_breaks:]:
                        self._add_cut(cut)
                    n_breaks = len(timeline.cuts)
                    self._push(k, pts, frame, small, field, timeline.seconds(k))
                    safe = min(self.detector.known(), len(self.times) - 3) - self.pad
                    if safe - last >= DECIDE_EVERY:
                        self._decide(safe, final=False)
                        last = safe
            except av.FFmpegError as e:
                raise MediaError(Reason.DECODE_ERROR, f"decoding failed after {len(self.times)} frames: {e}") from e
            d.finish(timeline, self.last_duration)
            if not self.times:
                return [], [], []
            self.final_cuts = self.detector.finish()
            self._decide(len(self.times), final=True)
            self._close_piece(len(self.times))
        return self.cuts, self.times, self.pieces

    def _add_cut(self, k: int) -> None:
        """A discontinuity of the timeline at frame k: a new scene, whatever the detector says."""
        if k > 0 and k not in self.cut_set:
            bisect.insort(self.cuts, k)
            self.cut_set.add(k)

    def _push(self, k: int, pts: int, frame, small, field, t: float) -> None:
        if k == 0:
            self.diag = float(np.hypot(frame.width, frame.height))
        self.last_duration = float(frame.duration * self.tb) if frame.duration else None
        self.detector.push(t, small)
        self.stats.push(small)
        self.times.append(t)
        self.pts.append(pts)
        self.pending.append((frame, field, small if self.signature_fps else None))

    # ---------------------------------------------------------------------------------------- decisions

    def _t_at(self, k: int) -> float:
        return self.times[k] if k < len(self.times) else self.decoded.end_s

    def _confirm_cuts(self, final: bool) -> None:
        """Hard cuts among the detector's cuts whose neighbourhood has been seen."""
        found = self.final_cuts if final else self.detector.cuts
        diff = None
        for k in sorted(set(found) - self.seen):
            if not (final or k + 3 <= len(self.times)):
                continue
            self.seen.add(k)
            if diff is None:
                diff = self.stats.diff
            if self.done <= k < len(self.times) and k > 0 and k not in self.cut_set and (
                not self.confirm or confirm_hard_cuts([k], diff, self.cfg.hard_cut_ratio)
            ):
                bisect.insort(self.cuts, k)
                self.cut_set.add(k)

    def _label_until(self, horizon: int, final: bool) -> None:
        """Labels up to the horizon, each computed once with `pad` frames of context on both sides."""
        labs, n = self.labs, len(self.times)
        if horizon <= len(labs):
            return
        if self.labels:
            lo, hi = max(0, len(labs) - self.pad), n if final else min(n, horizon + self.pad)
            labs.extend(label_frames(self.stats.slice(lo, hi), self.labels)[len(labs) - lo : horizon - lo].astype(np.int8).tobytes())
        else:
            labs.extend(bytes(horizon - len(labs)))

    def _decidable(self, horizon: int, final: bool) -> int:
        """Frames below this are decided: every frame less than min_clip_s after frame j+1 is known."""
        if final:
            return horizon
        times, upto = self.times, self.done
        look_s = self.cfg.min_clip_s
        while upto + 1 < horizon and (times[upto + 1] + look_s <= times[horizon - 1] or horizon - upto > self.look_max):
            upto += 1
        return upto

    def _run_end(self, j: int, final: bool) -> int | None:
        """The first frame after j that starts a new scene or has another label; None if not known yet."""
        e = max(self.next_end, j + 1)
        while e < self.known and e not in self.cut_set and self.labs[e] == self.labs[e - 1]:
            e += 1
        self.next_end = e
        return e if (e < self.known or final) else None

    def _decide(self, horizon: int, final: bool) -> None:
        self._confirm_cuts(final)
        self._label_until(horizon, final)
        self.known = horizon
        upto = self._decidable(horizon, final)
        cfg, times, op = self.cfg, self.times, self.open
        for j in range(self.done, upto):
            frame, field, small = self.pending.popleft()
            kind = ("clip", "transition", "blank")[self.labs[j]]
            new_scene = j in self.cut_set
            new_window = False
            if kind == "clip" and op.kind == "clip" and not new_scene:
                if op.split is None:
                    e = self._run_end(j, final)
                    if e is not None:
                        op.split = early_split(times, op.a, e, self._t_at(e), cfg.min_clip_s, cfg.max_clip_s) or -1
                new_window = j == op.split or times[j] - times[op.a] >= cfg.max_clip_s - 1e-9
            if j == 0 or new_scene or kind != op.kind or new_window:
                self._close_piece(j)
                op = self.open = self._open_piece(kind, j, frame)
            if op.enc is not None:
                op.enc.add(frame, self.pts[j])
                if op.motion is not None:
                    op.motion.push(times[j], field, self.diag)
                if op.sig is not None and op.sig.due(times[j]):
                    op.sig.push(times[j], np.rot90(small, self.turns) if self.turns else small)
        self.done = max(self.done, upto)

    # ---------------------------------------------------------------------------------------- pieces

    def _open_piece(self, kind: str, j: int, frame) -> _Open:
        op = _Open(kind=kind, a=j)
        if kind == "clip":
            op.enc = _Encoder(os.path.join(self.workdir, f"{j:08d}.mp4"), self.cfg.encode, frame, self.rotation, self.tb, self.rate)
            if self.vectors:
                op.motion = VectorWindows(self.motion.window_s, self.decoded.fps)
            if self.signature_fps:
                op.sig = SignatureFrames(self.signature_fps)
        return op

    def _close_piece(self, b: int) -> None:
        op = self.open
        if op.kind is None or b <= op.a:
            return
        if op.enc is None:
            self.pieces.append(Piece(op.kind, op.a, b))
            return
        duration = self._t_at(b) - self.times[op.a]
        if duration < self.cfg.min_clip_s - 1e-9:
            self.finisher.submit(op.enc.discard)
            self.pieces.append(Piece("too_short", op.a, b))
        else:
            self.finisher.submit(op.enc.close, duration)
            sig = op.sig.finish() if op.sig is not None else None
            self.pieces.append(Piece("clip", op.a, b, op.enc.path, _clip_motion(op.motion, self.motion), None if sig is None else sig.tobytes()))
        self.open = _Open()


def stream_split(path: str, cfg, detector: Detector, labels: LabelSettings | None, decoded: Decoded, workdir: str,
                 rotation: int = 0, motion: MotionConfig | None = None, signature_fps: float | None = None) -> tuple[list[int], list[float], list[Piece]]:
    """Decode `path` once; return (hard cuts, frame times from frame 0, pieces in frame order). See StreamSplit."""
    return StreamSplit(path, cfg, detector, labels, decoded, workdir, rotation, motion, signature_fps).run()


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


__all__ = ["EncodeError", "Piece", "StreamSplit", "stream_split"]
