"""Batched augmentation: random per sample, computed in a few tensor ops for the batch.

One affine matrix per sample (flip, rotation, scale, translation folded together) feeds a
single `affine_grid` + `grid_sample`; random erasing is a broadcast rectangle mask. No
per-sample Python, so it costs a few percent of a training step on CPU or GPU.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from emovision.config import AugmentParams

ERASE_AREA = (0.02, 0.2)  # fraction of the image an erased rectangle covers
ERASE_LOG_ASPECT = math.log(3.0)  # aspect ratio in [1/3, 3]


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def augment_batch(x: torch.Tensor, cfg: AugmentParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """x: float (B, C, H, W) -> augmented copy (same shape, dtype, device)."""
    b, _, h, w = x.shape
    geometric = cfg.hflip or cfg.rotation > 0 or cfg.scale > 0 or cfg.translate > 0
    if geometric:
        # Random numbers come from the (CPU) generator, then move: reproducible on any device.
        angle = torch.deg2rad(_uniform(b, -cfg.rotation, cfg.rotation, generator))
        scale = _uniform(b, 1 - cfg.scale, 1 + cfg.scale, generator)
        shift = _uniform(2 * b, -cfg.translate, cfg.translate, generator).view(b, 2) * 2  # grid units
        flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones(b)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([
            torch.stack([cos * flip, -sin, shift[:, 0]], 1),
            torch.stack([sin * flip, cos, shift[:, 1]], 1),
        ], 1).to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # 'border' repeats edge pixels: no black corners, which a CNN would learn as a cue.
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if cfg.erasing > 0:
        area = _uniform(b, *ERASE_AREA, generator) * h * w
        aspect = torch.exp(_uniform(b, -ERASE_LOG_ASPECT, ERASE_LOG_ASPECT, generator))
        eh = (area * aspect).sqrt().clamp(1, h)
        ew = (area / aspect).sqrt().clamp(1, w)
        top = torch.rand(b, generator=generator) * (h - eh)
        left = torch.rand(b, generator=generator) * (w - ew)
        on = torch.rand(b, generator=generator) < cfg.erasing
        rows = torch.arange(h).view(1, h, 1)
        cols = torch.arange(w).view(1, 1, w)
        mask = ((rows >= top.view(b, 1, 1)) & (rows < (top + eh).view(b, 1, 1))
                & (cols >= left.view(b, 1, 1)) & (cols < (left + ew).view(b, 1, 1)) & on.view(b, 1, 1))
        mask = mask.unsqueeze(1).to(x.device)
        noise = torch.randn(x.shape, generator=generator).to(device=x.device, dtype=x.dtype)
        x = torch.where(mask, noise, x)
    return x
