"""Test media built from real photos shipped in pip packages (no downloads), and a model.

Faces: matplotlib's grace_hopper.jpg and scikit-image's astronaut.png. No face:
scikit-image's camera.png and blank frames.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

FRAME_SIZE = (640, 480)  # width, height
# Face boxes [x, y, w, h] in the original photos: OpenCV's frontal-face cascade at full
# resolution, checked by eye (forehead to chin, ear to ear).
HOPPER_FACE = (153, 102, 225, 225)  # in the 512x600 photo
ASTRONAUT_FACE = (175, 64, 101, 101)  # in the 512x512 photo
# camera.png's cameraman looks into his camera, face turned three-quarters: no face to the
# frontal Haar cascades, a face to MTCNN (box from MTCNN, checked by eye).
CAMERAMAN_FACE = (199, 118, 56, 78)  # in the 512x512 photo
CAMERA_PLACE = (120, 40, 400)  # x, y, side of camera.png in the test video's frames
SCENES = ("blank", "hopper", "camera", "astronaut", "two", "blank_end")
FACE_SCENES = ("hopper", "astronaut", "two")


def grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    # get_sample_data returns an open binary file for non-.npy/.npz samples in matplotlib >= 3.8
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR)


def astronaut() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def camera() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2BGR)


def blank() -> np.ndarray:
    return np.full((FRAME_SIZE[1], FRAME_SIZE[0], 3), 128, np.uint8)


@dataclass
class VideoTruth:
    path: Path
    boxes: list[list[tuple[int, int, int, int]]]  # per frame: approximate face boxes [x, y, w, h]
    segment: list[str]  # per frame: which scene

    @property
    def has_face(self) -> list[bool]:
        return [bool(b) for b in self.boxes]


def _place(canvas: np.ndarray, photo: np.ndarray, face: tuple, x: int, y: int, scale: float) -> tuple:
    """Paste `photo` scaled by `scale` at (x, y), clipped to the canvas; return the face's box."""
    img = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    h, w = min(img.shape[0], canvas.shape[0] - y), min(img.shape[1], canvas.shape[1] - x)
    canvas[y:y + h, x:x + w] = img[:h, :w]
    fx, fy, fw, fh = face
    return (round(x + fx * scale), round(y + fy * scale), round(fw * scale), round(fh * scale))


def face_frame(photo: np.ndarray, face: tuple, cx: float, cy: float, width: float,
               background: int = 128) -> tuple[np.ndarray, tuple]:
    """A 640x480 frame of `photo` scaled so that its `face` box is `width` px wide and centred
    at (cx, cy), cut where it leaves the frame, on a flat grey; and the face's box there."""
    fx, fy, fw, fh = face
    s = width / fw
    img = cv2.resize(photo, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    frame = np.full((FRAME_SIZE[1], FRAME_SIZE[0], 3), background, np.uint8)
    x, y = int(round(cx - (fx + fw / 2) * s)), int(round(cy - (fy + fh / 2) * s))
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(FRAME_SIZE[0], x + img.shape[1]), min(FRAME_SIZE[1], y + img.shape[0])
    frame[y0:y1, x0:x1] = img[y0 - y:y1 - y, x0 - x:x1 - x]
    return frame, (cx - fw * s / 2, cy - fh * s / 2, fw * s, fh * s)


def cameraman_box() -> tuple[float, float, float, float]:
    """The cameraman's turned face in the test video's camera scene."""
    x, y, side = CAMERA_PLACE
    f = side / 512
    return (x + CAMERAMAN_FACE[0] * f, y + CAMERAMAN_FACE[1] * f, CAMERAMAN_FACE[2] * f, CAMERAMAN_FACE[3] * f)


def make_video(path: Path, frames_per_scene: int = 20, fps: int = 30) -> VideoTruth:
    """640x480 mp4v video, one scene after another (`SCENES`): blank; grace_hopper moving
    right and growing (face ~125-160 px); camera.png (no frontal face: see CAMERAMAN_FACE); astronaut moving right and
    down (face ~87 px); both photos side by side; blank."""
    hopper, astro, cam = grace_hopper(), astronaut(), camera()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, FRAME_SIZE)
    boxes, segment = [], []
    n = frames_per_scene
    for scene in SCENES:
        for i in range(n):
            t = i / max(1, n - 1)
            canvas, faces = blank(), []
            if scene == "hopper":
                faces.append(_place(canvas, hopper, HOPPER_FACE, int(20 + 200 * t), 20, 0.55 + 0.15 * t))
            elif scene == "camera":
                x, y, side = CAMERA_PLACE
                canvas[y:y + side, x:x + side] = cv2.resize(cam, (side, side), interpolation=cv2.INTER_AREA)
            elif scene == "astronaut":
                faces.append(_place(canvas, astro, ASTRONAUT_FACE, int(60 + 120 * t), int(40 * t), 440 / 512))
            elif scene == "two":
                faces.append(_place(canvas, hopper, HOPPER_FACE, 10, 60, 0.5))
                faces.append(_place(canvas, astro, ASTRONAUT_FACE, 300 + int(20 * t), 60, 0.75))
            writer.write(canvas)
            boxes.append(faces)
            segment.append(scene)
    writer.release()
    return VideoTruth(path, boxes, segment)


def model_ref(tmp_path: Path, width: int = 16) -> str:
    """A model reference the apps accept: an untrained cnn_small saved as a training checkpoint
    (`emovision.artifact.save_checkpoint`, the format `stages.train` writes). Its predictions
    are meaningless but deterministic; the tests check the plumbing, not the accuracy."""
    import torch

    from emovision.artifact import ModelSpec, save_checkpoint
    from emovision.data import CLASSES
    from emovision.models import create_model
    from emovision.preprocess import PreprocessConfig

    torch.manual_seed(0)
    kwargs = {"width": width}
    model = create_model("cnn_small", num_classes=len(CLASSES), **kwargs)
    path = Path(tmp_path) / "model.pt"
    spec = ModelSpec("cnn_small", kwargs, tuple(CLASSES), PreprocessConfig(), dataset="untrained (tests)")
    save_checkpoint(path, spec, model.state_dict())
    return str(path)
