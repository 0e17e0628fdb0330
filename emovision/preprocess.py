"""The one face preprocessing function, shared by training and every inference path.

A face crop (grayscale uint8, any size; other dtypes by `emovision.levels.to_uint8`)
becomes a normalised float tensor of `INPUT_SIZE`. Its settings (`PreprocessConfig`) are stored inside every checkpoint and
registered model, so the live app cannot drift from what the model was trained on.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from emovision.levels import to_uint8

INPUT_SIZE = 48  # FER2013 faces are 48x48 grayscale
CLAHE_CLIP_LIMIT = 2.0
CLAHE_TILE_GRID = (4, 4)  # 12x12-pixel tiles on a 48x48 face


@dataclass(frozen=True)
class PreprocessConfig:
    size: int = INPUT_SIZE
    clahe: bool = False
    mean: float = 0.507
    std: float = 0.255

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessConfig":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def to_gray_crops(faces: np.ndarray | Sequence[np.ndarray], size: int = INPUT_SIZE) -> np.ndarray:
    """Face crops of any size (grayscale or BGR) -> (N, size, size) uint8. Levels by
    `emovision.levels.to_uint8`: uint8 0..255, uint16 0..65535, float 0..1.

    A bad batch is a ValueError naming the face: one (H, W) crop instead of a batch (it would
    be read as H crops of one row), an empty crop, levels outside the range of their dtype."""
    if isinstance(faces, np.ndarray) and faces.ndim == 2:
        raise ValueError(f"faces of shape {faces.shape} is one crop, not a batch: pass face[None] or [face]")
    if isinstance(faces, np.ndarray) and faces.ndim == 3 and faces.shape[1:] == (size, size):
        return np.ascontiguousarray(to_uint8(faces, "faces"))
    out = np.empty((len(faces), size, size), dtype=np.uint8)
    for i, face in enumerate(faces):
        face = np.asarray(face)
        if not (face.ndim == 2 or (face.ndim == 3 and face.shape[2] in (3, 4))) or not face.size:
            raise ValueError(f"face {i}: expected an H x W grey crop or H x W x 3 BGR, got shape {face.shape}")
        face = to_uint8(face, f"face {i}")
        if face.ndim == 3:
            face = cv2.cvtColor(face, cv2.COLOR_BGR2GRAY)
        if face.shape != (size, size):
            interp = cv2.INTER_AREA if min(face.shape) > size else cv2.INTER_LINEAR
            face = cv2.resize(face, (size, size), interpolation=interp)
        out[i] = face
    return out


def equalize(crops: np.ndarray) -> np.ndarray:
    """CLAHE on each (size, size) uint8 crop; per image, since contrast is local to a face."""
    clahe = cv2.createCLAHE(clipLimit=CLAHE_CLIP_LIMIT, tileGridSize=CLAHE_TILE_GRID)
    return np.stack([clahe.apply(c) for c in crops]) if len(crops) else crops


def prepare_pixels(crops: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """The uint8 stage of preprocessing (resize + optional CLAHE); done once per dataset."""
    crops = to_gray_crops(crops, cfg.size)
    return equalize(crops) if cfg.clahe else crops


def normalize(pixels: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """uint8 (N, H, W) or (N, 1, H, W) tensor -> float (N, 1, H, W), scaled and standardised."""
    if pixels.dim() == 3:
        pixels = pixels.unsqueeze(1)
    return (pixels.float() / 255.0 - cfg.mean) / cfg.std


def value_range(cfg: PreprocessConfig) -> tuple[float, float]:
    """What black (0) and white (255) become after `normalize`."""
    return (0.0 - cfg.mean) / cfg.std, (1.0 - cfg.mean) / cfg.std


def preprocess_faces(
    faces: np.ndarray | Sequence[np.ndarray], cfg: PreprocessConfig, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Face crops of any size -> model input (N, 1, size, size) float tensor on `device`."""
    pixels = torch.from_numpy(prepare_pixels(faces, cfg)).to(device)
    return normalize(pixels, cfg)
