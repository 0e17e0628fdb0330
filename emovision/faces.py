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
# A second, differently trained cascade re-checks each detection on its own small region:
# on the test media it confirmed 72/72 true faces and rejected every false one (coins, retina).
VERIFY_CASCADE = "haarcascade_frontalface_alt2.xml"
VERIFY_PAD = 0.25  # region searched by the verifier, as a fraction of the box side on each edge
VERIFY_MIN_SIZE = 0.6  # the verifier's face must be at least this fraction of the box side
# Smallest face side in full-frame pixels: the cascade's 24-px window at DETECT_SCALE. A
# smaller --min-face raises the detection scale (and its cost); FER2013 faces are 48 px.
MIN_FACE = 48
# 4 rather than 6: with the verifier and MIN_HITS removing false faces, recall matters more
# (6 lost a third of the 76-px faces of the test video).
MIN_NEIGHBORS = 4
SCALE_FACTOR = 1.15  # pyramid step: 1.05 finds no more faces here at ~3x the detection time
NESTED_OVERLAP = 0.6  # two detections sharing this much of the smaller box are one face
# Known faces are re-detected in their own neighbourhood (a few % of a full scan's windows);
# the whole frame is scanned every FULL_SCAN_EVERY detection rounds for new faces, and at
# once when there is no face or one was lost.
FULL_SCAN_EVERY = 3
ROI_PAD = 0.5  # search region around a known face: this fraction of its side on every edge
ROI_SIZE_RANGE = (0.6, 1.6)  # face sizes searched there, relative to the known face
ROI_FACE_SIDE = 64  # the known face's side at the resolution it is searched at: well above
ROI_MIN_SCALE = 0.25  # the 24-px window, so small faces are found more steadily than in a full scan
CROP_PAD = 0.1  # widen detector boxes a little: they cut off the chin and brows that FER2013 keeps
IOU_THRESHOLD = 0.3
MAX_MISSED = 2  # detection rounds a track survives unmatched before its id is retired
HOLD_MISSED = 1  # detection rounds a face stays on screen after the detector loses it (no blinking)
MIN_HITS = 2  # detection rounds a new face needs before it is shown: one-off false faces never are
SMOOTH = 0.6  # weight of the past in the per-face probability EMA
BOX_SMOOTH = 0.3  # weight of the past box: damps Haar's few-pixel jitter without lagging a moving face
DETECT_EVERY = 2
BAR_WIDTH = 120


def load_cascade(path: str | Path) -> cv2.CascadeClassifier:
    """An OpenCV cascade; a missing or invalid file is a SourceError naming it."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"cascade file not found: {path}")
    try:
        cascade = cv2.CascadeClassifier(str(path))
    except (cv2.error, SystemError):
        cascade = None
    if cascade is None or cascade.empty():
        raise SourceError(f"not a valid Haar cascade file: {path} (expected an OpenCV cascade XML)")
    return cascade


class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade on a downscaled, equalised grayscale frame.

    `verify` (default: on with the default cascade) re-checks each detection with a second
    frontal-face cascade on the detection's own region; a custom `cascade_path` (a profile
    detector, say) is used alone unless `verify=True`.
    """

    def __init__(self, cascade_path: str | Path | None = None, scale: float = DETECT_SCALE,
                 min_face: int = MIN_FACE, min_neighbors: int = MIN_NEIGHBORS, verify: bool | None = None):
        self.cascade = load_cascade(cascade_path or Path(cv2.data.haarcascades) / DEFAULT_CASCADE)
        verify = cascade_path is None if verify is None else verify
        self.verifier = load_cascade(Path(cv2.data.haarcascades) / VERIFY_CASCADE) if verify else None
        # The cascade cannot see a face smaller than its window: detect at a larger scale
        # (slower) when `min_face` asks for faces that the downscaled frame would lose.
        self.window = max(self.cascade.getOriginalWindowSize())
        self.scale = max(scale, self.window / min_face)
        self.min_face, self.min_neighbors = min_face, min_neighbors

    def detect(self, gray: np.ndarray, around: Sequence[Sequence[float]] | None = None) -> np.ndarray:
        """(K, 4) int boxes [x, y, w, h] in full-frame coordinates.

        With `around` (boxes of known faces), only the region around each is searched, for
        faces of about its size, at a resolution where it is ROI_FACE_SIDE pixels wide: a
        fraction of a full scan's cost, steadier on small faces, but blind to new faces.
        """
        h, w = gray.shape[:2]
        if around is None:
            found = [self._scan(gray, (0, 0, w, h), self.scale, self.min_face, max(w, h))]
        else:
            found = []
            for x, y, bw, bh in np.asarray(around, float).reshape(-1, 4):
                side = max(bw, bh)
                pad = side * ROI_PAD
                region = (int(max(0, x - pad)), int(max(0, y - pad)), int(min(w, x + bw + pad)), int(min(h, y + bh + pad)))
                scale = float(np.clip(ROI_FACE_SIDE / side, ROI_MIN_SCALE, 1.0))
                lo, hi = ROI_SIZE_RANGE
                found.append(self._scan(gray, region, scale, max(self.min_face, side * lo), side * hi))
        boxes = np.concatenate([b for b, _ in found])
        scores = np.concatenate([n for _, n in found])
        if len(boxes) > 1:
            boxes = suppress_nested(boxes, scores)
        return np.round(boxes).astype(int).reshape(-1, 4)

    def _scan(self, gray: np.ndarray, region: tuple[int, int, int, int], scale: float, min_side: float,
              max_side: float) -> tuple[np.ndarray, np.ndarray]:
        """Verified boxes (full-frame coordinates, float) and their neighbour counts in one region."""
        x0, y0, x1, y1 = region
        img = cv2.resize(gray[y0:y1, x0:x1], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        img = cv2.equalizeHist(img)  # the cascade was trained on equalised faces
        lo = max(self.window, int(min_side * scale))
        hi = max(lo, int(max_side * scale) + 1)
        boxes, neighbors = self.cascade.detectMultiScale2(
            img, scaleFactor=SCALE_FACTOR, minNeighbors=self.min_neighbors, minSize=(lo, lo), maxSize=(hi, hi))
        boxes = np.asarray(boxes, dtype=int).reshape(-1, 4)
        neighbors = np.ravel(np.asarray(neighbors, dtype=int))
        if self.verifier is not None and len(boxes):
            keep = np.array([self._verified(img, b) for b in boxes])
            boxes, neighbors = boxes[keep], neighbors[keep]
        return boxes / scale + np.array([x0, y0, 0, 0]), neighbors

    def _verified(self, img: np.ndarray, box: np.ndarray) -> bool:
        x, y, w, h = box
        pad = int(w * VERIFY_PAD)
        roi = img[max(0, y - pad):y + h + pad, max(0, x - pad):x + w + pad]
        side = int(w * VERIFY_MIN_SIZE)
        return len(self.verifier.detectMultiScale(roi, scaleFactor=1.1, minNeighbors=1, minSize=(side, side))) > 0


def _overlaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersection areas (N, M) and the areas of `a` (N, 1) and `b` (1, M); boxes [x, y, w, h]."""
    a, b = np.asarray(a, float).reshape(-1, 4)[:, None], np.asarray(b, float).reshape(-1, 4)[None]
    ix = np.clip(np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    iy = np.clip(np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    return ix * iy, a[..., 2] * a[..., 3], b[..., 2] * b[..., 3]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between every box of `a` (N, 4) and `b` (M, 4), boxes as [x, y, w, h]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    inter, area_a, area_b = _overlaps(a, b)
    return inter / (area_a + area_b - inter)


def suppress_nested(boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Keep one box per face: the cascade sometimes reports a face twice at two scales, one
    box inside the other (IoU can be under 0.5, so plain NMS misses it). Boxes are taken by
    descending score; a box is dropped when most of it (or of a kept box) is already covered."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    inter, area, _ = _overlaps(boxes, boxes)
    covered = inter / np.minimum(area, area.T)  # intersection over the smaller box
    keep: list[int] = []
    for i in order:
        if all(covered[i, k] < NESTED_OVERLAP for k in keep):
            keep.append(i)
    return boxes[sorted(keep)]


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


def classify_boxes(classifier, gray: np.ndarray, boxes: Sequence[Sequence[float]],
                   tta: bool | None = None) -> np.ndarray:
    """(K, n_classes) probabilities for the faces at `boxes`, in ONE batched forward pass."""
    if len(boxes) == 0:
        return np.zeros((0, len(classifier.classes)), dtype=np.float32)
    return classifier.predict_proba([square_crop(gray, b) for b in boxes], tta=tta)


def analyze_still(classifier, image: np.ndarray, detector: HaarFaceDetector | None = None,
                  max_faces: int = 0, tta: bool | None = None) -> list[dict]:
    """Every face in one still image (BGR or gray): the same detector, crops and classifier
    as the live app, with nothing carried over from other images (no tracking, no smoothing).

    Returns one dict per face, largest first: box [x, y, w, h], label, confidence, probs.
    """
    gray = to_gray(image)
    boxes = (detector or HaarFaceDetector()).detect(gray)
    boxes = boxes[np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable")]
    if max_faces:
        boxes = boxes[:max_faces]
    classes = classifier.classes
    faces = []
    for box, probs in zip(boxes, classify_boxes(classifier, gray, boxes, tta)):
        best = int(probs.argmax())
        faces.append({"box": [int(v) for v in box], "label": classes[best],
                      "confidence": round(float(probs[best]), 4),
                      "probs": {c: round(float(v), 4) for c, v in zip(classes, probs)}})
    return faces


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
    full_scan: bool = False  # ... on the whole frame, rather than around the known faces
    times_ms: dict[str, float] = field(default_factory=dict)  # detect, classify (+ draw once drawn)


class EmotionPipeline:
    """detect (every `detect_every` frames) -> track -> crop -> one batched classify -> smooth.

    Between detection rounds the faces keep their last boxes and are still classified on
    every frame, cropped from the current frame. Detection rounds scan the whole frame
    every `full_scan_every` rounds (and whenever no face is known or one was lost), and
    only around the known faces otherwise.
    """

    def __init__(self, classifier, detector: HaarFaceDetector | None = None, detect_every: int = DETECT_EVERY,
                 smooth: float = SMOOTH, max_faces: int = 0, tta: bool | None = None, min_hits: int = MIN_HITS,
                 full_scan_every: int = FULL_SCAN_EVERY):
        self.classifier = classifier
        self.detector = detector or HaarFaceDetector()
        self.tracker = FaceTracker(smooth=smooth, max_faces=max_faces, min_hits=min_hits)
        self.detect_every = max(1, detect_every)
        self.full_scan_every = max(1, full_scan_every)
        self.tta = tta
        self._frames = 0
        self._rounds = 0

    def process(self, frame: np.ndarray) -> FrameResult:
        result = FrameResult(self._frames)
        t0 = time.perf_counter()
        gray = to_gray(frame)
        if self._frames % self.detect_every == 0:
            known = self.tracker.tracks
            result.full_scan = (not known or self._rounds % self.full_scan_every == 0
                                or any(t.missed for t in known))
            self.tracker.update(self.detector.detect(gray, None if result.full_scan else [t.box for t in known]))
            result.detected = True
            self._rounds += 1
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
        panel = frame[:min(frame.shape[0], 28 + 16 * len(classes)), :min(frame.shape[1], 86 + BAR_WIDTH)]
        np.multiply(panel, 0.45, out=panel, casting="unsafe")  # darkened backdrop: bars readable on any image
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
