"""The app's view of each Training face: the crop the live app would cut around it.

A model trained only on FER2013's crops learns the dataset's framing, and that framing depends
on the expression (docs/live-app.md, "Where the app's square and the dataset's disagree"): no fixed
framing in the app reproduces it. `stages.recrop` renders every Training face into a frame,
finds it with the app's detector and cuts it with the app's framing
(`emovision.livecheck.app_crop`); with `augment.app_view` > 0 training shows a model that
crop instead of the dataset's, for that fraction of its images, with the same label and
teacher outputs. Faces the detector misses keep the dataset crop.

    data/app_views.npz   x: uint8 (N, 48, 48), found: bool (N,), train: the train split's digest

Off (`augment.app_view: 0`, or the demo set) the file is an empty marker (DVC needs the output).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emovision import fileio
from emovision.data.prepared import split_digest
from emovision.errors import DataError

REDO = "run `python -m stages.recrop` (or `dvc repro`) to remake it"
KEYS = ("x", "found", "train")


@dataclass(frozen=True)
class AppViews:
    x: np.ndarray  # uint8 (N, H, W); empty when off
    found: np.ndarray  # bool (N,): the detector found the face (else x holds the dataset crop)
    train: str  # emovision.data.prepared.split_digest of the train split they were cut from ("" when off)


def write_app_views(path: str | Path, views: AppViews) -> Path:
    """Write atomically (a crash never leaves half a file where train reads it)."""
    return fileio.write_npz(path, x=np.ascontiguousarray(views.x, np.uint8), found=np.asarray(views.found, bool),
                            train=np.array(views.train, dtype=str))


def read_app_views(path: str | Path) -> AppViews:
    """An app-views file, or one DataError line saying what is wrong with it."""
    arrays = fileio.read_npz(path, KEYS, "app-views file", REDO)
    return AppViews(arrays["x"], arrays["found"].astype(bool), str(arrays["train"]))


def load_app_views(path: str | Path, x: np.ndarray, y: np.ndarray) -> AppViews:
    """The app views at `path`, checked to belong to the train split (x, y)."""
    views, digest = read_app_views(path), split_digest(x, y)
    if views.train != digest or views.x.shape != x.shape or len(views.found) != len(x):
        raise DataError(f"{path} was cut from another train split (digest {views.train or 'none: off'}, "
                        f"{len(views.x):,} images; the prepared one is {digest}, {len(x):,}); {REDO}")
    return views
