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

A transparent image (PNG, WebP, GIF, TIFF or AVIF with an alpha channel or a transparent colour) is
read as a viewer shows it: composited over white (`decode_pixels`). OpenCV's colour decode drops the alpha
and keeps whatever RGB lies under it: black, noise, or a face an editor erased (found, though
nobody sees it); and a black image whose alpha draws the picture read as all black.
"""
from __future__ import annotations

import contextlib
import os
import re
import stat
import sys
import threading
from pathlib import Path
from typing import BinaryIO, Iterator

import cv2
import numpy as np

from emovision.levels import pixel_levels

# What the app reads as a still image (a folder's images, a single --source file). A GIF given as
# --source is left to the video reader, which plays an animated GIF (a one-frame GIF is a still
# there too); in a folder of stills a GIF is one more still, its first frame (`GIF_MAGIC`).
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
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GIF_MAGIC = b"GIF8"  # GIF87a, GIF89a
PNG_ALPHA_TYPES = (4, 6)  # IHDR colour types with an alpha channel: grey + alpha, RGBA
PNG_COLOUR_TYPE_AT = 25  # after the magic (8), IHDR's length and type (8), width, height, bit depth (9)
# A WebP's alpha flag: VP8X (extended) sets bit 4 of its flags byte; VP8L (lossless) bit 28 of the
# 32 bits after its signature byte (14 bits width, 14 height, then alpha_is_used). Lossy VP8 has none.
WEBP_VP8X_FLAGS_AT, WEBP_VP8L_ALPHA_AT, WEBP_ALPHA_BIT = 20, 24, 0x10
# How the still images of IMAGE_EXTENSIONS begin, so that one is read as a photo whatever its name:
# browsers save JPEGs as .jfif, older tools as .jpe, and a photo named .mp4 or with no extension
# went to the video reader, where a face must be confirmed over frames that never come (none was
# found). GIF is left out, as from IMAGE_EXTENSIONS. (prefix, offset) pairs. A BMP's "BM" counts
# with its header's reserved zeros (a text file may start "BM"); a TIFF only named as one or not
# named (`is_image_file`): camera raw files (NEF, CR2, DNG, ARW) are TIFF inside (`is_camera_raw`).
TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
IMAGE_SIGNATURES = ((JPEG_START, 0), (PNG_MAGIC, 0), (b"BM", 0), *((magic, 0) for magic in TIFF_MAGIC),
                    (b"WEBP", 8), (b"\x00\x00\x00\x0cjP  ", 0), (b"\xffO\xffQ", 0), (EXR_MAGIC, 0),
                    *((b"ftyp" + brand, 4) for brand in (*HEIF_BRANDS, b"avif", b"avis")))
# How videos begin (MP4/MOV/3GP after their image brands above, Matroska/WebM, AVI, FLV): a video
# named .jpg is played, and one given to predict is named as a video, not "unreadable".
VIDEO_SIGNATURES = ((b"ftyp", 4), (b"moov", 4), (b"mdat", 4), (b"wide", 4), (b"\x1aE\xdf\xa3", 0), (b"AVI ", 8),
                    (b"FLV\x01", 0))
# What each EXIF orientation (1..8) asks of the stored image to show it upright (numpy views): OpenCV
# turns its colour decode so, but not the decode that keeps the alpha (`decode_pixels`).
EXIF_TURNS = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
              5: lambda a: a.swapaxes(0, 1), 6: lambda a: a.swapaxes(0, 1)[:, ::-1],
              7: lambda a: a.swapaxes(0, 1)[::-1, ::-1], 8: lambda a: a.swapaxes(0, 1)[::-1]}
EXIF_ORIENTATION_TAG = 0x0112
# A TIFF with an alpha channel lists it among its ExtraSamples; an AVIF keeps its alpha as an auxiliary
# image, named by this URN in the file's item properties. OpenCV turns a TIFF by its orientation in
# every decode, and an AVIF in none (its irot/imir boxes are ignored), so neither is turned here.
TIFF_EXTRA_SAMPLES_TAG = 0x0152
# ExtraSamples 1 and 2 are alpha (1: colours stored multiplied by it); 0 is another channel (infrared...)
TIFF_ASSOCIATED_ALPHA, TIFF_UNASSOCIATED_ALPHA = 1, 2
AVIF_ALPHA_URN = b"urn:mpeg:mpegB:cicp:systems:auxiliary:alpha"
AVIF_BRANDS = (b"avif", b"avis")
# OpenCV decodes a 10- or 12-bit AVIF at its depth as uint16 at its own range (0..1023, 0..4095), which
# the level rule (uint16: 0..65535) read as near black; its bit depth is in its pixi property (box: size,
# type, version and flags, a channel count, then bits per channel), within its meta box at the start.
AVIF_DEPTH_BOX, AVIF_DEPTH_AT, AVIF_META_BYTES = b"pixi", 9, 1 << 16
# A PGM or PPM names its white, maxval, after its width and height (comments may come between): OpenCV
# keeps the stored values, so one of 10 or 12 bits (maxval 1023, 4095) read near black as well.
PNM_GREY_COLOUR = (b"P2", b"P3", b"P5", b"P6")
PNM_HEADER_BYTES = 512


STDIN = "-"  # the path that names standard input, as for cat and most Unix tools
HEAD_BYTES = 16  # the first bytes that tell an image from a video (`content_kind`)
# FFmpeg prints its own errors (`moov atom not found` for a cut-off MP4) on the terminal beside our
# one line; OpenCV's log level does not reach it. OpenCV reads this once, when it first opens a video
# in the process: 8 is AV_LOG_FATAL. A user who wants FFmpeg's messages sets it (to 32, or 48) first.
FFMPEG_LOGLEVEL, FFMPEG_QUIET = "OPENCV_FFMPEG_LOGLEVEL", "8"
os.environ.setdefault(FFMPEG_LOGLEVEL, FFMPEG_QUIET)
# Where only FFmpeg knows why (a stream's 'HTTP error 401 Unauthorized', 'Connection refused': warning
# level, 24), the one line says how to see it.
FFMPEG_REASON_HINT = f"{FFMPEG_LOGLEVEL}=24 in the environment shows FFmpeg's reason"


_quiet_lock = threading.Lock()
_quiet: list = []  # the level to restore, while any thread is inside quiet_opencv


@contextlib.contextmanager
def quiet_opencv():
    """Silence OpenCV and FFmpeg while opening: a missing camera, a broken file or an EXR with
    the codec off makes them print lines of their own; our one line says it once. OpenCV's level
    is one per process: threads decoding at once (a server's requests, the app's reader) share one
    silence, and the last to leave restores the level the first found."""
    with _quiet_lock:
        if not _quiet:
            _quiet.append(cv2.utils.logging.getLogLevel())
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        _quiet.append(None)
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet.pop()
            if len(_quiet) == 1:
                cv2.utils.logging.setLogLevel(_quiet.pop())


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
    """A file's first HEAD_BYTES, what `content_kind` reads (empty when it cannot be read)."""
    try:
        with Path(path).open("rb") as f:
            return f.read(HEAD_BYTES)
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
    kind = content_kind(data[:HEAD_BYTES].tobytes())
    if kind == "raw":
        return "a Canon CR3 camera raw file, which OpenCV cannot decode: convert it to JPEG or PNG"
    if data[:3].tobytes() == JPEG_START and jpeg_truncated(data):
        return "truncated JPEG (no end-of-image marker after the image data)"
    if data[:8].tobytes() == PNG_MAGIC and png_truncated(data):  # libpng prints its own error line for it
        return "truncated PNG (its data ends before its IEND chunk)"
    exr = data[:4].tobytes() == EXR_MAGIC
    try:  # OpenCV warns, then raises, for OpenEXR while its codec is off, and logs a broken TIFF's
        # libtiff errors over several lines: our line says it once
        with quiet_opencv():
            image = decode_pixels(data, flags)
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


def may_have_alpha(data: np.ndarray) -> bool:
    """Whether encoded image bytes may hold transparency, by their header: a PNG with an alpha
    channel or a tRNS chunk (a palette's or a colour's transparency), a WebP whose header flags
    alpha, a GIF (a transparent colour), a TIFF whose extra sample is alpha or an AVIF with an alpha image.
    JPEG, BMP and the rest are read without alpha."""
    head = data[:32].tobytes()
    if head[:4] in TIFF_MAGIC:
        return tiff_tag(data, TIFF_EXTRA_SAMPLES_TAG) in (TIFF_ASSOCIATED_ALPHA, TIFF_UNASSOCIATED_ALPHA)
    if head[4:8] == b"ftyp" and head[8:12] in AVIF_BRANDS:
        return AVIF_ALPHA_URN in data.tobytes()
    if head.startswith(PNG_MAGIC):
        return len(head) > PNG_COLOUR_TYPE_AT and head[PNG_COLOUR_TYPE_AT] in PNG_ALPHA_TYPES or png_has_trns(data)
    if head[8:12] == b"WEBP":
        at = {b"VP8X": WEBP_VP8X_FLAGS_AT, b"VP8L": WEBP_VP8L_ALPHA_AT}.get(head[12:16])
        return at is not None and len(head) > at and bool(head[at] & WEBP_ALPHA_BIT)
    return head.startswith(GIF_MAGIC)


def png_has_trns(data: np.ndarray) -> bool:
    """Whether a PNG has a tRNS chunk (transparency without an alpha channel); it comes before
    the image data."""
    for kind, _ in chunks(data):
        if kind in (b"tRNS", b"IDAT"):
            return kind == b"tRNS"
    return False


def chunks(data: np.ndarray) -> Iterator[tuple[bytes, np.ndarray]]:
    """(type, bytes) of each chunk of a PNG, or of a WebP's RIFF container, walked by their
    lengths (a 50 MP PNG's image data is skipped, not read); stops at a PNG's IEND (given last)
    or a cut."""
    png = data[:8].tobytes() == PNG_MAGIC
    pos, order = (8, "big") if png else (12, "little")
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos:pos + 4].tobytes() if png else data[pos + 4:pos + 8].tobytes(), order)
        kind = data[pos + 4:pos + 8].tobytes() if png else data[pos:pos + 4].tobytes()
        yield kind, data[pos + 8:pos + 8 + size]
        if kind == b"IEND":
            return
        pos += 8 + size + (4 if png else size % 2)  # a PNG chunk ends in a CRC, a RIFF one is padded to even


def png_truncated(data: np.ndarray) -> bool:
    """Whether a PNG's bytes (from its magic) end before its IEND chunk: cut off in a download or
    a copy. libpng prints `libpng error: ...` for such a file where no log level reaches it."""
    return not any(kind == b"IEND" for kind, _ in chunks(data))


def exif_orientation(data: np.ndarray) -> int:
    """The EXIF orientation (1..8) a PNG (eXIf chunk) or WebP (EXIF chunk) carries; 1 if none
    (and for other files: OpenCV turns a TIFF itself, an AVIF never)."""
    if not (data[:8].tobytes() == PNG_MAGIC or data[8:12].tobytes() == b"WEBP"):
        return 1
    exif = next((body.tobytes() for kind, body in chunks(data) if kind in (b"eXIf", b"EXIF")), b"")
    orientation = tiff_tag(exif.removeprefix(b"Exif\x00\x00"), EXIF_ORIENTATION_TAG)  # some keep JPEG's APP1 prefix
    return orientation if orientation in EXIF_TURNS else 1


def tiff_tag(tiff: np.ndarray | bytes, tag: int) -> int | None:
    """The first value of `tag` in a TIFF header's first directory (a TIFF file, or EXIF, which is
    one), or None where it is absent or the header is not a TIFF's."""
    order = {b"II": "little", b"MM": "big"}.get(bytes(tiff[:2]))
    if order is None:
        return None

    def number(at: int, size: int) -> int:
        return int.from_bytes(bytes(tiff[at:at + size]), order)

    directory = number(4, 4)
    for entry in range(directory + 2, directory + 2 + 12 * number(directory, 2), 12):
        if number(entry, 2) == tag:
            return number(entry + 8, 2)
    return None


def decode_pixels(data: np.ndarray, flags: int) -> np.ndarray | None:
    """OpenCV's decode of image bytes at their depth (None where it cannot decode them); one
    that may be transparent (`may_have_alpha`) decoded with its alpha and shown over white,
    turned upright by its EXIF orientation as OpenCV turns the others."""
    if may_have_alpha(data):
        raw = full_range(cv2.imdecode(data, cv2.IMREAD_UNCHANGED), data)  # the alpha kept, but not turned by EXIF
        if raw is not None and raw.ndim == 3 and raw.shape[2] == 4:
            # OpenCV reads an 8-bit TIFF through libtiff's RGBA interface, which multiplies the colours
            # by the alpha; 16 bits come as stored
            premultiplied = data[:4].tobytes() in TIFF_MAGIC and (
                raw.dtype == np.uint8 or tiff_tag(data, TIFF_EXTRA_SAMPLES_TAG) == TIFF_ASSOCIATED_ALPHA)
            shown = np.ascontiguousarray(EXIF_TURNS[exif_orientation(data)](over_white(raw, premultiplied)))
            return cv2.cvtColor(shown, cv2.COLOR_BGR2GRAY) if flags == cv2.IMREAD_GRAYSCALE else shown
    return full_range(cv2.imdecode(data, flags | cv2.IMREAD_ANYDEPTH), data)


def full_range(image: np.ndarray | None, data: np.ndarray) -> np.ndarray | None:
    """A decode at the file's own range brought to its dtype's, so the one level rule reads it as the
    photo it is: a 10- or 12-bit AVIF (0..1023, 0..4095 in uint16), a PGM/PPM whose maxval is below
    its dtype's; any other decode as it is."""
    if image is None or image.dtype not in (np.uint8, np.uint16):
        return image
    white = np.iinfo(image.dtype).max
    top = white
    if data[8:12].tobytes() in AVIF_BRANDS and image.dtype == np.uint16:
        head = data[:AVIF_META_BYTES].tobytes()
        at = head.find(AVIF_DEPTH_BOX)
        top = (1 << head[at + AVIF_DEPTH_AT]) - 1 if 0 <= at < len(head) - AVIF_DEPTH_AT else white
    elif data[:2].tobytes() in PNM_GREY_COLOUR:
        fields = re.sub(rb"#[^\n]*", b" ", data[:PNM_HEADER_BYTES].tobytes()).split()
        top = int(fields[3]) if len(fields) > 3 and fields[3].isdigit() else white
    if not 0 < top < white:
        return image
    flat = image.reshape(image.shape[0], -1)  # one channel: a scalar scales only a Scalar's first
    return cv2.multiply(flat, white / top, dtype=cv2.CV_8U if white == 255 else cv2.CV_16U).reshape(image.shape)


def over_white(bgra: np.ndarray, premultiplied: bool = False) -> np.ndarray:
    """A BGRA image as a viewer shows it: composited by its alpha over white, at its depth
    (`premultiplied`: its colours are already multiplied by the alpha)."""
    white = np.iinfo(bgra.dtype).max if bgra.dtype.kind in "iu" else 1.0
    alpha = cv2.extractChannel(bgra, 3)
    if alpha.min() == white:  # opaque (a screenshot, a GIF): nothing to mix
        return cv2.cvtColor(bgra, cv2.COLOR_BGRA2BGR)
    alpha = alpha.astype(np.float32) / white
    bgr = cv2.cvtColor(bgra, cv2.COLOR_BGRA2BGR)
    if premultiplied:
        mixed = np.minimum(bgr + white * (1 - alpha[..., None]), white)  # a colour above its alpha: white
    elif bgra.dtype in (np.uint8, np.float32):  # OpenCV's blend, rounded: half numpy's time
        return cv2.blendLinear(bgr, np.full_like(bgr, white), alpha, 1 - alpha)
    else:
        mixed = bgr * alpha[..., None] + white * (1 - alpha[..., None])  # 16 bits
    return np.rint(mixed).astype(bgra.dtype) if bgra.dtype.kind in "iu" else mixed.astype(bgra.dtype)


def read_image(path: Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray | str:
    """The decoded uint8 image (`decode_image`), or why it is unusable: missing, a folder,
    unreadable, a truncated JPEG, or not an image OpenCV can decode."""
    data = read_bytes(path)
    return data if isinstance(data, str) else decode_image(data, flags)


def read_bytes(path: Path) -> bytes | str:
    """A file's bytes, or why they cannot be read (missing, a folder, unreadable); "-" is
    standard input (`STDIN`: `cat photo.jpg | predict -`). Read in one stream, so a pipe or FIFO
    (`predict <(cat photo.jpg)`, /dev/fd/63) reads like a file: np.fromfile, used before, asks
    for the file's position and failed on it. A pipe's bytes come once; a second read is empty."""
    if str(path) == STDIN and (why := stdin_unusable()):
        return why
    if Path(path).is_dir():
        return ("a folder, not an image file (name its images, FOLDER/*.jpg; python -m emovision.webcam "
                "--source FOLDER reads a folder and its subfolders)")
    try:
        with open_input(path) as f:
            return f.read()
    except OSError as err:
        return f"unreadable image file ({err.strerror or type(err).__name__})"


def stdin_unusable() -> str | None:
    """Why standard input cannot give an image, or None: closed (`<&-`; Python's sys.stdin is
    then None, which ended in an AttributeError traceback), or the terminal, where reading waits
    for the user to type bytes (`predict -` sat silent until Ctrl-D)."""
    if sys.stdin is None:
        return "nothing is piped in (standard input is closed)"
    if sys.stdin.isatty():
        return "nothing is piped in (standard input is the terminal)"
    return None


def stdin_file() -> str | None:
    """Standard input by name (/dev/fd/N) when it is a regular file redirected in (`< clip.mp4`),
    which OpenCV's video reader opens by name as it opens any file; else None (a pipe, a terminal)."""
    try:
        fd = sys.stdin.fileno()
        return f"/dev/fd/{fd}" if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (AttributeError, OSError, ValueError):  # closed (None), or not backed by a file descriptor
        return None


def open_input(path: Path) -> contextlib.AbstractContextManager[BinaryIO]:
    """`path` opened for reading bytes: standard input for "-" (left open when done)."""
    if str(path) == STDIN:
        return contextlib.nullcontext(sys.stdin.buffer)
    return open(path, "rb")


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
