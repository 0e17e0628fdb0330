"""Batch prediction: `python -m emovision.predict --model REF IMAGE...`.

Prints one JSON record per detected face per image, using the same detector and
classifier as the webcam app.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2

from emovision.errors import SourceError, cli_main
from emovision.faces import HaarFaceDetector, square_crop


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emovision.predict", description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--model", default="models:/fer/Production")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--min-face", type=int, default=40)
    p.add_argument("--cascade", type=Path)
    args = p.parse_args(argv)
    frames = {}
    for path in args.images:  # read all first: a bad file fails before any output
        frame = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if frame is None:
            raise SourceError(f"cannot read image {path}: missing, unreadable or not an image")
        frames[path] = frame
    from emovision.inference import load_classifier

    classifier = load_classifier(args.model, args.device)
    detector = HaarFaceDetector(args.cascade, min_face=args.min_face)
    for path, gray in frames.items():
        boxes = detector.detect(gray)
        if len(boxes) == 0:
            continue
        probs = classifier.predict_proba([square_crop(gray, b) for b in boxes])
        for box, p_face in zip(boxes, probs):
            best = int(p_face.argmax())
            print(json.dumps({"image": str(path), "box": [int(v) for v in box], "label": classifier.classes[best],
                              "confidence": round(float(p_face[best]), 4),
                              "probs": {c: round(float(v), 4) for c, v in zip(classifier.classes, p_face)}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
