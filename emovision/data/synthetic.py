"""The built-in demo dataset: procedurally drawn 48x48 faces of the seven expressions.

It exists so every stage and the webcam app run on a fresh machine in minutes. Each
expression moves brows, eyes and mouth the way real faces do (FACS-style cues), with a
random intensity, so some faces are ambiguous; pose, scale, lighting, noise, blur and
occluders vary per image. Deterministic per seed; each split has its own random stream.
A model trained on it is no use on real faces.
"""
from __future__ import annotations

import cv2
import numpy as np

from emovision.data import CLASSES, IMAGE_SIZE, SPLITS

CANVAS = 96  # draw at 2x, then shrink: anti-aliased features at 48x48
FACE_RADIUS = (30, 40)  # half-width of the face oval on the canvas
ROLL_DEG = 15.0
NOISE_STD = (2.0, 10.0)
OCCLUDER_P = 0.2
VAL_TEST_FRACTION = 5  # val and test get train_per_class // 5 images per class
SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}

# Per expression, at full intensity: brow raise (+ up), brow slant (+ inner ends down, angry),
# eye openness (1 normal), mouth curve (+ smile), mouth open (0 closed), mouth width (1 normal),
# nose wrinkle (disgust), mouth asymmetry.
EXPRESSIONS = {
    "angry":    dict(brow=-0.5, slant=1.0, eye=0.6, curve=-0.2, open=0.15, width=0.8, wrinkle=0.0, asym=0.0),
    "disgust":  dict(brow=-0.3, slant=0.4, eye=0.5, curve=-0.4, open=0.25, width=0.9, wrinkle=1.0, asym=0.7),
    "fear":     dict(brow=0.8, slant=-0.8, eye=1.5, curve=-0.3, open=0.6, width=1.25, wrinkle=0.0, asym=0.0),
    "happy":    dict(brow=0.1, slant=0.0, eye=0.75, curve=1.0, open=0.35, width=1.2, wrinkle=0.0, asym=0.0),
    "sad":      dict(brow=0.2, slant=-1.0, eye=0.7, curve=-0.9, open=0.0, width=0.95, wrinkle=0.0, asym=0.0),
    "surprise": dict(brow=1.0, slant=0.0, eye=1.6, curve=0.0, open=1.0, width=0.7, wrinkle=0.0, asym=0.0),
    "neutral":  dict(brow=0.0, slant=0.0, eye=1.0, curve=0.0, open=0.0, width=1.0, wrinkle=0.0, asym=0.0),
}
NEUTRAL = EXPRESSIONS["neutral"]


def _face(label: int, rng: np.random.Generator) -> np.ndarray:
    """One 48x48 uint8 face of expression `label`."""
    intensity = rng.uniform(0.55, 1.0)  # weak expressions drift towards neutral: real ambiguity
    expr = {k: NEUTRAL[k] + intensity * (v - NEUTRAL[k]) for k, v in EXPRESSIONS[CLASSES[label]].items()}
    img = np.empty((CANVAS, CANVAS), np.float32)
    # background: a random gradient with texture
    gy, gx = np.mgrid[0:CANVAS, 0:CANVAS] / CANVAS
    img[:] = rng.uniform(20, 200) + rng.uniform(-60, 60) * gx + rng.uniform(-60, 60) * gy
    img += cv2.GaussianBlur(rng.normal(0, 25, (CANVAS, CANVAS)).astype(np.float32), (0, 0), 3)
    c = CANVAS // 2
    cx, cy = c + rng.integers(-6, 7), c + rng.integers(-4, 7)
    rx = int(rng.integers(*FACE_RADIUS))
    ry = int(rx * rng.uniform(1.15, 1.35))
    skin = rng.uniform(90, 220)
    dark = max(0.0, skin - rng.uniform(90, 150))  # features darker than skin
    cv2.ellipse(img, (int(cx), int(cy)), (rx, ry), 0, 0, 360, float(skin), -1)
    # hair: a darker cap over the forehead, sometimes
    if rng.random() < 0.6:
        cv2.ellipse(img, (int(cx), int(cy - ry * 0.55)), (rx, int(ry * 0.5)), 0, 180, 360,
                    float(rng.uniform(10, 90)), -1)
    yaw = rng.uniform(-0.12, 0.12) * rx  # features shift sideways with head turn
    eye_y = cy - 0.18 * ry
    eye_dx = 0.38 * rx
    eye_w = 0.17 * rx
    eye_h = max(1.0, 0.09 * ry * expr["eye"])
    for side in (-1, 1):
        ex = cx + yaw + side * eye_dx
        cv2.ellipse(img, (int(ex), int(eye_y)), (int(eye_w), int(round(eye_h))), 0, 0, 360, float(dark), -1)
        if expr["eye"] > 1.2:  # widened eyes show white around the iris
            cv2.ellipse(img, (int(ex), int(eye_y)), (int(eye_w), int(round(eye_h))), 0, 0, 360, 235.0, 1)
        # brows: height from `brow`, inner end lowered by `slant` (angry) or raised (sad, fear)
        by = eye_y - 0.16 * ry - expr["brow"] * 0.08 * ry
        inner = (ex - side * 0.9 * eye_w, by + expr["slant"] * 0.07 * ry)
        outer = (ex + side * 1.1 * eye_w, by - expr["slant"] * 0.02 * ry)
        cv2.line(img, (int(inner[0]), int(inner[1])), (int(outer[0]), int(outer[1])), float(dark),
                 max(3, int(0.08 * rx)), cv2.LINE_AA)
    nose_y = cy + 0.12 * ry
    cv2.line(img, (int(cx + yaw), int(eye_y + 0.1 * ry)), (int(cx + yaw), int(nose_y)),
             float(skin * 0.8), 2, cv2.LINE_AA)
    if expr["wrinkle"] > 0.3:  # disgust: wrinkles beside the nose
        for side in (-1, 1):
            x0 = cx + yaw + side * 0.12 * rx
            cv2.line(img, (int(x0), int(nose_y - 0.12 * ry)), (int(x0 + side * 0.1 * rx), int(nose_y)),
                     float(dark), 1, cv2.LINE_AA)
    # mouth: a curve whose corners rise (smile) or fall (frown), opening into an ellipse
    my = cy + 0.42 * ry
    half = 0.32 * rx * expr["width"]
    xs = np.linspace(-half, half, 15)
    curve = -expr["curve"] * 0.12 * ry * (xs / half) ** 2 + expr["asym"] * 0.06 * ry * (xs / half)
    upper = np.stack([cx + yaw + xs, my + curve], 1)
    opening = expr["open"] * 0.16 * ry * (1 - (xs / half) ** 2)
    if expr["open"] > 0.08:
        lower = np.stack([cx + yaw + xs, my + curve + opening], 1)[::-1]
        cv2.fillPoly(img, [np.round(np.concatenate([upper, lower])).astype(np.int32)], float(dark * 0.6))
        if expr["curve"] > 0.5 or expr["slant"] > 0.5:  # teeth in a smile or a snarl
            cv2.polylines(img, [np.round(upper + [0, 1.5]).astype(np.int32)], False, 230.0, 1, cv2.LINE_AA)
    else:
        cv2.polylines(img, [np.round(upper).astype(np.int32)], False, float(dark), 3, cv2.LINE_AA)
    if rng.random() < OCCLUDER_P:  # hands, glasses, hair strands
        x0, y0 = rng.integers(0, CANVAS, 2)
        x1, y1 = x0 + rng.integers(10, 40), y0 + rng.integers(6, 30)
        cv2.rectangle(img, (int(x0), int(y0)), (int(x1), int(y1)), float(rng.uniform(0, 255)), -1)
    # pose, scale, lighting, blur, noise
    m = cv2.getRotationMatrix2D((float(c), float(c)), rng.uniform(-ROLL_DEG, ROLL_DEG), rng.uniform(0.85, 1.12))
    m[:, 2] += rng.uniform(-5, 5, 2)
    img = cv2.warpAffine(img, m, (CANVAS, CANVAS), borderMode=cv2.BORDER_REFLECT)
    img = img * rng.uniform(0.6, 1.3) + rng.uniform(-40, 40) + rng.uniform(-40, 40) * (gx - 0.5)
    img = cv2.resize(img, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
    sigma = rng.uniform(0.1, 1.2)
    img = cv2.GaussianBlur(img, (0, 0), sigma)
    img += rng.normal(0, rng.uniform(*NOISE_STD), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def generate_split(per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = np.repeat(np.arange(len(CLASSES), dtype=np.int64), per_class)
    rng.shuffle(y)
    x = np.stack([_face(int(label), rng) for label in y])
    return x, y


def generate_synthetic(train_per_class: int = 500, seed: int = 42) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train', 'val', 'test'} -> (x uint8 (N, 48, 48), y int64 (N,)), balanced classes."""
    counts = {"train": train_per_class, "val": max(1, train_per_class // VAL_TEST_FRACTION),
              "test": max(1, train_per_class // VAL_TEST_FRACTION)}
    return {s: generate_split(counts[s], np.random.default_rng([seed, SPLIT_STREAM[s]])) for s in SPLITS}
