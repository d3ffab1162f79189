"""Media helpers: probe (PyAV), streaming low-resolution decode, frame-exact clip writing (ffmpeg).

PyAV reads: it gives decode-order frames with their presentation timestamps, which is what frame
numbers in curate mean. ffmpeg writes: one process per clip, seeking by timestamp and stopping after
an exact frame count, so a clip holds exactly the source frames [start_frame, end_frame).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import queue
import shutil
import tempfile
import threading
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterator, TypeVar

import av
import cv2
import fsspec
import numpy as np

from schemas import Reason
from stages.timeline import Timeline

T = TypeVar("T")

_HASH_CHUNK = 1 << 20


class MediaError(Exception):
    """A source that cannot be used, with a reason code from `schemas.Reason`."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def ffmpeg_exe() -> str:
    """The ffmpeg binary: $CURATE_FFMPEG, else `ffmpeg` on PATH, else the one imageio-ffmpeg ships."""
    exe = os.environ.get("CURATE_FFMPEG") or shutil.which("ffmpeg")
    if exe:
        return exe
    try:
        import imageio_ffmpeg
    except ImportError as e:  # pragma: no cover - imageio-ffmpeg is a declared dependency
        raise RuntimeError("no ffmpeg: install ffmpeg or `pip install imageio-ffmpeg`") from e
    return imageio_ffmpeg.get_ffmpeg_exe()


# --------------------------------------------------------------------------------------------- files


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path_of(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local path holding the bytes of `uri`: the file itself when local, else a temporary download."""
    if is_local(uri):
        yield local_path_of(uri)
        return
    suffix = os.path.splitext(uri)[1][:16]
    with tempfile.TemporaryDirectory(prefix="curate-") as tmp:
        path = os.path.join(tmp, "source" + suffix)
        fs, p = fsspec.core.url_to_fs(uri)
        fs.get_file(p, path)
        yield path


def hash_file(uri: str) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of the file at `uri`. Raises MediaError for missing/unreadable files."""
    try:
        fs, p = fsspec.core.url_to_fs(uri)
        if not fs.exists(p):
            raise MediaError(Reason.MISSING, f"no such file: {uri}")
        if fs.isdir(p):
            raise MediaError(Reason.UNREADABLE, f"is a directory: {uri}")
        h = hashlib.sha256()
        size = 0
        with fs.open(p, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
                size += len(chunk)
    except MediaError:
        raise
    except (OSError, ValueError) as e:
        raise MediaError(Reason.UNREADABLE, f"cannot read {uri}: {e}") from e
    return h.hexdigest(), size


# --------------------------------------------------------------------------------------------- probe


@dataclass(frozen=True)
class Probe:
    container: str
    codec: str
    duration_s: float | None
    fps: float | None
    n_frames: int | None  # the container's count (exact for mp4/mov), else an estimate from duration
    width: int  # displayed, after rotation
    height: int
    rotation: int
    vfr: bool
    stream_start_s: float
    has_audio: bool


def _open(path: str) -> av.container.InputContainer:
    try:
        return av.open(path, metadata_errors="ignore")
    except av.FFmpegError as e:
        with open(path, "rb") as f:
            head = f.read(12)
        if head[4:8] == b"ftyp":
            # An mp4/mov header without a readable index: cut short, or still being written.
            raise MediaError(Reason.TRUNCATED, f"mp4/mov header found but the file does not open (no moov atom?): {e}") from e
        raise MediaError(Reason.NOT_MEDIA, f"cannot open as media: {e}") from e


def _is_vfr(container: av.container.InputContainer, stream: av.VideoStream, n_packets: int = 240) -> bool:
    """Whether frame durations vary, from the timestamps of the first packets (no decoding)."""
    pts = []
    for packet in container.demux(stream):
        if packet.pts is not None:
            pts.append(packet.pts)
        if len(pts) >= n_packets:
            break
    container.seek(0)
    pts = np.sort(np.asarray(pts, dtype=np.int64))
    if len(pts) >= n_packets:
        # Stopped early: B-frame reordering means the last few decode-order packets jump ahead in
        # time, leaving gaps at the top that are not frame-rate changes. Drop more than any reorder depth.
        pts = pts[: len(pts) - 32]
    steps = np.diff(pts)
    steps = steps[steps > 0]
    # Timebase rounding makes CFR steps jitter by a tick (33/34 ms at 1/1000); VFR steps differ by frames.
    return bool(steps.size >= 2 and steps.max() > 1.5 * steps.min())


def probe(path: str) -> Probe:
    """Probe a local file: container facts plus one decoded frame (proof that it decodes, and its rotation)."""
    if os.path.getsize(path) == 0:
        raise MediaError(Reason.EMPTY, "file is empty (0 bytes)")
    with _open(path) as c:
        if not c.streams.video:
            kinds = sorted({s.type for s in c.streams}) or ["none"]
            raise MediaError(Reason.NO_VIDEO, f"no video stream (streams: {', '.join(kinds)})")
        s = c.streams.video[0]
        if s.codec_context is None:
            raise MediaError(Reason.UNSUPPORTED_CODEC, "no decoder for the video codec in this FFmpeg build")
        tb = s.time_base
        rate = s.average_rate or s.guessed_rate
        fps = float(rate) if rate else None
        if s.duration is not None and tb is not None:
            duration = float(s.duration * tb)
        elif c.duration is not None:
            duration = c.duration / av.time_base
        else:
            duration = None
        n_frames = s.frames or (round(duration * fps) if duration and fps else None)
        vfr = _is_vfr(c, s)
        try:
            first = next(c.decode(s), None)
        except av.FFmpegError as e:
            raise MediaError(Reason.DECODE_ERROR, f"first frame does not decode: {e}") from e
        if first is None:
            raise MediaError(Reason.NO_FRAMES, "no frame decodes")
        rotation = int(round(first.rotation or 0)) % 360
        w, h = first.width, first.height
        if rotation in (90, 270):
            w, h = h, w
        start = s.start_time if s.start_time is not None else first.pts
        return Probe(
            container=c.format.name,
            codec=s.codec_context.name,
            duration_s=duration,
            fps=fps,
            n_frames=n_frames,
            width=w,
            height=h,
            rotation=int(round(first.rotation or 0)),
            vfr=vfr,
            stream_start_s=float(start * tb) if start is not None and tb is not None else 0.0,
            has_audio=bool(c.streams.audio),
        )


# --------------------------------------------------------------------------------------------- decode


@dataclass
class Decoded:
    """What a streaming decode learned about the timeline, filled while iterating (see `finish`)."""

    n_frames: int = 0
    n_packets: int = 0  # video packets demuxed with data (a file cut short has fewer than it declares)
    first_pts_s: float | None = None  # raw stream pts of frame 0 (seconds): where ffmpeg's -ss aims from
    end_s: float = 0.0  # end of the last frame from frame 0, on the repaired timeline (gaps not counted)
    container_start_s: float = 0.0  # what ffmpeg's -ss counts from
    fps: float | None = None
    timestamps: str = "ok"  # `ok` | `repaired` (stages.timeline)
    timestamps_note: str | None = None  # what was repaired

    @property
    def repaired(self) -> bool:
        return self.timestamps == "repaired"

    def finish(self, timeline: Timeline, last_duration_s: float | None) -> None:
        """Fill the timeline facts once every frame went through `timeline`."""
        self.n_frames = len(timeline.pts)
        if timeline.first_raw is not None:
            self.first_pts_s = float(timeline.first_raw * timeline.tb)
        self.timestamps, self.timestamps_note = timeline.report()
        if self.n_frames:
            last = timeline.frame_s if self.repaired or not last_duration_s else last_duration_s
            self.end_s = timeline.seconds(self.n_frames - 1) + last


def decode_video(c: av.container.InputContainer, s: av.VideoStream, decoded: Decoded, size: int | None = None) -> Iterator[av.VideoFrame]:
    """Every frame of stream `s` in the decoder's output order; counts packets into `decoded`.

    A last packet cut short by the end of the file (`size` bytes: a truncated file) is not decoded:
    the packet count then says `truncated`, whatever the decoder's threading would make of it.
    """
    for packet in c.demux(s):
        if packet.size:
            decoded.n_packets += 1
        if packet.is_corrupt and size and packet.pos is not None and packet.pos + packet.size >= size:
            continue
        yield from packet.decode()


def video_stream(c: av.container.InputContainer, decoded: Decoded):
    """The first video stream set up for threaded decoding: (stream, time base, average rate); fills
    `decoded.fps` and `decoded.container_start_s`."""
    if not c.streams.video:
        raise MediaError(Reason.NO_VIDEO, "no video stream")
    s = c.streams.video[0]
    s.thread_type = "AUTO"
    rate = s.average_rate or s.guessed_rate
    decoded.fps = float(rate) if rate else None
    decoded.container_start_s = (c.start_time or 0) / av.time_base
    return s, s.time_base, rate


def nominal_fps(s: av.VideoStream) -> float | None:
    """The rate one frame's step is counted at when timestamps need repair: FFmpeg's guess from the
    first timestamps (r_frame_rate), not the average, which a gap in the timestamps drags down."""
    rate = s.guessed_rate or s.average_rate
    return float(rate) if rate else None


def sample_evenly(path: str, n: int, convert: Callable[[av.VideoFrame], T], n_frames: int | None = None) -> list[T]:
    """`convert(frame)` of `n` evenly spaced frames (decode order) of the first video stream at `path`.

    The frame count is `n_frames`, else the stream's; without one every frame is converted and `n`
    are picked evenly afterwards. Decoding stops at the last frame wanted. Raises MediaError (no
    video stream; decoding failed).
    """
    try:
        with av.open(path, metadata_errors="ignore") as c:
            if not c.streams.video:
                raise MediaError(Reason.NO_VIDEO, "no video stream")
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            total = n_frames or s.frames or 0
            want = set(np.linspace(0, total - 1, n).round().astype(int).tolist()) if total > 0 else None
            out = []
            for i, frame in enumerate(c.decode(s)):
                if want is None or i in want:
                    out.append(convert(frame))
                if want is not None and len(out) == len(want):
                    break
    except av.FFmpegError as e:
        raise MediaError(Reason.DECODE_ERROR, f"decoding failed: {e}") from e
    if want is None and len(out) > n:  # no frame count known: all were kept; pick evenly
        out = [out[i] for i in np.linspace(0, len(out) - 1, n).round().astype(int)]
    return out


def small_bgr(frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    """The frame scaled down to `width` x `height` BGR (the analysis frame).

    8-bit limited-range 4:2:0 frames (most video) are scaled plane by plane with OpenCV's area averaging on views of
    the decoded planes, then converted: about 0.1 ms for 720p, where swscale's reformat takes 0.6 ms
    (measured on 1280x720 H.264, 2 cores). Other pixel formats go through swscale.
    """
    if frame.format.name == "yuv420p" and width % 2 == 0 and height % 2 == 0 and frame.width >= width:
        yp, up, vp = frame.planes[0], frame.planes[1], frame.planes[2]
        cw, ch = (frame.width + 1) // 2, (frame.height + 1) // 2
        y = np.frombuffer(yp, np.uint8).reshape(-1, yp.line_size)[: frame.height, : frame.width]
        u = np.frombuffer(up, np.uint8).reshape(-1, up.line_size)[:ch, :cw]
        v = np.frombuffer(vp, np.uint8).reshape(-1, vp.line_size)[:ch, :cw]
        planes = [cv2.resize(y, (width, height), interpolation=cv2.INTER_AREA)]
        planes += [cv2.resize(p, (width // 2, height // 2), interpolation=cv2.INTER_AREA) for p in (u, v)]
        i420 = np.concatenate([p.ravel() for p in planes]).reshape(height * 3 // 2, width)
        return cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420)
    return frame.to_ndarray(width=width, height=height, format="bgr24")


def iter_frames(path: str, width: int, decoded: Decoded, fmt: str = "bgr24") -> Iterator[tuple[float, np.ndarray]]:
    """Decode every frame of the first video stream, yielding (seconds from frame 0, image `width` wide).

    Times are the repaired timeline (stages.timeline), `Timeline.REORDER` frames behind the decoder.
    Memory stays flat: a few frames at a time. `decoded` is filled as frames go by and finished at the
    end. Raises MediaError when decoding fails part way.
    """
    with _open(path) as c:
        s, tb, _rate = video_stream(c, decoded)
        timeline = Timeline(tb, nominal_fps(s))
        height = None
        last_duration = None

        def small(frame):
            nonlocal height, last_duration
            if height is None:
                height = max(2, round(frame.height * width / frame.width / 2) * 2)
            last_duration = float(frame.duration * tb) if frame.duration else None
            return small_bgr(frame, width, height) if fmt == "bgr24" else frame.to_ndarray(width=width, height=height, format=fmt)

        try:
            frames = ((f.pts, small(f)) for f in decode_video(c, s, decoded, os.path.getsize(path)))
            for k, _pts, img in timeline.run(frames):
                decoded.n_frames = k + 1
                yield timeline.seconds(k), img
        except av.FFmpegError as e:
            raise MediaError(Reason.DECODE_ERROR, f"decoding failed after {decoded.n_frames} frames: {e}") from e
        decoded.finish(timeline, last_duration)


# --------------------------------------------------------------------------------------------- encode


# x264's macroblock-tree rate control does not give the same bytes twice for the same frames in the
# x264 that PyAV ships (core 165): the first encoder of a process differs from the next ones, and on a
# loaded machine encoders differ from run to run (one 75-frame clip, 6 encodes, 3 idle + 3 with the CPU
# saturated: 2 different outputs; threads=1 and frames copied before encoding did not help). With
# mbtree off every encode is byte-identical, idle or loaded, in any thread; AQ, B-frames, lookahead and
# weighted prediction stay on. Both writers (PyAV in one pass, ffmpeg in two) use these options unless
# `encode.deterministic` is false. The cost, at the same crf on real footage: 1.2-2.5x the bytes for
# +0.1 to +3 dB PSNR (bikes 1.17x, testvideo 2.46x, traffic_camera 1.74x at crf 18).
DETERMINISTIC_OPTIONS = {"libx264": {"x264-params": "mbtree=0"}}


@dataclass(frozen=True)
class EncodeSettings:
    codec: str = "libx264"
    crf: int = 18
    preset: str = "veryfast"
    max_height: int | None = None  # scale down (keeping aspect) when taller; None keeps the source size
    audio: bool = False
    fps: float | None = None  # resample clips to this constant rate; None keeps the source's timing (VFR stays VFR)
    deterministic: bool = True  # encoder options that give the same bytes on a busy machine (DETERMINISTIC_OPTIONS)

    def __post_init__(self):
        if self.fps is not None and not 0 < self.fps <= 1000:
            raise ValueError(f"encode.fps must be > 0 and <= 1000 (or null), got {self.fps}")
        if self.max_height is not None and self.max_height < 2:
            raise ValueError(f"encode.max_height must be >= 2 (or null), got {self.max_height}")

    @property
    def rate(self) -> Fraction | None:
        """`fps` as an exact rational, the way ffmpeg parses it (29.97 -> 2997/100)."""
        return Fraction(str(self.fps)).limit_denominator(1001000) if self.fps else None

    def fingerprint(self) -> str:
        base = f"{self.codec}-crf{self.crf}-{self.preset}-h{self.max_height or 0}-a{int(self.audio)}"
        base = f"{base}-r{self.rate}" if self.fps else base  # unchanged without fps: clip ids stay the same
        return base if self.deterministic else f"{base}-nondet"

    def codec_options(self) -> dict[str, str]:
        """The encoder's private options: crf and preset for x264/x265, plus DETERMINISTIC_OPTIONS."""
        if self.codec not in ("libx264", "libx265"):
            return {}
        extra = DETERMINISTIC_OPTIONS.get(self.codec, {}) if self.deterministic else {}
        return {"crf": str(self.crf), "preset": self.preset, **extra}

    def frames_out(self, n_frames: int, duration_s: float) -> int:
        """Frames a clip of `n_frames` source frames lasting `duration_s` has once written.

        Without `fps`, frames pass one for one. With it, the clip has one frame per tick k/fps that
        falls inside it (k/fps < duration_s), each the source frame shown at that time: the last one
        whose time from the clip's first frame is at or before k/fps (frames dropped or repeated).
        """
        if not self.fps:
            return n_frames
        return max(1, math.ceil(duration_s * self.rate - 1e-6))


def write_clip(
    src: str,
    dst: str,
    seek_s: float,
    n_frames: int,
    settings: EncodeSettings,
    has_audio: bool = False,
    ffmpeg_cmd: str | None = None,
) -> None:
    """Write `n_frames` frames of `src` starting at the first frame whose time is at or after `seek_s`.

    `seek_s` is on ffmpeg's input clock (container start = 0); callers pass the wanted frame's time
    minus half a frame so rounding never drops or adds a frame. Without `settings.fps`, frames pass
    through one for one (`-fps_mode passthrough`, so VFR stays VFR). With it, `n_frames` counts output
    frames (`EncodeSettings.frames_out`): the fps filter, on times from the clip's first frame and
    rounding up, gives tick k the last frame at or before k/fps (the one-pass encoder's rule), and
    the last frame is repeated if the source ends before the last tick. ffmpeg applies rotation
    metadata, so the clip is stored upright. Writes `dst` through a temporary name.
    """
    import ffmpeg

    if n_frames <= 0:
        raise ValueError(f"n_frames must be positive, got {n_frames}")
    source = ffmpeg.input(src, ss=f"{seek_s:.6f}") if seek_s > 0 else ffmpeg.input(src)
    video = source["v:0"]
    if settings.fps:
        video = video.filter("setpts", "PTS-STARTPTS").filter("fps", fps=str(settings.rate), round="up")
        video = video.filter("tpad", stop_mode="clone", stop=-1)
    if settings.max_height:
        video = video.filter("scale", -2, f"min({settings.max_height},ih)", flags="bicubic")
    # yuv420p needs even sides: an odd-sized source loses its last row/column rather than being resampled.
    video = video.filter("crop", "trunc(iw/2)*2", "trunc(ih/2)*2", 0, 0)
    streams, opts = [video], {"an": None}
    if settings.audio and has_audio:
        streams, opts = [video, source["a:0"]], {"acodec": "aac", "audio_bitrate": "128k"}
    opts.update(settings.codec_options())
    tmp = f"{dst}.tmp-{os.getpid()}"
    out = ffmpeg.output(
        *streams, tmp, vframes=n_frames, fps_mode="passthrough", vcodec=settings.codec, pix_fmt="yuv420p",
        movflags="+faststart", map_metadata=-1, fflags="+bitexact", sn=None, dn=None, f="mp4", **opts,
    )
    try:
        out.global_args("-nostdin", "-hide_banner", "-loglevel", "error").overwrite_output().run(
            cmd=ffmpeg_cmd or ffmpeg_exe(), capture_stdout=True, capture_stderr=True
        )
    except ffmpeg.Error as e:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        tail = (e.stderr or b"").decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"ffmpeg failed writing {os.path.basename(dst)}: {' | '.join(tail)}") from e
    os.replace(tmp, dst)


def count_frames(path: str) -> int:
    with _open(path) as c:
        return sum(1 for _ in c.decode(c.streams.video[0]))


__all__ = [
    "Decoded",
    "EncodeSettings",
    "MediaError",
    "Probe",
    "count_frames",
    "ffmpeg_exe",
    "hash_file",
    "decode_video",
    "iter_frames",
    "local_copy",
    "probe",
    "write_clip",
]


def prefetch(it, depth: int = 8):
    """Run iterator `it` in a thread, `depth` items ahead: decoding and scaling (C code that releases
    the GIL) overlap with the caller's work (detection and encoding, reading motion vectors).
    Exceptions are re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def run():
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        pass
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as e:  # handed to the consumer
            q.put(e)
        finally:
            close = getattr(it, "close", None)
            if close is not None:  # a generator's own cleanup runs in this thread, also when stopped early
                close()

    th = threading.Thread(target=run, name="curate-decode", daemon=True)
    th.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        th.join()
