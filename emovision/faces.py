"""Face detection, tracking and the per-frame emotion pipeline.

    frame -> detect (MTCNN or Haar, every N frames) -> track (IoU with each face's predicted
             box, stable ids; boxes carried along by each face's velocity between detections)
          -> crop every face in FER2013's framing (turned by half its eye line's tilt with
             MTCNN's landmarks) -> ONE batched classifier call
          -> per-track EMA smoothing

Crops follow the one crop geometry (`emovision.framing`, measured against FER2013's own
framing) and go through the model's own pixel preprocessing, the function used in training.
Only faces the latest detection round found are shown; stills (`stills=True`) share nothing.
Everything runs synchronously on the frame it was given: what is drawn on a frame was
computed from that frame (boxes from at most `detect_every - 1` frames earlier).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from emovision.errors import ConfigError, SourceError
from emovision.framing import (LARGE_FRAME_SIDE, MIN_FACE, PNET_WINDOW, VIEW_CYCLE, Framing, crop_faces,
                               eye_angles, smallest_face)
from emovision.levels import to_uint8
from emovision.sources import frame_rate

# Detection runs on a downscaled frame. OpenCV's alt2 frontal cascade has a 20-px window, so
# at DETECT_SCALE = 0.5 it finds faces from 40 px wide (MIN_FACE) in a 640x480 frame, up to
# the frame's height. It replaced the `default` cascade, which misses faces squashed by 20-30%
# (the drifting grace_hopper, 80 frames sampled on 4 greys: 48 vs 80 found; none of
# 17 natural and noise images gave a false face with either).
DETECT_SCALE = 0.5
DEFAULT_CASCADE = "haarcascade_frontalface_alt2.xml"
# A second, differently trained cascade re-checks each detection on its own small region at a
# fixed resolution (VERIFY_SIDE): it drops one-off false faces (a coin in skimage's coins)
# while keeping squashed and small faces, which the `default` cascade as verifier lost.
VERIFY_CASCADE = "haarcascade_frontalface_alt.xml"
VERIFY_PAD = 0.25  # region searched by the verifier, as a fraction of the box side on each edge
VERIFY_SIDE = 48  # the box's side in pixels when verified: above the verifier's 20-px window
VERIFY_MIN_SIZE = 0.6  # the verifier's face must be at least this fraction of the box side
MIN_NEIGHBORS = 3
SCALE_FACTOR = 1.1  # pyramid step; 1.15 lost 4 of 80 squashed-face frames
# No histogram equalisation: the cascade normalises each window's contrast itself, and a
# whole-frame equalizeHist on a flat background stretches the few background levels apart
# and squeezes the face's, which lost every frame of the grace_hopper video.
NESTED_OVERLAP = 0.6  # two detections sharing this much of the smaller box are one face
# Known faces are re-detected in their own neighbourhood (a few % of a full scan's windows);
# the whole frame is scanned every FULL_SCAN_EVERY detection rounds for new faces, and at
# once when there is no face or one was lost.
FULL_SCAN_EVERY = 3
ROI_PAD = 0.5  # search region around a known face: this fraction of its side on every edge
ROI_SIZE_RANGE = (0.6, 1.6)  # face sizes searched there, relative to the known face
ROI_FACE_SIDE = 64  # the known face's side at the resolution it is searched at: well above
ROI_MIN_SCALE = 0.25  # the 20-px window, so small faces are found more steadily than in a full scan
# Where an alt2 Haar box sits on a FER2013-framed face, measured on PublicTest renders by
# `python -m emovision.livecheck --measure-framing --detector haar --faces 400` (medians over
# the 295 found: square side / box side 1.03, p10-p90 0.91-1.26; centre offsets dx -0.004,
# dy 0.008 box sides). The old `default` cascade box plus CROP_PAD = 0.1 cut crops ~18% too large.
HAAR_FRAMING = Framing(scale=1.03, dx=0.0, dy=0.01)
IOU_THRESHOLD = 0.3
# A track that misses a detection round is no longer shown (no ghost labels), but its id lives
# on for ID_LIFETIME_S of video time (`id_lifetime_rounds`), so a face hidden for a moment (a hand
# over the eyes, a cup, another face passing in front) keeps its id when it comes back about where
# it was lost. It was 8 rounds: 0.53 s at 30 fps and detect_every 2, so a hand over the eyes for
# 20 frames gave a new id (and 8 rounds lasted 1 s at 15 fps, 0.27 s at 60).
ID_LIFETIME_S = 2.0
# A lost track is re-found by distance when IoU fails (the face moved while unseen): the new
# box's centre within CENTRE_GATE of the track's side, its side within SIZE_GATE of the track's.
CENTRE_GATE = 0.75
SIZE_GATE = (0.67, 1.5)
# A fast face that turns round between two rounds is found neither where its motion led nor within
# CENTRE_GATE of where it was (a 120 px face at 50 px a frame: 9 ids in 90 frames of bouncing round
# the frame). A face found in the last round is also the same face anywhere within its speed times
# the frames since, plus CENTRE_GATE, of where it was (`_within_reach`): for a still face that is the
# gate above; detections the other tracks matched by IoU are not offered to it, a box within the gate
# is taken before one only within reach, and of those the nearest (a face beside it that turned too
# may be within its reach, and may come first in the detector's order). Given the frame, a box only
# within reach must also look like the face (APPEARANCE_MIN, below): the reach is wide (a 120 px face
# at 25 px a frame reaches 140 px at detect_every 2), and a newcomer there in the round a fast face
# vanished took its id.
# Motion: each track's velocity (centre px and log side per frame) is the change between its
# last two detections, raw, not smoothed (a smoothed box trails a moving face by about a third
# of a round's motion), and not averaged over more rounds (an average lags where a face turns
# round: on a face bouncing at 25 px a frame, 4 of 86 frames lost with weight 0.3 on the past,
# 1 with none). Detections are matched against where the last one would be now (and, for a face
# that turned round, where it was); the shown box is carried along between detection rounds.
# Speeds under this fraction of the side per frame are the detector's jitter, not motion: the
# shown box is not moved (p99 of a still face's full-scan vs local-search box on livecheck's
# renders: 0.03 sides a frame). Matching uses the velocity as measured.
STILL_SPEED = 0.04
MISSED_DECAY = 0.5  # a track's velocity is multiplied by this for each round it is not found
# ... unless it was lost beside another face found in that round: a face passing behind another
# (two people crossing) is hidden for about as long as the other's head takes to pass, and comes
# back where its motion leads, ~1.4 of its sides from where it was lost (scripts/webcam_cases.py
# `cross`), beyond CENTRE_GATE of where it was: a new id in 30 of 32 clips (seeds 0-7). While a
# face found in the round is within OCCLUSION_REACH of its sides of where a lost face's motion takes
# it (a head hides a face beyond the face's own box: the other face was 1.1-1.5 sides away when
# she was lost, 1.4-1.8 when she came back), the lost face keeps its motion (its size change, an
# artefact of being covered, is dropped): one id in 31 of 32, no id swapped; once no face is that
# near, it is behind none, and its motion decays again.
OCCLUSION_REACH = 2.0
# A new face has no velocity until its second round, so one moving 3/4 of its side or more a round
# (a 100 px face at 40 px a frame, detect_every 2) was never matched, so never shown. A new track
# found where no track matched gets a first velocity from the nearest face found in the last round
# and not in this one (its side within NEW_SIZE_GATE, its centre within NEW_REACH of that side a
# frame): a guess, which confirms it only if the next round finds the face where that motion leads
# (or where it is now). The lost face keeps its own track and id, and no box is shown from the
# guess: two faces found in turn keep their own ids.
NEW_REACH = 1.0
NEW_SIZE_GATE = (0.8, 1.25)
# A lost track (one not found in the last round) is re-found by place and size for ID_LIFETIME_S, so
# another person who sat down where the last one was took the last one's id (issue 11: grace_hopper
# fading out on a still room and the astronaut fading in at her place after the chair was empty 0.5,
# 1 or 1.5 s, 8/8 each; one leaving by the frame's edge and another entering there). A lost track now
# takes a detection only where it also looks like the face it lost (`appearance`): the head box grown
# by APPEARANCE_GROW of its side on every edge (hair and outline tell people apart better than the
# face box alone), area-averaged to APPEARANCE_THUMB x APPEARANCE_THUMB grey levels, normalised to
# zero mean and unit length (a light switched on changes nothing; grey sources work too), and its
# correlation with the track's must reach APPEARANCE_MIN. Faces found in the last round are matched as
# before: an expression, a head turn or the light change their look from round to round. Nor is a
# face lost behind another (`Track.hidden`) checked: it comes back half covered by the other's head,
# which the descriptor then holds (grace_hopper coming out from behind the astronaut in the crossing
# clips scored as low as 0.20 against her own). On photo renders (scripts/webcam_cases.py heads, 40
# seeded places, sizes and backgrounds, the box jittered by 5% of its side) the two people scored at
# most 0.44 against each other (0.57 with one head tilted 20 degrees), the same person a p10 of
# 0.68-0.80 with the light x0.4 or x1.5, noise, or 0.75-1.3 times the size (single boxes down to
# 0.30), 0.51 half outside the frame: a threshold trades ids kept for thefts stopped, and
# APPEARANCE_MIN was set from the fading clips (docs/live-app.md, Tracker and shot cuts).
APPEARANCE_THUMB = 8  # 16 was too sensitive to the detector's box jitter (same person down to 0.21)
APPEARANCE_GROW = 0.3
APPEARANCE_SAMPLES = 32  # pixels a side read from the head before area-averaging (see `appearance`)
APPEARANCE_MIN = 0.6
# Weight of the past in each track's descriptor, updated from every round it is found: slow, as the
# last rounds before a face is lost are often its worst (fading out, turning away, going past the
# edge); at 0.5 the faded look of grace_hopper's last rounds matched the astronaut fading in (0.52-0.77).
APPEARANCE_SMOOTH = 0.9
# A newcomer at a lost face's place that does not look like it yet is held (not shown, as a new face
# is not before MIN_HITS) until its look can be trusted: a face fading back in, or coming back from
# past the frame's edge (where the detector sees it mirrored), looks like the room or a mirror image
# before it looks like itself (grace_hopper fading back in scored 0.09 and 0.34 on her first boxes,
# and got a second id when that was decided at once). It takes the lost face's id in the first round
# it looks like it; it is shown under its own new id once its box lies inside the frame and two
# rounds in turn agree, in look (APPEARANCE_STEADY) and in contrast (CONTRAST_STEADY), or after
# HOLD_ROUNDS rounds. The look alone settled too early: grace_hopper's first two faint boxes both
# looked like the room (0.92 with each other, 0.09 and 0.34 with her), while the head's contrast
# went from 50 to 39 grey levels as she faded in (webcam_cases seed 5, same-1.5s).
APPEARANCE_STEADY = 0.95
CONTRAST_STEADY = 0.1  # largest change of the head's contrast, relative, between two settled rounds
HOLD_ROUNDS = 6
MIN_HITS = 2  # detection rounds a new face needs before it is shown: one-off false faces never are
SMOOTH = 0.6  # weight of the past in the per-face probability EMA
# A face re-found after more than one round unseen (hidden, not skipped once by the detector)
# starts its EMA afresh: the old one holds the last crops before it was lost, often of the hand
# covering it. On 3 seeded hand-over-the-mouth clips (scripts/webcam_cases.py) the first frame
# back was 0.99, 0.48, 0.08 (L1) from the face's settled probabilities with the EMA kept, 0.00,
# 0.08, 0.09 restarted; over the eyes (no crop of the hand kept) the same either way.
# Weights of the past box: the centre follows a moving face closely; the side, which Haar
# reports with ~10% jitter, is damped more (it sets the crop's scale, so it should be steady).
BOX_SMOOTH = 0.3
SIZE_SMOOTH = 0.6
ANGLE_SMOOTH = 0.6  # the eye line's tilt (detectors with landmarks) turns the crop: damped like the side
DETECT_EVERY = 2


def id_lifetime_rounds(fps: float | None = None, detect_every: int = DETECT_EVERY) -> int:
    """Detection rounds a lost track's id lives: ID_LIFETIME_S of video at `fps` frames a
    second (as `emovision.sources.frame_rate` takes it: 30 where unknown or not a sane rate), one
    round every `detect_every`."""
    return max(1, math.ceil(ID_LIFETIME_S * frame_rate(fps) / max(1, detect_every)))


MAX_MISSED = id_lifetime_rounds()  # 30 rounds: 2 s at 30 fps (the rate assumed) and DETECT_EVERY
# A track never confirmed (fewer than `min_hits` rounds: most are one-off false faces on the
# background) has no shown id to keep; it ends after the old 8 rounds, not ID_LIFETIME_S: while
# any track is missed every round scans the whole frame, so a one-off box would keep a 640x480
# feed on full scans for 2 s, and a real face would be matched to it.
UNCONFIRMED_MAX_MISSED = 8
# Shot cuts (an edited video): a cut ends every track, so a new person at the old one's place
# gets a new id and none of the old face's probabilities, box or velocity. Told from the frames
# alone (`ShotCuts`), on a grey thumbnail normalised to zero mean and unit contrast, so a light
# switched on or an auto-exposure ramp changes nothing. Figures measured by the study in the
# commit that added them (24 seeds of each kind, 640x480 mp4v videos): cuts between
# grace_hopper and astronaut at the same place and size were found 24/24 with whole photos
# (also on different backgrounds), 21/24 for heads on different backgrounds and 10/24 for
# heads alone on the same background (a head jumping 30-80 px looks the same); no false cut on
# light x0.5 <-> x1.5 in one frame, exposure ramps, faces at 25-50 px a frame or jumping 30-80
# px in one, a hand sweeping past, a knocked camera, heavy noise: the worst of these scored 0.67
# of the threshold (the jump), the rest under 0.63.
CUT_THUMB = (32, 24)  # thumbnail (width, height): 20-px cells at 640x480; 0.12 ms a frame
CUT_CONTRAST_FLOOR = 1.0  # grey levels added to the thumbnail's std: a flat frame normalises to 0, not noise
CUT_REACH = 2  # cells: a change a neighbour within this reach explains is motion (40 px at 640x480)
CUT_CHANGE = 0.15  # mean normalised level outside the previous frame's local range: above is a cut
CUT_DECORRELATION = 0.35  # 1 - correlation with the previous frame: above is a cut (light changes: < 0.2)
# A cut comes out of a steady shot into a steady shot: the change before the cut frame and the
# one after it must both be below this (a hand sweeping past or a flash changes several frames
# running). The cut is thus known one frame late: the cut frame shows no face, but its detection
# round counts as the new shot's first (`EmotionPipeline`).
CUT_STEADY = 0.05
BAR_WIDTH = 120
PANEL_SIZE = (86 + BAR_WIDTH, 28 + 16 * 7)  # probability panel (width, height) for 7 classes
# Sizes the panel is tried at, largest first: where no place at full size clears every face (a
# 320x240 frame, a face filling the frame) a smaller panel is tried, and if none fits it is
# left out (each face's label still gives its top class); below 0.75 its text is unreadable.
PANEL_SCALES = (1.0, 0.75)
# The overlay (labels, panel, status line, box lines) was sized for 640x480 and read a third as
# large on a 1080p frame; it now grows with the frame's shorter side from this one, never shrinks.
OVERLAY_REFERENCE = 480


def overlay_scale(frame_shape: tuple[int, ...]) -> float:
    """How much larger than at 640x480 the overlay is drawn on this frame (1.0 up to 480 px)."""
    return max(1.0, min(frame_shape[:2]) / OVERLAY_REFERENCE)


def _thickness(scale: float) -> int:
    return max(1, round(scale))


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
    """OpenCV's frontal-face Haar cascade on a downscaled grayscale frame.

    `verify` (default: on with the default cascade) re-checks each detection with a second
    frontal-face cascade on the detection's own region; a custom `cascade_path` (a profile
    detector, say) is used alone unless `verify=True`. `framing` maps its boxes to the
    FER2013 framing (`emovision.framing`).
    """

    name = "haar"

    def __init__(self, cascade_path: str | Path | None = None, scale: float = DETECT_SCALE,
                 min_face: int | None = None, min_neighbors: int = MIN_NEIGHBORS, verify: bool | None = None,
                 framing: Framing = HAAR_FRAMING):
        self.cascade = load_cascade(cascade_path or Path(cv2.data.haarcascades) / DEFAULT_CASCADE)
        verify = cascade_path is None if verify is None else verify
        self.verifier = load_cascade(Path(cv2.data.haarcascades) / VERIFY_CASCADE) if verify else None
        # The cascade cannot see a face smaller than its window: detect at a larger scale
        # (slower) when `min_face` asks for faces that the downscaled frame would lose.
        self.window = max(self.cascade.getOriginalWindowSize())
        self.scale = max(scale, self.window / (min_face or MIN_FACE))
        self.min_face, self.min_neighbors = min_face, min_neighbors  # min_face None: `smallest_face`'s default
        self.framing = framing

    def detect(self, gray: np.ndarray, around: Sequence[Sequence[float]] | None = None) -> np.ndarray:
        """(K, 4) int boxes [x, y, w, h] in full-frame coordinates.

        With `around` (boxes of known faces), only the region around each is searched, for
        faces of about its size, at a resolution where it is ROI_FACE_SIDE pixels wide: a
        fraction of a full scan's cost, steadier on small faces, but blind to new faces.
        """
        h, w = gray.shape[:2]
        min_face = smallest_face(gray.shape, self.min_face)
        if around is None:  # a large frame at a scale as much lower as its smallest face is larger
            scale = self.scale * (self.min_face or MIN_FACE) / min_face
            found = [self._scan(gray, (0, 0, w, h), scale, min_face, max(w, h))]
        else:
            found = []
            for x, y, bw, bh in np.asarray(around, float).reshape(-1, 4):
                side = max(bw, bh)
                pad = side * ROI_PAD
                region = (int(max(0, x - pad)), int(max(0, y - pad)), int(min(w, x + bw + pad)), int(min(h, y + bh + pad)))
                scale = float(np.clip(ROI_FACE_SIDE / side, ROI_MIN_SCALE, 1.0))
                lo, hi = ROI_SIZE_RANGE
                found.append(self._scan(gray, region, scale, max(min_face, side * lo), side * hi))
        boxes = np.concatenate([b for b, _ in found])
        scores = np.concatenate([n for _, n in found])
        if len(boxes) > 1:
            boxes = suppress_nested(boxes, scores)
        return np.round(boxes).astype(int).reshape(-1, 4)

    def _scan(self, gray: np.ndarray, region: tuple[int, int, int, int], scale: float, min_side: float,
              max_side: float) -> tuple[np.ndarray, np.ndarray]:
        """Verified boxes (full-frame coordinates, float) and their neighbour counts in one region."""
        x0, y0, x1, y1 = region
        img = gray[y0:y1, x0:x1]
        if scale != 1.0:
            img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        lo = max(self.window, int(min_side * scale))
        hi = max(lo, int(max_side * scale) + 1)
        if min(img.shape[:2]) < lo:
            return np.zeros((0, 4)), np.zeros(0, int)
        boxes, neighbors = self.cascade.detectMultiScale2(
            img, scaleFactor=SCALE_FACTOR, minNeighbors=self.min_neighbors, minSize=(lo, lo), maxSize=(hi, hi))
        boxes = np.asarray(boxes, dtype=float).reshape(-1, 4) / scale + np.array([x0, y0, 0, 0])
        neighbors = np.ravel(np.asarray(neighbors, dtype=int))
        if self.verifier is not None and len(boxes):
            keep = np.array([self._verified(gray, b) for b in boxes], dtype=bool)
            boxes, neighbors = boxes[keep], neighbors[keep]
        return boxes, neighbors

    def _verified(self, gray: np.ndarray, box: np.ndarray) -> bool:
        """Whether the verifier also sees a face in the box's padded region, at VERIFY_SIDE."""
        x, y, w, h = box
        pad = w * VERIFY_PAD
        roi = gray[int(max(0, y - pad)):int(y + h + pad), int(max(0, x - pad)):int(x + w + pad)]
        f = VERIFY_SIDE / w
        roi = cv2.resize(roi, None, fx=f, fy=f, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
        side = int(VERIFY_SIDE * VERIFY_MIN_SIZE)
        return len(self.verifier.detectMultiScale(roi, scaleFactor=1.1, minNeighbors=1, minSize=(side, side))) > 0


DETECTORS = ("haar", "mtcnn")
DEFAULT_DETECTOR = "mtcnn"


def make_detector(name: str = DEFAULT_DETECTOR, cascade: str | Path | None = None, min_face: int | None = None):
    """The face detector called `name` ("haar": OpenCV cascades; "mtcnn": `emovision.mtcnn`),
    finding faces from `min_face` px (None: MIN_FACE, more in frames over LARGE_FRAME_SIDE).

    `min_face` below the detector's window (MTCNN 12 px, the Haar cascade's own, 20 px for the
    default) is a ConfigError: such faces are found only in a frame enlarged (window / min_face)**2
    times, and `--min-face 1` took 48 s and 5.9 GB on a 512x600 photo (MTCNN; Haar 23 s, 6.9 GB),
    where 40 takes 0.04 s; a face of a few pixels has no expression to read anyway."""
    if cascade is not None and name != "haar":
        raise SourceError(f"--cascade is for the haar detector, not {name}")
    if name not in DETECTORS:
        raise SourceError(f"unknown face detector {name!r}; choose from {', '.join(DETECTORS)}")
    given = None if min_face is None else max(min_face, 1)
    if name == "mtcnn":
        # checked before the import: emovision.mtcnn loads torch and the weights (3.2 s, 850 MB
        # for a refusal that takes 0.1 s)
        _check_min_face(min_face, PNET_WINDOW, name)
        from emovision.mtcnn import MTCNNFaceDetector

        return MTCNNFaceDetector(min_face=given)
    detector = HaarFaceDetector(cascade, min_face=given)  # its window is the cascade XML's own (read in ms)
    _check_min_face(min_face, detector.window, name)
    return detector


def _check_min_face(min_face: int | None, window: int, name: str) -> None:
    if min_face is not None and min_face < window:
        raise ConfigError(f"--min-face must be >= {window} px with --detector {name} (its smallest "
                          f"window; a smaller face would need each image enlarged), got {min_face}")


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


def appearance(gray: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, APPEARANCE_THUMB**2) unit descriptors of the heads at `boxes` (see APPEARANCE_MIN) and
    their contrasts (the thumbnails' standard deviations in grey levels, see CONTRAST_STEADY); the
    frame is mirrored past its edges, as MTCNN sees it, for a head partly outside."""
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    out = np.zeros((len(boxes), APPEARANCE_THUMB ** 2), np.float32)
    contrast = np.zeros(len(boxes), np.float32)
    H, W = gray.shape[:2]
    for k, (x, y, w, h) in enumerate(boxes):
        x0, y0 = int(round(x - APPEARANCE_GROW * w)), int(round(y - APPEARANCE_GROW * h))
        x1, y1 = int(round(x + (1 + APPEARANCE_GROW) * w)), int(round(y + (1 + APPEARANCE_GROW) * h))
        if x1 <= x0 or y1 <= y0:
            continue
        pad = max(0, -x0, -y0, x1 - W, y1 - H)
        # every step-th pixel, about APPEARANCE_SAMPLES a side: area-averaging a large head cost up to
        # 0.3 ms on a 1080p frame, this 0.02 ms at any size
        step = max(1, (x1 - x0) // APPEARANCE_SAMPLES, (y1 - y0) // APPEARANCE_SAMPLES)
        if pad:  # only the head's neighbourhood is padded, not the frame
            a, b = max(0, x0), max(0, y0)
            part = np.ascontiguousarray(gray[b:min(H, y1):step, a:min(W, x1):step])
            if part.size == 0 or min(part.shape) < 2:
                continue
            head = cv2.copyMakeBorder(part, (b - y0) // step, (y1 - min(H, y1)) // step, (a - x0) // step,
                                      (x1 - min(W, x1)) // step, cv2.BORDER_REFLECT_101)
        else:
            head = np.ascontiguousarray(gray[y0:y1:step, x0:x1:step])
        thumb = cv2.resize(head, (APPEARANCE_THUMB, APPEARANCE_THUMB), interpolation=cv2.INTER_AREA).ravel()
        thumb = thumb.astype(np.float32) - thumb.mean()
        norm = np.linalg.norm(thumb)
        out[k], contrast[k] = thumb / (norm + 1e-6), norm / APPEARANCE_THUMB
    return out, contrast


def _blend_looks(past: np.ndarray, new: np.ndarray) -> np.ndarray:
    """A track's descriptor after a round that found it (see APPEARANCE_SMOOTH), unit length again."""
    look = APPEARANCE_SMOOTH * past + (1 - APPEARANCE_SMOOTH) * new
    return look / (np.linalg.norm(look) + 1e-6)


@dataclass
class Track:
    id: int
    box: np.ndarray  # [x, y, w, h], float while smoothed
    probs: np.ndarray | None = None  # smoothed class probabilities
    angle: float = 0.0  # smoothed eye-line tilt in degrees (0 for detectors without landmarks)
    hits: int = 1  # detection rounds matched, this one included
    missed: int = 0  # consecutive detection rounds without a match
    raw: np.ndarray | None = None  # the last detection's box, unsmoothed
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(3))  # centre x, y (px) and log side per frame
    since: int = 0  # frames since the last detection matched (counted by `FaceTracker.advance`)
    look: np.ndarray | None = None  # appearance descriptor (`appearance`), None where no frame was given
    hidden: bool = False  # lost beside a face found in the round it was lost (see OCCLUSION_REACH)
    held_for: tuple[int, ...] = ()  # ids of lost faces this newcomer may be (see APPEARANCE_STEADY)
    last_look: np.ndarray | None = None  # its latest round's own descriptor, while held
    last_contrast: float = 0.0  # and that round's contrast

    def __post_init__(self):
        if self.raw is None:
            self.raw = np.asarray(self.box, float).copy()

    def predicted(self) -> np.ndarray:
        """Where the last detection's box would be now at the measured velocity."""
        return _moved(self.raw, self.velocity * self.since)


def _moved(box: np.ndarray, step: np.ndarray) -> np.ndarray:
    """`box` [x, y, w, h] with its centre moved by step[:2] and its sides scaled by exp(step[2])."""
    size = box[2:] * np.exp(step[2])
    return np.concatenate([box[:2] + box[2:] / 2 + step[:2] - size / 2, size])


def _centre_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Distance between the centres of boxes `a` and `b` [x, y, w, h]."""
    return float(np.hypot(*(b[:2] + b[2:] / 2 - a[:2] - a[2:] / 2)))


def _gated(track_box: np.ndarray, box: np.ndarray) -> bool:
    """Whether `box` is close enough to a lost track's box to be the same face (see CENTRE_GATE)."""
    side, new_side = max(track_box[2:]), max(box[2:])
    dist = _centre_distance(track_box, box)
    return dist <= CENTRE_GATE * side and SIZE_GATE[0] <= new_side / side <= SIZE_GATE[1]


def _within_reach(track: Track, box: np.ndarray) -> bool:
    """Whether `box` is where a face found in the last round could have got to at its speed, in any
    direction (one that turned round), and of about its size (see CENTRE_GATE)."""
    if track.missed:
        return False
    side, new_side = max(track.raw[2:]), max(box[2:])
    reach = np.hypot(*track.velocity[:2]) * max(track.since, 1) + CENTRE_GATE * side
    dist = _centre_distance(track.raw, box)
    return dist <= reach and SIZE_GATE[0] <= new_side / side <= SIZE_GATE[1]


def _beside(box: np.ndarray, others: np.ndarray) -> bool:
    """Whether a face of `others` is close enough to `box` to hide it (see OCCLUSION_REACH)."""
    return any(_centre_distance(box, other) <= OCCLUSION_REACH * max(box[2:]) for other in others)


def _guess_velocities(lost: list[Track], new: list[Track]) -> None:
    """Give each new track the motion from the nearest face of the last round that this round
    lost and that could have moved there (see NEW_REACH); nearest pairs first."""
    pairs = []
    for old in lost:
        side, frames = max(old.raw[2:]), max(old.since, 1)
        for track in new:
            dist = np.hypot(*(track.raw[:2] + track.raw[2:] / 2 - old.raw[:2] - old.raw[2:] / 2))
            if dist <= NEW_REACH * side * frames and NEW_SIZE_GATE[0] <= max(track.raw[2:]) / side <= NEW_SIZE_GATE[1]:
                pairs.append((dist / side, old.id, track.id, old, track))
    taken: set[int] = set()
    for _, old_id, new_id, old, track in sorted(pairs, key=lambda p: p[:3]):
        if old_id in taken or new_id in taken:
            continue
        taken |= {old_id, new_id}
        side, frames = max(old.raw[2:]), max(old.since, 1)
        track.velocity = np.array([*(track.raw[:2] + track.raw[2:] / 2 - old.raw[:2] - old.raw[2:] / 2),
                                   np.log(max(track.raw[2:]) / side)]) / frames


class FaceTracker:
    """Greedy IoU matching of detections to tracks; stable ids; per-track EMA of probabilities.

    Each track keeps its last detection and its velocity (from its last two detections);
    `advance` moves the tracks on one frame, and a detection round is matched against where
    each face's motion has taken it as well as where it was last found; a new track starts with
    the motion from a face lost in that round nearby, as a guess (see NEW_REACH).

    `smooth` is the weight of the past in the probability EMA (0: off); `box_smooth` and
    `size_smooth` the same for the box's centre and side (and for the eye line's tilt, when the
    detector gives one). A new track is shown after
    `min_hits` matched rounds and only while the latest round matched it (`active`); its id
    is retired after `max_missed` rounds without a match (`EmotionPipeline` sets them from the
    source's frame rate: ID_LIFETIME_S). A face re-found after more than one round unseen starts
    its probability EMA afresh. Given the frame's grey levels, a lost face is re-found only by a box
    that looks like it (APPEARANCE_MIN), and a newcomer at its place is not shown until it is
    decided whether it is that face (APPEARANCE_STEADY).
    """

    def __init__(self, iou_threshold: float = IOU_THRESHOLD, max_missed: int = MAX_MISSED,
                 smooth: float = SMOOTH, max_faces: int = 0, min_hits: int = MIN_HITS,
                 box_smooth: float = BOX_SMOOTH, size_smooth: float = SIZE_SMOOTH):
        self.iou_threshold, self.max_missed = iou_threshold, max_missed
        self.smooth, self.box_smooth, self.size_smooth = smooth, box_smooth, size_smooth
        self.max_faces, self.min_hits = max_faces, min_hits
        self.tracks: list[Track] = []
        self._next_id = 1

    def update(self, boxes: np.ndarray, angles: Sequence[float] | None = None,
               gray: np.ndarray | None = None) -> list[Track]:
        """Match a detection round (boxes and, from a detector with landmarks, the eye lines'
        tilts) found on `gray`; unmatched detections start tracks, stale tracks end. Without `gray`
        a lost track is re-found by place and size alone (see APPEARANCE_MIN)."""
        boxes = np.asarray(boxes, float).reshape(-1, 4)
        angles = np.zeros(len(boxes)) if angles is None else np.asarray(angles, float)
        if self.max_faces and len(boxes) > self.max_faces:  # keep the largest faces
            order = np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable")[: self.max_faces]
            boxes, angles = boxes[order], angles[order]
        looks, contrasts = (None, None) if gray is None else appearance(gray, boxes)
        # each track is looked for where its motion takes it and where it was last found (a face
        # that stopped or turned round); a lost one only among the boxes that look like it
        predicted = np.array([t.predicted() for t in self.tracks]).reshape(-1, 4)
        raw = np.array([t.raw for t in self.tracks]).reshape(-1, 4)
        alike = np.ones((len(self.tracks), len(boxes)), bool)
        looks_like = np.ones_like(alike)  # a box only within a face's reach must look like it
        if looks is not None:
            for ti, track in enumerate(self.tracks):
                if track.look is not None:
                    looks_like[ti] = looks @ track.look >= APPEARANCE_MIN
                if track.missed and not track.hidden:
                    alike[ti] = looks_like[ti]
        iou = np.maximum(iou_matrix(predicted, boxes), iou_matrix(raw, boxes)) * alike
        pairs: dict[int, int] = {}  # track index -> box index
        # greedy: best overlaps first, those of faces found in the last round before any lost one's
        # (a lost face that looks alike must not take the box of a newcomer found there since: the
        # astronaut entering at the edge where grace_hopper left got her id a round after his own)
        order = np.argsort(-iou, axis=None, kind="stable")
        lost = np.repeat([t.missed > 0 for t in self.tracks], len(boxes))
        for flat in order[np.argsort(lost[order], kind="stable")]:
            ti, bi = np.unravel_index(flat, iou.shape)
            if iou[ti, bi] >= self.iou_threshold and ti not in pairs and bi not in pairs.values():
                pairs[ti] = bi
        # Then tracks left over (a face that moved while unseen) by distance: those found in the
        # last round first (a face hidden for long must not take the box of one seen just now),
        # then oldest id first.
        for ti in sorted(range(len(self.tracks)), key=lambda i: self.tracks[i].missed):
            if ti in pairs:
                continue
            free = [bi for bi in range(len(boxes)) if bi not in pairs.values() and alike[ti, bi]]
            gated = [bi for bi in free if _gated(predicted[ti], boxes[bi]) or _gated(raw[ti], boxes[bi])]
            # a box only within its reach (it turned round), the nearest: the first in the detector's
            # order was often a face beside it that turned too
            reach = sorted((bi for bi in free if looks_like[ti, bi] and _within_reach(self.tracks[ti], boxes[bi])),
                           key=lambda bi: _centre_distance(raw[ti], boxes[bi]))
            if gated or reach:
                pairs[ti] = (gated or reach)[0]
        found = boxes[list(pairs.values())]
        for ti, track in enumerate(self.tracks):
            if ti not in pairs:
                track.missed += 1
                behind = track.hits >= self.min_hits and _beside(predicted[ti], found)
                if track.missed == 1:  # as it was lost: a face found later at its place does not hide it
                    track.hidden = behind
                if behind:  # behind that face
                    track.velocity = np.array([*track.velocity[:2], 0.0])
                else:
                    track.velocity = track.velocity * MISSED_DECAY
                continue
            self._measure_velocity(track, boxes[pairs[ti]])
            track.box = self._smoothed(track, boxes[pairs[ti]])
            weight = 0.0 if track.missed else self.size_smooth  # re-found after a miss: its new tilt
            track.angle = weight * track.angle + (1 - weight) * float(angles[pairs[ti]])
            if track.missed > 1:  # hidden, not skipped once: its EMA starts afresh (see SMOOTH)
                track.probs = None
            if looks is not None:
                track.look = looks[pairs[ti]] if track.look is None else _blend_looks(track.look, looks[pairs[ti]])
            track.hits, track.missed = track.hits + 1, 0
        if looks is not None:
            self._settle(boxes, looks, contrasts, pairs, gray.shape[1::-1])
        lost = [t for t in self.tracks if t.missed == 1]  # found last round, not in this one
        self.tracks = [t for t in self.tracks if t.missed <= (self.max_missed if t.hits >= self.min_hits
                                                              else min(self.max_missed, UNCONFIRMED_MAX_MISSED))]
        matched = np.array([t.box for t in self.tracks if t.missed == 0]).reshape(-1, 4)
        new: list[Track] = []
        for bi, box in enumerate(boxes):
            if bi in pairs.values():
                continue
            if len(matched) and (_overlaps(box, matched)[0] / (box[2] * box[3])).max() >= NESTED_OVERLAP:
                continue  # mostly inside a face matched this round: the same face found twice
            # at its place: where the lost face would have been matched by place alone, by overlap
            # (a head turning, its box half as wide, overlaps by about 0.3) or by the gate
            held_for = () if looks is None else tuple(
                t.id for t in self.tracks if t.missed and not t.hidden and t.hits >= self.min_hits
                and t.look is not None and (_gated(t.raw, box) or _gated(t.predicted(), box)
                                            or iou_matrix(np.array([t.raw, t.predicted()]), box[None])
                                            .max() >= self.iou_threshold))
            new.append(Track(self._next_id, box.copy(), angle=float(angles[bi]),
                             look=None if looks is None else looks[bi], held_for=held_for,
                             last_look=None if looks is None else looks[bi],
                             last_contrast=0.0 if looks is None else float(contrasts[bi])))
            self._next_id += 1
        _guess_velocities(lost, new)
        self.tracks += new
        return self.tracks

    def _settle(self, boxes: np.ndarray, looks: np.ndarray, contrasts: np.ndarray, pairs: dict[int, int],
                frame_size: tuple[int, int]) -> None:
        """Decide the newcomers held at a lost face's place (see APPEARANCE_STEADY): one that now
        looks like that face takes its id; one whose look has settled otherwise keeps its own."""
        taken: list[Track] = []
        for ti, bi in pairs.items():
            young = self.tracks[ti]
            if not young.held_for:
                continue
            lost = [t for t in self.tracks if t.id in young.held_for and t.missed
                    and all(t is not o for o in taken)]
            scores = [float(looks[bi] @ t.look) for t in lost]
            if lost and max(scores) >= APPEARANCE_MIN:
                old = lost[int(np.argmax(scores))]
                young.id, young.hits, young.probs = old.id, old.hits + 1, None
                young.look, young.held_for = _blend_looks(old.look, looks[bi]), ()
                taken.append(old)
                continue
            x, y, w, h = boxes[bi]
            inside = x >= 0 and y >= 0 and x + w <= frame_size[0] and y + h <= frame_size[1]
            steady = (float(looks[bi] @ young.last_look) >= APPEARANCE_STEADY and abs(contrasts[bi] - young.last_contrast)
                      <= CONTRAST_STEADY * max(contrasts[bi], young.last_contrast))
            if not lost or young.hits >= HOLD_ROUNDS or (young.hits >= self.min_hits and inside and steady):
                young.held_for = ()
            young.last_look, young.last_contrast = looks[bi], float(contrasts[bi])
        self.tracks = [t for t in self.tracks if all(t is not o for o in taken)]

    def advance(self, frames: int = 1, frame_size: tuple[int, int] | None = None) -> None:
        """Move every track `frames` frames on: the shown box along its velocity (not at all for
        a face moving slower than STILL_SPEED), and count the frames for `Track.predicted`.

        With `frame_size` (width, height) a box is carried no further past the frame's edges than
        it already is: a face that turns back at the edge is not followed out of the frame until
        the next detection round, and one that leaves is found further out by that round."""
        for track in self.tracks:
            track.since += frames
            step = track.velocity[:2] * frames
            if np.hypot(*track.velocity[:2]) >= STILL_SPEED * max(track.box[2:]):
                moved = _moved(track.box, np.array([*step, 0.0]))
                if frame_size is not None:
                    size = track.box[2:]
                    low = np.minimum(track.box[:2], 0)
                    high = np.maximum(track.box[:2] + size, frame_size) - size
                    moved[:2] = np.clip(moved[:2], low, high)
                track.box = moved

    def _measure_velocity(self, track: Track, box: np.ndarray) -> None:
        """`track.velocity`: the change from its last detection to `box`, found `track.since`
        frames later (one when `advance` was not called); then `box` is its last detection."""
        frames = max(track.since, 1)
        side, new_side = max(track.raw[2:]), max(box[2:])
        measured = np.array([*(box[:2] + box[2:] / 2 - track.raw[:2] - track.raw[2:] / 2),
                             np.log(new_side / side)]) / frames
        track.velocity, track.raw, track.since = measured, box.copy(), 0

    def _smoothed(self, track: Track, box: np.ndarray) -> np.ndarray:
        """EMA of the centre and of the side; a face re-found after a miss jumps to its new box."""
        if track.missed:
            return box.copy()
        old_c, new_c = track.box[:2] + track.box[2:] / 2, box[:2] + box[2:] / 2
        centre = self.box_smooth * old_c + (1 - self.box_smooth) * new_c
        size = self.size_smooth * track.box[2:] + (1 - self.size_smooth) * box[2:]
        return np.concatenate([centre - size / 2, size])

    def reset(self) -> None:
        """End every track (a shot cut): faces found from now on get new ids; ids are not reused."""
        self.tracks = []

    def active(self) -> list[Track]:
        """Tracks to show: confirmed (`min_hits` rounds) and matched in the latest round. A face
        the detector lost is gone at once: a held box would be classified from the background."""
        return [t for t in self.tracks if t.hits >= self.min_hits and t.missed == 0 and not t.held_for]

    def smooth_probs(self, track: Track, probs: np.ndarray) -> np.ndarray:
        """EMA with weight `smooth` on the past; a new track starts from its first prediction."""
        track.probs = probs if track.probs is None else self.smooth * track.probs + (1 - self.smooth) * probs
        return track.probs


class ShotCuts:
    """Tells cuts between shots from the frames alone, one frame late: `update(gray)` for each
    frame returns "cut" when the frame before it began a new shot (the change into it was
    large, and the shot was steady before it and is steady after), "suspect" for a frame that
    may begin one (its faces should not be shown: they may be the old shot's tracks on a new
    person), else "steady". See CUT_CHANGE for the measure and its figures."""

    def __init__(self, change: float = CUT_CHANGE, decorrelation: float = CUT_DECORRELATION,
                 steady: float = CUT_STEADY, thumb: tuple[int, int] = CUT_THUMB, reach: int = CUT_REACH):
        self.change, self.decorrelation, self.steady, self.thumb = change, decorrelation, steady, thumb
        self._kernel = np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)
        self._last: np.ndarray | None = None  # the previous frame's normalised thumbnail
        self._last_change = 0.0
        self._suspect = False

    def update(self, gray: np.ndarray) -> str:
        small = cv2.resize(gray, self.thumb, interpolation=cv2.INTER_AREA).astype(np.float32)
        z = (small - small.mean()) / (small.std() + CUT_CONTRAST_FLOOR)
        last, self._last = self._last, z
        if last is None:
            return "steady"
        change = max(self._unexplained(last, z), self._unexplained(z, last))
        calm_before, self._last_change = self._last_change < self.steady, change
        if self._suspect:  # the frame before changed a lot: a cut if this one is steady
            self._suspect = False
            return "cut" if change < self.steady else "steady"
        decorrelation = 1.0 - float((z * last).mean())
        self._suspect = calm_before and change > self.change and decorrelation > self.decorrelation
        return "suspect" if self._suspect else "steady"

    def _unexplained(self, before: np.ndarray, after: np.ndarray) -> float:
        """Mean amount by which `after` lies outside the range of `before` within CUT_REACH cells:
        what motion up to that far cannot explain."""
        above = np.maximum(after - cv2.dilate(before, self._kernel), 0)
        below = np.maximum(cv2.erode(before, self._kernel) - after, 0)
        return float((above + below).mean())


def to_gray(frame: np.ndarray) -> np.ndarray:
    """BGR (as OpenCV decodes it) or already-gray frame -> uint8 gray, the conversion training
    used; levels by `emovision.levels.to_uint8` (uint8 0..255, uint16 0..65535, float 0..1)."""
    frame = to_uint8(np.asarray(frame), "image")
    return frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


def landmark_angles(detector, n: int) -> np.ndarray | None:
    """The eye lines' tilts (degrees) of the `n` boxes the detector's last call returned, from
    its landmarks; None for a detector without them (Haar)."""
    marks = getattr(detector, "landmarks", None)
    return eye_angles(marks) if marks is not None and len(marks) == n else None


def classify_boxes(classifier, gray: np.ndarray, boxes: Sequence[Sequence[float]], framing: Framing,
                   tta: bool | None = None, angles: Sequence[float] | None = None,
                   views: Sequence[float] | None = None) -> np.ndarray:
    """(K, n_classes) probabilities for the faces at `boxes` (eye lines tilted by `angles`),
    cropped in the FER2013 framing (`emovision.framing`), in ONE batched forward pass. With
    `views` (one `framing.VIEW_CYCLE` factor a face: a video frame's turn) each face is cut once,
    at its own; without, at every VIEW_CYCLE view and the probabilities averaged (a still, where
    no EMA combines the views over frames)."""
    if len(boxes) == 0:
        return np.zeros((0, len(classifier.classes)), dtype=np.float32)
    if views is not None:
        return classifier.predict_proba(crop_faces(gray, boxes, framing, angles, views), tta=tta)
    n = len(VIEW_CYCLE)
    crops = crop_faces(gray, np.repeat(np.asarray(boxes, float).reshape(-1, 4), n, axis=0), framing,
                       None if angles is None else np.repeat(np.asarray(angles, float), n), VIEW_CYCLE * len(boxes))
    return classifier.predict_proba(crops, tta=tta).reshape(len(boxes), n, -1).mean(1)


def analyze_still(classifier, image: np.ndarray, detector=None,
                  max_faces: int = 0, tta: bool | None = None, times: dict[str, float] | None = None) -> list[dict]:
    """Every face in one still image (BGR or gray; uint8 0..255, uint16 0..65535 or float 0..1,
    as `emovision.levels.to_uint8` reads them): the same detector, crops and classifier as the
    live app, with nothing carried over from other images (no tracking, no smoothing).

    Returns one dict per face, largest first: box [x, y, w, h], label, confidence, probs.
    `times`, when given, receives the "detect" and "classify" milliseconds.
    """
    t0 = time.perf_counter()
    gray = to_gray(image)
    detector = detector or make_detector()
    boxes = detector.detect(gray)
    angles = landmark_angles(detector, len(boxes))
    order = np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable")[: max_faces or None]
    boxes, angles = boxes[order], None if angles is None else angles[order]
    classes = classifier.classes
    faces = []
    t1 = time.perf_counter()
    for box, probs in zip(boxes, classify_boxes(classifier, gray, boxes, detector.framing, tta, angles)):
        best = int(probs.argmax())
        faces.append({"box": [int(v) for v in box], "label": classes[best],
                      "confidence": round(float(probs[best]), 4),
                      "probs": {c: round(float(v), 4) for c, v in zip(classes, probs)}})
    if times is not None:
        times.update(detect=1000 * (t1 - t0), classify=1000 * (time.perf_counter() - t1))
    return faces


@dataclass
class FaceResult:
    track_id: int | None  # None for stills: nothing is tracked across images
    box: list[int]  # [x, y, w, h] in frame pixels
    label: str
    confidence: float
    probs: dict[str, float]
    detected: bool = True  # found by the detector on this frame, rather than carried by the tracker

    def to_dict(self) -> dict:
        return {"track_id": self.track_id, "box": self.box, "detected": self.detected,
                "label": self.label, "probs": self.probs}


@dataclass
class FrameResult:
    index: int
    faces: list[FaceResult] = field(default_factory=list)
    detected: bool = False  # whether the detector ran on this frame
    full_scan: bool = False  # ... on the whole frame, rather than around the known faces
    cut: bool = False  # the frame before began a new shot: every track ended before this frame
    times_ms: dict[str, float] = field(default_factory=dict)  # detect, classify (+ draw once drawn)


class EmotionPipeline:
    """detect (every `detect_every` frames) -> track -> crop -> one batched classify -> smooth.

    Between detection rounds the faces' boxes are carried along by their velocity and still
    classified on every frame, cropped from the current frame (`detected: False`). Detection
    rounds scan the whole frame every `full_scan_every` rounds (and whenever no face is known
    or one was lost), and otherwise only around where the known faces have moved to. With
    `stills` (unrelated images) every frame is `analyze_still`: detected on its own, nothing
    carried over. `fps`, the source's frame rate where known, sets how many detection rounds a
    lost face keeps its id (ID_LIFETIME_S).
    """

    def __init__(self, classifier, detector=None, detect_every: int = DETECT_EVERY,
                 smooth: float = SMOOTH, max_faces: int = 0, tta: bool | None = None, min_hits: int = MIN_HITS,
                 full_scan_every: int = FULL_SCAN_EVERY, stills: bool = False, fps: float | None = None):
        self.classifier = classifier
        self.detector = detector or make_detector()
        self.detect_every = max(1, detect_every)
        self.tracker = FaceTracker(max_missed=id_lifetime_rounds(fps, self.detect_every), smooth=smooth,
                                   max_faces=max_faces, min_hits=min_hits)
        self.full_scan_every = max(1, full_scan_every)
        self.max_faces, self.tta, self.stills = max_faces, tta, stills
        self._frames = 0
        self._rounds = 0
        self._next_round = 0  # the frame of the next detection round
        self.cuts = ShotCuts()
        # a suspect frame's detection round: boxes, eye-line tilts, the frame's grey levels
        self._pending: tuple[np.ndarray, np.ndarray | None, np.ndarray] | None = None
        self._turns: dict[int, int] = {}  # track id -> frames classified since its EMA (re)started

    def process(self, frame: np.ndarray) -> FrameResult:
        result = self._process_still(frame) if self.stills else self._process_video(frame)
        self._frames += 1
        return result

    def _process_still(self, frame: np.ndarray) -> FrameResult:
        times: dict[str, float] = {}
        faces = analyze_still(self.classifier, frame, self.detector, self.max_faces, self.tta, times)
        result = FrameResult(self._frames, [FaceResult(None, f["box"], f["label"], f["confidence"], f["probs"])
                                            for f in faces], detected=True, full_scan=True)
        result.times_ms = times
        return result

    def _process_video(self, frame: np.ndarray) -> FrameResult:
        result = FrameResult(self._frames)
        t0 = time.perf_counter()
        gray = to_gray(frame)
        shot = self.cuts.update(gray)
        pending, self._pending = self._pending, None
        if shot == "cut":  # the frame before began a new shot: start afresh, as on a new video whose
            # first frame was that one, its detection round the one it ran (`pending`)
            self.tracker.reset()
            self.tracker.update(*pending)
            self._next_round, self._rounds, result.cut = self._frames - 1 + self.detect_every, 1, True
        self.tracker.advance(frame_size=gray.shape[1::-1])
        if shot == "suspect":
            # Perhaps a new shot: the old tracks' faces are not shown, nor matched on it. The
            # frame is scanned whole, as a new video's first frame is, and the round kept until
            # the next frame tells: on a cut it is the new shot's first round, so its faces are
            # shown from its frame `detect_every` (two rounds agree: MIN_HITS), as in a new video
            # (before, a round later); else it is dropped and the old tracks go on.
            boxes = self.detector.detect(gray)
            self._pending = (boxes, landmark_angles(self.detector, len(boxes)), gray)
            result.detected = result.full_scan = True
            result.times_ms = {"detect": 1000 * (time.perf_counter() - t0), "classify": 0.0}
            return result
        if self._frames >= self._next_round:
            self._next_round = self._frames + self.detect_every
            known = self.tracker.tracks
            result.full_scan = (not known or self._rounds % self.full_scan_every == 0
                                or any(t.missed for t in known))
            boxes = self.detector.detect(gray, None if result.full_scan else [t.predicted() for t in known])
            if not result.full_scan and len(boxes) < len(known):
                # a known face was not re-found around its box (it moved fast, turned, or the
                # local search missed it): scan the whole frame now rather than hide it a round
                boxes, result.full_scan = self.detector.detect(gray), True
            self.tracker.update(boxes, landmark_angles(self.detector, len(boxes)), gray)
            result.detected = True
            self._rounds += 1
        tracks = self.tracker.active()
        t1 = time.perf_counter()
        # smoothed: one view a face a frame, in turn (the EMA averages them); --smooth 0: all, averaged
        views = self._views(tracks) if self.tracker.smooth else None
        probs = classify_boxes(self.classifier, gray, [t.box for t in tracks], self.detector.framing, self.tta,
                               [t.angle for t in tracks], views)
        classes = self.classifier.classes
        for track, p in zip(tracks, probs):
            smoothed = self.tracker.smooth_probs(track, p)
            best = int(smoothed.argmax())
            result.faces.append(FaceResult(track.id, [int(round(v)) for v in track.box], classes[best],
                                           float(smoothed[best]),
                                           {c: round(float(v), 4) for c, v in zip(classes, smoothed)},
                                           detected=result.detected))
        t2 = time.perf_counter()
        result.times_ms = {"detect": 1000 * (t1 - t0), "classify": 1000 * (t2 - t1)}
        return result

    def _views(self, tracks: Sequence[Track]) -> list[float]:
        """Each face's VIEW_CYCLE side factor on this frame: its nth frame classified since its
        probability EMA (re)started takes view n mod len. Counted per face rather than by the frame
        index, so that every face's EMA starts at x1 and then alternates, as framing_views
        modelled it: by the frame index a face first shown on an odd frame (or whose EMA restarted
        there) would start from x0.94 alone."""
        live = {t.id for t in self.tracker.tracks}
        self._turns = {i: n for i, n in self._turns.items() if i in live}
        turns = [0 if t.probs is None else self._turns.get(t.id, 0) for t in tracks]
        self._turns.update((t.id, n + 1) for t, n in zip(tracks, turns))
        return [VIEW_CYCLE[n % len(VIEW_CYCLE)] for n in turns]

    def annotate(self, frame: np.ndarray, result: FrameResult, fps: float | None = None) -> np.ndarray:
        """`draw` in place, timed into `result.times_ms['draw']`."""
        t0 = time.perf_counter()
        draw(frame, result, self.classifier.classes, fps)
        result.times_ms["draw"] = 1000 * (time.perf_counter() - t0)
        return frame


def _label_box(face: FaceResult, frame_shape: tuple[int, ...]) -> tuple[int, int, int, int, str]:
    """(x0, y0, x1, y1, text) of a face's label strip: above its box, or below it at the top edge."""
    x, y, w, h = face.box
    who = "" if face.track_id is None else f"#{face.track_id} "
    text = f"{who}{face.label} {face.confidence:.0%}"
    u = overlay_scale(frame_shape)
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * u, _thickness(u))
    pad = round(6 * u)
    y1 = y if y - th - pad >= 0 else min(frame_shape[0], y + h + th + pad)
    return x, y1 - th - pad, x + tw + pad, y1, text


def panel_origin(frame_shape: tuple[int, ...], faces: Sequence[FaceResult], size: tuple[int, int] = PANEL_SIZE,
                 margin: int = 4) -> tuple[int, int] | None:
    """Top-left corner for the probability panel where it covers no face and no label: the
    frame's corners first, then beside each face; None when every place covers one."""
    fh, fw = frame_shape[:2]
    pw, ph = size
    u = overlay_scale(frame_shape)
    margin = round(margin * u)
    if pw > fw or ph > fh:
        return None
    keep_clear = []
    for f in faces:
        x, y, w, h = f.box
        lx0, ly0, lx1, ly1, _ = _label_box(f, frame_shape)
        keep_clear.append((min(x, lx0), min(y, ly0), max(x + w, lx1) - min(x, lx0), max(y + h, ly1) - min(y, ly0)))
    status_h = round(20 * u)  # the status line at the bottom
    candidates = [(margin, margin), (fw - pw - margin, margin), (margin, fh - ph - status_h),
                  (fw - pw - margin, fh - ph - status_h)]
    for x, y, w, h in keep_clear:  # right of the face, left of it, below, above
        candidates += [(x + w + margin, y), (x - pw - margin, y), (x, y + h + margin), (x, y - ph - margin)]
    candidates = [(int(np.clip(x, 0, fw - pw)), int(np.clip(y, 0, fh - ph))) for x, y in candidates]
    if not keep_clear:
        return candidates[0]
    for x, y in candidates:
        if _overlaps(np.array([[x, y, pw, ph]]), np.array(keep_clear))[0].sum() == 0:
            return x, y
    return None


def panel_place(frame_shape: tuple[int, ...], faces: Sequence[FaceResult],
                n_classes: int) -> tuple[int, int, float] | None:
    """(x, y, scale) of the probability panel: the largest of PANEL_SCALES (times the frame's
    `overlay_scale`) with a place that covers no face (`panel_origin`); None when there is none
    (the panel is left out)."""
    for scale in np.multiply(PANEL_SCALES, overlay_scale(frame_shape)):
        origin = panel_origin(frame_shape, faces, panel_size(n_classes, scale))
        if origin is not None:
            return (*origin, float(scale))
    return None


def panel_size(n_classes: int, scale: float = 1.0) -> tuple[int, int]:
    """(width, height) of the probability panel for `n_classes` rows at `scale`."""
    return int(round(PANEL_SIZE[0] * scale)), int(round((28 + 16 * n_classes) * scale))


def draw(frame: np.ndarray, result: FrameResult, classes: Sequence[str], fps: float | None = None) -> np.ndarray:
    """Boxes, labels and confidences for every face; probability bars for the largest face, in
    a panel placed where it hides no face (smaller, or left out, where the frame has no such
    place: `panel_place`); FPS and per-stage times. Draws in place."""
    u = overlay_scale(frame.shape)
    for face in result.faces:
        x, y, w, h = face.box
        cv2.rectangle(frame, (x, y), (x + w, y + h), (0, 220, 0), 2 * _thickness(u))
        x0, y0, x1, y1, text = _label_box(face, frame.shape)
        # white text on a dark filled strip: readable on any background, bright or dark
        cv2.rectangle(frame, (x0, y0), (x1, y1), (0, 90, 0), -1)
        cv2.putText(frame, text, (x0 + round(3 * u), y1 - round(4 * u)), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * u,
                    (255, 255, 255), _thickness(u), cv2.LINE_AA)
    place = panel_place(frame.shape, result.faces, len(classes)) if result.faces else None
    if place is not None:
        largest = max(result.faces, key=lambda f: f.box[2] * f.box[3])
        px, py, s = place
        pw, ph = panel_size(len(classes), s)
        panel = frame[py:py + ph, px:px + pw]
        np.multiply(panel, 0.45, out=panel, casting="unsafe")  # darkened backdrop: bars readable on any image
        for i, name in enumerate(classes):
            p = largest.probs[name]
            y = py + round((20 + 16 * i) * s)
            bx = px + round(80 * s)
            cv2.rectangle(frame, (bx, y - round(10 * s)), (bx + int(BAR_WIDTH * s * p), y + round(2 * s)),
                          (255, 160, 0), -1)
            cv2.putText(frame, name[:8], (px + round(6 * s), y), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * s, (255, 255, 255),
                        _thickness(s), cv2.LINE_AA)
    status = " ".join(f"{k} {v:.1f}ms" for k, v in result.times_ms.items())
    if fps is not None:
        status = f"{fps:.0f} fps  {status}"
    cv2.putText(frame, status, (round(6 * u), frame.shape[0] - round(8 * u)), cv2.FONT_HERSHEY_SIMPLEX, 0.45 * u,
                (255, 255, 255), _thickness(u), cv2.LINE_AA)
    return frame
