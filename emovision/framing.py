"""Crop geometry: where the face is cut out of a frame, the one definition for every path.

FER2013 faces are 48x48 squares framed by the dataset's own face detector: brows to chin,
a little of the cheeks. A face detector's box is framed differently (Haar's box is about the
eyes-to-mouth square), so the crop the model sees is the detector's box mapped to FER2013's
framing: scaled by `scale` and shifted by (`dx`, `dy`) box sides. The constants are
measured, not guessed: `emovision.livecheck.measure_framing` renders FER2013 PublicTest
faces into 640x480 frames, runs the detector and fits the box to the known face square
(median over the faces found). The classifier's pixel preprocessing (`preprocess.py`) then
resizes the crop exactly as training resized the dataset.

    webcam / bench pipeline, predict, analyze_still, livecheck -> crop_faces(gray, boxes, framing)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Framing:
    """FER2013 face square from a detector box [x, y, w, h]: side = scale * max(w, h), centre
    = box centre + (dx, dy) * max(w, h)."""

    scale: float = 1.0
    dx: float = 0.0
    dy: float = 0.0


def fer_square(box: Sequence[float], framing: Framing) -> tuple[float, float, float]:
    """(x0, y0, side) of the FER2013-framed square for a detector box, in frame pixels."""
    x, y, w, h = box
    side = max(w, h)
    cx, cy = x + w / 2 + framing.dx * side, y + h / 2 + framing.dy * side
    s = framing.scale * side
    return cx - s / 2, cy - s / 2, s


def crop_square(gray: np.ndarray, x0: float, y0: float, side: float) -> np.ndarray:
    """A square crop (a view where it lies inside the frame). Where it leaves the frame the
    edge pixels are repeated: a clipped, non-square crop would stretch the face when resized."""
    h, w = gray.shape[:2]
    x0, y0, s = int(round(x0)), int(round(y0)), max(1, int(round(side)))
    x1, y1 = x0 + s, y0 + s
    if x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h:
        return gray[y0:y1, x0:x1]
    inner = gray[max(0, min(h - 1, y0)):max(1, min(h, y1)), max(0, min(w - 1, x0)):max(1, min(w, x1))]
    pads = ((max(0, -y0), s - inner.shape[0] - max(0, -y0)), (max(0, -x0), s - inner.shape[1] - max(0, -x0)))
    return np.pad(inner, [(a, max(0, b)) for a, b in pads], mode="edge")[:s, :s]


def crop_faces(gray: np.ndarray, boxes: Sequence[Sequence[float]], framing: Framing) -> list[np.ndarray]:
    """The FER2013-framed square crop for each detector box."""
    return [crop_square(gray, *fer_square(b, framing)) for b in boxes]
