"""Issue 14's cheap ideas, measured on PublicTest only: resampling and shifted views at test time.

    python scripts/cheap_views.py [--model pretrained] [--prepared data/prepared]

FER2013 faces are JPEG-compressed 48x48 crops; the live app's faces are downscaled from a
larger frame. This scores the model on PublicTest (never PrivateTest: these are choices) for:
the raw crops; crops upscaled (bicubic / bilinear, x2 to x8) then downscaled with INTER_AREA
(what the app's crop goes through); a light Gaussian blur; and multi-view TTA (flip, 4 shifts
of 2 px, 0.9/1.1 zoom), each with and without flip TTA, plus the time per face of each view
set relative to one forward pass. Prints one table; writes nothing.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from emovision.data.prepared import load_meta, load_split
from emovision.errors import DataError, cli_main
from emovision.inference import load_classifier


def resample(x: np.ndarray, up: int, interpolation: int) -> np.ndarray:
    return np.stack([cv2.resize(cv2.resize(im, (48 * up, 48 * up), interpolation=interpolation), (48, 48),
                                interpolation=cv2.INTER_AREA) for im in x])


def warp(x: np.ndarray, dx: float = 0.0, dy: float = 0.0, zoom: float = 1.0) -> np.ndarray:
    m = cv2.getRotationMatrix2D((23.5, 23.5), 0, zoom)
    m[:, 2] += (dx, dy)
    return np.stack([cv2.warpAffine(im, m, (48, 48), borderMode=cv2.BORDER_REPLICATE) for im in x])


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="pretrained")
    p.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if load_meta(args.prepared)["source"] != "fer2013":
        raise DataError(f"{args.prepared} is not FER2013; prepare the real dataset first")
    torch.set_num_threads(args.threads)
    clf = load_classifier(args.model, "cpu")
    x, y = load_split(args.prepared, "val")

    def acc(probs: np.ndarray) -> str:
        return f"{100 * (probs.argmax(1) == y).mean():.2f}"

    rows = []
    for name, views in [
        ("raw 48x48 crop", x),
        ("bicubic x2 -> area", resample(x, 2, cv2.INTER_CUBIC)),
        ("bicubic x4 -> area", resample(x, 4, cv2.INTER_CUBIC)),
        ("bicubic x8 -> area", resample(x, 8, cv2.INTER_CUBIC)),
        ("bilinear x4 -> area", resample(x, 4, cv2.INTER_LINEAR)),
        ("gaussian blur 3x3 s0.6", np.stack([cv2.GaussianBlur(im, (3, 3), 0.6) for im in x])),
    ]:
        rows.append((name, acc(clf.predict_proba(views, tta=False)), acc(clf.predict_proba(views, tta=True)), 1))
    base = clf.predict_proba(x, tta=True)
    shifted = [clf.predict_proba(warp(x, dx, dy), tta=True) for dx, dy in ((-2, 0), (2, 0), (0, -2), (0, 2))]
    zoomed = [clf.predict_proba(warp(x, zoom=z), tta=True) for z in (0.9, 1.1)]
    rows.append(("flip + 4 shifts of 2 px (10 views)", "", acc(base + sum(shifted)), 5))
    rows.append(("flip + zoom 0.9/1.1 (6 views)", "", acc(base + sum(zoomed)), 3))
    face = x[:64]
    started = time.perf_counter()
    clf.predict_proba(face, tta=False)
    one = time.perf_counter() - started
    print(f"model {args.model}, PublicTest ({len(x)} faces); accuracy % without / with flip TTA; "
          f"cost in forward passes per face (one pass: {1000 * one / len(face):.2f} ms/face at batch 64)")
    print("| input | no TTA | flip TTA | passes per face (x2 with flip) |")
    print("|---|---|---|---|")
    for name, plain, flipped, cost in rows:
        print(f"| {name} | {plain} | {flipped} | {cost} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
