"""Test media built from real photos shipped in pip packages (no downloads).

Faces: matplotlib's grace_hopper.jpg and scikit-image's astronaut.png. No face:
scikit-image's camera.png and blank frames.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

FRAME_SIZE = (640, 480)


def grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR)


def astronaut() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def camera() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2BGR)


@dataclass
class VideoTruth:
    path: Path
    has_face: list[bool]  # per frame
    segment: list[str]  # per frame: which scene


def _place(canvas: np.ndarray, img: np.ndarray, x: int, y: int) -> None:
    h, w = img.shape[:2]
    canvas[y:y + h, x:x + w] = img


def make_video(path: Path, frames_per_scene: int = 20, fps: int = 30) -> VideoTruth:
    """Scenes: blank, grace_hopper moving right and growing, camera.png (no face),
    astronaut moving down, blank. Written as mp4v at 640x480."""
    w, h = FRAME_SIZE
    hopper, astro, cam = grace_hopper(), astronaut(), camera()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, FRAME_SIZE)
    has_face, segment = [], []
    n = frames_per_scene
    for scene in ("blank", "hopper", "camera", "astronaut", "blank_end"):
        for i in range(n):
            t = i / max(1, n - 1)
            canvas = np.full((h, w, 3), 128, np.uint8)
            if scene == "hopper":
                scale = 0.55 + 0.15 * t  # face grows
                img = cv2.resize(hopper, None, fx=scale, fy=scale)
                _place(canvas, img[: h - 40], int(20 + 200 * t), 20)
            elif scene == "camera":
                _place(canvas, cv2.resize(cam, (400, 400)), 120, 40)
            elif scene == "astronaut":
                img = cv2.resize(astro, (440, 440))  # face about 90 px
                _place(canvas, img, int(60 + 120 * t), int(40 * t))
            writer.write(canvas)
            has_face.append(scene in ("hopper", "astronaut"))
            segment.append(scene)
    writer.release()
    return VideoTruth(path, has_face, segment)
