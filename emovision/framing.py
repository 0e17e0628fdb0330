"""Crop geometry: where the face is cut out of a frame, the one definition for every path.

FER2013 faces are 48x48 squares framed by the dataset's own face detector: brows to chin,
a little of the cheeks. A face detector's box is framed differently (Haar's box is about the
eyes-to-mouth square), so the crop the model sees is the detector's box mapped to FER2013's
framing: scaled by `scale` and shifted by (`dx`, `dy`) box sides. The constants are
measured, not guessed: `emovision.livecheck.measure_framing` renders FER2013 PublicTest
faces into 640x480 frames, runs the detector and fits the box to the known face square
(median over the faces found). A detector with landmarks (MTCNN's eyes) also gives the eye
line's tilt, and `level` of it is taken out of the crop, turning the square about its centre.
The classifier's pixel preprocessing (`preprocess.py`) then resizes the crop exactly as
training resized the dataset.

Test-time views (`VIEW_CYCLE`): the same square at a few sides about its centre. A video
classifies each face at one of them a frame, in turn; a still at all of them, averaged.

    webcam / bench pipeline, predict, analyze_still, livecheck -> crop_faces(gray, boxes, framing, angles, sides)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

# What a square that leaves the frame holds past the frame's edge: the frame mirrored about the
# edge (the edge pixel itself not doubled). Of a face cut by the edge, the mirror shows its other
# half, as training fills what its shifts and zooms uncover (augment's 'reflection'); repeating
# the edge pixels, as before, smeared them into streaks no training image has. On 2,000 PublicTest
# faces whose square is cut by an edge (0.2 / 0.35 / 0.5 of it outside, each side, flip TTA, the
# shipped model) the label agreed with the whole face's on 88% / 73% / 64% of them mirrored,
# against 84% / 66% / 58% with the edge repeated (black 85% / 73% / 59%, mid grey 87% / 72% / 56%).
OUTSIDE_BORDER = cv2.BORDER_REFLECT_101

# How small a face a full scan looks for (both detectors; here so that mtcnn needs not import faces).
MIN_FACE = 40  # smallest face side in full-frame pixels: the Haar cascade's window at faces.DETECT_SCALE
# A frame larger than this (its longer side) is searched, unless a min_face is given, as if it
# were scaled down to it: faces from MIN_FACE px at that size, so from 80 px in a 4K frame, 84 px
# in a 12 MP phone photo. A full scan costs in proportion to the frame's area: with MTCNN a 4K
# frame took 196 ms (640x480: 16 ms, 1920x1080: 45 ms), a 12 MP photo 0.9 s and an 8000x8000
# one 3.6-5.5 s and 0.4 GB more; crops are still cut from the whole frame. Up to 1920 px nothing
# changes.
LARGE_FRAME_SIDE = 1920
# MTCNN's P-Net window: a face smaller than this is found only in an enlarged frame. Here so that
# faces refuses a --min-face under it without importing mtcnn (torch and the weights).
PNET_WINDOW = 12
# The square's side factors, about the same centre, that a face is classified at: in a video one a
# frame in turn (each face's nth classified frame at VIEW_CYCLE[n % len], so a new face starts at
# x1), the per-face probability EMA (faces.SMOOTH) averaging them at no extra classifier work; in
# a still (nothing smoothed) all of them in one batch, averaged. Why: the app's square and
# FER2013's disagree in side by an expression-dependent few percent (docs/live-app.md, "Where the
# app's square and the dataset's disagree"), and the two sides' average is steadier than either.
# Measured (scripts/framing_views.py --rules, PublicTest renders, chosen on seed 10 before seed 20
# was seen): cycling x1 / x0.94 through the EMA gains +0.47 +- 0.19 points over the single square
# (seed 10, 4,497 faces) and +0.47 +- 0.27 (seed 20, 2,254), +0.44 / +0.47 after 2 frames; through
# the app on the harness's fresh seed 30 (4,498 faces, 2 frames), +0.20 (docs/live-app.md,
# "Combining views"), at about -2% fps; a still's two crops cost +4 ms. Training crops
# (livecheck.app_crop, the recrop stage) stay at x1: they are the app's framing, not a view.
VIEW_CYCLE = (1.0, 0.94)


@dataclass(frozen=True)
class Framing:
    """FER2013 face square from a detector box [x, y, w, h]: side = scale * max(w, h), centre
    = box centre + (dx, dy) * max(w, h)."""

    scale: float = 1.0
    dx: float = 0.0
    dy: float = 0.0
    # Fraction of the eye line's tilt turned out of the crop (0: axis-aligned squares). Not all:
    # FER2013's own faces are not level (their eye lines spread about +-10 degrees, p10-p90),
    # and on the live-consistency harness levelling fully gained less than half did
    # (figures at `emovision.mtcnn.MTCNN_FRAMING`).
    level: float = 0.0


def eye_angles(landmarks: np.ndarray) -> np.ndarray:
    """Tilt of the eye line in degrees for (K, >=2, 2) landmarks whose first two points are the
    image-left and image-right eye: positive when the right one is lower (the face turned
    clockwise on screen)."""
    marks = np.asarray(landmarks, float)
    if len(marks) == 0:
        return np.zeros(0)
    d = marks[:, 1] - marks[:, 0]
    return np.degrees(np.arctan2(d[:, 1], d[:, 0]))


def fer_square(box: Sequence[float], framing: Framing, view: float = 1.0) -> tuple[float, float, float]:
    """(x0, y0, side) of the FER2013-framed square for a detector box, in frame pixels; `view`
    (a VIEW_CYCLE factor) scales its side about the same centre."""
    x, y, w, h = box
    side = max(w, h)
    cx, cy = x + w / 2 + framing.dx * side, y + h / 2 + framing.dy * side
    s = framing.scale * view * side
    return cx - s / 2, cy - s / 2, s


def crop_square(gray: np.ndarray, x0: float, y0: float, side: float) -> np.ndarray:
    """A square crop (a view where it lies inside the frame). Where it leaves the frame it is
    filled as OUTSIDE_BORDER says: a clipped, non-square crop would stretch the face when resized."""
    h, w = gray.shape[:2]
    x0, y0, s = int(round(x0)), int(round(y0)), max(1, int(round(side)))
    x1, y1 = x0 + s, y0 + s
    if x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h:
        return gray[y0:y1, x0:x1]
    # a whole-pixel shift: the frame's pixels exactly, and past its edges the frame mirrored
    shift = np.float32([[1, 0, -x0], [0, 1, -y0]])
    return cv2.warpAffine(gray, shift, (s, s), flags=cv2.INTER_NEAREST, borderMode=OUTSIDE_BORDER)


def crop_levelled(gray: np.ndarray, x0: float, y0: float, side: float, angle: float) -> np.ndarray:
    """The square crop turned by `angle` degrees counter-clockwise about its centre (a face
    whose eye line tilts by `angle` comes out level), filled past the frame's edge as
    OUTSIDE_BORDER says; `crop_square` itself when the angle is 0."""
    if angle == 0:
        return crop_square(gray, x0, y0, side)
    cx, cy, s = x0 + side / 2, y0 + side / 2, max(1, int(round(side)))
    matrix = cv2.getRotationMatrix2D((cx, cy), float(angle), 1.0)
    matrix[:, 2] += (side / 2 - cx, side / 2 - cy)  # the square's centre to the crop's centre
    return cv2.warpAffine(gray, matrix, (s, s), flags=cv2.INTER_LINEAR, borderMode=OUTSIDE_BORDER)


def crop_faces(gray: np.ndarray, boxes: Sequence[Sequence[float]], framing: Framing,
               angles: Sequence[float] | None = None, views: Sequence[float] | None = None) -> list[np.ndarray]:
    """The FER2013-framed square crop for each detector box; with the eye lines' `angles`
    (degrees, `eye_angles`), `framing.level` of each is turned out of its crop; with `views`
    (one VIEW_CYCLE factor a box), each square's side scaled by its own (x1 without)."""
    angles = np.zeros(len(boxes)) if angles is None or not framing.level else np.asarray(angles, float)
    views = np.ones(len(boxes)) if views is None else views
    return [crop_levelled(gray, *fer_square(b, framing, v), framing.level * a)
            for b, a, v in zip(boxes, angles, views)]


def face_fits(shape: tuple[int, ...], min_face: int | None) -> bool:
    """Whether a frame of `shape` can hold a face of `min_face` px (a `--min-face`; None: the
    default, which a frame's size scales), its shorter side at least that: a larger one makes the
    detector find nothing, and the apps say so."""
    return min_face is None or min_face <= min(shape[:2])


def smallest_face(shape: tuple[int, ...], min_face: int | None = None) -> float:
    """The smallest face side (px) a full scan of a frame of `shape` looks for: `min_face` when
    given; else MIN_FACE, or as much more as the frame's longer side exceeds LARGE_FRAME_SIDE."""
    return min_face if min_face is not None else MIN_FACE * max(1.0, max(shape[:2]) / LARGE_FRAME_SIDE)
