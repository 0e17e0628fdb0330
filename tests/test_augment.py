"""Batched augmentation: per-sample randomness, reproducible, each switch does what it says."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from emovision.config import AugmentParams
from emovision.data.augment import augment_batch, augment_batch_flips

OFF = AugmentParams(hflip=False, rotation=0.0, scale=0.0, translate=0.0, erasing=0.0, brightness=0.0, aspect=0.0)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def only(**switches) -> AugmentParams:
    return dataclasses.replace(OFF, **switches)


def faces(n: int = 64, h: int = 48, w: int = 48) -> torch.Tensor:
    """An asymmetric ramp plus noise, so flips and shifts are visible."""
    g = torch.Generator().manual_seed(1)
    ramp = torch.linspace(-1, 1, w).view(1, 1, 1, w).expand(n, 1, h, w)
    return ramp + 0.1 * torch.randn(n, 1, h, w, generator=g)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_keeps_shape_dtype_and_device(device, dtype):
    x = faces(8, 48, 40).to(device, dtype)
    out = augment_batch(x, AugmentParams(rotation=15.0, erasing=1.0), seeded())
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.isfinite(out.float()).all()


def test_reproducible_with_a_seeded_generator():
    x = faces()
    first, again, other = (augment_batch(x, AugmentParams(), seeded(s)) for s in (0, 0, 1))
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)


def test_everything_off_returns_the_input():
    x = faces()
    assert augment_batch(x, OFF, seeded()) is x


def test_flip_only_gives_image_or_mirror_both_occurring():
    x = faces()
    out = augment_batch(x, only(hflip=True), seeded())
    same = (out - x).abs().amax((1, 2, 3)) < 1e-5
    mirrored = (out - x.flip(-1)).abs().amax((1, 2, 3)) < 1e-5
    assert (same | mirrored).all() and same.any() and mirrored.any()
    # the mask distillation uses names exactly the mirrored ones, from the same random draws
    again, flipped = augment_batch_flips(x, only(hflip=True), seeded())
    assert torch.equal(again, out) and torch.equal(flipped, mirrored & ~same)
    full, flipped = augment_batch_flips(x, AugmentParams(), seeded())
    assert torch.equal(full, augment_batch(x, AugmentParams(), seeded())) and 0 < flipped.sum() < len(x)


def test_rotation_only_moves_each_sample_and_keeps_its_brightness():
    x = faces()
    out = augment_batch(x, only(rotation=15.0), seeded())
    moved = (out - x).abs().mean((1, 2, 3))
    assert (moved > 1e-3).all() and moved.std() > 0  # every sample rotated, by different angles
    torch.testing.assert_close(out.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=0.05, rtol=0)


def test_scale_and_translate_vary_per_sample():
    x = faces()
    for cfg in (only(scale=0.1), only(translate=0.1)):
        moved = (augment_batch(x, cfg, seeded()) - x).abs().mean((1, 2, 3))
        assert (moved > 1e-4).all() and moved.std() > 0


def test_erasing_changes_one_rectangle_in_every_sample_at_probability_one():
    x = faces()
    out = augment_batch(x, only(erasing=1.0), seeded())
    changed = (out != x).squeeze(1)
    area = changed.flatten(1).sum(1)
    assert (area > 0).all() and (area < 0.25 * 48 * 48).all()
    rows, cols = changed.any(2), changed.any(1)
    # the changed pixels fill the bounding box of their rows and columns: one rectangle
    assert torch.equal(area, rows.sum(1) * cols.sum(1))


def test_erasing_probability_zero_and_half():
    x = faces(256)
    assert torch.equal(augment_batch(x, only(erasing=0.0, rotation=0.0), seeded()), x)
    erased = (augment_batch(x, only(erasing=0.5), seeded()) != x).flatten(1).any(1).float().mean()
    assert 0.35 < erased < 0.65


def test_erasing_fill_follows_the_images_value_range():
    x = (faces() * 60 + 120).clamp(0, 255)  # uint8-range floats instead of normalised ones
    out = augment_batch(x, only(erasing=1.0), seeded())
    fill = out[out != x]
    assert abs(fill.mean() - x.mean()) < 10 and 30 < fill.std() < 90


def test_brightness_scales_light_above_black_per_sample_and_clips_at_white():
    x = torch.rand(64, 1, 48, 48, generator=seeded(3)) * 0.8  # values in a [0, 1] range, none white
    out = augment_batch(x, only(brightness=0.5), seeded())
    gain = out.flatten(1).sum(1) / x.flatten(1).sum(1)
    unclipped = out.flatten(1).amax(1) < 1.0
    # one gain per image: out = gain * x exactly wherever nothing clipped
    torch.testing.assert_close(out[unclipped], x[unclipped] * gain[unclipped].view(-1, 1, 1, 1))
    assert gain.min() >= 0.5 - 1e-6 and gain[unclipped].max() <= 1.5 + 1e-6 and gain.std() > 0.1
    assert out.max() <= 1.0 and (~unclipped).any()  # bright gains clip at white
    # the range is the caller's: standardised black/white stay black/white
    z = (x - 0.5) / 0.25
    zout = augment_batch(z, only(brightness=0.5), seeded(), value_range=(-2.0, 2.0))
    torch.testing.assert_close((zout + 2) / 4 * 1.0, out.clamp(max=1.0), atol=1e-5, rtol=0)


def test_aspect_stretches_width_against_height():
    x = torch.zeros(64, 1, 48, 48)
    x[:, :, 16:32, 16:32] = 1.0  # a centred square
    out = augment_batch(x, only(aspect=0.2), seeded())
    cols = (out > 0.5).any(2).flatten(1).sum(1).float()  # width of the square
    rows = (out > 0.5).any(3).flatten(1).sum(1).float()
    ratio = cols / rows
    assert ratio.min() >= 1 / 1.2 - 0.15 and ratio.max() <= 1.2 + 0.15 and ratio.std() > 0.05



def test_fill_paints_only_the_uncovered_strip_with_edge_grey_or_noise():
    n, value = 300, 0.8  # a flat image in a standardised range: mirrored or replicated, it stays flat
    x = torch.full((n, 1, 48, 48), value)
    mirrored = augment_batch(x, only(scale=0.3), seeded())
    filled = augment_batch(x, only(scale=0.3, fill=1.0), seeded(), value_range=(-2.0, 2.0))
    torch.testing.assert_close(mirrored, x)
    assert filled.min() >= -2.0 and filled.max() <= 2.0
    # the face itself is untouched: a zoom of at most 1/0.7 covers the central 33 px
    torch.testing.assert_close(filled[:, :, 8:40, 8:40], x[:, :, 8:40, 8:40])
    changed = ((filled - value).abs() > 1e-4).flatten(1)  # bilinear sampling of a flat image wobbles by ~1e-7
    zoomed_out = changed.any(1)
    strip = filled[:, 0, 0, :]  # the top row lies in the uncovered strip of every zoomed-out image
    flat = zoomed_out & (strip.std(1) < 1e-6)
    noisy = zoomed_out & (strip.std(1) > 0.2)
    assert set(((flat | noisy) == zoomed_out).tolist()) == {True}  # nothing but a grey or noise
    kept = ~zoomed_out  # zoomed in, or zoomed out with the edge replicated
    # half the images zoom out, a third of those get each kind (expected n/6 each); the rest keep
    # their flat value: the zoom-ins and the replicated edges (expected 2n/3)
    assert 0.08 * n < flat.sum() < 0.26 * n and 0.08 * n < noisy.sum() < 0.26 * n
    assert 0.55 * n < kept.sum() < 0.8 * n
    greys = strip[flat, 0]
    assert greys.min() >= -2.0 + 4 * 20 / 255 - 1e-5 and greys.max() <= -2.0 + 4 * 236 / 255 + 1e-5


def test_fill_probability_zero_draws_nothing_and_keeps_the_mirror():
    x = faces(32)
    cfg = only(rotation=15.0, scale=0.2, translate=0.1, brightness=0.5)
    torch.testing.assert_close(augment_batch(x, dataclasses.replace(cfg, fill=0.0), seeded()),
                               augment_batch(x, cfg, seeded()))
    filled = augment_batch(x, dataclasses.replace(cfg, fill=1.0), seeded())
    assert (filled != augment_batch(x, cfg, seeded())).any()


def test_fill_replicates_the_edge_for_a_third_of_the_zoomed_out_images():
    n = 300
    x = faces(n)  # a ramp across, noise on top: mirrored rows differ, a replicated edge row repeats
    out = augment_batch(x, only(scale=0.3, fill=1.0), seeded())
    top, second = out[:, 0, 0, :], out[:, 0, 1, :]
    replicated = ((top - second).abs().max(1).values < 1e-5) & (top.std(1) > 0.3)
    assert 0.08 * n < replicated.sum() < 0.26 * n
    mirrored = augment_batch(x, only(scale=0.3), seeded())
    assert not (((mirrored[:, 0, 0] - mirrored[:, 0, 1]).abs().max(1).values < 1e-5)).any()
