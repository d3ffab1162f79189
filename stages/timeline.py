"""Frame times that only go forward, from the timestamps a decoder gives, however wrong they are.

Frames are numbered in the decoder's output order (decode index, as everywhere in curate); this
module gives each one a time. Valid files from the wild carry timestamps that are not the textbook
kind, and an encoder rejects a clip whose timestamps do not increase, so they are repaired here, on
the way, with a look-ahead of `REORDER` frames:

    raw pts      1  2  3  5  4  6  8  7      packed B-frames (DivX/Xvid AVI): swapped in pairs
    repaired     1  2  3  4  5  6  7  8      the window's pts sorted onto the frames in output order

    raw pts      0  3  2  1024 1024 2048     re-timed by a filter chain, muxed with passthrough timing
    repaired     0  2  3  1024 1536 2048     a repeat (or a step back within the window) becomes the
                                             previous time plus one nominal frame

    raw pts      0 .. 4.0 | 0 .. 4.0         byte-wise concatenated MPEG-TS: timestamps restart
    repaired     0 .. 4.0 | 4.04 .. 8.04     a step back of more than BACK_S, or forward of more than
                 cut here ^                  JUMP_S, is a discontinuity: the frame after it comes one
                                             nominal frame after the one before, and starts a scene

Missing pts count on from the previous frame by one nominal frame. `Timeline.report()` says what was
repaired; `ok` when nothing was. Times are integers in the stream's time base (exact, as the
encoder needs them); `seconds(k)` is frame k's time from frame 0.
"""

from __future__ import annotations

import heapq
from collections import deque
from fractions import Fraction
from typing import Iterable, Iterator

DEFAULT_FPS = 25.0  # the nominal rate of a stream that declares none (the one place it is assumed)
REORDER = 4  # frames of look-ahead: pts swapped within this window are sorted back into order
BACK_S = 0.5  # a step back in time larger than this is a restart (a discontinuity), not a swap
JUMP_S = 5.0  # a step forward larger than this is a gap: no frame is shown for 5 s in content


class Timeline:
    """Repairs a stream's timestamps as frames go by (see the module docstring)."""

    def __init__(self, time_base: Fraction, fps: float | None):
        self.tb = Fraction(time_base)
        self.fps = fps
        rate = fps if fps and fps > 0 else DEFAULT_FPS
        self.step = max(1, round(1 / (rate * self.tb)))  # one nominal frame, in ticks
        self._back = max(round(BACK_S / self.tb), REORDER * self.step)
        self._jump = max(round(JUMP_S / self.tb), 2 * self.step)
        self._offset = 0  # added to raw pts since the last discontinuity
        self._top: int | None = None  # the largest adjusted pts so far
        self._heap: list[int] = []
        self._pending: deque = deque()  # (index, own adjusted pts, item) waiting for their time
        self._last: int | None = None  # the last time given out
        self._n_in = 0
        self.pts: list[int] = []  # repaired pts of frames given out, in ticks
        self.cuts: list[int] = []  # frames that start after a discontinuity
        self.first_raw: int | None = None  # raw pts of the first frame with one
        self.counts = {"reordered": 0, "repeated": 0, "missing": 0, "restart": 0, "gap": 0}
        self.gap_s = 0.0  # time skipped over at discontinuities (not content)

    # -------------------------------------------------------------------------------- in and out

    def push(self, raw: int | None, item) -> list[tuple[int, int, object]]:
        """Frame `item` with raw pts `raw` (None: none); returns the frames whose time is now known,
        as (index, repaired pts, item), in output order."""
        if raw is None:
            self.counts["missing"] += 1
            q = (self._top + self.step) if self._top is not None else 0
        else:
            if self.first_raw is None:
                self.first_raw = raw
            q = raw + self._offset
            if self._top is not None and (q - self._top > self._jump or self._top - q > self._back):
                self.counts["gap" if q > self._top else "restart"] += 1
                self.gap_s += float(max(0, q - self._top - self.step) * self.tb)
                self._offset += self._top + self.step - q
                q = self._top + self.step
                if self._n_in > 0:
                    self.cuts.append(self._n_in)
        self._top = q if self._top is None else max(self._top, q)
        heapq.heappush(self._heap, q)
        self._pending.append((self._n_in, q, item))
        self._n_in += 1
        out = []
        while len(self._pending) > REORDER:
            out.append(self._give())
        return out

    def finish(self) -> list[tuple[int, int, object]]:
        """The frames still waiting, with their times."""
        return [self._give() for _ in range(len(self._pending))]

    def run(self, frames: Iterable[tuple[int | None, object]]) -> Iterator[tuple[int, int, object]]:
        """(index, repaired pts, item) for every (raw pts, item), REORDER frames behind."""
        for raw, item in frames:
            yield from self.push(raw, item)
        yield from self.finish()

    def _give(self) -> tuple[int, int, object]:
        k, own, item = self._pending.popleft()
        t = heapq.heappop(self._heap)
        if t != own:
            self.counts["reordered"] += 1
        if self._last is not None and t <= self._last:
            self.counts["repeated"] += 1
            t = self._last + self.step
        self._last = t
        self.pts.append(t)
        return k, t, item

    # -------------------------------------------------------------------------------- what it learned

    def seconds(self, k: int) -> float:
        return float((self.pts[k] - self.pts[0]) * self.tb)

    @property
    def frame_s(self) -> float:
        """One nominal frame, in seconds."""
        return float(self.step * self.tb)

    @property
    def repaired(self) -> bool:
        return any(self.counts.values())

    def report(self) -> tuple[str, str | None]:
        """(`ok` | `repaired`, what was repaired or None)."""
        if not self.repaired:
            return "ok", None
        words = {
            "reordered": "pts out of order in the window (sorted back)",
            "repeated": "pts repeated or stepping back (set one nominal frame after the previous)",
            "missing": "frames without pts (counted on at the nominal rate)",
            "restart": f"timestamps restarting (a step back of more than {BACK_S:g} s: new scene)",
            "gap": f"timestamps jumping forward more than {JUMP_S:g} s (new scene, gap not counted)",
        }
        parts = [f"{n} {words[k]}" for k, n in self.counts.items() if n]
        if self.counts["gap"]:
            parts[-1] += f"; {self.gap_s:.1f} s skipped"
        return "repaired", "; ".join(parts)


__all__ = ["DEFAULT_FPS", "Timeline"]
