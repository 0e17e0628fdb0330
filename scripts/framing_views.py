"""Issue 11: does averaging the classifier over several framings of each face close the live gap?

    python scripts/framing_views.py --faces 4800 --seed 10 [--model pretrained] [--prepared data/prepared]

Runs the live-consistency harness's own renders and pipeline (`emovision.livecheck.render_clips`:
FER2013 PublicTest faces only) and, for every face the app found, classifies views of it
around the app's square (the tracked box in the detector's framing, levelled as the app
levels it): side x0.88-1.12, centre moved by up to 6% of the side, each with the app's flip
TTA. Prints where the app's square sits on the true face square (medians, 10th-90th
percentiles), each single view's accuracy, and the accuracy of view sets averaged, against
the app and against direct classification of the same 48x48 faces; the paired standard error
of each set's gain over the app says what one draw can tell. Writes nothing.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emovision.errors import DataError, cli_main  # noqa: E402
from emovision.framing import crop_levelled, crop_square, fer_square  # noqa: E402
from emovision.livecheck import load_faces, render_clips  # noqa: E402

SCALES = (0.88, 0.94, 1.0, 1.06, 1.12)
SHIFTS = (-0.06, 0.0, 0.06)  # centre offsets in sides of the app's square
GRID = list(itertools.product(SCALES, SHIFTS, SHIFTS))  # (scale, dx, dy)
CROSS = [(0.0, 0.0), (0.06, 0.0), (-0.06, 0.0), (0.0, 0.06), (0.0, -0.06)]
VIEW_SETS = {
    "app's square alone": [(1.0, 0.0, 0.0)],
    "3 sides x0.94 / 1 / 1.06": [(s, 0.0, 0.0) for s in (0.94, 1.0, 1.06)],
    "3 sides x0.88 / 1 / 1.12": [(s, 0.0, 0.0) for s in (0.88, 1.0, 1.12)],
    "5 sides x0.88-1.12": [(s, 0.0, 0.0) for s in SCALES],
    "centre + 4 shifts of 6%": [(1.0, dx, dy) for dx, dy in CROSS],
    "4 diagonal shifts of 6%": [(1.0, dx, dy) for dx in (-0.06, 0.06) for dy in (-0.06, 0.06)],
    "3 sides x 5 shifts (15)": [(s, dx, dy) for s in (0.94, 1.0, 1.06) for dx, dy in CROSS],
    "the whole grid (45)": GRID,
}


def views(gray: np.ndarray, x0: float, y0: float, side: float, angle: float) -> list[np.ndarray]:
    """The GRID's crops around the app's square (x0, y0, side), each turned by `angle` degrees."""
    cx, cy = x0 + side / 2, y0 + side / 2
    out = []
    for scale, dx, dy in GRID:
        s = side * scale
        out.append(crop_levelled(gray, cx + dx * side - s / 2, cy + dy * side - s / 2, s, angle))
    return out


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="pretrained")
    p.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    p.add_argument("--faces", type=int, default=1200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.faces < 2:
        raise DataError(f"--faces must be >= 2, got {args.faces}")
    faces, labels, source = load_faces(args.prepared)
    if source != "fer2013":
        raise DataError(f"{args.prepared} is not FER2013; prepare the real dataset first")
    import torch

    from emovision.faces import make_detector
    from emovision.inference import load_classifier

    torch.set_num_threads(1)
    clf, detector = load_classifier(args.model, "cpu"), make_detector()
    y, app, found, true, grid, errs = [], [], [], [], [], []
    for i, r, pipeline, result, hit in render_clips(clf, faces, labels, args.faces, args.seed, detector):
        if hit is None:
            continue
        track = pipeline.tracker.active()[hit]
        gray = cv2.cvtColor(r.frame, cv2.COLOR_BGR2GRAY)
        tcx, tcy, tside = r.square
        x0, y0, side = fer_square(track.box, detector.framing)  # the app's square, levelled as the app levels it
        probs = clf.predict_proba(views(gray, x0, y0, side, detector.framing.level * track.angle)
                                  + [crop_square(gray, tcx - tside / 2, tcy - tside / 2, tside)])
        errs.append(((tcx - x0 - side / 2) / side, (tcy - y0 - side / 2) / side, tside / side))
        y.append(r.label)
        app.append(clf.classes.index(result.faces[hit].label))
        found.append(i)
        grid.append(probs[:-1])
        true.append(probs[-1].argmax())
    if len(y) < 2:
        raise DataError(f"the app found {len(y)} of {args.faces} faces: nothing to compare")
    y, grid = np.array(y), np.stack(grid)
    direct = clf.predict_proba(faces[found]).argmax(1)  # the same 48x48 faces, classified directly
    right_app = np.array(app) == y
    pct = lambda right: f"{100 * np.mean(right):.2f}"  # noqa: E731
    print(f"model {args.model}, {args.faces} PublicTest renders, seed {args.seed}: {len(y)} found; app "
          f"{pct(right_app)}%, true square {pct(np.array(true) == y)}%, direct {pct(np.array(direct) == y)}% "
          f"(flip TTA everywhere)")
    e = np.array(errs)
    for j, name in enumerate(("true centre - app centre, x (sides)", "... y (sides)", "true side / app side")):
        lo, hi = np.percentile(e[:, j], [10, 90])
        fmt = "+.3f" if j < 2 else ".3f"
        print(f"  {name}: median {np.median(e[:, j]):{fmt}}, p10-p90 {lo:{fmt}} to {hi:{fmt}}")
    print("single views, accuracy %: rows side x, columns centre shift (dx, dy)")
    print("| side | " + " | ".join(f"{dx:+.2f},{dy:+.2f}" for dx in SHIFTS for dy in SHIFTS) + " |")
    for scale in SCALES:
        print(f"| x{scale:.2f} | " + " | ".join(pct(grid[:, GRID.index((scale, dx, dy))].argmax(1) == y)
                                               for dx in SHIFTS for dy in SHIFTS) + " |")
    print("| view set (probabilities averaged) | views | accuracy % | gain over the app +- SE (points) |")
    print("|---|---|---|---|")
    for name, members in VIEW_SETS.items():
        right = grid[:, [GRID.index(v) for v in members]].mean(1).argmax(1) == y
        diff = right.astype(float) - right_app
        print(f"| {name} | {len(members)} | {pct(right)} | {100 * diff.mean():+.2f} +- "
              f"{100 * diff.std(ddof=1) / np.sqrt(len(diff)):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
