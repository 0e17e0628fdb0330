"""Issue 11: can MTCNN's box AND its 5 landmarks predict where FER2013's own square is?

    python scripts/fit_framing.py --train 3000 --test 2400 --seed 0 [--prepared data/prepared]
        [--model pretrained] [--cache DETECTIONS.npz]

Renders FER2013 Training faces (fit) and PublicTest faces (evaluate; never PrivateTest) into
640x480 frames with the live-consistency harness's renderer (`emovision.livecheck.render`:
its sizes, brightness, rotation, aspect, backgrounds, half with a replicated border), finds
each with MTCNN's full scan, and fits a ridge regression from the box and landmarks (in the
levelled frame: turned by the eye line's tilt, in box sides) to the true square: its centre
offset from the box's centre and its log side. Prints, on both sets, the true square vs the
fixed framing's square (`MTCNN_FRAMING`) and vs the regressed one: side ratio and centre
error (medians, p10-p90, median absolute), the variance explained, and the median side
ratio per class; then the coefficients. With --model, the PublicTest faces are rendered
again and classified cut both ways (and at their true square). Writes nothing but --cache
(the detections, to refit without detecting again). About 5 min on this 2-core CPU.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emovision.errors import DataError, cli_main  # noqa: E402
from emovision.framing import eye_angles, fer_square  # noqa: E402
from emovision.livecheck import BACKGROUNDS, _on_face, load_faces, natural_backgrounds, render  # noqa: E402

CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
RIDGE = 1e-3  # on standardised features: a hair of shrinkage, the fit has thousands of faces for ~15 numbers


def collect(detector, faces: np.ndarray, labels: np.ndarray, n: int, seed: int, cut=None):
    """Render `n` faces as the harness does and detect them: boxes (K, 4), landmarks (K, 5, 2),
    true squares (K, 3: centre x, centre y, side) and labels of the faces found. `cut`, when
    given, is called with each found face's (gray frame, box, landmarks, true square)."""
    rng = np.random.default_rng(seed)
    scenes = natural_backgrounds()
    boxes, marks, squares, ys = [], [], [], []
    for k, i in enumerate(rng.choice(len(faces), size=n, replace=n > len(faces))):
        r = render(faces[i], int(labels[i]), rng, BACKGROUNDS[k % len(BACKGROUNDS)], border=k % 2 == 0,
                   scenes=scenes)
        found = detector.detect(cv2.cvtColor(r.frame, cv2.COLOR_BGR2GRAY))
        hits = [j for j, b in enumerate(found) if _on_face(b, r.square)]
        if hits:
            if cut is not None:
                cut(cv2.cvtColor(r.frame, cv2.COLOR_BGR2GRAY), found[hits[0]], detector.landmarks[hits[0]], r.square)
            boxes.append(found[hits[0]])
            marks.append(detector.landmarks[hits[0]])
            squares.append(r.square)
            ys.append(r.label)
    return np.array(boxes, float), np.array(marks, float), np.array(squares, float), np.array(ys)


def levelled(boxes: np.ndarray, marks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Landmarks relative to the box's centre in box sides (max(w, h)), turned by minus the eye
    line's tilt; with the rotation matrices that turn them back, and the sides."""
    side = boxes[:, 2:].max(1)
    centre = boxes[:, :2] + boxes[:, 2:] / 2
    a = np.radians(eye_angles(marks))
    c, s = np.cos(a), np.sin(a)
    back = np.stack([np.stack([c, -s], 1), np.stack([s, c], 1)], 1)  # (K, 2, 2): levelled -> frame
    rel = (marks - centre[:, None]) / side[:, None, None]
    return np.einsum("kji,kpj->kpi", back, rel), back, side  # back transposed: frame -> levelled


def features(boxes: np.ndarray, marks: np.ndarray) -> np.ndarray:
    """Per face: the levelled landmarks (9 coordinates), log box w/h, log eye distance, log eye-mouth distance."""
    rel, _, _ = levelled(boxes, marks)
    eyes = np.hypot(*(rel[:, 1] - rel[:, 0]).T)
    mouth = (rel[:, 3] + rel[:, 4]) / 2
    eye_mouth = np.hypot(*(mouth - (rel[:, 0] + rel[:, 1]) / 2).T)
    flat = np.delete(rel.reshape(len(rel), -1), 3, axis=1)  # levelled, the right eye's y is the left's
    return np.column_stack([flat, np.log(boxes[:, 2] / boxes[:, 3]), np.log(eyes),
                            np.log(eye_mouth)])


def targets(boxes: np.ndarray, marks: np.ndarray, squares: np.ndarray) -> np.ndarray:
    """(true centre - box centre) in levelled box sides, and log(true side / box side)."""
    _, back, side = levelled(boxes, marks)
    off = (squares[:, :2] - boxes[:, :2] - boxes[:, 2:] / 2) / side[:, None]
    return np.column_stack([np.einsum("kji,kj->ki", back, off), np.log(squares[:, 2] / side)])


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float = RIDGE) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression of y on x (standardised inside): coefficients (features, targets) and intercepts."""
    mu, sd = x.mean(0), x.std(0)
    z = (x - mu) / sd
    w = np.linalg.solve(z.T @ z + alpha * len(z) * np.eye(z.shape[1]), z.T @ (y - y.mean(0)))
    coef = w / sd[:, None]
    return coef, y.mean(0) - mu @ coef


def squares_from(boxes: np.ndarray, marks: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Predicted targets -> (centre x, centre y, side) in the frame."""
    _, back, side = levelled(boxes, marks)
    off = np.einsum("kij,kj->ki", back, pred[:, :2]) * side[:, None]
    return np.column_stack([boxes[:, :2] + boxes[:, 2:] / 2 + off, side * np.exp(pred[:, 2])])


def fixed_squares(detector, boxes: np.ndarray) -> np.ndarray:
    """The app's squares today (`framing.fer_square`): (centre x, centre y, side)."""
    out = [fer_square(b, detector.framing) for b in boxes]
    return np.array([(x0 + s / 2, y0 + s / 2, s) for x0, y0, s in out])


def describe(name: str, app: np.ndarray, true: np.ndarray, labels: np.ndarray) -> None:
    """Print where the true squares sit on the `app` squares (both (K, 3): centre x, centre y, side)."""
    ratio = true[:, 2] / app[:, 2]
    dx, dy = ((true[:, :2] - app[:, :2]) / app[:, 2:3]).T
    lines = []
    for key, v, err in (("true side / app side", ratio, np.log(ratio)), ("centre x error (app sides)", dx, dx),
                        ("centre y error (app sides)", dy, dy)):
        lo, hi = np.percentile(v, [10, 90])
        lines.append(f"{key}: median {np.median(v):+.3f}, p10-p90 {lo:+.3f} to {hi:+.3f} (width {hi - lo:.3f}), "
                     f"median |{'log ratio' if v is ratio else 'error'}| {np.median(np.abs(err)):.3f}")
    per = ", ".join(f"{c} {np.median(ratio[labels == k]):.3f}" for k, c in enumerate(CLASSES) if (labels == k).any())
    print(f"  {name}:\n    " + "\n    ".join(lines) + f"\n    median side ratio per class: {per}")


def explained(t: np.ndarray, pred: np.ndarray) -> str:
    r2 = 1 - ((t - pred) ** 2).sum(0) / ((t - t.mean(0)) ** 2).sum(0)
    return ", ".join(f"{v:.3f}" for v in r2)


def score(model: str, detector, coef: np.ndarray, icpt: np.ndarray, faces: np.ndarray, labels: np.ndarray,
          n: int, seed: int) -> None:
    """The PublicTest renders again (the same frames), each found face cut three ways: the app's
    fixed framing, the regressed square (both turned by `level` of the eye tilt, as the app
    turns them) and the true square; accuracy of each (flip TTA as the model ships), paired
    standard error of regressed - fixed."""
    from emovision.framing import crop_faces, crop_levelled, crop_square
    from emovision.inference import load_classifier

    clf, crops = load_classifier(model, "cpu"), []

    def cut(gray, box, marks, square):
        b, m = box[None].astype(float), marks[None]
        cx, cy, side = squares_from(b, m, features(b, m) @ coef + icpt)[0]
        tilt = detector.framing.level * eye_angles(m)[0]
        tcx, tcy, tside = square
        crops.append([crop_faces(gray, [box], detector.framing, [eye_angles(m)[0]])[0],
                      crop_levelled(gray, cx - side / 2, cy - side / 2, side, tilt),
                      crop_square(gray, tcx - tside / 2, tcy - tside / 2, tside)])

    _, _, _, ys = collect(detector, faces, labels, n, seed, cut)
    right = [clf.predict_proba([c[j] for c in crops]).argmax(1) == ys for j in range(3)]
    diff = right[1].astype(float) - right[0]
    print(f"PublicTest crops of {len(ys)} found faces, model {model}: fixed {100 * right[0].mean():.2f}%, "
          f"regressed {100 * right[1].mean():.2f}%, true square {100 * right[2].mean():.2f}%; regressed - fixed "
          f"{100 * diff.mean():+.2f} +- {100 * diff.std(ddof=1) / np.sqrt(len(diff)):.2f} points (paired s.e.)")


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    p.add_argument("--train", type=int, default=3000, help="Training faces rendered for the fit")
    p.add_argument("--test", type=int, default=2400, help="PublicTest faces rendered to evaluate it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", help="also classify the PublicTest faces' fixed, regressed and true-square crops")
    p.add_argument("--cache", type=Path, help="an .npz of the detections: written when absent, else read")
    args = p.parse_args(argv)
    if min(args.train, args.test) < 50:
        raise DataError(f"--train and --test must be >= 50, got {args.train} and {args.test}")
    train_x, train_y, source = load_faces(args.prepared, "train")
    if source != "fer2013":
        raise DataError(f"{args.prepared} is not FER2013; prepare the real dataset first")
    test_x, test_y, _ = load_faces(args.prepared, "val")
    import torch

    from emovision.faces import make_detector

    torch.set_num_threads(1)
    detector = make_detector("mtcnn")
    run = np.array([args.train, args.test, args.seed])
    if args.cache and args.cache.exists():
        try:
            with np.load(args.cache) as f:
                if not np.array_equal(f["run"], run):
                    raise DataError(f"{args.cache} holds --train/--test/--seed {f['run'].tolist()}, not "
                                    f"{run.tolist()}: give those or another --cache")
                sets = {k: tuple(f[f"{k}_{j}"] for j in range(4)) for k in ("Training", "PublicTest")}
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{args.cache} is not a cache this script wrote ({e}); give another --cache") from None
    else:
        sets = {"Training": collect(detector, train_x, train_y, args.train, args.seed),
                "PublicTest": collect(detector, test_x, test_y, args.test, args.seed + 1)}
        if args.cache:
            np.savez(args.cache, run=run, **{f"{k}_{j}": v for k, arrs in sets.items() for j, v in enumerate(arrs)})
    b, m, sq, _ = sets["Training"]
    coef, icpt = fit_ridge(features(b, m), targets(b, m, sq))
    aspect = lambda b: np.log(b[:, 2:3] / b[:, 3:4])  # noqa: E731  the box alone: its w/h
    box_coef, box_icpt = fit_ridge(aspect(b), targets(b, m, sq))
    for name, (b, m, sq, ys) in sets.items():
        t = targets(b, m, sq)
        pred = features(b, m) @ coef + icpt
        print(f"{name}: {len(b)} found; variance explained (dx, dy, log side): box and landmarks "
              f"{explained(t, pred)}; the box's aspect alone {explained(t, aspect(b) @ box_coef + box_icpt)}")
        describe("fixed framing (MTCNN_FRAMING)", fixed_squares(detector, b), sq, ys)
        describe("regressed", squares_from(b, m, pred), sq, ys)
    if args.model:
        score(args.model, detector, coef, icpt, test_x, test_y, args.test, args.seed + 1)
    np.set_printoptions(precision=4, suppress=True)
    print("coefficients (features x [dx, dy, log side]):\n", coef, "\nintercept", icpt)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
