"""Batch prediction: `python -m emovision.predict --model REF IMAGE...`.

Prints one JSON record per detected face per image, using the same detector, crops and
classifier as the webcam app; an image with no face prints a note on stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from pathlib import Path

import numpy as np

from emovision.device import APP_BACKEND, BACKENDS
from emovision.errors import ConfigError, SourceError, cli_main
from emovision.faces import (DEFAULT_DETECTOR, DETECTORS, LARGE_FRAME_SIDE, MIN_FACE, analyze_still, make_detector,
                             to_gray)
from emovision.fileio import user_path
from emovision.framing import face_fits
from emovision.images import decode_image, read_bytes


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emovision.predict", description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="+", type=user_path)
    p.add_argument("--model", default="models:/fer/Production", type=os.path.expanduser,
                   help="models:/NAME/STAGE, models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model, "
                        "a checkpoint, a model folder, an .onnx file, 'pretrained' or 'pretrained-ensemble' "
                        "(default: %(default)s)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--backend", default=APP_BACKEND, choices=BACKENDS,
                   help="auto (default): ONNX Runtime on a CPU, about twice as fast per face (the model is "
                        "exported once, checked against PyTorch and cached in ~/.cache/emovision/onnx), "
                        "PyTorch on CUDA; or torch, or onnx")
    p.add_argument("--min-face", type=int, help=f"smallest face side in pixels (default: {MIN_FACE}; in a frame "
                   f"over {LARGE_FRAME_SIDE} px, as much more as the frame is larger: 80 in 4K)")
    p.add_argument("--max-faces", type=int, default=0, help="keep the N largest faces per image (0: all)")
    p.add_argument("--detector", default=DEFAULT_DETECTOR, choices=DETECTORS,
                   help="face detector: haar (OpenCV cascades) or mtcnn (three small CNNs, shipped weights); "
                        "default: %(default)s")
    p.add_argument("--cascade", type=user_path, help="Haar cascade XML (default: OpenCV's frontal face; haar only)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average each face with its mirror image (default: on, as the model card measures)")
    args = p.parse_args(argv)
    if args.max_faces < 0:
        raise ConfigError(f"--max-faces must be >= 0 (0: all faces), got {args.max_faces}")
    # Haar is built in milliseconds, so a bad cascade fails first; MTCNN (torch and its weights,
    # ~2 s) only once every image has been read.
    detector = make_detector(args.detector, args.cascade, args.min_face) if args.detector == "haar" else None
    # Every file is read first, so a bad one fails before any output, and a regular file is read
    # again when its turn comes: kept, a thousand 12 MP photos (predict photos/*.jpg) held 12 GB of
    # pixels. A pipe or FIFO (predict <(curl -s URL)) gives its bytes once: those are kept.
    piped: dict[Path, bytes] = {}
    for path in args.images:
        data = piped.get(path) or read_bytes(path)
        read_gray(path, data)
        if not isinstance(data, str) and not is_regular_file(path):
            piped[path] = data
    detector = detector or make_detector(args.detector, args.cascade, args.min_face)
    from emovision.inference import load_classifier

    classifier = load_classifier(args.model, args.device, backend=args.backend)
    for path in args.images:
        gray = read_gray(path, piped.get(path) or read_bytes(path))
        faces = analyze_still(classifier, gray, detector, args.max_faces, args.tta)
        if not faces:
            h, w = gray.shape
            fits = face_fits(gray.shape, args.min_face)
            print(f"no face found in {path}" + ("" if fits else f" (--min-face {args.min_face} is larger than its "
                                                                  f"{w}x{h})"), file=sys.stderr)
        for face in faces:
            print(json.dumps({"image": str(path), **face}))
    return 0


def read_gray(path: Path, data: bytes | str) -> np.ndarray:
    """The image file's bytes (`read_bytes`: or why it could not be read) as gray levels,
    converted exactly as the webcam app converts frames; a SourceError naming the file when
    it cannot be used."""
    frame = data if isinstance(data, str) else decode_image(data)
    if isinstance(frame, str):
        raise SourceError(f"cannot read image {path}: {frame}")
    return to_gray(frame)


def is_regular_file(path: Path) -> bool:
    """Whether `path` is a regular file (read again, it gives the same bytes), not a pipe, FIFO
    or device."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False

if __name__ == "__main__":
    raise SystemExit(main())
