"""Frame sources: camera index or device, video file, image file, folder of images (and its
subfolders), an image piped in, or stream URL.

Files are read in order, every frame. Live sources (cameras, streams) are read by a
thread that keeps only the newest frame, so a slow consumer sees the present, not a
growing backlog. An image that cannot be used (unreadable, truncated, not an image) is
refused when it is the source itself; in a folder it is skipped and listed in
`ImageSource.skipped`, and the app ends with a warning naming it and a non-zero exit, so one
broken photo neither costs the rest nor passes unnoticed (`emovision.images.read_image`:
a truncated JPEG is never classified grey-filled).
"""
from __future__ import annotations

import math
import os
import re
import stat
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, NoReturn

import cv2
import numpy as np

from emovision.errors import SourceError
from emovision.images import (FFMPEG_LOGLEVEL, FFMPEG_QUIET, FFMPEG_REASON_HINT, GIF_MAGIC, HEAD_BYTES, STDIN,
                              content_kind, decode_image, file_head, is_camera_raw, is_image_file, open_input,
                              quiet_opencv, read_image, stdin_file, stdin_unusable)

STREAM_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "tcp://")
LIVE_READ_TIMEOUT_S = 5.0
CAMERA_DEVICE = re.compile(r"/dev/video\d+")  # a V4L2 camera's device file, which OpenCV opens by name
IMAGE_KINDS = "JPEG, PNG, BMP, WebP, GIF, TIFF, PNM, JPEG 2000, AVIF"

Frame = tuple[int, float, np.ndarray]  # (index, timestamp in seconds, BGR image)
ASSUMED_FPS = 30.0  # the frame rate taken where a source gives none, or one outside SANE_FPS
SANE_FPS = (1.0, 240.0)  # a stream may report 0, 1000 or 90,000 (its clock rate) for its fps
STILL_SECONDS = 1.0  # an image source's step in time: one image a second in the window and the log


def frame_rate(reported: float | None) -> float:
    """The frame rate to take for a source that reports `reported` frames a second (OpenCV's
    CAP_PROP_FPS; None: it says nothing): that rate where it is sane (in SANE_FPS), else
    ASSUMED_FPS. The one rule for a source's rate, its frames' times when the backend gives none,
    the tracker's id lifetime and the `--output` video's rate: they disagreed on 0.5, nan and
    90,000 fps (the source kept them, the tracker took 30, the writer 30 for 0.5 and nan and
    90,000 for 90,000, which OpenCV's writer refuses)."""
    if reported is not None and math.isfinite(reported) and SANE_FPS[0] < reported <= SANE_FPS[1]:
        return float(reported)
    return ASSUMED_FPS


class FrameSource:
    """Iterate (index, timestamp_s, frame_bgr); use as a context manager to release it."""

    fps: float = ASSUMED_FPS  # frames a second, always a sane rate (`frame_rate`)
    live: bool = False  # frames may be dropped to stay current
    stills: bool = False  # unrelated images: nothing to track or smooth between them
    files: tuple[Path, ...] = ()  # the files it reads (none for cameras and streams)
    skipped: tuple[tuple[Path, str], ...] | list[tuple[Path, str]] = ()  # (file, why) passed over: image folders
    frame_size: tuple[int, int] | None = None  # (width, height) of every frame, where known at open
    expected_frames: int = 0  # the frames a video's header announces (0: unknown, or live)
    stalled: str | None = None  # why a camera or stream ended the run early: silent for a while, or gone

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ImageSource(FrameSource):
    """Image files in the given order, each read when it is reached; one that cannot be used
    is skipped (its index with it) and recorded in `skipped` as (path, why). `first`: the
    first image, already decoded (a single image is read up front to refuse it early, and
    once is enough)."""

    stills = True

    def __init__(self, paths: list[Path], first: np.ndarray | None = None):
        self.paths = paths
        self.files = tuple(paths)
        self.skipped: list[tuple[Path, str]] = []
        self._first = first
        if first is not None and len(paths) == 1:
            self.frame_size = first.shape[1::-1]

    def __iter__(self) -> Iterator[Frame]:
        first, self._first = self._first, None  # used once: a second pass reads the files
        for i, path in enumerate(self.paths):
            frame = first if i == 0 and first is not None else read_image(path)
            if isinstance(frame, str):
                self.skipped.append((path, frame))
                continue
            yield i, i * STILL_SECONDS, frame


class VideoSource(FrameSource):
    """A video file, read frame by frame with no drops; each frame at its own time
    (`frame_time`), so a phone's variable-frame-rate video is logged and played as recorded."""

    def __init__(self, path: Path):
        with quiet_opencv():
            self.cap = cv2.VideoCapture(str(path))
            ok = self.cap.isOpened()
            if ok:
                ok, first = self.cap.read()
        if not ok:
            opened = self.cap.isOpened()
            self.cap.release()
            if opened or content_kind(file_head(path)) == "video":
                raise SourceError(f"cannot read video {path}: no frames could be decoded (cut off, empty, audio "
                                  f"only, or a codec this OpenCV lacks)")
            raise SourceError(f"cannot open video {path}: not a video or image that OpenCV can read")
        self._first, self._first_ms = first, self.cap.get(cv2.CAP_PROP_POS_MSEC)
        self.files = (path,)
        self.frame_size = first.shape[1::-1]
        self.fps = frame_rate(self.cap.get(cv2.CAP_PROP_FPS))
        # The frame count the container announces (0 when unknown): a run that reads fewer
        # frames than this met a truncated or damaged file, and the app says so.
        self.expected_frames = max(0, int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        # A one-frame GIF (or video) is a still image: its face must be found in that frame
        # alone, not confirmed over frames that never come.
        self.stills = self.expected_frames == 1

    def __iter__(self) -> Iterator[Frame]:
        frame, ms, i, stamp = self._first, self._first_ms, 0, None
        while frame is not None:
            stamp = frame_time(ms, stamp, self.fps)
            yield i, stamp, frame
            ok, frame = self.cap.read()
            frame, ms = (frame if ok else None), self.cap.get(cv2.CAP_PROP_POS_MSEC)
            i += 1

    def close(self) -> None:
        self.cap.release()


def frame_time(ms: float, previous: float | None, fps: float) -> float:
    """A video frame's time in seconds: the backend's timestamp of it (CAP_PROP_POS_MSEC, `ms`)
    where that is sane, finite and after the `previous` frame's (the first: from 0); else one
    frame period after the previous frame, frame / fps from the start. Frame / fps alone drifts
    on a variable-frame-rate video: on one of 10 frames at 30 fps then 10 at 10 fps (15 fps on
    average), frame 19 was logged at 1.27 s, recorded at 1.23 s, and frame 10 at 0.67 s for 0.33."""
    t = ms / 1000
    if previous is None:
        return t if math.isfinite(t) and t >= 0 else 0.0
    return t if math.isfinite(t) and t > previous else previous + 1 / fps


class LiveSource(FrameSource):
    """A camera or stream: a reader thread keeps only the newest frame (a 1-slot buffer).
    `camera`: a device, whose failed read means it is gone (a stream may simply end)."""

    live = True

    def __init__(self, cap: cv2.VideoCapture, name: str, camera: bool = False):
        self.cap, self.name, self.camera = cap, name, camera
        self.fps = frame_rate(cap.get(cv2.CAP_PROP_FPS))
        size = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.frame_size = size if min(size) > 0 else None
        self._frame: np.ndarray | None = None
        self._stamp = 0.0
        self._seq = 0  # frames read by the thread
        self._opened = time.monotonic()
        self.dropped = 0  # frames replaced before the consumer took them
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while not self._stop:
                ok, frame = self.cap.read()
                with self._cond:
                    if not ok:
                        if self.camera and not self._stop:  # not closed by us: unplugged, or taken
                            self.stalled = f"{self.name} stopped giving frames (unplugged, or taken by another program)"
                        self._stop = True
                    else:
                        self._frame, self._stamp, self._seq = frame, time.monotonic(), self._seq + 1
                    self._cond.notify_all()
        finally:
            # released here, by the thread that reads it: close() released it under a read still
            # waiting on a stream that had stopped sending, and the process crashed (SIGSEGV) when
            # that read returned
            self.cap.release()

    def __iter__(self) -> Iterator[Frame]:
        seen, i = 0, 0
        while True:
            with self._cond:
                if not self._cond.wait_for(lambda: self._seq > seen or self._stop, LIVE_READ_TIMEOUT_S):
                    # the end of the source, as a video's end is: the frames processed are kept
                    self.stalled = f"{self.name} sent no frame for {LIVE_READ_TIMEOUT_S:g} s"
                    return
                if self._seq == seen:  # stopped and nothing new
                    return
                self.dropped += self._seq - seen - 1
                frame, stamp, seen = self._frame, self._stamp, self._seq
            yield i, stamp - self._opened, frame
            i += 1

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)  # the thread releases the capture once its read returns


def open_source(spec: str | int) -> FrameSource:
    """Open a camera index ("0") or device (/dev/video0), a video or image file, a folder of
    images (its subfolders too), an image piped in ("-" or a FIFO), or a stream URL."""
    spec = str(spec)
    if spec.isdigit() or spec.lower().startswith(STREAM_PREFIXES):
        return _open_live(spec)
    if spec == STDIN and (redirected := stdin_file()):
        spec = redirected  # a file redirected in (`< clip.mp4`), not a pipe: read as that file, a video too
    path = Path(spec)
    if spec == STDIN or is_kind(path, stat.S_ISFIFO):
        return _open_pipe(spec, path)
    if CAMERA_DEVICE.fullmatch(spec) or is_kind(path, stat.S_ISCHR):
        return _open_live(spec)
    try:
        path.stat()
    except OSError as err:
        if spec.startswith("-") and spec[1:].isdigit():
            why = f"no camera {spec}: camera indexes start at 0 (0 is the first camera)"
        elif isinstance(err, FileNotFoundError) and path.is_symlink():
            why = f"cannot read {spec}: a symbolic link to {os.readlink(path)}, which does not exist"
        elif isinstance(err, FileNotFoundError):
            why = f"source not found: {spec} (a camera index, video, image, folder or stream URL)"
        else:  # a symlink loop, a folder on the way that cannot be entered
            why = f"cannot read {spec}: {err.strerror or type(err).__name__}"
        raise SourceError(why) from None
    if path.is_dir():
        images = folder_images(path)
        if not images:
            raise SourceError(f"no images in folder {path} or its subfolders ({IMAGE_KINDS})")
        return ImageSource(images)
    if not path.is_file():
        raise SourceError(f"cannot read {spec}: not a file, folder, camera or pipe")
    # A camera's raw file is read as `predict` reads it (its first image; a CR3 is refused in one
    # line): the video reader took a NEF for a video of unknown length, where a face is never
    # confirmed (none found, exit 0), and a CR3 for a broken video.
    if is_image_file(path) or is_camera_raw(path, file_head(path)):
        image = read_image(path)  # the whole source: refused before anything starts, and kept
        if isinstance(image, str):
            raise SourceError(f"cannot read image {path}: {image}")
        return ImageSource([path], first=image)
    return VideoSource(path)


def is_kind(path: Path, test: Callable[[int], bool]) -> bool:
    """Whether `path` exists and its type passes `test` (stat.S_ISFIFO, S_ISCHR...)."""
    try:
        return test(path.stat().st_mode)
    except OSError:
        return False


def folder_images(folder: Path) -> list[Path]:
    """The images in `folder` and its subfolders (`is_image_file`, and GIFs: a still each, its
    first frame, as `predict` reads one; they were passed over), sorted by path. Hidden files
    and folders are never photos: macOS leaves a ._NAME.jpg of metadata beside each photo copied
    to a USB stick or a network share, which was counted as a broken image. Links to folders
    are not followed (a link to a parent would loop). A folder that cannot be listed is one line."""
    def refuse(err: OSError) -> NoReturn:
        raise SourceError(f"cannot list folder {err.filename}: {err.strerror}")

    images = []
    for root, folders, files in os.walk(folder, onerror=refuse):
        folders[:] = [name for name in folders if not name.startswith(".")]
        images += [path for path in (Path(root) / name for name in files if not name.startswith("."))
                   if path.is_file() and (is_image_file(path) or file_head(path).startswith(GIF_MAGIC))]
    return sorted(images)


def _open_pipe(spec: str, path: Path) -> ImageSource:
    """An image piped in ("-": standard input, or a FIFO such as bash's <(curl -s URL)), read
    whole as `predict` reads it (a GIF too: its first frame, as in a folder). A video is refused
    in one line: OpenCV's video reader needs a file (an MP4's index is at its end), and whether a
    pipe is a live feed or a file cannot be told."""
    if spec == STDIN and (why := stdin_unusable()):
        raise SourceError(f"--source -: {why}")
    try:
        with open_input(path) as pipe:
            head = pipe.read(HEAD_BYTES)  # enough to tell an image (`content_kind`); a video is not read on
            if not head:
                raise SourceError(f"cannot read {spec}: nothing came through the pipe (it is empty)")
            if content_kind(head) != "image" and not head.startswith(GIF_MAGIC):  # a GIF: its first frame
                raise SourceError(f"cannot read {spec}: a pipe, which the app reads only for an image; save a "
                                  f"video to a file and pass that (a camera or stream: its index or URL)")
            data = head + pipe.read()
    except OSError as err:
        raise SourceError(f"cannot read {spec}: {err.strerror or type(err).__name__}") from None
    image = decode_image(data)
    if isinstance(image, str):
        raise SourceError(f"cannot read image {spec}: {image}")
    return ImageSource([path], first=image)


def _open_live(spec: str) -> LiveSource:
    with quiet_opencv():
        try:
            cap = cv2.VideoCapture(int(spec) if spec.isdigit() else spec)
        except (cv2.error, OverflowError, ValueError):  # an index beyond a C int: no such camera
            cap = cv2.VideoCapture()
        ok = cap.isOpened() and cap.read()[0]
    camera = not spec.lower().startswith(STREAM_PREFIXES)  # an index or a device file
    if not ok:
        cap.release()
        if camera:
            raise SourceError(f"cannot open camera {spec}: no such device or it is busy; "
                              f"pass --source PATH for a video file, image or folder")
        # FFmpeg's reason (401 Unauthorized, refused, not found) is silenced with its noise: say how to see it
        hint = f" ({FFMPEG_REASON_HINT})" if os.environ.get(FFMPEG_LOGLEVEL) == FFMPEG_QUIET else ""
        raise SourceError(f"cannot open stream {spec}: check the URL and that the stream is reachable{hint}")
    # FFmpeg opens an image's URL as a stream of one frame, which the read above took: the app then
    # processed 0 frames and exited 0 in silence. A photo is read by the one image reader, from a pipe.
    if not camera and cap.get(cv2.CAP_PROP_FRAME_COUNT) == 1:
        cap.release()
        raise SourceError(f"stream {spec} holds a single image, not a video: for a photo, --source <(curl -s URL)")
    return LiveSource(cap, f"camera {spec}" if camera else f"stream {spec}", camera=camera)
