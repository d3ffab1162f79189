"""Sampled frames for the image-model scorers (text, NSFW): one decode per clip, shared between them.

`read_frames` decodes `n` evenly spaced frames of each scorable clip of a batch (`media.sample_evenly`:
decode order, decoding stops at the last frame wanted) as BGR arrays, the longer side scaled down to
`size` (never up), and returns them keyed by row index, with the rows it could not read. Scorers that
sample the same `n` take the frames of one call (curate's score step decodes once at the larger
size and hands them to both); `fit` scales a frame down to a scorer's own size.
"""

from __future__ import annotations

import cv2
import numpy as np
import pyarrow as pa

from stages.columns import scorable
from stages.media import MediaError, local_copy, sample_evenly


def scaled_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) with the longer side at most `size`, aspect kept, even numbers (never upscaled)."""
    s = min(1.0, size / max(width, height))
    return max(2, round(width * s / 2) * 2), max(2, round(height * s / 2) * 2)


def sample_bgr(path: str, n: int, size: int, n_frames: int | None = None) -> list[np.ndarray]:
    """`n` evenly spaced frames of the video at `path`, BGR uint8, the longer side scaled down to `size`."""

    def bgr(frame):
        w, h = scaled_size(frame.width, frame.height, size)
        return frame.to_ndarray(format="bgr24", width=w, height=h)

    return sample_evenly(path, n, bgr, n_frames)


def read_frames(batch: pa.Table, n: int, size: int) -> tuple[dict[int, list[np.ndarray]], dict[int, str]]:
    """({row index: frames} for every scorable row that decoded, {row index: why not} for those that did not)."""
    frames, errors = {}, {}
    for i, row in enumerate(batch.to_pylist()):
        if not scorable(row):
            continue
        try:
            with local_copy(row["clip_uri"]) as path:
                count = row.get("n_frames") or ((row.get("end_frame") or 0) - (row.get("start_frame") or 0))
                got = sample_bgr(path, n, size, count if count and count > 0 else None)
        except (OSError, MediaError) as e:
            errors[i] = f"cannot read {row['clip_uri']}: {e}"
            continue
        if not got:
            errors[i] = f"cannot read {row['clip_uri']}: no frames decoded"
            continue
        frames[i] = got
    return frames, errors


def fit(frame: np.ndarray, size: int) -> np.ndarray:
    """`frame` scaled down (area averaging) so its longer side is at most `size`."""
    h, w = frame.shape[:2]
    if max(h, w) <= size:
        return frame
    nw, nh = scaled_size(w, h, size)
    return cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA)
