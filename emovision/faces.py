"""Face detection, tracking and the per-frame emotion pipeline.

    frame -> detect (Haar, downscaled, every N frames) -> track (IoU, stable ids)
          -> crop every face -> ONE batched classifier call -> per-track EMA smoothing

The classifier applies the model's own preprocessing to the grayscale crops, the same
function used in training, so the live app cannot drift from the trained model.
Everything runs synchronously on the frame it was given: what is drawn on a frame was
computed from that frame (boxes from at most `detect_every - 1` frames earlier).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from emovision.errors import SourceError

DETECT_SCALE = 0.5  # detect on a half-size frame: ~4x faster, faces >= 40 px stay findable
DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"
MIN_FACE = 40  # smallest face side in full-frame pixels; smaller faces carry too little expression
MIN_NEIGHBORS = 6  # higher than OpenCV's 3: no false faces on skimage's textures, coins or retina
SCALE_FACTOR = 1.15  # pyramid step: 1.1 finds a few more faces at ~1.5x the detection time
CROP_PAD = 0.1  # widen detector boxes a little: they cut off the chin and brows that FER2013 keeps
IOU_THRESHOLD = 0.3
MAX_MISSED = 2  # detection rounds a track survives unmatched before its id is retired
HOLD_MISSED = 1  # detection rounds a face stays on screen after the detector loses it (no blinking)
MIN_HITS = 2  # detection rounds a new face needs before it is shown: one-off false faces never are
SMOOTH = 0.6  # weight of the past in the per-face probability EMA
BOX_SMOOTH = 0.3  # weight of the past box: damps Haar's few-pixel jitter without lagging a moving face
DETECT_EVERY = 2
BAR_WIDTH = 120


class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade on a downscaled, equalised grayscale frame."""

    def __init__(self, cascade_path: str | Path | None = None, scale: float = DETECT_SCALE,
                 min_face: int = MIN_FACE, min_neighbors: int = MIN_NEIGHBORS):
        path = Path(cascade_path) if cascade_path else Path(cv2.data.haarcascades) / DEFAULT_CASCADE
        if not path.is_file():
            raise SourceError(f"cascade file not found: {path}")
        try:
            self.cascade = cv2.CascadeClassifier(str(path))
        except (cv2.error, SystemError):
            self.cascade = None
        if self.cascade is None or self.cascade.empty():
            raise SourceError(f"not a valid Haar cascade file: {path} (expected an OpenCV cascade XML)")
        self.scale, self.min_face, self.min_neighbors = scale, min_face, min_neighbors

    def detect(self, gray: np.ndarray) -> np.ndarray:
        """(K, 4) int boxes [x, y, w, h] in full-frame coordinates."""
        small = cv2.resize(gray, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_AREA)
        small = cv2.equalizeHist(small)  # the cascade was trained on equalised faces
        min_side = max(12, int(self.min_face * self.scale))
        boxes = self.cascade.detectMultiScale(small, scaleFactor=SCALE_FACTOR, minNeighbors=self.min_neighbors,
                                              minSize=(min_side, min_side))
        if len(boxes) == 0:
            return np.zeros((0, 4), dtype=int)
        return np.round(np.asarray(boxes, float) / self.scale).astype(int)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between every box of `a` (N, 4) and `b` (M, 4), boxes as [x, y, w, h]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    a, b = a.astype(float)[:, None], b.astype(float)[None]
    ix = np.clip(np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    iy = np.clip(np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = ix * iy
    return inter / (a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter)


@dataclass
class Track:
    id: int
    box: np.ndarray  # [x, y, w, h], float while smoothed
    probs: np.ndarray | None = None  # smoothed class probabilities
    hits: int = 1  # detection rounds matched, this one included
    missed: int = 0  # consecutive detection rounds without a match


class FaceTracker:
    """Greedy IoU matching of detections to tracks; stable ids; per-track EMA of probabilities.

    `smooth` is the weight of the past in the probability EMA (0: off); `box_smooth` the same
    for the box. A new track is shown after `min_hits` matched rounds and kept on screen
    through `HOLD_MISSED` missed ones; it is retired after `max_missed`.
    """

    def __init__(self, iou_threshold: float = IOU_THRESHOLD, max_missed: int = MAX_MISSED,
                 smooth: float = SMOOTH, max_faces: int = 0, min_hits: int = MIN_HITS,
                 box_smooth: float = BOX_SMOOTH):
        self.iou_threshold, self.max_missed = iou_threshold, max_missed
        self.smooth, self.box_smooth = smooth, box_smooth
        self.max_faces, self.min_hits = max_faces, min_hits
        self.tracks: list[Track] = []
        self._next_id = 1

    def update(self, boxes: np.ndarray) -> list[Track]:
        """Match a detection round; unmatched detections start tracks, stale tracks end."""
        boxes = np.asarray(boxes).reshape(-1, 4)
        if self.max_faces and len(boxes) > self.max_faces:  # keep the largest faces
            boxes = boxes[np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable")[: self.max_faces]]
        iou = iou_matrix(np.array([t.box for t in self.tracks]).reshape(-1, 4), boxes)
        matched_tracks, matched_boxes = set(), set()
        for flat in np.argsort(-iou, axis=None, kind="stable"):  # greedy: best overlaps first
            ti, bi = np.unravel_index(flat, iou.shape)
            if iou[ti, bi] < self.iou_threshold:
                break
            if ti in matched_tracks or bi in matched_boxes:
                continue
            matched_tracks.add(ti)
            matched_boxes.add(bi)
            track = self.tracks[ti]
            track.box = self.box_smooth * track.box + (1 - self.box_smooth) * boxes[bi]
            track.hits, track.missed = track.hits + 1, 0
        for ti, track in enumerate(self.tracks):
            if ti not in matched_tracks:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        for bi, box in enumerate(boxes):
            if bi not in matched_boxes:
                self.tracks.append(Track(self._next_id, box.astype(float)))
                self._next_id += 1
        return self.tracks

    def active(self) -> list[Track]:
        """Tracks to show: confirmed (`min_hits` rounds) and not lost for more than `HOLD_MISSED`."""
        return [t for t in self.tracks if t.hits >= self.min_hits and t.missed <= HOLD_MISSED]

    def smooth_probs(self, track: Track, probs: np.ndarray) -> np.ndarray:
        """EMA with weight `smooth` on the past; a new track starts from its first prediction."""
        track.probs = probs if track.probs is None else self.smooth * track.probs + (1 - self.smooth) * probs
        return track.probs


def square_crop(gray: np.ndarray, box: Sequence[float], pad: float = CROP_PAD) -> np.ndarray:
    """A square, slightly padded crop around the box, clipped to the frame (a view, no copy)."""
    x, y, w, h = box
    side = max(w, h) * (1 + 2 * pad)
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    x1, y1 = int(min(gray.shape[1], cx + side / 2)), int(min(gray.shape[0], cy + side / 2))
    return gray[y0:y1, x0:x1]


def to_gray(frame: np.ndarray) -> np.ndarray:
    """BGR (as OpenCV decodes it) or already-gray frame -> gray, the conversion training used."""
    return frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


def classify_boxes(classifier, gray: np.ndarray, boxes: Sequence[Sequence[float]], tta: bool = False) -> np.ndarray:
    """(K, n_classes) probabilities for the faces at `boxes`, in ONE batched forward pass."""
    if len(boxes) == 0:
        return np.zeros((0, len(classifier.classes)), dtype=np.float32)
    return classifier.predict_proba([square_crop(gray, b) for b in boxes], tta=tta)


@dataclass
class FaceResult:
    track_id: int
    box: list[int]  # [x, y, w, h] in frame pixels
    label: str
    confidence: float
    probs: dict[str, float]

    def to_dict(self) -> dict:
        return {"track_id": self.track_id, "box": self.box, "label": self.label, "probs": self.probs}


@dataclass
class FrameResult:
    index: int
    faces: list[FaceResult] = field(default_factory=list)
    detected: bool = False  # whether the detector ran on this frame
    times_ms: dict[str, float] = field(default_factory=dict)  # detect, classify (+ draw once drawn)


class EmotionPipeline:
    """detect (every `detect_every` frames) -> track -> crop -> one batched classify -> smooth.

    Between detection rounds the faces keep their last boxes and are still classified on
    every frame, cropped from the current frame.
    """

    def __init__(self, classifier, detector: HaarFaceDetector | None = None, detect_every: int = DETECT_EVERY,
                 smooth: float = SMOOTH, max_faces: int = 0, tta: bool = False, min_hits: int = MIN_HITS):
        self.classifier = classifier
        self.detector = detector or HaarFaceDetector()
        self.tracker = FaceTracker(smooth=smooth, max_faces=max_faces, min_hits=min_hits)
        self.detect_every = max(1, detect_every)
        self.tta = tta
        self._frames = 0

    def process(self, frame: np.ndarray) -> FrameResult:
        result = FrameResult(self._frames)
        t0 = time.perf_counter()
        gray = to_gray(frame)
        if self._frames % self.detect_every == 0:
            self.tracker.update(self.detector.detect(gray))
            result.detected = True
        tracks = self.tracker.active()
        t1 = time.perf_counter()
        probs = classify_boxes(self.classifier, gray, [t.box for t in tracks], self.tta)
        classes = self.classifier.classes
        for track, p in zip(tracks, probs):
            smoothed = self.tracker.smooth_probs(track, p)
            best = int(smoothed.argmax())
            result.faces.append(FaceResult(track.id, [int(round(v)) for v in track.box], classes[best],
                                           float(smoothed[best]),
                                           {c: round(float(v), 4) for c, v in zip(classes, smoothed)}))
        t2 = time.perf_counter()
        result.times_ms = {"detect": 1000 * (t1 - t0), "classify": 1000 * (t2 - t1)}
        self._frames += 1
        return result

    def annotate(self, frame: np.ndarray, result: FrameResult, fps: float | None = None) -> np.ndarray:
        """`draw` in place, timed into `result.times_ms['draw']`."""
        t0 = time.perf_counter()
        draw(frame, result, self.classifier.classes, fps)
        result.times_ms["draw"] = 1000 * (time.perf_counter() - t0)
        return frame


def draw(frame: np.ndarray, result: FrameResult, classes: Sequence[str], fps: float | None = None) -> np.ndarray:
    """Boxes, labels and confidences for every face; probability bars for the largest face;
    FPS and per-stage times. Draws in place and returns the frame."""
    for face in result.faces:
        x, y, w, h = face.box
        cv2.rectangle(frame, (x, y), (x + w, y + h), (0, 220, 0), 2)
        text = f"#{face.track_id} {face.label} {face.confidence:.0%}"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        ty = max(th + 6, y)  # label on a filled strip above the box, readable on any background
        cv2.rectangle(frame, (x, ty - th - 6), (x + tw + 6, ty), (0, 160, 0), -1)
        cv2.putText(frame, text, (x + 3, ty - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    if result.faces:
        largest = max(result.faces, key=lambda f: f.box[2] * f.box[3])
        for i, name in enumerate(classes):
            p = largest.probs[name]
            y = 20 + 16 * i
            cv2.rectangle(frame, (80, y - 10), (80 + int(BAR_WIDTH * p), y + 2), (255, 160, 0), -1)
            cv2.putText(frame, name[:8], (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    status = " ".join(f"{k} {v:.1f}ms" for k, v in result.times_ms.items())
    if fps is not None:
        status = f"{fps:.0f} fps  {status}"
    cv2.putText(frame, status, (6, frame.shape[0] - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return frame
