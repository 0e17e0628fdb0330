"""The demo dataset: deterministic, balanced, and the expressions really differ."""
from __future__ import annotations

import numpy as np

from emovision.data import CLASSES
from emovision.data.synthetic import generate_synthetic


def test_deterministic_shapes_and_counts():
    a, b = generate_synthetic(20, seed=3), generate_synthetic(20, seed=3)
    c = generate_synthetic(20, seed=4)
    for split, n in (("train", 20), ("val", 4), ("test", 4)):
        x, y = a[split]
        assert x.dtype == np.uint8 and x.shape == (7 * n, 48, 48) and y.dtype == np.int64
        assert np.bincount(y, minlength=7).tolist() == [n] * 7
        np.testing.assert_array_equal(x, b[split][0])
        assert not np.array_equal(x, c[split][0])
    assert not np.array_equal(a["val"][0], a["test"][0])
    assert (a["train"][0].reshape(140, -1).std(1) > 5).all()  # no blank images


def test_expressions_differ_where_faces_differ():
    x, y = generate_synthetic(150, seed=0)["train"]
    means = np.stack([x[y == k].astype(float).mean(0) for k in range(len(CLASSES))])
    # the mouth region (lower middle) separates happy from sad and surprise from neutral
    mouth = means[:, 30:42, 14:34]
    for a, b in (("happy", "sad"), ("surprise", "neutral")):
        diff = np.abs(mouth[CLASSES.index(a)] - mouth[CLASSES.index(b)]).max()
        assert diff > 8, (a, b, diff)
