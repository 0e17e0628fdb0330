"""Real-time facial emotion recognition: `python -m emovision.webcam --model models:/fer/Production`.

Reads a camera, video, image, folder or stream; finds every face, classifies all of them
in one batched forward pass, smooths each face's probabilities over time and draws the
result. `--no-display` runs headless (servers, tests); `--output` writes the annotated
video, `--log` one JSON record per frame. Keys in the window: q / Esc quit, space pauses,
s saves a snapshot.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from emovision.errors import SourceError, cli_main
from emovision.faces import EmotionPipeline, HaarFaceDetector, draw
from emovision.sources import open_source

WINDOW = "emovision"
KEY_QUIT = (ord("q"), 27)
KEY_PAUSE = ord(" ")
KEY_SNAPSHOT = ord("s")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m emovision.webcam", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models:/fer/Production",
                   help="models:/NAME/STAGE, models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model, "
                        "a checkpoint, or 'pretrained' (default: %(default)s)")
    p.add_argument("--source", default="0", help="camera index, video/image file, folder or stream URL (default: 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-display", action="store_true", help="run without a window")
    p.add_argument("--output", type=Path, help="write the annotated video here (.mp4)")
    p.add_argument("--log", type=Path, help="write one JSON record per frame here (.jsonl)")
    p.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0: no limit)")
    p.add_argument("--detect-every", type=int, default=2, help="run the face detector every N frames")
    p.add_argument("--min-face", type=int, default=40, help="smallest face side in pixels")
    p.add_argument("--max-faces", type=int, default=0, help="keep the N largest faces (0: all)")
    p.add_argument("--smooth", type=float, default=0.6,
                   help="weight of the past in the per-face probability average, 0..1 (0: off)")
    p.add_argument("--cascade", type=Path, help="Haar cascade XML (default: OpenCV's frontal face)")
    p.add_argument("--tta", action="store_true", help="average each face with its mirror image")
    return p


class AtomicVideoWriter:
    """cv2.VideoWriter to a temporary name, renamed on success: no half-written video."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]):
        self.path = path
        self.tmp = path.with_name(f".{path.stem}.partial{path.suffix or '.mp4'}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not self.writer.isOpened():
            raise SourceError(f"cannot write video {path}")
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        self.writer.write(frame)
        self.frames += 1

    def close(self, ok: bool) -> None:
        self.writer.release()
        if ok:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def run(pipeline: EmotionPipeline, source, args) -> dict:
    """The main loop; returns a summary of frames, faces and median per-stage times."""
    display = not args.no_display
    writer = log = None
    times: dict[str, list[float]] = {"decode": [], "detect": [], "classify": [], "draw": []}
    faces_seen = frames = 0
    paused = False
    ok = False
    started = time.perf_counter()
    try:
        if args.log:
            args.log.parent.mkdir(parents=True, exist_ok=True)
            log_tmp = args.log.with_name(f".{args.log.name}.partial")
            log = log_tmp.open("w")
        fps = None
        t_prev = time.perf_counter()
        it = iter(source)
        while True:
            t0 = time.perf_counter()
            item = next(it, None)
            if item is None:
                break
            index, stamp, frame = item
            t1 = time.perf_counter()
            result = pipeline.process(frame)
            t2 = time.perf_counter()
            draw(frame, result, pipeline.classifier.classes, fps)
            t3 = time.perf_counter()
            times["decode"].append(1000 * (t1 - t0))
            times["detect"].append(result.times_ms["detect"])
            times["classify"].append(result.times_ms["classify"])
            times["draw"].append(1000 * (t3 - t2))
            fps = 1.0 / max(t3 - t_prev, 1e-6)
            t_prev = t3
            faces_seen += len(result.faces)
            frames += 1
            if args.output is not None:
                if writer is None:
                    h, w = frame.shape[:2]
                    writer = AtomicVideoWriter(args.output, source.fps, (w, h))
                writer.write(frame)
            if log is not None:
                log.write(json.dumps({"frame": index, "time": round(stamp, 4), "faces": [
                    {"track_id": f.track_id, "box": f.box, "label": f.label, "probs": f.probs}
                    for f in result.faces]}) + "\n")
            if display:
                cv2.imshow(WINDOW, frame)
                key = cv2.waitKey(0 if paused else 1) & 0xFF
                if key in KEY_QUIT:
                    break
                if key == KEY_PAUSE:
                    paused = not paused
                if key == KEY_SNAPSHOT:
                    snap = Path(f"snapshot_{index:06d}.png")
                    cv2.imwrite(str(snap), frame)
                    print(f"saved {snap}")
            if args.max_frames and frames >= args.max_frames:
                break
        ok = True
    finally:
        if writer is not None:
            writer.close(ok)
        if log is not None:
            log.close()
            if ok:
                os.replace(log_tmp, args.log)
            else:
                log_tmp.unlink(missing_ok=True)
        if display:
            cv2.destroyAllWindows()
    elapsed = time.perf_counter() - started
    med = {k: statistics.median(v) if v else 0.0 for k, v in times.items()}
    processing = med["detect"] + med["classify"] + med["draw"]
    return {"frames": frames, "faces": faces_seen, "seconds": elapsed,
            **{f"{k}_ms": v for k, v in med.items()},
            "process_ms": processing, "process_fps": 1000.0 / processing if processing else 0.0}


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0.0 <= args.smooth < 1.0:
        raise SourceError(f"--smooth must be in [0, 1), got {args.smooth}")
    if args.detect_every < 1:
        raise SourceError(f"--detect-every must be >= 1, got {args.detect_every}")
    if not args.no_display and not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        raise SourceError("no display available (DISPLAY is unset); add --no-display, "
                          "with --output out.mp4 or --log faces.jsonl to keep the results")
    from emovision.inference import load_classifier

    classifier = load_classifier(args.model, args.device)
    detector = HaarFaceDetector(args.cascade, min_face=args.min_face)
    pipeline = EmotionPipeline(classifier, detector, args.detect_every, args.smooth, args.max_faces, args.tta)
    with open_source(args.source) as source:
        print(f"model {args.model} ({classifier.info.get('arch')}, trained on "
              f"{classifier.info.get('dataset') or 'unknown data'}) on {classifier.device}; source {args.source}")
        summary = run(pipeline, source, args)
    print(f"{summary['frames']} frames, {summary['faces']} face detections; median ms per frame: "
          f"decode {summary['decode_ms']:.1f}, detect {summary['detect_ms']:.1f}, "
          f"classify {summary['classify_ms']:.1f}, draw {summary['draw_ms']:.1f} -> "
          f"{summary['process_fps']:.0f} fps processing (decode excluded)")
    return 0


# ---------------------------------------------------------------- benchmark helpers (stages.bench)


def make_benchmark_video(path: Path, frames: int = 120, size: tuple[int, int] = (640, 480)) -> Path:
    """A 640x480 video of a real face (matplotlib's grace_hopper.jpg) drifting across the frame."""
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        face = cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR)
    face = cv2.resize(face, (200, 250))
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, size)
    for i in range(frames):
        canvas = np.full((h, w, 3), 90, np.uint8)
        x = int(40 + (w - 280) * (0.5 + 0.5 * np.sin(i / 15)))
        canvas[100:350, x:x + 200] = face
        writer.write(canvas)
    writer.release()
    return path


def benchmark_pipeline(classifier, video: Path, detect_every: int = 2) -> dict:
    """Median per-stage milliseconds and processing fps of the default pipeline on a video."""
    args = argparse.Namespace(no_display=True, output=None, log=None, max_frames=0)
    pipeline = EmotionPipeline(classifier, HaarFaceDetector(), detect_every)
    with open_source(str(video)) as source:
        return run(pipeline, source, args)


if __name__ == "__main__":
    raise SystemExit(main())
