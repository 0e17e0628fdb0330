"""Reading one image file: the one reader for prepare, predict and the app's image sources.

`cv2.imread` decodes a truncated JPEG with the missing rows grey and says nothing (libjpeg
prints a warning to the terminal at most), so a cut-off download or a half-copied photo
would be classified as if it were whole. `read_image` names such a file instead: the
JPEG's end-of-image marker must follow its last start-of-scan (inside entropy-coded data
0xFF is always escaped, so FFD9 there is the real end), and `cv2.imdecode` refuses what it
cannot decode where `imread` would guess.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

JPEG_EXTENSIONS = (".jpg", ".jpeg")
JPEG_START_OF_SCAN, JPEG_END = b"\xff\xda", b"\xff\xd9"


def read_image(path: Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray | str:
    """The decoded image (`flags` as for cv2.imread), or why it is unusable: missing or
    unreadable, a truncated JPEG, or not an image OpenCV can decode."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        return f"unreadable image file ({err.strerror or type(err).__name__})"
    if Path(path).suffix.lower() in JPEG_EXTENSIONS:
        raw = data.tobytes()
        if raw.rfind(JPEG_END) < raw.rfind(JPEG_START_OF_SCAN):
            return "truncated JPEG (no end-of-image marker after the image data)"
    image = cv2.imdecode(data, flags) if data.size else None
    return "unreadable image file" if image is None else image
