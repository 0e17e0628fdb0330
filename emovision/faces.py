"""Face detection, tracking and the per-frame emotion pipeline.

    frame -> detect (Haar, downscaled, every N frames) -> track (IoU, stable ids)
          -> crop every face -> ONE batched classifier call -> per-track EMA smoothing

The classifier applies the model's own preprocessing to the grayscale crops, the same
function used in training, so the live app cannot drift from the trained model.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from emovision.errors import SourceError

DETECT_SCALE = 0.5  # detect on a half-size frame: ~4x faster, faces >= 40 px stay findable
DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"
MIN_NEIGHBORS = 6  # higher than OpenCV's 3: fewer false faces on textured backgrounds
SCALE_FACTOR = 1.15
CROP_PAD = 0.1  # widen detector boxes a little: they cut off the chin and brows
BAR_WIDTH = 120
HOLD_MISSED = 1  # detection rounds a face stays on screen after the detector loses it


class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade on a downscaled, equalised grayscale frame."""

    def __init__(self, cascade_path: str | Path | None = None, scale: float = DETECT_SCALE,
                 min_face: int = 40, min_neighbors: int = MIN_NEIGHBORS):
        path = Path(cascade_path) if cascade_path else Path(cv2.data.haarcascades) / DEFAULT_CASCADE
        if not path.is_file():
            raise SourceError(f"cascade file not found: {path}")
        try:
            self.cascade = cv2.CascadeClassifier(str(path))
        except (cv2.error, SystemError):
            self.cascade = None
        if self.cascade is None or self.cascade.empty():
            raise SourceError(f"not a valid Haar cascade file: {path}")
        self.scale, self.min_face, self.min_neighbors = scale, min_face, min_neighbors

    def detect(self, gray: np.ndarray) -> np.ndarray:
        """(K, 4) int boxes [x, y, w, h] in full-frame coordinates."""
        small = cv2.resize(gray, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_AREA)
        small = cv2.equalizeHist(small)
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
    box: np.ndarray  # [x, y, w, h]
    probs: np.ndarray | None = None  # smoothed class probabilities
    missed: int = 0  # detection rounds without a match
    age: int = 0  # frames classified


class FaceTracker:
    """Greedy IoU matching of detections to tracks; stable ids; per-track EMA of probabilities."""

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 2, smooth: float = 0.6,
                 max_faces: int = 0):
        self.iou_threshold, self.max_missed = iou_threshold, max_missed
        self.smooth, self.max_faces = smooth, max_faces
        self.tracks: list[Track] = []
        self._next_id = 1

    def update(self, boxes: np.ndarray) -> list[Track]:
        """Match a detection round; unmatched detections start tracks, stale tracks end."""
        if self.max_faces and len(boxes) > self.max_faces:  # keep the largest faces
            boxes = boxes[np.argsort(-(boxes[:, 2] * boxes[:, 3]))[: self.max_faces]]
        iou = iou_matrix(np.array([t.box for t in self.tracks]).reshape(-1, 4), boxes)
        matched_tracks, matched_boxes = set(), set()
        for flat in np.argsort(-iou, axis=None):
            ti, bi = np.unravel_index(flat, iou.shape)
            if iou[ti, bi] < self.iou_threshold:
                break
            if ti in matched_tracks or bi in matched_boxes:
                continue
            matched_tracks.add(ti)
            matched_boxes.add(bi)
            self.tracks[ti].box, self.tracks[ti].missed = boxes[bi], 0
        for ti, track in enumerate(self.tracks):
            if ti not in matched_tracks:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        for bi, box in enumerate(boxes):
            if bi not in matched_boxes:
                self.tracks.append(Track(self._next_id, box))
                self._next_id += 1
        return self.tracks

    def active(self) -> list[Track]:
        """Tracks to show: matched in the latest detection round, or held through one miss
        so a face the detector loses for a single round does not blink."""
        return [t for t in self.tracks if t.missed <= HOLD_MISSED]

    def smooth_probs(self, track: Track, probs: np.ndarray) -> np.ndarray:
        """EMA with weight `smooth` on the past; a new track starts from its first prediction."""
        track.probs = probs if track.probs is None else self.smooth * track.probs + (1 - self.smooth) * probs
        track.age += 1
        return track.probs


def square_crop(gray: np.ndarray, box: np.ndarray, pad: float = CROP_PAD) -> np.ndarray:
    """A square, slightly padded crop around the box, clipped to the frame."""
    x, y, w, h = box
    side = int(max(w, h) * (1 + 2 * pad))
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    x1, y1 = int(min(gray.shape[1], cx + side / 2)), int(min(gray.shape[0], cy + side / 2))
    return gray[y0:y1, x0:x1]


@dataclass
class FaceResult:
    track_id: int
    box: list[int]
    label: str
    confidence: float
    probs: dict[str, float]


@dataclass
class FrameResult:
    index: int
    faces: list[FaceResult] = field(default_factory=list)
    detected: bool = False  # whether the detector ran on this frame
    times_ms: dict[str, float] = field(default_factory=dict)


class EmotionPipeline:
    """detect (every `detect_every` frames) -> track -> crop -> one batched classify -> smooth."""

    def __init__(self, classifier, detector: HaarFaceDetector | None = None, detect_every: int = 2,
                 smooth: float = 0.6, max_faces: int = 0, tta: bool = False):
        self.classifier = classifier
        self.detector = detector or HaarFaceDetector()
        self.tracker = FaceTracker(smooth=smooth, max_faces=max_faces)
        self.detect_every = max(1, detect_every)
        self.tta = tta
        self._frames = 0

    def process(self, frame: np.ndarray) -> FrameResult:
        result = FrameResult(self._frames)
        t0 = time.perf_counter()
        gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        if self._frames % self.detect_every == 0:
            self.tracker.update(self.detector.detect(gray))
            result.detected = True
        tracks = self.tracker.active()
        t1 = time.perf_counter()
        if tracks:
            crops = [square_crop(gray, t.box) for t in tracks]
            probs = self.classifier.predict_proba(crops, tta=self.tta)  # one batched forward pass
            classes = self.classifier.classes
            for track, p in zip(tracks, probs):
                smoothed = self.tracker.smooth_probs(track, p)
                best = int(smoothed.argmax())
                result.faces.append(FaceResult(track.id, [int(v) for v in track.box], classes[best],
                                               float(smoothed[best]),
                                               {c: round(float(v), 4) for c, v in zip(classes, smoothed)}))
        t2 = time.perf_counter()
        result.times_ms = {"detect": 1000 * (t1 - t0), "classify": 1000 * (t2 - t1)}
        self._frames += 1
        return result


def draw(frame: np.ndarray, result: FrameResult, classes: tuple[str, ...], fps: float | None = None) -> np.ndarray:
    """Boxes, labels and confidences for every face; probability bars for the largest face."""
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
            cv2.putText(frame, f"{name[:8]}", (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    status = " ".join(f"{k} {v:.1f}ms" for k, v in result.times_ms.items())
    if fps is not None:
        status = f"{fps:.0f} fps  {status}"
    cv2.putText(frame, status, (6, frame.shape[0] - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return frame
