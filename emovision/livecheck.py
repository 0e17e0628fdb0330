"""Live consistency: does the app deliver the model's accuracy on faces it sees in frames?

FER2013 faces (use PublicTest: selection data, never PrivateTest) are rendered into 640x480
frames the way a camera would show them: 80-300 px wide, on flat, noisy or natural
backgrounds, brightness x0.5-1.5, rotated up to 15 degrees, aspect changed up to 20%, with
or without a replicated border around the 48x48 face (the dataset crops cut off hair, ears
and chin; the border gives the detector a plausible head outline). Each face is shown for a
short clip to the real pipeline (`EmotionPipeline`, the code path of the webcam app, TTA and
smoothing as configured there), and scored on the clip's last frame against classifying
the same 48x48 face directly:

    detection_rate   faces found (a box centred in the face, of about its size)
    false_boxes      boxes on no face, over all clips
    app_accuracy     the app's label on the faces it found
    direct_accuracy  `classifier.predict_proba` on the dataset crops of the same faces
    gap_points       direct - app, in accuracy points (the cost of framing, detection, pixels)
    gap_se_points    its standard error (paired over the found faces): a draw of n faces
                     measures the gap to about +-2 of these (95%)
    true_square_accuracy  the found faces cut from the frame at their true square: app vs this
                     is the cost of the framing, this vs direct the cost of the rendering
                     (rotation, aspect, brightness, resampling, background in the square)

`measure_framing` fits the detector's box to the rendered face square: the numbers behind
`emovision.faces.HAAR_FRAMING`. `python -m emovision.livecheck --help`.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from emovision.errors import DataError, cli_main
from emovision.faces import DEFAULT_DETECTOR, DETECTORS, landmark_angles, to_gray
from emovision.framing import crop_faces, crop_square
from emovision.preprocess import to_gray_crops

FRAME_SIZE = (640, 480)  # width, height
FACE_SIDES = (80, 300)  # rendered face side in pixels (the 48x48 crop upscaled)
BRIGHTNESS = (0.5, 1.5)
MAX_ROTATION_DEG = 15.0
MAX_ASPECT_CHANGE = 0.2  # width / height of the rendered face, up to 20% from square
BORDER = 0.5  # replicated border on each edge, as a fraction of the face side
BACKGROUNDS = ("flat", "noise", "natural")
NOISE_SIGMA = 25.0  # grey levels, around a random mean: a textured wall, a noisy sensor
# Natural scenes without faces that ship with scikit-image (no downloads). Not camera.png:
# its cameraman's turned face is a face to MTCNN, and a box on him is no false box.
NATURAL_SCENES = ("clock", "coffee", "rocket", "brick", "grass", "gravel", "moon", "page", "coins")
# Frames each face is shown: a new face is confirmed on the second detection round (MIN_HITS)
# with DETECT_EVERY 2, so it is first shown on frame 3; the clip is scored on its last frame.
CLIP_FRAMES = 4
MATCH_SIZE_RANGE = (0.5, 2.0)  # a box "on" the face: centre inside it, side within this ratio
# Faces rendered by `stages.bench`: 4,800 frames, about 5 min on this 2-core CPU shared with other jobs;
# the gap's standard error is then about 1 point (paired: only faces where app and direct disagree
# count), so one such draw cannot tell a 1-point gap from none: the report gives the standard error.
BENCH_FACES = 1200


@dataclass
class Render:
    frame: np.ndarray  # BGR 640x480
    square: tuple[float, float, float]  # the 48x48 crop's square in the frame: centre x, centre y, side
    label: int
    background: str
    border: bool
    angle: float = 0.0  # in-plane rotation, degrees
    brightness: float = 1.0
    aspect: float = 1.0  # width / height of the rendered face


def natural_backgrounds() -> list[np.ndarray]:
    """Grayscale 640x480 scenes from scikit-image's sample data."""
    from skimage import data

    out = []
    for name in NATURAL_SCENES:
        img = getattr(data, name)()
        if img.ndim == 3:
            img = cv2.cvtColor(img[..., :3], cv2.COLOR_RGB2GRAY)
        out.append(cv2.resize(img, FRAME_SIZE, interpolation=cv2.INTER_AREA))
    return out


def _background(kind: str, rng: np.random.Generator, scenes: Sequence[np.ndarray]) -> np.ndarray:
    w, h = FRAME_SIZE
    if kind == "flat":
        return np.full((h, w), rng.integers(20, 236), np.uint8)
    if kind == "noise":
        mean = rng.uniform(60, 200)
        return np.clip(rng.normal(mean, NOISE_SIGMA, (h, w)), 0, 255).astype(np.uint8)
    return scenes[rng.integers(len(scenes))].copy()


def render(face: np.ndarray, label: int, rng: np.random.Generator, background: str, border: bool,
           scenes: Sequence[np.ndarray], rotate: bool = True, stretch: bool = True) -> Render:
    """One 48x48 face pasted into a 640x480 frame (see the module docstring for the ranges)."""
    side = rng.uniform(*FACE_SIDES)
    brightness = rng.uniform(*BRIGHTNESS)
    angle = rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG) if rotate else 0.0
    aspect = 1 + rng.uniform(-MAX_ASPECT_CHANGE, MAX_ASPECT_CHANGE) if stretch else 1.0
    sx, sy = side * np.sqrt(aspect) / face.shape[1], side / np.sqrt(aspect) / face.shape[0]
    pad = int(round(BORDER * face.shape[0])) if border else 0
    src = cv2.copyMakeBorder(face, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else face
    src = np.clip(src.astype(np.float32) * brightness, 0, 255)
    w, h = FRAME_SIZE
    reach = side * 0.6  # the face itself must stay inside the frame; its border may leave it
    cx, cy = rng.uniform(reach, w - reach), rng.uniform(reach, h - reach)
    # source pixel (u, v) -> frame: scale about the crop's centre, rotate, move to (cx, cy)
    rot = cv2.getRotationMatrix2D((0, 0), angle, 1.0)[:, :2] @ np.diag([sx, sy])
    centre = np.array([src.shape[1] - 1, src.shape[0] - 1]) / 2  # pixel centres are at integers
    matrix = np.hstack([rot, (np.array([cx, cy]) - rot @ centre)[:, None]])
    warped = cv2.warpAffine(src, matrix, FRAME_SIZE, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT)
    mask = cv2.warpAffine(np.ones(src.shape, np.float32), matrix, FRAME_SIZE, flags=cv2.INTER_LINEAR)
    frame = _background(background, rng, scenes).astype(np.float32)
    frame = np.clip(frame * (1 - mask) + warped * mask, 0, 255).astype(np.uint8)
    return Render(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR), (cx, cy, side), label, background, border, angle,
                  brightness, aspect)


def app_crop(face: np.ndarray, rng: np.random.Generator, detector) -> np.ndarray | None:
    """`face` (48x48) as the live app would crop it, or None when the detector misses it.

    The face, with a replicated border, is rendered into a flat or noisy frame (`render`'s
    sizes and brightness, upright, square) and cut at the detector's box on it with the app's
    framing and levelling (`emovision.framing.crop_faces`, as `classify_boxes` cuts it). The
    training images of `augment.app_view` (stages.recrop): the crops the model will be shown live."""
    r = render(face, 0, rng, "flat" if rng.random() < 0.5 else "noise", border=True, scenes=(),
               rotate=False, stretch=False)
    gray = to_gray(r.frame)
    boxes = detector.detect(gray)
    hits = [k for k, box in enumerate(boxes) if _on_face(box, r.square)]
    if not hits:
        return None
    angles = landmark_angles(detector, len(boxes))
    k = hits[0]
    crop = crop_faces(gray, [boxes[k]], detector.framing, None if angles is None else [angles[k]])
    return to_gray_crops(crop, face.shape[0])[0]


def _on_face(box: Sequence[float], square: tuple[float, float, float]) -> bool:
    x, y, w, h = box
    cx, cy, side = square
    inside = abs(x + w / 2 - cx) <= side / 2 and abs(y + h / 2 - cy) <= side / 2
    return inside and MATCH_SIZE_RANGE[0] <= max(w, h) / side <= MATCH_SIZE_RANGE[1]


def render_clips(classifier, faces: np.ndarray, labels: np.ndarray, n: int, seed: int = 0, detector=None,
                 tta: bool | None = None):
    """Render `n` faces (drawn with `seed`; half with a replicated border) and run each through a
    fresh `EmotionPipeline` for CLIP_FRAMES frames. Yields (the face's index, its Render, the pipeline,
    its last FrameResult, the index of the result's face on the rendered face or None): the
    harness's one loop, shared by `live_consistency` and measurements built on it."""
    from emovision.faces import EmotionPipeline, make_detector

    detector = detector or make_detector()
    rng = np.random.default_rng(seed)
    scenes = natural_backgrounds()
    for k, i in enumerate(rng.choice(len(faces), size=n, replace=n > len(faces))):
        r = render(faces[i], int(labels[i]), rng, BACKGROUNDS[k % len(BACKGROUNDS)], border=k % 2 == 0,
                   scenes=scenes)
        pipeline = EmotionPipeline(classifier, detector, tta=tta)  # fresh: no track from the last face
        for _ in range(CLIP_FRAMES):
            result = pipeline.process(r.frame.copy())
        hits = [j for j, f in enumerate(result.faces) if _on_face(f.box, r.square)]
        yield int(i), r, pipeline, result, (hits[0] if hits else None)


def live_consistency(classifier, faces: np.ndarray, labels: np.ndarray, n: int, seed: int = 0,
                     detector=None, tta: bool | None = None) -> dict:
    """`render_clips` scored on each clip's last frame. Returns a dict of the figures in the
    module docstring, overall and per border / background."""
    from emovision.faces import make_detector

    detector = detector or make_detector()
    clips, picked, started = [], [], time.perf_counter()
    for i, r, _, result, hit in render_clips(classifier, faces, labels, n, seed, detector, tta):
        app = true_square = -1
        if hit is not None:
            app = classifier.classes.index(result.faces[hit].label)
            cx, cy, side = r.square  # the true face square, cut from the same frame: framing taken out
            square = crop_square(cv2.cvtColor(r.frame, cv2.COLOR_BGR2GRAY), cx - side / 2, cy - side / 2, side)
            true_square = int(classifier.predict_proba([square], tta=tta).argmax(1)[0])
        picked.append(i)
        clips.append((r.border, r.background, hit is not None, len(result.faces) - (hit is not None), app,
                      r.label, true_square))
    direct = classifier.predict_proba(faces[picked], tta=tta).argmax(1)  # the same faces, one batched call
    rows = [(border, background, found, false_boxes, app, int(d), label, true_square)
            for (border, background, found, false_boxes, app, label, true_square), d in zip(clips, direct)]
    report = _score(rows)
    report["groups"] = {**{f"border_{b}": _score([r for r in rows if r[0] == b]) for b in (True, False)},
                        **{g: _score([r for r in rows if r[1] == g]) for g in BACKGROUNDS}}
    report.update(seed=seed, clip_frames=CLIP_FRAMES, tta=classifier.tta if tta is None else tta,
                  detector=getattr(detector, "name", type(detector).__name__),
                  seconds=round(time.perf_counter() - started, 1))
    return report


def _score(rows: list[tuple]) -> dict:
    found = [r for r in rows if r[2]]
    app = float(np.mean([r[4] == r[6] for r in found])) if found else 0.0
    direct = float(np.mean([r[5] == r[6] for r in found])) if found else 0.0
    square = float(np.mean([r[7] == r[6] for r in found])) if found else 0.0
    # Paired: each found face is scored both ways, so only the faces where the two disagree
    # carry the gap's uncertainty (standard error of the mean per-face difference).
    diff = np.array([(r[5] == r[6]) - (r[4] == r[6]) for r in found], float)
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    return {"faces": len(rows), "found": len(found), "detection_rate": round(len(found) / max(1, len(rows)), 4),
            "false_boxes": int(sum(r[3] for r in rows)),
            "app_accuracy": round(app, 4), "direct_accuracy": round(direct, 4),
            "gap_points": round(100 * (direct - app), 2), "gap_se_points": round(100 * se, 2),
            # the same found faces cut from the frame at their true square: splits the gap into
            # framing (app - square) and what the rendering did to the pixels (square - direct)
            "true_square_accuracy": round(square, 4),
            "direct_accuracy_all_faces": round(float(np.mean([r[5] == r[6] for r in rows])) if rows else 0.0, 4)}


def measure_framing(detector, faces: np.ndarray, n: int, seed: int = 0) -> dict:
    """Where the detector's box sits on the face: render `n` upright, unstretched faces with a
    replicated border, detect, and fit the box to the true square. Returns the medians of
    scale (square side / box side) and of the centre offsets dx, dy (in box sides), with their
    10th-90th percentiles, over the faces found."""
    rng = np.random.default_rng(seed)
    scenes = natural_backgrounds()
    fits = []
    for k, i in enumerate(rng.choice(len(faces), size=n, replace=n > len(faces))):
        r = render(faces[i], 0, rng, BACKGROUNDS[k % len(BACKGROUNDS)], border=True, scenes=scenes,
                   rotate=False, stretch=False)
        boxes = [b for b in detector.detect(cv2.cvtColor(r.frame, cv2.COLOR_BGR2GRAY)) if _on_face(b, r.square)]
        if boxes:
            x, y, w, h = boxes[0]
            side = max(w, h)
            cx, cy, true_side = r.square
            fits.append((true_side / side, (cx - x - w / 2) / side, (cy - y - h / 2) / side))
    if not fits:
        raise DataError("the detector found none of the rendered faces: nothing to measure")
    arr = np.array(fits)
    out = {"faces": n, "found": len(fits)}
    for j, key in enumerate(("scale", "dx", "dy")):
        out[key] = round(float(np.median(arr[:, j])), 3)
        out[f"{key}_p10_p90"] = [round(float(v), 3) for v in np.percentile(arr[:, j], [10, 90])]
    return out


def load_faces(prepared_dir: Path, split: str = "val") -> tuple[np.ndarray, np.ndarray, str]:
    """A prepared split's 48x48 faces, labels and the dataset's source name ("val" = PublicTest)."""
    from emovision.data.prepared import load_meta, load_split

    x, y = load_split(prepared_dir, split)
    return x, y, load_meta(prepared_dir).get("source", "unknown")


def bench_report(classifier, prepared_dir: Path, source: str, n: int = BENCH_FACES, seed: int = 0) -> dict:
    """`live_consistency` on a prepared dataset's val split (PublicTest) for `stages.bench`;
    skipped, saying why, on data without real faces (the demo set)."""
    if source != "fer2013":
        return {"skipped": f"needs FER2013 PublicTest faces; the prepared data is {source}"}
    faces, labels, _ = load_faces(prepared_dir, "val")
    return {"split": "val (PublicTest)", **live_consistency(classifier, faces, labels, n, seed)}


def summary_line(report: dict) -> str:
    b = report["groups"]["border_True"]
    return (f"{report['faces']} faces: found {report['detection_rate']:.1%} ({b['detection_rate']:.1%} with a "
            f"replicated border), {report['false_boxes']} false boxes; app {report['app_accuracy']:.2%} vs direct "
            f"{report['direct_accuracy']:.2%} on the same faces: gap {report['gap_points']:+.2f} "
            f"+- {report['gap_se_points']:.2f} points (standard error) "
            f"(true square {report['true_square_accuracy']:.2%}; TTA {'on' if report['tta'] else 'off'})")


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emovision.livecheck", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="pretrained", help="model reference (default: %(default)s)")
    p.add_argument("--data", type=Path, default=Path("data/prepared"), help="prepared dataset (its val split)")
    p.add_argument("--faces", type=int, default=600, help="faces to render (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--measure-framing", action="store_true", help="fit the detector's box to the face instead")
    p.add_argument("--detector", default=DEFAULT_DETECTOR, choices=DETECTORS,
                   help="face detector (default: %(default)s)")
    args = p.parse_args(argv)
    if args.faces < 1:
        raise DataError(f"--faces must be >= 1, got {args.faces}")
    faces, labels, source = load_faces(args.data)
    import torch

    from emovision.faces import make_detector
    from emovision.inference import load_classifier

    torch.set_num_threads(1)
    detector = make_detector(args.detector)
    if args.measure_framing:
        print(measure_framing(detector, faces, args.faces, args.seed))
        return 0
    report = live_consistency(load_classifier(args.model, "cpu"), faces, labels, args.faces, args.seed, detector)
    print(f"{source} val split: " + summary_line(report))
    for name, g in report["groups"].items():
        print(f"  {name:12s} " + ", ".join(f"{k} {v}" for k, v in g.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
