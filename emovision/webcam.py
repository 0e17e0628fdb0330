"""Real-time facial emotion recognition: `python -m emovision.webcam --model models:/fer/Production`.

Reads a camera, video, image, folder or stream; finds every face, classifies all of them
in one batched forward pass, smooths each face's probabilities over time and draws the
result. `--no-display` runs headless (servers, tests); `--output` writes the annotated
video, `--log` one JSON record per frame. In the window a file plays at its own frame rate
(an image folder at one image a second; `--fast`: as fast as it is processed). Keys in the
window: q / Esc quit, space pauses, s saves a snapshot.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from emovision import fileio
from emovision.device import APP_BACKEND, BACKENDS, torch_threads, usable_cpus
from emovision.errors import EXIT_INTERRUPTED, NO_SPACE_HINT, ConfigError, OutputError, SourceError, cli_main
from emovision.faces import (DEFAULT_DETECTOR, DETECT_EVERY, DETECTORS, LARGE_FRAME_SIDE, MIN_FACE, MIN_HITS, SMOOTH,
                             EmotionPipeline, make_detector)
from emovision.framing import VIEW_CYCLE, face_fits
from emovision.images import quiet_opencv
from emovision.sources import STILL_SECONDS, FrameSource, frame_rate, open_source

WINDOW = "emovision"
KEY_QUIT = (ord("q"), 27)
KEY_PAUSE = ord(" ")
KEY_SNAPSHOT = ord("s")
PAUSED_POLL_MS = 100  # a paused window looks for Ctrl-C or kill this often between keys
VIEWS = " and ".join(f"x{v:g}" for v in VIEW_CYCLE)  # the crop sides a face is classified at (--help)
BENCH_VIDEO_FPS = 30  # the benchmark video's frame rate
FPS_SMOOTH = 0.9  # the on-screen fps is an EMA, so the number is readable rather than flickering
# One face is too small a job to split across cores: a second thread barely helps on an idle
# CPU and is ~7x slower on a busy one (threads spin waiting for each other).
INFERENCE_THREADS = 1
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv")  # what OpenCV writes with the mp4v codec
# The window opens at the frame's size, shrunk to fit this (width, height) where it is larger: a
# 1080x1920 phone video opened a 1920-px-tall window on a 768-px laptop screen, its lower half out of
# sight. Any screen shows 1280x720; the window is resizable and keeps the frame's aspect.
WINDOW_MAX = (1280, 720)
# Without GUI_NORMAL, Qt's toolbar and status bar are part of the size resizeWindow sets, and a
# 640x480 frame was drawn at 557x418.
WINDOW_FLAGS = cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL
# xcb_connection_has_error's codes that a DISPLAY value itself explains (xcb.h); any other is a
# display that does not answer or refuses this client (XCB_CONN_ERROR: no server, no authority).
X_CONNECT_ERRORS = {5: "DISPLAY={} is not an X display name (HOST:NUMBER, e.g. :0)",
                    6: "DISPLAY={} names a screen the X server does not have"}
# An X server answers in well under a second, over ssh -X too; a host that drops the packets kept
# libxcb's connect() waiting 134 s (the kernel's SYN retries), silently, before the model loaded.
X_CONNECT_TIMEOUT_S = 5.0
EXIT_INCOMPLETE = 1  # the run finished, but the video ended early or images were skipped


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m emovision.webcam", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models:/fer/Production", type=os.path.expanduser,
                   help="models:/NAME/STAGE, models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model, "
                        "a checkpoint, a model folder, an .onnx file, 'pretrained' or 'pretrained-ensemble' "
                        "(default: %(default)s)")
    p.add_argument("--source", default="0", type=os.path.expanduser,
                   help="camera index, video/image file, folder or stream URL (default: 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--backend", default=APP_BACKEND, choices=BACKENDS,
                   help="auto (default): ONNX Runtime on a CPU, about twice as fast per face (the model is "
                        "exported once, checked against PyTorch and cached in ~/.cache/emovision/onnx), "
                        "PyTorch on CUDA; or torch, or onnx")
    p.add_argument("--no-display", action="store_true", help="run without a window")
    p.add_argument("--fast", action="store_true",
                   help="in the window, play files as fast as they are processed, not at their own frame rate")
    p.add_argument("--output", type=fileio.user_path, help="write the annotated video here (.mp4)")
    p.add_argument("--log", type=fileio.user_path, help="write one JSON record per frame here (.jsonl)")
    p.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0: no limit)")
    p.add_argument("--detect-every", type=int, default=DETECT_EVERY,
                   help="run the face detector every N frames; faces are classified every frame (default: %(default)s)")
    p.add_argument("--min-face", type=int, help=f"smallest face side in pixels (default: {MIN_FACE}; in a frame "
                   f"over {LARGE_FRAME_SIDE} px, as much more as the frame is larger: 80 in 4K)")
    p.add_argument("--max-faces", type=int, default=0, help="keep the N largest faces (0: all)")
    p.add_argument("--smooth", type=float, default=SMOOTH,
                   help="weight of the past in the per-face probability average, 0..1 (default: %(default)s). Above 0 "
                        f"a face is cut at {VIEWS} of its square in turn, frame by frame, and the average "
                        "combines them; 0: no average, every cut classified and averaged each frame")
    p.add_argument("--detector", default=DEFAULT_DETECTOR, choices=DETECTORS,
                   help="face detector: haar (OpenCV cascades) or mtcnn (three small CNNs, shipped weights); "
                        "default: %(default)s")
    p.add_argument("--cascade", type=fileio.user_path,
                   help="Haar cascade XML (default: OpenCV's frontal face; haar only)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average each face with its mirror image (default: on, as the model card measures; "
                        f"--no-tta halves the classify time; it drops the mirror only, the {VIEWS} cuts stay)")
    p.add_argument("--threads", type=int, default=INFERENCE_THREADS,
                   help="CPU threads for the classifier (default: %(default)s: a face is too small a job to split; a "
                        "second thread barely helps on an idle CPU and is several times slower on a busy one)")
    return p


def check_args(args: argparse.Namespace) -> None:
    if not args.source.strip():  # `--source "$CLIP"` with CLIP unset: as a path, "" is the working folder
        raise ConfigError("--source is empty: give a camera index, a video, an image, a folder or a stream URL")
    if not 0.0 <= args.smooth < 1.0:
        raise ConfigError(f"--smooth must be in [0, 1), got {args.smooth}")
    if args.detect_every < 1:
        raise ConfigError(f"--detect-every must be >= 1, got {args.detect_every}")
    # More threads than CPUs only wait for each other: 64 on 2 CPUs ran at 15 fps instead of 80,
    # 1024 at 1 fps, and 100,000 ran out of memory in torch, which read as damaged weights.
    if not 1 <= args.threads <= usable_cpus():
        raise ConfigError(f"--threads must be 1..{usable_cpus()} (the CPUs this process may use), got {args.threads}")
    for name in ("max_faces", "max_frames"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name, example in (("output", "annotated.mp4"), ("log", "faces.jsonl")):
        check_output_file(f"--{name}", getattr(args, name), example)
    if args.output is not None and args.output.suffix.lower() not in ("", *VIDEO_EXTENSIONS):
        raise ConfigError(f"--output {args.output}: the annotated video needs a video name "
                          f"({', '.join(VIDEO_EXTENSIONS)}), e.g. --output {args.output.with_suffix('.mp4')}")
    if args.output is not None and args.log is not None and args.output.resolve() == args.log.resolve():
        raise ConfigError(f"--output and --log are the same file {args.output}; give each its own name")
    if not args.no_display and sys.platform.startswith("linux"):
        display = os.environ.get("DISPLAY")
        problem = "DISPLAY is unset" if not display else x_display_problem(display)
        if problem:
            raise ConfigError(f"no display available ({problem}); add --no-display, "
                              "with --output out.mp4 or --log faces.jsonl to keep the results")


def x_display_problem(display: str, timeout: float | None = None) -> str | None:
    """Why no window can open on the X display `display`, or None (also when libxcb, the X
    client library Qt's window goes through, is not there to ask: then Qt says it). A display
    that does not answer (ssh -X from a machine without an X server, a stale DISPLAY in tmux or a
    container) made Qt abort the whole process (SIGABRT) once the first frame was shown."""
    try:
        xcb = ctypes.CDLL(ctypes.util.find_library("xcb") or "libxcb.so.1")
    except OSError:
        return None
    xcb.xcb_connect.restype = ctypes.c_void_p
    xcb.xcb_connect.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    xcb.xcb_connection_has_error.argtypes = [ctypes.c_void_p]
    xcb.xcb_disconnect.argtypes = [ctypes.c_void_p]
    timeout = X_CONNECT_TIMEOUT_S if timeout is None else timeout
    answer: dict[str, int] = {}

    def connect() -> None:
        connection = xcb.xcb_connect(os.fsencode(display), None)  # never NULL: a failed one carries its error
        try:
            answer["error"] = xcb.xcb_connection_has_error(connection)
        finally:
            xcb.xcb_disconnect(connection)

    # a thread, so that a host that never answers costs X_CONNECT_TIMEOUT_S (it is left to give up
    # on its own); libxcb writes a server's refusal ("Authorization required, ...") to stderr itself
    with tempfile.TemporaryFile() as said:
        with stderr_off(into=said.fileno()):
            probe = threading.Thread(target=connect, name="x-display-probe", daemon=True)
            probe.start()
            probe.join(timeout)
        said.seek(0)
        refusal = " ".join(said.read().decode(errors="replace").split())
    if probe.is_alive():
        return f"no X display answered at DISPLAY={display} within {timeout:g} s"
    error = answer.get("error")
    if not error:
        return None
    if refusal:  # a server answered, and said no: most often a missing or wrong xauth cookie
        return f"the X display at DISPLAY={display} refused this client: {refusal}; check XAUTHORITY (xauth list)"
    return X_CONNECT_ERRORS.get(error, "no X display answers at DISPLAY={}").format(display)


def is_faces_log(path: Path) -> bool:
    """Whether `path` is empty or a --log of this app (its first line a frame's JSON record), so
    replacing it loses nothing of the user's: `--log README.md` replaced the README with JSON lines.
    Blank lines are skipped: a file opening with one (notes.md) passed as empty, and was replaced."""
    try:
        with path.open("rb") as f:
            first = next((line for line in iter(lambda: f.readline(1 << 16), b"") if line.strip()), b"")
    except OSError:
        return False
    if not first:
        return True
    try:
        record = json.loads(first)
    except ValueError:
        return False
    return isinstance(record, dict) and "frame" in record


def check_outputs_spare_inputs(args: argparse.Namespace, source: FrameSource) -> None:
    """An output renamed over the video or image being read would destroy it at the end of the run,
    and a --log over a file of the user's (README.md, params.yaml) would replace it."""
    inputs = {path.resolve() for path in source.files}
    for flag in ("output", "log"):
        path = getattr(args, flag)
        if path is not None and path.resolve() in inputs:
            raise ConfigError(f"--{flag} {path} is the source being read; it would be overwritten: "
                              f"give another file name")
    if args.log is not None and args.log.is_file() and not is_faces_log(args.log):
        raise ConfigError(f"--log {args.log} is a file the app did not write (not a log of frames); it would be "
                          f"replaced: name a new file, e.g. --log faces.jsonl")


def check_source_fits(args: argparse.Namespace, source: FrameSource) -> None:
    """Flags under which the app could only find nothing, refused before the model loads:
    a `--max-frames` under MIN_HITS on a video or camera, a `--detect-every` so large that the
    frames to be read (a video's header, `--max-frames`; a camera has no count) hold fewer than
    the MIN_HITS detection rounds a face needs before it is shown, and a `--min-face` larger
    than frames all of one size (a video, a camera, one image; a folder's images are counted
    as they come, `run`)."""
    counts = [(n, what) for n, what in ((args.max_frames, "--max-frames reads"),
                                        (source.expected_frames, f"{args.source} has")) if n]
    if 0 < args.max_frames < MIN_HITS and not source.stills:
        raise ConfigError(f"--max-frames {args.max_frames}: a face in a video is shown only once {MIN_HITS} detection "
                          f"rounds agree, so {args.max_frames} frame(s) would show none; give at least {MIN_HITS}")
    if counts and not source.stills:
        frames, what = min(counts)
        most = (frames - 1) // (MIN_HITS - 1)
        if most and args.detect_every > most:
            raise ConfigError(f"--detect-every {args.detect_every}: the {frames} frames {what} hold fewer than "
                              f"{MIN_HITS} detection rounds, and a face is shown only once {MIN_HITS} rounds agree "
                              f"(none would be); give at most {most}")
    if source.frame_size is not None and not face_fits(source.frame_size[::-1], args.min_face):
        w, h = source.frame_size
        raise ConfigError(f"--min-face {args.min_face} is larger than the frames of {args.source} ({w}x{h}): no "
                          f"face could be found; give at most {min(w, h)}")


def check_output_file(flag: str, path: Path | None, example: str) -> None:
    """An output must be a file name in a folder that exists or can be made: checked before the
    model loads and before any frame is processed, so a typo never costs a run."""
    if path is None:
        return
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file name, e.g. {flag} {path / example}")
    why = fileio.unwritable(path)
    if why:
        raise ConfigError(f"{flag} {path}: {why}")


class AtomicVideoWriter:
    """cv2.VideoWriter to a temporary name (`fileio.atomic_path`), renamed over `path` only on
    success: no half-written video. Every frame is written at `size` (the first frame's): a
    frame of another size (a folder of photos of mixed sizes) is scaled to fit and centred on
    black, since cv2.VideoWriter drops such frames with only a warning."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]):
        self.path, self.size = path, size
        self._stack = contextlib.ExitStack()
        self.tmp = self._stack.enter_context(fileio.atomic_path(path, suffix=path.suffix or ".mp4"))
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not self.writer.isOpened():
            self.close(ok=False)
            raise SourceError(f"cannot write video {path}: check the folder and the .mp4 extension")
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        with quiet_opencv():  # a frame it fails to write is one warning line each; close() says it once
            self.writer.write(letterbox(frame, self.size))
        self.frames += 1

    def close(self, ok: bool) -> None:
        """Finish the video; with `ok`, rename it into place if it reads back whole, else
        remove it. OpenCV's writer reports no error (a full disk gives a file without its
        index, unplayable): one line says so, and what `path` held is kept."""
        with quiet_opencv():
            self.writer.release()
            problem = self._unreadable() if ok else None
        if ok and problem is None:
            self._stack.close()  # renames the finished video into place
            return
        error = fileio.unwritten(self.path, problem or "unfinished")
        # atomic_path removes the temporary file when its block fails
        self._stack.__exit__(OutputError, error, None)
        if problem:
            raise error

    def _unreadable(self) -> str | None:
        """Why the finished temporary video does not read back as `frames` frames, or None."""
        with stderr_off():  # FFmpeg's own line for a broken file ("moov atom not found"); ours follows
            capture = cv2.VideoCapture(str(self.tmp))
            try:
                count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
            finally:
                capture.release()
        if count == self.frames:
            return None
        if fileio.disk_full(self.tmp.parent):
            return NO_SPACE_HINT
        return f"OpenCV wrote a file that reads back as {count} of its {self.frames} frames"


@contextlib.contextmanager
def stderr_off(into: int | None = None) -> Iterator[None]:
    """The process's stderr (file descriptor 2) to /dev/null, or into the open file `into`, for a
    short block: FFmpeg, once OpenCV has set it up, and libxcb print there themselves."""
    sys.stderr.flush()
    saved, target = os.dup(2), os.open(os.devnull, os.O_WRONLY) if into is None else os.dup(into)
    os.dup2(target, 2)
    os.close(target)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def letterbox(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`frame` (BGR, or gray) as a (height, width, 3) BGR image of `size` (width, height): itself
    when it already is one, else scaled to fit, aspect kept, and centred on black."""
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    w, h = size
    fh, fw = frame.shape[:2]
    if (fw, fh) == (w, h):
        return frame
    f = min(w / fw, h / fh)
    nw, nh = max(1, min(w, round(fw * f))), max(1, min(h, round(fh * f)))
    out = np.zeros((h, w, 3), np.uint8)
    x, y = (w - nw) // 2, (h - nh) // 2
    out[y:y + nh, x:x + nw] = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    return out


def window_size(width: int, height: int, fit: tuple[int, int] = WINDOW_MAX) -> tuple[int, int]:
    """The window's size for a frame of `width` x `height`: the frame's, shrunk to fit `fit`."""
    scale = min(1.0, fit[0] / width, fit[1] / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def show(frame: np.ndarray, shown: tuple[int, ...] | None) -> tuple[int, ...]:
    """Show `frame` in the app's window, sized for it (`window_size`) when the frame's size
    differs from `shown`, the size of the frame shown before; returns the frame's size."""
    if frame.shape[:2] != shown:
        cv2.namedWindow(WINDOW, WINDOW_FLAGS)
        cv2.resizeWindow(WINDOW, *window_size(frame.shape[1], frame.shape[0]))
    cv2.imshow(WINDOW, frame)
    return frame.shape[:2]


@contextlib.contextmanager
def atomic_text(path: Path | None) -> Iterator:
    """A text file written under a temporary name and renamed only if the block succeeds."""
    if path is None:
        yield None
        return
    with fileio.atomic_path(path) as tmp, tmp.open("w") as f:
        yield f


@contextlib.contextmanager
def stop_on_ctrl_c() -> Iterator[threading.Event]:
    """An event the first Ctrl-C sets instead of raising, so the main loop ends after the frame
    at hand and the outputs are finished (Ctrl-C is how a headless camera run stops); a second
    Ctrl-C interrupts at once (a source that hangs)."""
    stop = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        stop.set()
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def summarize(times: dict[str, list[float]], detect_frames: list[bool], frames: int, faces: int,
              track_ids: set[int], seconds: float) -> dict:
    """Median per-stage ms; fps from the total processing time (detect + classify + draw)."""
    med = {k: statistics.median(v) if v else 0.0 for k, v in times.items()}
    detect_only = [t for t, d in zip(times["detect"], detect_frames) if d]
    per_frame = [d + c + w for d, c, w in zip(times["detect"], times["classify"], times["draw"])]
    total_s = sum(per_frame) / 1000
    return {"frames": frames, "faces": faces, "tracks": len(track_ids), "seconds": seconds,
            "decode_ms": med["decode"],
            "detect_ms": statistics.median(detect_only) if detect_only else 0.0,  # on frames that detect
            "detect_ms_amortized": statistics.fmean(times["detect"]) if frames else 0.0,  # over all frames
            "classify_ms": med["classify"], "draw_ms": med["draw"],
            "process_ms": statistics.median(per_frame) if per_frame else 0.0,
            "process_fps": frames / total_s if total_s else 0.0,  # decode excluded
            "end_to_end_fps": frames / seconds if seconds else 0.0}  # decode, logging, writing included


class PlaybackClock:
    """Shows a file's frames at their own timestamps: the milliseconds to wait before the
    next frame. Starts (and restarts after a pause) from the frame at hand, so a slow frame
    or a pause never makes it rush to catch up. `hold_s`: how long past its own time a frame
    stays (a still's second; 0 for a video, whose next frame replaces it at that time)."""

    def __init__(self, clock=time.perf_counter, hold_s: float = 0.0):
        self.clock, self.hold_s = clock, hold_s
        self.origin: float | None = None  # wall time at which the file's time 0 would be shown

    def wait_ms(self, stamp: float) -> int:
        now = self.clock()
        if self.origin is None or self.origin + stamp < now - 0.25:  # start, or fell behind
            self.origin = now - stamp
        return max(1, round(1000 * (self.origin + stamp + self.hold_s - now)))

    def restart(self) -> None:
        self.origin = None


def playback_clock(source: FrameSource, clock=time.perf_counter) -> PlaybackClock:
    """The window's clock for a file `source`. A still is held STILL_SECONDS: waiting only until
    its own time (a video frame's start) showed a folder's first image for the 0.14 s the next one
    took to process, and a single photo for 0.01 s before the window closed."""
    return PlaybackClock(clock, hold_s=STILL_SECONDS if source.stills else 0.0)


def wait_for_key(stop: threading.Event | None) -> int:
    """A paused window's wait: the next key, or 255 (none) once `stop` is set. cv2.waitKey(0) held
    the main loop until a key, so Ctrl-C and `kill` (which only set `stop`) did nothing to a
    paused window: still running 8 s after SIGTERM, until a key was pressed."""
    while True:
        key = cv2.waitKey(PAUSED_POLL_MS)
        if key != -1 or (stop is not None and stop.is_set()):
            return key & 0xFF


def save_snapshot(frame: np.ndarray, index: int, folder: Path = Path(".")) -> Path | None:
    """The window's `s` key: the annotated frame as `snapshot_<frame>.png` in `folder`, under a new
    name where that one is taken (a second run's frame 120 must not replace the first run's), written
    whole or not at all. A snapshot that cannot be written is one line and the app goes on: a live
    session is worth more than the picture."""
    snap = folder / f"snapshot_{index:06d}.png"
    copy = 1
    while snap.exists():
        copy += 1
        snap = folder / f"snapshot_{index:06d}-{copy}.png"
    try:
        with fileio.atomic_path(snap, ".png") as tmp:
            if not cv2.imwrite(str(tmp), frame):
                raise OSError("OpenCV could not encode or write the PNG")
    except (OSError, OutputError) as err:
        print(f"warning: snapshot not saved: {err}", file=sys.stderr)
        return None
    print(f"saved {snap}")
    return snap


@dataclass(frozen=True)
class RunOptions:
    """What `run` does besides processing frames: everything it reads, typed, so a caller
    other than the app (`benchmark_pipeline`) builds it directly; the defaults run headless
    and write nothing. `from_args` reads it off the app's flags."""

    display: bool = False  # show the window (keys: q / Esc quit, space pauses, s saves a snapshot)
    fast: bool = False  # in the window, play a file as fast as it is processed, not at its frame rate
    output: Path | None = None  # the annotated video
    log: Path | None = None  # one JSON record per frame
    max_frames: int = 0  # stop after this many frames (0: no limit)
    # a still's "image" in the log is its path relative to this folder (the folder given as the
    # source; None: the file's name), so the log joins to the files of a folder and its subfolders
    image_root: Path | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunOptions:
        root = Path(args.source)
        return cls(display=not args.no_display, fast=args.fast, output=args.output, log=args.log,
                   max_frames=args.max_frames, image_root=root if root.is_dir() else None)


def image_name(path: Path, root: Path | None) -> str:
    """A still's name in the log: its path relative to `root`, or its file name."""
    return path.relative_to(root).as_posix() if root is not None else path.name


def run(pipeline: EmotionPipeline, source: FrameSource, options: RunOptions = RunOptions(),
        stop: threading.Event | None = None) -> dict:
    """The main loop, until the source ends, a key, `options.max_frames` or `stop` (set by
    Ctrl-C) ends it; returns a summary of frames, faces and per-stage times."""
    display = options.display
    playback = playback_clock(source) if display and not source.live and not options.fast else None
    times: dict[str, list[float]] = {"decode": [], "detect": [], "classify": [], "draw": []}
    detect_frames: list[bool] = []
    track_ids: set[int] = set()
    faces_seen = frames = 0
    paused = False
    shown = None  # the size of the frame in the window
    stopped_early = False  # by --max-frames or a key: the end of the source was not reached
    too_small = 0  # frames smaller than --min-face (a folder's images): no face can be found in them
    min_face = getattr(pipeline.detector, "min_face", None)
    writer: AtomicVideoWriter | None = None
    fps = None
    ok = False
    started = time.perf_counter()
    try:
        with atomic_text(options.log) as log:
            t_prev = time.perf_counter()
            it = iter(source)
            while True:
                t0 = time.perf_counter()
                item = next(it, None)
                if item is None:
                    break
                index, stamp, frame = item
                decode_ms = 1000 * (time.perf_counter() - t0)
                result = pipeline.process(frame)
                too_small += not face_fits(frame.shape, min_face)
                pipeline.annotate(frame, result, fps)
                now = time.perf_counter()
                rate = 1.0 / max(now - t_prev, 1e-6)
                fps = rate if fps is None else FPS_SMOOTH * fps + (1 - FPS_SMOOTH) * rate
                t_prev = now
                times["decode"].append(decode_ms)
                for stage in ("detect", "classify", "draw"):
                    times[stage].append(result.times_ms[stage])
                detect_frames.append(result.detected)
                faces_seen += len(result.faces)
                track_ids.update(f.track_id for f in result.faces if f.track_id is not None)
                frames += 1
                if options.output is not None:
                    if writer is None:
                        h, w = frame.shape[:2]
                        writer = AtomicVideoWriter(options.output, frame_rate(source.fps), (w, h))
                    writer.write(frame)
                if log is not None:
                    record = {"frame": index, "time": round(stamp, 4), "cut": result.cut}
                    if source.stills:  # an image source's index is its file's (ImageSource)
                        record["image"] = image_name(source.files[index], options.image_root)
                    record["faces"] = [f.to_dict() for f in result.faces]
                    log.write(json.dumps(record) + "\n")
                if display:
                    shown = show(frame, shown)
                    wait = 1 if playback is None else playback.wait_ms(stamp)
                    key = wait_for_key(stop) if paused else cv2.waitKey(wait) & 0xFF
                    if key in KEY_QUIT:
                        stopped_early = True
                        break
                    if key == KEY_PAUSE:
                        paused = not paused
                        if playback is not None:
                            playback.restart()
                    if key == KEY_SNAPSHOT:
                        save_snapshot(frame, index)
                if (options.max_frames and frames >= options.max_frames) or (stop is not None and stop.is_set()):
                    stopped_early = True
                    break
        ok = True
    finally:
        if writer is not None:
            writer.close(ok)
        if display:
            cv2.destroyAllWindows()
    summary = summarize(times, detect_frames, frames, faces_seen, track_ids, time.perf_counter() - started)
    if too_small:
        summary["min_face_too_large"] = too_small
    if source.live:
        summary["dropped"] = getattr(source, "dropped", 0)
    expected = source.expected_frames
    if not stopped_early and expected and frames < expected:
        summary["expected_frames"] = expected
    return summary


def summary_line(s: dict) -> str:
    return (f"{s['frames']} frames, {s['faces']} faces found ({s['tracks']} tracks); median ms: "
            f"decode {s['decode_ms']:.1f} | detect {s['detect_ms']:.1f} (on detection frames), "
            f"classify {s['classify_ms']:.1f}, draw {s['draw_ms']:.1f}, per frame {s['process_ms']:.1f} -> "
            f"{s['process_fps']:.0f} fps processing (decode excluded), {s['end_to_end_fps']:.0f} fps end to end"
            + (f"; {s['dropped']} stale frames dropped" if "dropped" in s else ""))


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    # The cheap checks first: a bad cascade, an unreadable source or an output that would overwrite
    # an input fails in a fraction of a second, before torch, MTCNN or the model loads (~2 s).
    detector = make_detector(args.detector, args.cascade, args.min_face) if args.detector == "haar" else None
    with open_source(args.source) as source:
        check_outputs_spare_inputs(args, source)
        check_source_fits(args, source)
        detector = detector or make_detector(args.detector, args.cascade, args.min_face)
        from emovision.inference import load_classifier

        with torch_threads(args.threads):
            classifier = load_classifier(args.model, args.device, backend=args.backend)
            print(f"model {args.model} ({classifier.info.get('arch')}, trained on "
                  f"{classifier.info.get('dataset') or 'unknown data'}) on {classifier.device} with "
                  f"{'ONNX Runtime' if classifier.info.get('backend') == 'onnx' else 'PyTorch'}; source {args.source}")
            if source.stills:  # unrelated images: detect in each, nothing to confirm, track or smooth
                print("images are independent stills: detecting on every image, no smoothing across them")
                pipeline = EmotionPipeline(classifier, detector, max_faces=args.max_faces, tta=args.tta, stills=True)
            else:
                pipeline = EmotionPipeline(classifier, detector, args.detect_every, args.smooth, args.max_faces,
                                           args.tta, fps=source.fps)
            with stop_on_ctrl_c() as stop:
                summary = run(pipeline, source, RunOptions.from_args(args), stop)
    print(summary_line(summary))
    if stop.is_set():  # the outputs are whole files of the frames processed
        kept = [str(p) for p in (args.output, args.log) if p is not None]
        print(f"interrupted after {summary['frames']} frames" + (
            f"; {' and '.join(kept)} {'hold' if len(kept) > 1 else 'holds'} them" if kept else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    if source.stalled:  # a camera unplugged, a stream cut off: the outputs hold what came before
        print(f"warning: {source.stalled}: the run ended after {summary['frames']} frames; the outputs cover them",
              file=sys.stderr)
        return EXIT_INCOMPLETE
    if "expected_frames" in summary:  # a truncated or damaged file: say so, and exit non-zero
        print(f"warning: {args.source} ended after {summary['frames']} of the {summary['expected_frames']} frames "
              f"its header announces (truncated or damaged file); the outputs cover the frames read",
              file=sys.stderr)
        return EXIT_INCOMPLETE
    if "min_face_too_large" in summary:  # a folder's images of many sizes: the others were searched
        print(f"warning: --min-face {args.min_face} is larger than {summary['min_face_too_large']} of the "
              f"{summary['frames']} images (their shorter side): no face could be found in them", file=sys.stderr)
    skipped = source.skipped
    if skipped:  # broken images in a folder: the others were processed, the broken ones are named
        names = "; ".join(f"{path} ({why})" for path, why in skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
        print(f"warning: {len(skipped)} of {len(source.files)} images could not be used and were skipped: {names}",
              file=sys.stderr)
        return EXIT_INCOMPLETE
    return 0


# ---------------------------------------------------------------- benchmark helpers (stages.bench)


def make_benchmark_video(path: Path, frames: int = 120, size: tuple[int, int] = (640, 480)) -> Path:
    """A 640x480 video of a real face (matplotlib's grace_hopper.jpg) drifting across the frame."""
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        face = cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR)
    face = cv2.resize(face, (200, 250))
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), BENCH_VIDEO_FPS, size)
    for i in range(frames):
        canvas = np.full((h, w, 3), 90, np.uint8)
        x = int(40 + (w - 280) * (0.5 + 0.5 * np.sin(i / 15)))
        canvas[100:350, x:x + 200] = face
        writer.write(canvas)
    writer.release()
    return path


def benchmark_pipeline(classifier, video: Path, detect_every: int = DETECT_EVERY,
                       threads: int | None = INFERENCE_THREADS, detector: str = DEFAULT_DETECTOR) -> dict:
    """Median per-stage ms and fps of the default pipeline, headless, on a video file.

    Keys: frames, faces, tracks, decode_ms, detect_ms (frames that detect), detect_ms_amortized,
    classify_ms, draw_ms, process_ms (per frame), process_fps (decode excluded), end_to_end_fps.
    """
    pipeline = EmotionPipeline(classifier, make_detector(detector), detect_every)
    with open_source(str(video)) as source, torch_threads(threads):
        return run(pipeline, source, RunOptions())  # headless, nothing written


if __name__ == "__main__":
    raise SystemExit(main())
