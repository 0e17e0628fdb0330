"""The built-in demo dataset: procedurally drawn 48x48 faces of the seven expressions.

It exists so every stage and the webcam app run on a fresh machine in minutes. Each
expression moves brows, eyes, cheeks, nose and mouth the way real faces do (FACS-style
action units); a random intensity and a random resting face per person make some images
ambiguous. Pose (roll, yaw, scale, shift), lighting, background texture, blur, noise and
occluders (hands, hair, glasses) vary per image. Deterministic per seed; each split draws
from its own random stream. A model trained on it is no use on real faces.
"""
from __future__ import annotations

import cv2
import numpy as np

from emovision.data import CLASSES, IMAGE_SIZE, SPLITS

CANVAS = 2 * IMAGE_SIZE  # draw at 2x, then area-shrink: smooth 1-2 px features at 48x48
SHIFT = 2  # sub-pixel bits for cv2 drawing: feature positions vary continuously
FACE_RADIUS_RANGE = (28, 38)  # half-width of the face oval on the canvas (14-19 px at 48x48)
FACE_ASPECT_RANGE = (1.15, 1.35)  # oval height / width
ROLL_DEG = 15.0  # head tilt, either way
YAW_RAD = 0.35  # head turn: features slide sideways and the far side foreshortens
SCALE_RANGE = (0.85, 1.12)  # zoom on top of the face size: face-detector crops are loose or tight
SHIFT_PX = 6.0  # random translation on the canvas, each axis
INTENSITY_RANGE = (0.5, 1.0)  # weak expressions drift towards neutral: genuine ambiguity
RESTING_FACE_STD = 0.08  # per-person offsets of every expression parameter
NOISE_STD_RANGE = (2.0, 10.0)  # gray levels at 48x48
BLUR_SIGMA_RANGE = (0.2, 1.0)  # px at 48x48: focus and motion softness
OCCLUDER_P = 0.25  # chance of a hand, hair strand, bar or glasses over the face
VAL_TEST_DIVISOR = 5  # val and test get train_per_class // 5 images per class each
SPLIT_STREAM = {split: i for i, split in enumerate(SPLITS)}  # independent stream per split

# Expression parameters at full intensity (neutral = all 0, except the 1.0 factors):
#   brow      brow height, + raised                 slant  + inner ends down (V), - inner ends up
#   arch      brow curvature, + arched              pinch  + inner ends pulled towards the nose
#   eye       eye openness factor                   white  sclera visible around the iris
#   lid       lower lid raised (squint, cheek push) curve  mouth corners, + up (smile), - down
#   open      mouth opening                         width  mouth width factor
#   teeth     teeth visible when open               lip    upper lip raised on one side (sneer)
#   wrinkle   wrinkles across the nose bridge       cheek  raised cheeks and nasolabial folds
NEUTRAL = dict(brow=0.0, slant=0.0, arch=0.0, pinch=0.0, eye=1.0, white=0.0, lid=0.0, curve=0.0,
               open=0.0, width=1.0, teeth=0.0, lip=0.0, wrinkle=0.0, cheek=0.0)
EXPRESSIONS: dict[str, dict[str, float]] = {
    "angry":    dict(NEUTRAL, brow=-0.8, slant=1.2, pinch=1.0, eye=0.6, lid=0.5, curve=-0.2,
                     open=0.25, width=0.8, teeth=1.0),
    "disgust":  dict(NEUTRAL, brow=-0.5, slant=0.2, pinch=0.4, eye=0.5, lid=0.9, curve=-0.5,
                     open=0.15, width=0.95, teeth=0.7, lip=1.2, wrinkle=1.0, cheek=0.4),
    "fear":     dict(NEUTRAL, brow=0.6, slant=-1.0, arch=-0.3, pinch=1.0, eye=1.5, white=1.0,
                     curve=-0.4, open=0.4, width=1.4, teeth=0.8),
    "happy":    dict(NEUTRAL, brow=0.1, eye=0.8, lid=0.6, curve=1.0, open=0.55, width=1.2,
                     teeth=1.0, cheek=1.0),
    "sad":      dict(NEUTRAL, brow=0.1, slant=-1.0, pinch=0.3, eye=0.7, curve=-1.0, width=0.95),
    "surprise": dict(NEUTRAL, brow=1.2, arch=1.2, eye=1.7, white=1.0, open=1.2, width=0.55),
    "neutral":  dict(NEUTRAL),
}
# Coordinate grids in -0.5..0.5, for gradients: at output size (lighting) and canvas size (background).
_GRID_Y, _GRID_X = (np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] / IMAGE_SIZE - 0.5).astype(np.float32)
_CANVAS_Y, _CANVAS_X = (np.mgrid[0:CANVAS, 0:CANVAS] / CANVAS - 0.5).astype(np.float32)


def _pts(xy: np.ndarray) -> np.ndarray:
    """Float (N, 2) canvas points -> cv2's fixed-point int32 with SHIFT fractional bits."""
    return np.round(np.asarray(xy) * (1 << SHIFT)).astype(np.int32)


def _ellipse(img: np.ndarray, center, axes, color: float, thickness: int = -1, angle: float = 0.0) -> None:
    """A filled (thickness -1) or outlined ellipse at sub-pixel float coordinates."""
    c, a = _pts(center), _pts(np.maximum(axes, 0.5))
    cv2.ellipse(img, (int(c[0]), int(c[1])), (int(a[0]), int(a[1])), angle, 0, 360, color, thickness,
                cv2.LINE_8, SHIFT)


def _polyline(img: np.ndarray, xy: np.ndarray, color: float, thickness: int, closed: bool = False) -> None:
    """An open (or closed) polyline through float canvas points."""
    cv2.polylines(img, [_pts(xy)], closed, color, thickness, cv2.LINE_8, SHIFT)


def _fill(img: np.ndarray, xy: np.ndarray, color: float) -> None:
    """A filled polygon through float canvas points."""
    cv2.fillPoly(img, [_pts(xy)], color, cv2.LINE_8, SHIFT)


def _expression(label: int, rng: np.random.Generator) -> dict[str, float]:
    """Blend neutral -> the label's expression by a random intensity, plus a resting face."""
    target = EXPRESSIONS[CLASSES[label]]
    intensity = rng.uniform(*INTENSITY_RANGE)
    resting = rng.normal(0.0, RESTING_FACE_STD, len(NEUTRAL))
    return {k: NEUTRAL[k] + intensity * (target[k] - NEUTRAL[k]) + r for (k, r) in zip(NEUTRAL, resting)}


def _background(rng: np.random.Generator) -> np.ndarray:
    """Canvas-sized float32 background: a gradient plus smooth blotches, sometimes stripes."""
    tex = cv2.resize(rng.normal(0.0, 1.0, (6, 6)).astype(np.float32), (CANVAS, CANVAS),
                     interpolation=cv2.INTER_CUBIC)
    img = rng.uniform(20, 220) + rng.uniform(-80, 80) * _CANVAS_X + rng.uniform(-80, 80) * _CANVAS_Y
    img += rng.uniform(5, 35) * tex
    if rng.random() < 0.3:  # curtains, shelves, tiles: an oriented periodic pattern
        angle = rng.uniform(0, np.pi)
        img += rng.uniform(5, 25) * np.sin((np.cos(angle) * _CANVAS_X + np.sin(angle) * _CANVAS_Y)
                                           * rng.uniform(10, 40))
    return img.astype(np.float32, copy=False)


def _draw_face(img: np.ndarray, p: dict[str, float], rng: np.random.Generator) -> None:
    """Draw a face with expression parameters `p` at the canvas centre."""
    c = CANVAS / 2
    rx = rng.uniform(*FACE_RADIUS_RANGE)
    ry = rx * rng.uniform(*FACE_ASPECT_RANGE)
    yaw = rng.uniform(-YAW_RAD, YAW_RAD)

    def at(u, v):  # face coords (u: -1..1 across, v: -1..1 down) -> canvas; features sit on a cylinder
        x = c + rx * np.sin(np.arcsin(u) + yaw)
        return np.stack([x, c + ry * np.asarray(v) + 0.0 * x], -1)  # 0 * x broadcasts a scalar v

    def squash(u):  # horizontal foreshortening of a feature at u under the head turn
        return max(0.2, np.cos(np.arcsin(u) + yaw) / np.sqrt(1 - u * u))

    skin = rng.uniform(110, 230)
    dark = skin * rng.uniform(0.1, 0.35)  # brows, eyes, mouth interior
    fold = skin * rng.uniform(0.6, 0.8)  # creases and shading lines
    _ellipse(img, (c, c), (rx, ry), skin)
    if rng.random() < 0.7:  # hair: a cap over the forehead, dark or fair (upper half-ellipse)
        cv2.ellipse(img, (int(c), int(c - ry * 0.55)), (int(rx * 1.05), int(ry * 0.55)), 0, 180, 360,
                    float(rng.uniform(10, 200)), -1)
    brow_w = max(3, int(round(0.1 * rx)))
    for side in (-1, 1):
        eu, ev = side * 0.38, -0.15
        ew = 0.17 * rx * squash(eu)
        eh = 0.09 * ry * max(p["eye"] - 0.4 * max(p["lid"], 0.0), 0.15)
        centre = at(eu, ev)
        if p["white"] > 0.3:  # widened eyes: white all round the iris
            _ellipse(img, centre, (ew, eh), min(255.0, skin + 30 + 40 * p["white"]))
            _ellipse(img, centre, (0.5 * ew, min(eh, 0.5 * ew)), dark)
        else:
            _ellipse(img, centre, (ew, eh), dark)
        if p["lid"] > 0.3:  # squint: raised lower lid makes a crease under the eye
            lid_u, lid_v = eu + side * np.array([-0.15, 0.0, 0.15]), ev + np.array([0.07, 0.1, 0.07])
            _polyline(img, at(lid_u, lid_v), fold, 1)
        # brow: inner end (near the nose) lowered by slant, pulled in by pinch, middle lifted by arch
        t = np.linspace(0.0, 1.0, 6)
        bu = side * (0.16 - 0.07 * p["pinch"] + t * 0.46)
        bv = (-0.33 - 0.11 * p["brow"] + 0.09 * p["slant"] * (1 - t) - 0.02 * p["slant"] * t
              - 0.07 * p["arch"] * np.sin(np.pi * t))
        _polyline(img, at(bu, bv), dark, brow_w)
        if p["pinch"] > 0.5 and p["slant"] > 0.3:  # glabella: vertical frown lines between the brows
            _polyline(img, at([side * 0.07] * 2, [-0.3, -0.18]), fold, 1)
    # nose: a shaded ridge and nostrils; it sticks out, so it moves furthest with the yaw
    nose = at([0.0, 0.0], [-0.05, 0.17]) + [[0, 0], [0.08 * rx * yaw, 0]]
    _polyline(img, nose, fold, 2)
    for side in (-1, 1):
        _ellipse(img, at(side * 0.09, 0.2), (0.04 * rx, 0.025 * ry), dark * 0.8 + fold * 0.2)
    if p["wrinkle"] > 0.3:  # disgust: horizontal creases across the bridge of the nose
        for v in (-0.07, -0.01, 0.05):
            _polyline(img, at([-0.12, 0.0, 0.12], [v, v - 0.02, v]), (fold + dark) / 2, 2)
    if p["cheek"] > 0.3:  # raised cheeks: highlights on the apples, folds from nose to mouth corners
        for side in (-1, 1):
            _ellipse(img, at(side * 0.48, 0.15), (0.15 * rx, 0.08 * ry), min(255.0, skin + 20 * p["cheek"]))
            _polyline(img, at(side * np.array([0.18, 0.42, 0.52]), [0.18, 0.3, 0.5]), fold, 2)
    # mouth: lip line with corners raised (smile) or lowered (frown), opening into a dark mouth
    t = np.linspace(-1.0, 1.0, 17)
    half = 0.3 * max(p["width"], 0.4)
    upper_v = 0.47 - 0.14 * p["curve"] * t * t
    if p["lip"] > 0.3:  # sneer: one side of the upper lip lifts towards the nose
        upper_v = upper_v - 0.07 * p["lip"] * np.exp(-8 * (t - 0.45 * rng.choice((-1.0, 1.0))) ** 2)
    opening = 0.22 * max(p["open"], 0.0) * np.sqrt(1 - t * t)  # elliptical: an O when narrow
    upper = at(half * t, upper_v)
    if p["open"] > 0.08:
        mouth = np.concatenate([upper, at(half * t, upper_v + opening)[::-1]])
        _fill(img, mouth, dark)
        _polyline(img, mouth, dark, 2, closed=True)  # lips: keeps a thin opening visible at 48 px
        if p["teeth"] > 0.5:  # a band of teeth just under the upper lip
            top = upper_v + np.minimum(opening, 0.02)
            teeth = np.concatenate([at(half * t, top), at(half * t, top + np.minimum(opening, 0.05))[::-1]])
            _fill(img, teeth, min(255.0, skin + 40))
    else:  # closed: a lip line, thinner when pressed (narrow mouth)
        _polyline(img, upper, dark, 2 + int(p["width"] > 0.9))
        _ellipse(img, at(0.0, upper_v[8] + 0.06), (0.6 * half * rx, 0.03 * ry), fold)  # lower lip shade
    if rng.random() < OCCLUDER_P:
        _occlude(img, at, rx, ry, rng)


def _occlude(img: np.ndarray, at, rx: float, ry: float, rng: np.random.Generator) -> None:
    """One occluder over part of the face: a hand, a hair strand, a bar, or (sun)glasses."""
    kind = rng.integers(4)
    color = float(rng.uniform(0, 255))
    centre = at(rng.uniform(-0.8, 0.8), rng.uniform(-0.6, 0.9))
    if kind == 0:  # hand or object: a blob
        _ellipse(img, centre, rng.uniform(0.2, 0.5, 2) * (rx, ry), color, angle=rng.uniform(0, 180))
    elif kind == 1:  # hair strand or finger: a thick line at any angle
        angle = rng.uniform(0, np.pi)
        half_length = np.array([np.cos(angle), np.sin(angle)]) * rx
        _polyline(img, np.stack([centre - half_length, centre + half_length]), color,
                  int(rng.integers(3, 9)))
    elif kind == 2:  # a rectangle: scarf, phone, microphone
        w, h = rng.uniform(0.15, 0.4, 2) * (rx, ry)
        _fill(img, centre + np.array([[-w, -h], [w, -h], [w, h], [-w, h]]), color)
    else:  # glasses: rims on the eyes, dark lenses half the time
        sunglasses = rng.random() < 0.5
        for side in (-1, 1):
            shade, thickness = (color * 0.2, -1) if sunglasses else (color, 2)
            _ellipse(img, at(side * 0.38, -0.15), (0.22 * rx, 0.13 * ry), shade, thickness)
        _polyline(img, at([-0.16, 0.16], [-0.17, -0.17]), color, 2)


def _face(label: int, rng: np.random.Generator) -> np.ndarray:
    """One 48x48 uint8 face of expression `label`."""
    img = _background(rng)
    _draw_face(img, _expression(label, rng), rng)
    m = cv2.getRotationMatrix2D((CANVAS / 2, CANVAS / 2), rng.uniform(-ROLL_DEG, ROLL_DEG),
                                rng.uniform(*SCALE_RANGE))
    m[:, 2] += rng.uniform(-SHIFT_PX, SHIFT_PX, 2)
    img = cv2.warpAffine(img, m, (CANVAS, CANVAS), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    img = cv2.resize(img, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
    # lighting: one side brighter than the other, then global contrast and brightness
    light = rng.uniform(0, 2 * np.pi)
    img *= 1 + rng.uniform(0, 0.8) * (np.cos(light) * _GRID_X + np.sin(light) * _GRID_Y)
    img = img * rng.uniform(0.7, 1.3) + rng.uniform(-30, 30)
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(*BLUR_SIGMA_RANGE))
    img += rng.normal(0, rng.uniform(*NOISE_STD_RANGE), img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def generate_split(per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` faces of every expression, in shuffled order."""
    y = np.repeat(np.arange(len(CLASSES), dtype=np.int64), per_class)
    rng.shuffle(y)
    x = np.stack([_face(int(label), rng) for label in y])
    return x, y


def generate_synthetic(train_per_class: int = 500, seed: int = 42) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train', 'val', 'test'} -> (x uint8 (N, 48, 48), y int64 (N,)), balanced classes.

    val and test get max(1, train_per_class // 5) images per class each.
    """
    if train_per_class < 1:
        raise ValueError(f"train_per_class must be >= 1, got {train_per_class}")
    n_eval = max(1, train_per_class // VAL_TEST_DIVISOR)
    counts = {"train": train_per_class, "val": n_eval, "test": n_eval}
    return {s: generate_split(counts[s], np.random.default_rng([seed, SPLIT_STREAM[s]])) for s in SPLITS}
