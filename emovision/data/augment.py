"""Batched augmentation: random per sample, computed for the whole batch in a few tensor ops.

Flip, rotation, scale, aspect and translation are folded into one 2x3 affine matrix per sample
and applied by a single `affine_grid` + `grid_sample`; brightness is one gain per sample; random erasing is a rectangle mask built
from broadcast comparisons of coordinate grids. There is no per-sample Python, so the batch
costs a few percent of a training step on CPU or GPU, and every random number comes from
the caller's generator, so a seeded generator reproduces the batch exactly.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from emovision.config import AugmentParams

FLIP_PROBABILITY = 0.5
ERASE_AREA = (0.02, 0.2)  # fraction of the image one erased rectangle covers
ERASE_MAX_ASPECT = 3.0  # height/width drawn log-uniformly in [1/3, 3]
# 'reflection' continues the image's own texture into the corners a rotation or shift uncovers.
# Zeros would paint black wedges and 'border' smears edge pixels into flat streaks, both
# patterns that never occur in test faces; with shifts of <= 10% only the outer strip (hair,
# background, chin) is mirrored, never a second eye or mouth.
PADDING_MODE = "reflection"
# `augment.fill` replaces that mirrored strip, for a fraction of the images, with what a
# detector's square takes in around a face in a frame: the face's edge pixels replicated, a
# flat grey, or grey noise (the live-consistency harness's surroundings, emovision.livecheck).
FILL_GREY = (20 / 255, 236 / 255)  # flat fill level, as a fraction of black..white
FILL_NOISE_MEAN = (60 / 255, 200 / 255)
FILL_NOISE_SIGMA = 25 / 255


def augment_batch(x: torch.Tensor, cfg: AugmentParams, generator: torch.Generator | None = None,
                  value_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Randomly flip, rotate, scale, stretch, shift, brighten and erase each image of a float
    (B, C, H, W) batch.

    Returns a new tensor of the same shape, dtype and device (`x` itself when every
    augmentation is off). `value_range` is what black and white are in `x` (training passes
    the standardised values of 0 and 255): brightness multiplies the light above black and
    clips at white, as a camera's exposure does. Erased pixels are noise with each image's own
    mean and standard deviation. Random numbers are drawn on the generator's device (the CPU
    when `generator` is None) and then moved to `x`'s device; an augmentation that is off
    draws none, so turning one on leaves the others' draws for a seed unchanged.
    """
    return augment_batch_flips(x, cfg, generator, value_range)[0]


def augment_batch_flips(x: torch.Tensor, cfg: AugmentParams, generator: torch.Generator | None = None,
                        value_range: tuple[float, float] = (0.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """`augment_batch` plus which images it mirrored: a bool (B,) mask on `x`'s device.

    Distillation needs the mask to pick the teacher's output for the mirrored view; the
    random numbers drawn are exactly `augment_batch`'s, so both give the same batch.
    """
    if not x.is_floating_point() or x.dim() != 4:
        raise TypeError(f"augment_batch expects a float (B, C, H, W) tensor, got {x.dtype} {tuple(x.shape)}")
    flipped = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    geometric = cfg.hflip or cfg.rotation > 0 or cfg.scale > 0 or cfg.translate > 0 or cfg.aspect > 0
    if geometric:
        x, flipped = _random_affine(x, cfg, generator, value_range)
    if cfg.brightness > 0:
        x = _random_brightness(x, cfg.brightness, value_range, generator)
    if cfg.erasing > 0:
        x = _random_erase(x, cfg.erasing, generator)
    return x, flipped


def _uniform(rand: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * rand


def _random_affine(x: torch.Tensor, cfg: AugmentParams, generator: torch.Generator | None,
                   value_range: tuple[float, float] = (0.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    b, _, h, w = x.shape
    device = generator.device if generator is not None else torch.device("cpu")
    r = torch.rand(b, 5, generator=generator, device=device, dtype=torch.float64)
    angle = _uniform(r[:, 0], -math.radians(cfg.rotation), math.radians(cfg.rotation))
    inv_scale = 1.0 / _uniform(r[:, 1], 1.0 - cfg.scale, 1.0 + cfg.scale)
    # affine_grid's coordinates span [-1, 1], so a shift of a fraction t of the size is 2t.
    shift_x = _uniform(r[:, 2], -2 * cfg.translate, 2 * cfg.translate)
    shift_y = _uniform(r[:, 3], -2 * cfg.translate, 2 * cfg.translate)
    flip = torch.where(r[:, 4] < FLIP_PROBABILITY, -1.0, 1.0) if cfg.hflip else torch.ones_like(angle)
    # aspect a stretches width by sqrt(a) and height by 1/sqrt(a) (area kept), a log-uniform
    # in [1/(1+aspect), 1+aspect]; drawn only when on, so other params keep their random stream
    stretch = torch.ones_like(angle)
    if cfg.aspect > 0:
        bound = math.log1p(cfg.aspect)
        a = torch.rand(b, generator=generator, device=device, dtype=torch.float64)
        stretch = torch.exp(_uniform(a, -bound, bound) / 2)
    # theta maps output coordinates to input coordinates: stretch^-1 * scale^-1 * rotation * flip,
    # the rotation done in pixel units (the h/w factors) so it stays a rotation on non-square images.
    cos, sin = torch.cos(angle) * inv_scale, torch.sin(angle) * inv_scale
    sx, sy = 1.0 / stretch, stretch
    theta = torch.stack([
        torch.stack([cos * flip * sx, -sin * (h / w) * sx, shift_x], 1),
        torch.stack([sin * (w / h) * flip * sy, cos * sy, shift_y], 1),
    ], 1)
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()  # grid_sample's CPU kernels
    theta = theta.to(device=x.device, dtype=work.dtype)
    grid = F.affine_grid(theta, list(work.shape), align_corners=False)
    out = F.grid_sample(work, grid, mode="bilinear", padding_mode=PADDING_MODE, align_corners=False)
    if cfg.fill > 0:
        out = _fill_uncovered(out, work, grid, cfg.fill, value_range, generator)
    return out.to(x.dtype), (flip < 0).to(x.device)


def _fill_uncovered(out: torch.Tensor, src: torch.Tensor, grid: torch.Tensor, probability: float,
                    value_range: tuple[float, float], generator: torch.Generator | None) -> torch.Tensor:
    """For each image with `probability`, paint the pixels whose source lies outside `src` with
    its edge pixels replicated, a flat grey or grey noise (one of the three, equally likely)."""
    b, c, h, w = out.shape
    device = generator.device if generator is not None else torch.device("cpu")
    r = torch.rand(b, 4, generator=generator, device=device)
    noise = torch.randn(b, c, h, w, generator=generator, device=device).to(out.device, out.dtype)
    black, white = value_range
    kind = (r[:, 1] * 3).long().clamp(max=2).to(out.device).view(-1, 1, 1, 1)
    grey = _uniform(r[:, 2], *FILL_GREY).to(out.device, out.dtype).view(-1, 1, 1, 1)
    mean = _uniform(r[:, 3], *FILL_NOISE_MEAN).to(out.device, out.dtype).view(-1, 1, 1, 1)
    level = torch.where(kind == 1, grey, (mean + FILL_NOISE_SIGMA * noise).clamp(0, 1))
    fill = black + (white - black) * level
    fill = torch.where(kind == 0, F.grid_sample(src, grid, mode="bilinear", padding_mode="border",
                                                align_corners=False), fill)
    # align_corners=False: the image covers [-1, 1]; a sample beyond it lies in the uncovered strip
    uncovered = (grid.abs() > 1).any(-1).unsqueeze(1) & (r[:, 0] < probability).to(out.device).view(-1, 1, 1, 1)
    return torch.where(uncovered, fill, out)


def _random_brightness(x: torch.Tensor, amount: float, value_range: tuple[float, float],
                       generator: torch.Generator | None) -> torch.Tensor:
    """Multiply each image's light above black by a gain in [1 - amount, 1 + amount], clip at white."""
    black, white = value_range
    device = generator.device if generator is not None else torch.device("cpu")
    gain = _uniform(torch.rand(len(x), generator=generator, device=device), 1.0 - amount, 1.0 + amount)
    gain = gain.to(x.device, x.dtype).view(-1, 1, 1, 1)
    return ((x - black) * gain + black).clamp(black, white)


def _random_erase(x: torch.Tensor, probability: float, generator: torch.Generator | None) -> torch.Tensor:
    b, c, h, w = x.shape
    device = generator.device if generator is not None else torch.device("cpu")
    r = torch.rand(b, 5, generator=generator, device=device)
    area = _uniform(r[:, 0], *ERASE_AREA) * (h * w)
    aspect = torch.exp(_uniform(r[:, 1], -math.log(ERASE_MAX_ASPECT), math.log(ERASE_MAX_ASPECT)))
    height = (area * aspect).sqrt().clamp(1, h)
    width = (area / aspect).sqrt().clamp(1, w)
    top = r[:, 2] * (h - height)
    left = r[:, 3] * (w - width)
    erase = r[:, 4] < probability
    # a half-open interval of length >= 1 always holds a whole pixel, so no rectangle is empty
    box = torch.stack([top, top + height, left, left + width, erase.to(top.dtype)], 1).to(x.device)
    rows = torch.arange(h, device=x.device, dtype=box.dtype)
    cols = torch.arange(w, device=x.device, dtype=box.dtype)
    in_rows = (rows >= box[:, 0:1]) & (rows < box[:, 1:2]) & (box[:, 4:5] > 0)  # (B, H)
    in_cols = (cols >= box[:, 2:3]) & (cols < box[:, 3:4])  # (B, W)
    mask = (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)  # (B, 1, H, W)
    noise = torch.randn(b, c, h, w, generator=generator, device=device).to(x.device, x.dtype)
    # E[x^2] - E[x]^2 rather than torch.std_mean, whose Welford pass costs 20x more on CPU
    flat = x.flatten(1).float()
    mean = flat.mean(1)
    std = (flat.square().mean(1) - mean.square()).clamp(min=0).sqrt()
    fill = noise * std.view(b, 1, 1, 1).to(x.dtype) + mean.view(b, 1, 1, 1).to(x.dtype)
    return torch.where(mask, fill, x)
