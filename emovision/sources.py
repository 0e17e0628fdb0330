"""Frame sources: camera index, video file, image file, folder of images, or stream URL.

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
import threading
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from emovision.errors import SourceError
from emovision.images import content_kind, file_head, is_camera_raw, is_image_file, quiet_opencv, read_image

STREAM_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "tcp://")
LIVE_READ_TIMEOUT_S = 5.0
IMAGE_KINDS = "JPEG, PNG, BMP, WebP, TIFF, PNM, JPEG 2000, AVIF"

Frame = tuple[int, float, np.ndarray]  # (index, timestamp in seconds, BGR image)


class FrameSource:
    """Iterate (index, timestamp_s, frame_bgr); use as a context manager to release it."""

    fps: float = 30.0
    live: bool = False  # frames may be dropped to stay current
    stills: bool = False  # unrelated images: nothing to track or smooth between them
    files: tuple[Path, ...] = ()  # the files it reads (none for cameras and streams)
    skipped: tuple[tuple[Path, str], ...] | list[tuple[Path, str]] = ()  # (file, why) passed over: image folders
    frame_size: tuple[int, int] | None = None  # (width, height) of every frame, where known at open
    expected_frames: int = 0  # the frames a video's header announces (0: unknown, or live)

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
        self.fps = 1.0
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
            yield i, float(i), frame


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
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 30.0
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
    """A camera or stream: a reader thread keeps only the newest frame (a 1-slot buffer)."""

    live = True

    def __init__(self, cap: cv2.VideoCapture, name: str):
        self.cap, self.name = cap, name
        self.fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
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
        while not self._stop:
            ok, frame = self.cap.read()
            with self._cond:
                if not ok:
                    self._stop = True
                else:
                    self._frame, self._stamp, self._seq = frame, time.monotonic(), self._seq + 1
                self._cond.notify_all()

    def __iter__(self) -> Iterator[Frame]:
        seen, i = 0, 0
        while True:
            with self._cond:
                if not self._cond.wait_for(lambda: self._seq > seen or self._stop, LIVE_READ_TIMEOUT_S):
                    raise SourceError(f"{self.name}: no frame for {LIVE_READ_TIMEOUT_S:.0f}s")
                if self._seq == seen:  # stopped and nothing new
                    return
                self.dropped += self._seq - seen - 1
                frame, stamp, seen = self._frame, self._stamp, self._seq
            yield i, stamp - self._opened, frame
            i += 1

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)
        self.cap.release()


def open_source(spec: str | int) -> FrameSource:
    """Open a camera index ("0"), a video or image file, a folder of images (its subfolders too),
    or a stream URL."""
    spec = str(spec)
    if spec.isdigit() or spec.lower().startswith(STREAM_PREFIXES):
        return _open_live(spec)
    path = Path(spec)
    if path.is_dir():
        images = folder_images(path)
        if not images:
            raise SourceError(f"no images in folder {path} or its subfolders ({IMAGE_KINDS})")
        return ImageSource(images)
    if not path.is_file():
        raise SourceError(f"source not found: {spec} (a camera index, video, image, folder or stream URL)")
    # A camera's raw file is read as `predict` reads it (its first image; a CR3 is refused in one
    # line): the video reader took a NEF for a video of unknown length, where a face is never
    # confirmed (none found, exit 0), and a CR3 for a broken video.
    if is_image_file(path) or is_camera_raw(path, file_head(path)):
        image = read_image(path)  # the whole source: refused before anything starts, and kept
        if isinstance(image, str):
            raise SourceError(f"cannot read image {path}: {image}")
        return ImageSource([path], first=image)
    return VideoSource(path)


def folder_images(folder: Path) -> list[Path]:
    """The images in `folder` and its subfolders (`is_image_file`), sorted by path. Hidden files
    and folders are never photos: macOS leaves a ._NAME.jpg of metadata beside each photo copied
    to a USB stick or a network share, which was counted as a broken image. Links to folders
    are not followed (a link to a parent would loop). A folder that cannot be listed is one line."""
    def refuse(err: OSError):
        raise SourceError(f"cannot list folder {err.filename}: {err.strerror}")

    images = []
    for root, folders, files in os.walk(folder, onerror=refuse):
        folders[:] = [name for name in folders if not name.startswith(".")]
        images += [path for path in (Path(root) / name for name in files if not name.startswith("."))
                   if path.is_file() and is_image_file(path)]
    return sorted(images)


def _open_live(spec: str) -> LiveSource:
    with quiet_opencv():
        try:
            cap = cv2.VideoCapture(int(spec) if spec.isdigit() else spec)
        except (cv2.error, OverflowError, ValueError):  # an index beyond a C int: no such camera
            cap = cv2.VideoCapture()
        ok = cap.isOpened() and cap.read()[0]
    if not ok:
        cap.release()
        if spec.isdigit():
            raise SourceError(f"cannot open camera {spec}: no such device or it is busy; "
                              f"pass --source PATH for a video file, image or folder")
        raise SourceError(f"cannot open stream {spec}: check the URL and that the stream is reachable")
    return LiveSource(cap, f"camera {spec}" if spec.isdigit() else f"stream {spec}")
