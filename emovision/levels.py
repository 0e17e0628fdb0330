"""The one rule for the pixel levels of every image and face crop a user hands us.

Files (`emovision.images.read_image`) and arrays (face crops to `predict_proba`, whole images
to `analyze_still` and the app, crops to the serving API) reach uint8 here, by dtype:

- uint8: grey levels 0..255, as they are;
- uint16: 0..65535, the full 16-bit range (16-bit PNG and TIFF), scaled to 0..255 by 1/257
  (so 257 * v maps back to v); 12-bit data in uint16 must be scaled by the caller (x * 16);
- other integers: grey levels 0..255;
- float (and bool): 0..1, scikit-image's convention (float TIFF and EXR files are read so too);
- anything outside its range (a float image of 0..255, HDR values above 1, NaN) is refused
  with a ValueError saying what to pass, never cast: a cast reads 0..1 floats as near-black
  and wraps 300 to 44.

The dtype decides, never the values: a float array is 0..1 whether it is dark or bright.
"""
from __future__ import annotations

import numpy as np

MAX_LEVEL = 255
UINT16_TO_UINT8 = 257  # 65535 / 255: the 16-bit level of 8-bit level v is 257 * v
LEVEL_RULE = "uint8 0..255, uint16 0..65535 or float 0..1"


def to_uint8(pixels: np.ndarray, what: str = "image") -> np.ndarray:
    """`pixels` as uint8 grey levels by the rule of this module (its dtype says its range);
    a ValueError naming `what` for values outside that range or a dtype that holds no pixels."""
    levels = pixel_levels(pixels)
    if isinstance(levels, str):
        raise ValueError(f"{what}: {levels}")
    return levels


def pixel_levels(pixels: np.ndarray) -> np.ndarray | str:
    """`to_uint8` for readers that report rather than raise: the uint8 levels, or what is
    wrong with `pixels`."""
    if pixels.dtype == np.uint8:
        return pixels
    kind = pixels.dtype.kind
    if kind not in "biuf":
        return f"pixels must be {LEVEL_RULE}, got {pixels.dtype}"
    if kind == "b":
        return pixels.astype(np.uint8) * np.uint8(MAX_LEVEL)
    if not pixels.size:
        return pixels.astype(np.uint8)
    if pixels.dtype == np.uint16:
        return ((pixels.astype(np.uint32) + UINT16_TO_UINT8 // 2) // UINT16_TO_UINT8).astype(np.uint8)
    low, high = pixels.min(), pixels.max()
    if kind in "iu":
        if low < 0 or high > MAX_LEVEL:
            return f"pixels must be grey levels 0..255 (uint8), got {pixels.dtype} values in [{low}, {high}]"
        return pixels.astype(np.uint8)
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"float pixels must be 0..1, got {pixels.dtype} with NaN or infinite values"
    levels = np.rint(pixels.astype(np.float32) * MAX_LEVEL)  # within half a level of 0..1 rounds into 0..255
    if levels.min() < 0 or levels.max() > MAX_LEVEL:
        hint = "; for grey levels 0..255 pass uint8 (x.astype(np.uint8)) or x / 255" if 1 < high <= MAX_LEVEL else ""
        return f"float pixels must be 0..1, got {pixels.dtype} values in [{low:g}, {high:g}]{hint}"
    return levels.astype(np.uint8)
