"""Batched augmentation: per-sample randomness, reproducible, each switch does what it says."""
from __future__ import annotations

import torch

from emovision.config import AugmentParams
from emovision.data.augment import augment_batch

OFF = AugmentParams(hflip=False, rotation=0.0, scale=0.0, translate=0.0, erasing=0.0)


def batch(n=64):
    g = torch.Generator().manual_seed(1)
    # an asymmetric ramp plus noise, so flips and shifts are visible
    ramp = torch.linspace(-1, 1, 48).view(1, 1, 1, 48).expand(n, 1, 48, 48)
    return ramp + 0.1 * torch.randn(n, 1, 48, 48, generator=g)


def test_shape_dtype_and_reproducible():
    x = batch()
    a = augment_batch(x, AugmentParams(), torch.Generator().manual_seed(0))
    b = augment_batch(x, AugmentParams(), torch.Generator().manual_seed(0))
    assert a.shape == x.shape and a.dtype == x.dtype
    torch.testing.assert_close(a, b)
    c = augment_batch(x, AugmentParams(), torch.Generator().manual_seed(1))
    assert not torch.allclose(a, c)


def test_everything_off_is_identity():
    x = batch()
    torch.testing.assert_close(augment_batch(x, OFF), x)


def test_flip_only_gives_image_or_mirror_both_occurring():
    x = batch()
    out = augment_batch(x, AugmentParams(**{**vars(OFF), "hflip": True}), torch.Generator().manual_seed(0))
    same = (out - x).abs().amax((1, 2, 3)) < 1e-4
    mirrored = (out - x.flip(-1)).abs().amax((1, 2, 3)) < 1e-4
    assert (same | mirrored).all() and same.any() and mirrored.any()


def test_geometry_is_per_sample_and_keeps_content():
    x = batch()
    cfg = AugmentParams(**{**vars(OFF), "rotation": 15.0, "scale": 0.1, "translate": 0.1})
    out = augment_batch(x, cfg, torch.Generator().manual_seed(0))
    diffs = (out - x).abs().mean((1, 2, 3))
    assert (diffs > 1e-3).all() and diffs.std() > 0  # every sample moved, by different amounts
    assert (out.mean() - x.mean()).abs() < 0.1


def test_erasing_probability():
    x = batch()
    all_on = augment_batch(x, AugmentParams(**{**vars(OFF), "erasing": 1.0}), torch.Generator().manual_seed(0))
    changed = ((all_on - x).abs() > 1e-6).flatten(1).sum(1)
    assert (changed > 0).all() and (changed < 0.25 * 48 * 48).all()  # one rectangle, 2-20% of the area
