"""Issue 11: does averaging the classifier over several framings of each face close the live gap?

    python scripts/framing_views.py --faces 4800 --seed 10 [--model pretrained] [--prepared data/prepared]
        [--save /tmp/views_s10.npz]

Runs the live-consistency harness's own renders and pipeline (`emovision.livecheck.render_clips`:
FER2013 PublicTest faces only) and, for every face the app found, classifies views of it
around the app's square (the tracked box in the detector's framing, levelled as the app
levels it): side x0.88-1.12, centre moved by up to 6% of the side, each with the app's flip
TTA. Prints where the app's square sits on the true face square (medians, 10th-90th
percentiles), each single view's accuracy, and the accuracy of view sets averaged, against
the app and against direct classification of the same 48x48 faces; the paired standard error
of each set's gain over the app says what one draw can tell. Writes nothing unless `--save`
names an .npz: then, for every face found, its label and index in PublicTest, the direct, app
(smoothed, as shown) and true-square probabilities, each GRID view's flip-averaged
probabilities and where the true square sits on the app's, so that rules combining the views
can be tried offline without rendering again:

    python scripts/framing_views.py --rules /tmp/views_s10.npz [--ratios-from /tmp/views_s10.npz]
        [--sets "1/0/0 0.94/0/0" ...]

prints each combination rule's gain over the app (paired standard error) on a saved draw:
averaging (arithmetic, geometric), the most confident or lowest-entropy view, entropy-weighted
averaging, class-conditional framing (each class scored in the view at its own median FER2013
framing, taken from `--ratios-from`, another draw, or the figures in docs/live-app.md), and
"temporal cycling": the view set shown one view a frame, smoothed by the app's EMA
(`emovision.faces.SMOOTH`), after k frames.
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


# Small sets searched by --rules: the five sides at the app's centre and the four 6% shifts at its side.
CANDIDATES = [(sc, 0.0, 0.0) for sc in SCALES] + [(1.0, dx, dy) for dx, dy in CROSS[1:]]
# Median true side / app side and true - app centre y (sides) per class on both saved draws
# (docs/live-app.md, "Where the app's square and the dataset's disagree").
DOCS_FRAMING = {"angry": (0.99, 0.0), "disgust": (0.91, 0.0), "fear": (0.97, 0.0), "happy": (1.02, 0.0),
                "sad": (1.00, 0.0), "surprise": (0.97, -0.02), "neutral": (1.02, 0.0)}
CYCLE_FRAMES = (2, 3, 4, 5, 6, 30)  # 30: the steady state of a face shown for a while


def views(gray: np.ndarray, x0: float, y0: float, side: float, angle: float) -> list[np.ndarray]:
    """The GRID's crops around the app's square (x0, y0, side), each turned by `angle` degrees."""
    cx, cy = x0 + side / 2, y0 + side / 2
    out = []
    for scale, dx, dy in GRID:
        s = side * scale
        out.append(crop_levelled(gray, cx + dx * side - s / 2, cy + dy * side - s / 2, s, angle))
    return out


def _log(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(p, 1e-12, 1))


def combined_labels(p: np.ndarray) -> dict[str, np.ndarray]:
    """Labels of (n, m, K) per-view probabilities under each rule that sees every view at once."""
    n = np.arange(len(p))
    entropy = -(p * _log(p)).sum(-1)
    negentropy = np.clip(np.log(p.shape[2]) - entropy, 1e-6, None)  # information: 0 for a uniform view
    return {"arithmetic mean": p.mean(1).argmax(1), "geometric mean": _log(p).mean(1).argmax(1),
            "most confident view": p[n, p.max(2).argmax(1)].argmax(1),
            "lowest-entropy view": p[n, entropy.argmin(1)].argmax(1),
            "negentropy-weighted mean": (p * (negentropy / negentropy.sum(1, keepdims=True))[..., None]).sum(1).argmax(1)}


def cycled_right(p: np.ndarray, labels: np.ndarray, frames: int, smooth: float) -> np.ndarray:
    """Per face, the fraction of starting views for which the app is right after `frames` frames
    when its crop cycles through the m views of `p` (n, m, K), one a frame, smoothed by its EMA."""
    m = p.shape[1]
    right = np.zeros(len(p))
    for phase in range(m):
        ema = p[:, phase]
        for t in range(1, frames):
            ema = smooth * ema + (1 - smooth) * p[:, (phase + t) % m]
        right += ema.argmax(1) == labels
    return right / m


def view_at(views: np.ndarray, grid: list, scale: float, dy: float) -> np.ndarray:
    """(n, K) probabilities at side `scale` and centre shift `dy` (dx 0), linear between grid views."""
    scale = float(np.clip(scale, SCALES[0], SCALES[-1]))
    j = min(max(int(np.searchsorted(SCALES, scale)), 1), len(SCALES) - 1)
    t = (scale - SCALES[j - 1]) / (SCALES[j] - SCALES[j - 1])
    u, step = min(abs(dy) / SHIFTS[-1], 1.0), SHIFTS[-1] if dy > 0 else SHIFTS[0]

    def at(sc: float) -> np.ndarray:
        return (1 - u) * views[:, grid.index((sc, 0.0, 0.0))] + u * views[:, grid.index((sc, 0.0, step))]
    return (1 - t) * at(SCALES[j - 1]) + t * at(SCALES[j])


def class_framing(saved) -> dict[str, tuple[float, float]]:
    """Per class, the median true side / app side and true - app centre y of a saved draw's faces."""
    e, y = saved["true_vs_app"], saved["label"]
    return {str(c): (float(np.median(e[y == k, 2])), float(np.median(e[y == k, 1])))
            for k, c in enumerate(saved["classes"])}


def rules_report(saved, framing_by_class: dict[str, tuple[float, float]], extra_sets: dict[str, list]) -> None:
    """Print every rule's gain over the app on a saved draw (see the module docstring)."""
    from emovision.faces import SMOOTH

    y, grid = saved["label"], [tuple(float(v) for v in g) for g in saved["grid"]]
    views = saved["views"].astype(np.float64)
    right_app = saved["app"].argmax(1) == y

    def gain(right: np.ndarray) -> str:
        diff = right.astype(float) - right_app
        return f"{100 * diff.mean():+.2f} +- {100 * diff.std(ddof=1) / np.sqrt(len(diff)):.2f}"

    def subset(members: list) -> np.ndarray:
        return views[:, [grid.index(v) for v in members]]

    print(f"{len(y)} faces: app {100 * right_app.mean():.2f}%, direct {100 * np.mean(saved['direct'].argmax(1) == y):.2f}%, "
          f"app's square re-cut (last frame, no EMA) {gain(subset([(1.0, 0.0, 0.0)])[:, 0].argmax(1) == y)} over the app")
    named = {name: members for name, members in VIEW_SETS.items() if len(members) > 1}
    named.update({"2 sides x1 / 0.94": [(1.0, 0.0, 0.0), (0.94, 0.0, 0.0)],
                  "2 sides x1 / 1.06": [(1.0, 0.0, 0.0), (1.06, 0.0, 0.0)],
                  "2 sides x0.94 / 1.06": [(0.94, 0.0, 0.0), (1.06, 0.0, 0.0)]}, **extra_sets)
    rule_names = list(combined_labels(views[:2, :2]))
    print("| view set | views | " + " | ".join(rule_names) + " |\n|---|---|" + "---|" * len(rule_names))
    for name, members in named.items():
        labels = combined_labels(subset(members))
        print(f"| {name} | {len(members)} | " + " | ".join(gain(labels[r] == y) for r in rule_names) + " |")
    # every set of 2-4 CANDIDATES: the best is selected on this draw, so optimistic by construction
    found: dict[str, list] = {r: [] for r in rule_names}
    for m in (2, 3, 4):
        for members in itertools.combinations(CANDIDATES, m):
            labels = combined_labels(subset(list(members)))
            for r in rule_names:
                found[r].append((100 * (np.mean(labels[r] == y) - right_app.mean()), members))
    print("best of the 246 sets of 2-4 views (side x, dx, dy), selected on this draw; median over all sets:")
    for r, rows in found.items():
        rows.sort(key=lambda row: -row[0])
        print(f"  {r}: " + "; ".join(f"{g:+.2f} " + " ".join(f"{a:g}/{b:g}/{c:g}" for a, b, c in ms)
                                     for g, ms in rows[:3]) + f"; median {np.median([g for g, _ in rows]):+.2f}")
    classes = [str(c) for c in saved["classes"]]
    for amplitude in (1.0, 2.0):
        scores = np.stack([view_at(views, grid, 1 + amplitude * (framing_by_class[c][0] - 1),
                                   amplitude * framing_by_class[c][1])[:, k] for k, c in enumerate(classes)], 1)
        print(f"class-conditional framing (each class in its own median view, deviations x{amplitude:g}): "
              f"{gain(scores.argmax(1) == y)}")
    print(f"temporal cycling (one view a frame, EMA {SMOOTH} of the past), gain after k frames vs all views averaged:")
    print("| view set | averaged | " + " | ".join(f"k={k}" for k in CYCLE_FRAMES) + " |\n|---|---|" + "---|" * len(CYCLE_FRAMES))
    for name, members in named.items():
        p = subset(members)
        print(f"| {name} | {gain(p.mean(1).argmax(1) == y)} | "
              + " | ".join(gain(cycled_right(p, y, k, SMOOTH)) for k in CYCLE_FRAMES) + " |")


def _view(text: str) -> tuple[float, float, float]:
    try:
        scale, dx, dy = (float(v) for v in text.split("/"))
    except ValueError:
        raise DataError(f"--sets: '{text}' is not side/dx/dy (e.g. 0.94/0/0.06)") from None
    return scale, dx, dy


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="pretrained")
    p.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    p.add_argument("--faces", type=int, default=1200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", type=Path, help="write the per-face probabilities to this .npz")
    p.add_argument("--rules", type=Path, help="a --save file: print the combination rules' gains on it, render nothing")
    p.add_argument("--ratios-from", type=Path,
                   help="a --save file whose per-class median framing class-conditional framing uses "
                        "(default: the figures in docs/live-app.md)")
    p.add_argument("--sets", nargs="*", default=[], help="more view sets for --rules, each 'side/dx/dy side/dx/dy ...'")
    args = p.parse_args(argv)
    if args.rules is not None:
        for path in (args.rules, args.ratios_from):
            if path is not None and not path.is_file():
                raise DataError(f"{path}: no such file (write one with --save)")
        sets = {text: [_view(v) for v in text.split()] for text in args.sets}
        unknown = [v for members in sets.values() for v in members if v not in GRID]
        if unknown:
            raise DataError(f"--sets: {unknown[0]} is not a saved view (sides {SCALES}, shifts {SHIFTS})")
        framing = DOCS_FRAMING if args.ratios_from is None else class_framing(np.load(args.ratios_from))
        rules_report(np.load(args.rules), framing, sets)
        return 0
    if args.faces < 2:
        raise DataError(f"--faces must be >= 2, got {args.faces}")
    if args.save is not None and (args.save.suffix != ".npz" or not args.save.parent.is_dir()):
        raise DataError(f"--save {args.save}: needs an .npz path in an existing folder")
    faces, labels, source = load_faces(args.prepared)
    if source != "fer2013":
        raise DataError(f"{args.prepared} is not FER2013; prepare the real dataset first")
    import torch

    from emovision.faces import make_detector
    from emovision.inference import load_classifier

    torch.set_num_threads(1)
    clf, detector = load_classifier(args.model, "cpu"), make_detector()
    y, app, app_probs, found, true, grid, errs = [], [], [], [], [], [], []
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
        app_probs.append(track.probs)  # smoothed over the clip's frames, as the app shows them
        found.append(i)
        grid.append(probs[:-1])
        true.append(probs[-1])
    if len(y) < 2:
        raise DataError(f"the app found {len(y)} of {args.faces} faces: nothing to compare")
    y, grid, true_probs = np.array(y), np.stack(grid), np.stack(true)
    direct_probs = clf.predict_proba(faces[found])  # the same 48x48 faces, classified directly
    direct, true = direct_probs.argmax(1), true_probs.argmax(1)
    if args.save is not None:
        tmp = args.save.with_name(args.save.stem + ".tmp.npz")
        np.savez_compressed(tmp, label=y, index=np.array(found), app=np.stack(app_probs), direct=direct_probs,
                            true_square=true_probs, views=grid.astype(np.float32), grid=np.array(GRID),
                            true_vs_app=np.array(errs), classes=np.array(clf.classes), seed=args.seed)
        tmp.replace(args.save)
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
