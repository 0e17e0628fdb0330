"""Reading image files: the one reader for prepare, predict, the app's image sources and the
serving API's images.

`read_image` reads a file, `decode_image` the same from bytes (the serving API's base64
images). Both decode 16-bit and float files at their own depth and bring every image to
uint8 by the one level rule, `emovision.levels.to_uint8` (uint16 0..65535, float 0..1), so a
16-bit PNG or a float TIFF reads as the 8-bit photo it holds, not as a near-black one.

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

from emovision.levels import pixel_levels

JPEG_EXTENSIONS = (".jpg", ".jpeg")
JPEG_START_OF_SCAN, JPEG_END = b"\xff\xda", b"\xff\xd9"


def decode_image(data: np.ndarray | bytes, flags: int = cv2.IMREAD_COLOR) -> np.ndarray | str:
    """Encoded image bytes -> uint8 image (`flags` as for cv2.imread: colour as BGR, or
    grayscale), or why they are unusable. 16-bit and float files keep their depth while
    decoding and reach uint8 by `emovision.levels.to_uint8`; EXIF orientation is applied."""
    data = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    image = cv2.imdecode(data, flags | cv2.IMREAD_ANYDEPTH) if data.size else None
    return "unreadable image file" if image is None else pixel_levels(image)


def read_image(path: Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray | str:
    """The decoded uint8 image (`decode_image`), or why it is unusable: missing,
    unreadable, a truncated JPEG, or not an image OpenCV can decode."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        return f"unreadable image file ({err.strerror or type(err).__name__})"
    if Path(path).suffix.lower() in JPEG_EXTENSIONS:
        raw = data.tobytes()
        if raw.rfind(JPEG_END) < raw.rfind(JPEG_START_OF_SCAN):
            return "truncated JPEG (no end-of-image marker after the image data)"
    return decode_image(data, flags)
