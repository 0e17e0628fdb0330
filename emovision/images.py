"""Reading image files: the one reader for prepare, predict, the app's image sources and the
serving API's images.

`read_image` reads a file (a pipe too: `read_bytes`), `decode_image` the same from bytes
(the serving API's base64 images). Both decode 16-bit and float files at their own depth and
bring every image to uint8 by the one level rule, `emovision.levels.to_uint8` (uint16
0..65535, float 0..1), so a 16-bit PNG or a float TIFF reads as the 8-bit photo it holds, not
as a near-black one.

`cv2.imread` decodes a truncated JPEG with the missing rows grey and says nothing (libjpeg
prints a warning to the terminal at most), so a cut-off download or a half-copied photo
would be classified as if it were whole. `decode_image` names such a JPEG instead (recognised
by its bytes, whatever the file's name): `jpeg_truncated` walks its segments to the image's
end-of-image marker. Bytes after that marker are not the image's: phones append a video to a
"motion photo" (Samsung, Google Pixel), cameras a second picture (MPF), Samsung a trailer of
its own, and their bytes hold FFDA and FFD9 at random (looking for the last FFD9 after the
last FFDA in the whole file refused half of such photos as truncated). `cv2.imdecode` refuses
what it cannot decode where `imread` would guess.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import cv2
import numpy as np

from emovision.levels import pixel_levels

# What the app reads as a still image (a folder's images, a single --source file). GIF is left
# to the video reader, which plays an animated GIF; a one-frame GIF is a still there too.
# HEIC is listed to be refused in one line: OpenCV cannot decode it.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pnm",
                    ".jp2", ".avif", ".exr", ".heic", ".heif")
JPEG_START = b"\xff\xd8\xff"  # start-of-image, then the first segment's marker
JPEG_START_OF_SCAN, JPEG_END = 0xDA, 0xD9
# ISO base media files (HEIC, AVIF, MP4) name their brand at bytes 8..12, after "ftyp".
HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")
# Canon's CR3 raw photos are ISO base media files too (brand "crx "): a camera's raw file, which
# the video signatures below took for a video.
RAW_BRANDS = (b"crx ",)
EXR_MAGIC = b"\x76\x2f\x31\x01"
# How the still images of IMAGE_EXTENSIONS begin, so that one is read as a photo whatever its name:
# browsers save JPEGs as .jfif, older tools as .jpe, and a photo named .mp4 or with no extension
# went to the video reader, where a face must be confirmed over frames that never come (none was
# found). GIF is left out, as from IMAGE_EXTENSIONS. (prefix, offset) pairs. A BMP's "BM" counts
# with its header's reserved zeros (a text file may start "BM"); a TIFF only named as one or not
# named (`is_image_file`): camera raw files (NEF, CR2, DNG, ARW) are TIFF inside (`is_camera_raw`).
TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
IMAGE_SIGNATURES = ((JPEG_START, 0), (b"\x89PNG\r\n\x1a\n", 0), (b"BM", 0), *((magic, 0) for magic in TIFF_MAGIC),
                    (b"WEBP", 8), (b"\x00\x00\x00\x0cjP  ", 0), (b"\xffO\xffQ", 0), (EXR_MAGIC, 0),
                    *((b"ftyp" + brand, 4) for brand in (*HEIF_BRANDS, b"avif", b"avis")))
# How videos begin (MP4/MOV/3GP after their image brands above, Matroska/WebM, AVI, FLV): a video
# named .jpg is played, and one given to predict is named as a video, not "unreadable".
VIDEO_SIGNATURES = ((b"ftyp", 4), (b"moov", 4), (b"mdat", 4), (b"wide", 4), (b"\x1aE\xdf\xa3", 0), (b"AVI ", 8),
                    (b"FLV\x01", 0))


@contextlib.contextmanager
def quiet_opencv():
    """Silence OpenCV and FFmpeg while opening: a missing camera, a broken file or an EXR with
    the codec off makes them print lines of their own; our one line says it once."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def is_image_file(path: Path) -> bool:
    """Whether `path` is a still image for the app: by its first bytes when they say an image
    (IMAGE_SIGNATURES) or a video (VIDEO_SIGNATURES), whatever its name (but not a camera's raw
    file, `is_camera_raw`); else by its name (IMAGE_EXTENSIONS), so that a broken photo is
    refused as an image."""
    path = Path(path)
    head = file_head(path)
    if is_camera_raw(path, head):
        return False  # its first image is a thumbnail, or one OpenCV cannot decode
    kind = content_kind(head)
    return kind == "image" if kind else path.suffix.lower() in IMAGE_EXTENSIONS


def is_camera_raw(path: Path, head: bytes) -> bool:
    """Whether a file (`head`: its first bytes) is a camera's raw photo: a Canon CR3 by its brand
    (RAW_BRANDS), or a TIFF named other than as an image (NEF, CR2, DNG, ARW are TIFF inside)."""
    suffix = Path(path).suffix.lower()
    return content_kind(head) == "raw" or (head[:4] in TIFF_MAGIC and bool(suffix) and suffix not in IMAGE_EXTENSIONS)


def file_head(path: Path) -> bytes:
    """A file's first 16 bytes, what `content_kind` reads (empty when it cannot be read)."""
    try:
        with Path(path).open("rb") as f:
            return f.read(16)
    except OSError:
        return b""


def content_kind(head: bytes) -> str | None:
    """"image", "video" or "raw" (a Canon CR3, RAW_BRANDS) by a file's first bytes
    (IMAGE_SIGNATURES, VIDEO_SIGNATURES), or None."""
    if head[:2] == b"BM" and head[6:10] != bytes(4):  # not a BMP: its header's reserved fields are 0
        return None
    if head[4:8] == b"ftyp" and head[8:12] in RAW_BRANDS:
        return "raw"
    if any(head[at:at + len(sig)] == sig for sig, at in IMAGE_SIGNATURES) or (
            len(head) > 2 and head[:1] == b"P" and head[1:2] in b"123456" and head[2:3].isspace()):  # PBM/PGM/PPM
        return "image"
    return "video" if any(head[at:at + len(sig)] == sig for sig, at in VIDEO_SIGNATURES) else None


def decode_image(data: np.ndarray | bytes, flags: int = cv2.IMREAD_COLOR) -> np.ndarray | str:
    """Encoded image bytes -> uint8 image (`flags` as for cv2.imread: colour as BGR, or
    grayscale), or why they are unusable. 16-bit and float files keep their depth while
    decoding and reach uint8 by `emovision.levels.to_uint8`; EXIF orientation is applied."""
    data = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if not data.size:
        return "empty file"
    if data[4:8].tobytes() == b"ftyp" and data[8:12].tobytes() in HEIF_BRANDS:
        return "a HEIC/HEIF image, which OpenCV cannot decode: convert it to JPEG or PNG"
    kind = content_kind(data[:16].tobytes())
    if kind == "raw":
        return "a Canon CR3 camera raw file, which OpenCV cannot decode: convert it to JPEG or PNG"
    if data[:3].tobytes() == JPEG_START and jpeg_truncated(data):
        return "truncated JPEG (no end-of-image marker after the image data)"
    exr = data[:4].tobytes() == EXR_MAGIC
    try:  # OpenCV warns, then raises, for OpenEXR while its codec is off: our line says it once
        with quiet_opencv() if exr else contextlib.nullcontext():
            image = cv2.imdecode(data, flags | cv2.IMREAD_ANYDEPTH)
    except cv2.error as err:
        if exr:
            return ("an OpenEXR image, which OpenCV reads only with OPENCV_IO_ENABLE_OPENEXR=1 in the "
                    "environment (off by default for safety); convert it to 16-bit PNG or TIFF")
        if "CV_IO_MAX_IMAGE" in str(err):  # checked on the header's size, before any allocation
            return "image too large for OpenCV to decode (CV_IO_MAX_IMAGE_PIXELS: 2**30 pixels by default)"
        return f"unreadable image file ({err.err})"
    if image is None:
        if kind == "video":
            return "a video, not an image (python -m emovision.webcam --source VIDEO reads videos)"
        return "unreadable image file"
    return pixel_levels(image)


def read_image(path: Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray | str:
    """The decoded uint8 image (`decode_image`), or why it is unusable: missing, a folder,
    unreadable, a truncated JPEG, or not an image OpenCV can decode."""
    data = read_bytes(path)
    return data if isinstance(data, str) else decode_image(data, flags)


def read_bytes(path: Path) -> bytes | str:
    """A file's bytes, or why they cannot be read (missing, a folder, unreadable). Read in one
    stream, so a pipe or FIFO (`predict <(cat photo.jpg)`, /dev/fd/63) reads like a file:
    np.fromfile, used before, asks for the file's position and failed on it. A pipe's bytes
    come once; a second read of it is empty."""
    if Path(path).is_dir():
        return "a folder, not an image file"
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        return f"unreadable image file ({err.strerror or type(err).__name__})"


def jpeg_truncated(data: np.ndarray) -> bool:
    """Whether a JPEG's bytes (uint8, from its start-of-image marker) end before its image's
    end-of-image marker. Segments are skipped by their lengths (an EXIF thumbnail's own markers
    are inside one); after a start-of-scan the entropy-coded data runs to the next marker, found
    as 0xFF followed by anything but 0x00 (an escaped 0xFF), a restart marker or another 0xFF.
    Whatever follows the end-of-image marker is ignored. A malformed file is left to the decoder."""
    n, pos = len(data), 2
    markers = None  # where markers may start in entropy-coded data, found once when first needed
    while pos + 1 < n:
        if data[pos] != 0xFF:
            return False  # not a marker where one must be: malformed, for the decoder to refuse
        marker = int(data[pos + 1])
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == JPEG_END:
            return False
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        if pos + 3 >= n:
            return True
        pos += 2 + (int(data[pos + 2]) << 8 | int(data[pos + 3]))
        if marker == JPEG_START_OF_SCAN:
            if markers is None:
                ff = np.flatnonzero(data[:-1] == 0xFF)
                after = data[ff + 1]
                markers = ff[(after != 0) & (after != 0xFF) & ((after < 0xD0) | (after > 0xD7))]
            i = np.searchsorted(markers, pos)
            if i == len(markers):
                return True  # the image data runs to the end of the file
            pos = int(markers[i])
    return True
