"""Camera motion: a global motion model fitted to a motion field, and a label for the clip.

Per time window (the same windows stages.motion scores), a similarity model -- translation, scale
(zoom) and rotation about the frame centre -- is fitted to the window's field by RANSAC
(cv2.estimateAffinePartial2D; its RANSAC starts from a fixed seed, so the same field gives the same
fit): the camera is what most of the picture agrees on, people or cars moving on their own are outliers.

    field (picture motion per cell)  ->  RANSAC similarity fit  ->  pan, tilt, zoom, rotation per window
    windows                          ->  medians                ->  camera_pan/tilt/zoom, camera_motion

Signs are the CAMERA's: on `pan_right` the camera turns right and the picture moves left; on
`tilt_up` the picture moves down; on `zoom_in` the picture grows from the centre. Pan and tilt are in %
of the frame diagonal per second (motion_score's unit), zoom in relative scale change per second.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

LABELS = ("static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out", "complex")
RANSAC_PX = 1.0  # px (at the field's resolution): a cell within this of the model is an inlier
MIN_CELLS = 6  # fewer usable cells than this: no fit
MAX_COLS = 24  # wider fields are cut into blocks first, at most this many across (RANSAC's cost grows with the cells)


@dataclass(frozen=True)
class CameraWindow:
    """The camera's movement over one window, normalised (see the module docstring)."""

    pan: float  # % of the diagonal per second, > 0: the camera pans right (picture moves left)
    tilt: float  # % of the diagonal per second, > 0: the camera tilts up (picture moves down)
    zoom: float  # relative scale change per second, > 0: zoom in (picture grows)
    rotation: float  # radians per second, > 0: the picture turns clockwise on screen
    inliers: float  # share of the cells the model explains


def fit_window(dx: np.ndarray, dy: np.ndarray, step: float, diag: float, per_s: float) -> CameraWindow | None:
    """Fit the global model to a field of the PICTURE's motion (dx, dy per cell, px per frame interval).

    `step`: cell size in px of the frame whose diagonal is `diag`; `per_s`: frame intervals per second.
    None when there are too few cells or RANSAC finds no model.
    """
    gh, gw = dx.shape
    if gh * gw < MIN_CELLS:
        return None
    k = -(-gw // MAX_COLS)  # 720p: 80x45 cells -> 20x11 blocks of 4x4, their medians (intra zeros do not drag them)
    full_w, full_h = gw * step, gh * step
    if k > 1:
        bh, bw = gh // k, gw // k
        dx = np.median(dx[: bh * k, : bw * k].reshape(bh, k, bw, k), axis=(1, 3))
        dy = np.median(dy[: bh * k, : bw * k].reshape(bh, k, bw, k), axis=(1, 3))
        gh, gw = bh, bw
    ys, xs = np.mgrid[0:gh, 0:gw].astype(np.float32)
    src = np.stack([(xs.ravel() + 0.5) * k * step - full_w / 2, (ys.ravel() + 0.5) * k * step - full_h / 2], 1).astype(np.float32)
    dst = src + np.stack([dx.ravel(), dy.ravel()], 1).astype(np.float32)
    m, inl = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX, maxIters=500, confidence=0.995, refineIters=10)
    if m is None:
        return None
    scale = float(np.hypot(m[0, 0], m[1, 0]))
    return CameraWindow(
        pan=-float(m[0, 2]) / diag * per_s * 100.0,
        tilt=float(m[1, 2]) / diag * per_s * 100.0,
        zoom=(scale - 1.0) * per_s,
        rotation=float(np.arctan2(m[1, 0], m[0, 0])) * per_s,
        inliers=float(inl.mean()) if inl is not None else 0.0,
    )


def speeds(w) -> np.ndarray:
    """|pan|, |tilt|, |zoom|, |rotation| on one scale: % of the diagonal per second at the frame's corner."""
    return np.array([abs(w.pan), abs(w.tilt), abs(w.zoom) * 50.0, abs(w.rotation) * 50.0])


def label(w, min_speed: float, dominance: float) -> str:
    """static below `min_speed`; one component above it and the others below `dominance` x it; else complex."""
    sp = speeds(w)
    order = np.argsort(sp)[::-1]
    top, second = sp[order[0]], sp[order[1]]
    if top < min_speed:
        return "static"
    if order[0] == 3 or second > dominance * top:
        return "complex"
    if order[0] == 0:
        return "pan_right" if w.pan > 0 else "pan_left"
    if order[0] == 1:
        return "tilt_up" if w.tilt > 0 else "tilt_down"
    return "zoom_in" if w.zoom > 0 else "zoom_out"


@dataclass(frozen=True)
class Camera:
    pan: float
    tilt: float
    zoom: float
    motion: str


def summarize_camera(windows: list[CameraWindow], min_speed: float, dominance: float) -> Camera | None:
    """The clip's camera: medians over its windows, labelled; `complex` too when fewer than half of the
    windows agree with the label (a pan that turns back, a move that stops and starts another).
    None without windows."""
    windows = [w for w in windows if w is not None]
    if not windows:
        return None
    med = CameraWindow(*(float(np.median([getattr(w, k) for w in windows])) for k in ("pan", "tilt", "zoom", "rotation", "inliers")))
    lab = label(med, min_speed, dominance)
    if lab != "static" and sum(label(w, min_speed, dominance) == lab for w in windows) * 2 < len(windows):
        lab = "complex"
    return Camera(pan=med.pan, tilt=med.tilt, zoom=med.zoom, motion=lab)
