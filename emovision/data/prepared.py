"""The prepared dataset on disk: one uncompressed `.npz` per split plus `meta.json`.

    data/prepared/train.npz   x: uint8 (N, 48, 48), y: int64 (N,)
    data/prepared/val.npz     (PublicTest)
    data/prepared/test.npz    (PrivateTest)
    data/prepared/meta.json   {"source", "classes", "counts": {split: {class: n}}, ...}

Written to a temporary sibling folder and renamed into place (`fileio.atomic_folder`), so a
crash never leaves a half-written dataset behind, and Ctrl-C never leaves none.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from emovision import fileio
from emovision.data import CLASSES, SPLITS, USAGE_TO_SPLIT
from emovision.errors import ConfigError, DataError

META_NAME = "meta.json"
DIGEST_CHARS = 16  # hex characters of a split's (and a teacher's weights') digest


def array_digest(*arrays: np.ndarray) -> str:
    """A short hash of arrays' shapes and contents (not of any file's bytes)."""
    h = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        h.update(str(array.shape).encode())
        h.update(array.tobytes())
    return h.hexdigest()[:DIGEST_CHARS]


def split_digest(x: np.ndarray, y: np.ndarray) -> str:
    """A prepared split's pixels and labels, hashed: what files computed from the split (teacher
    outputs, app views) record, so a stale one is refused."""
    return array_digest(np.asarray(x, np.uint8), np.asarray(y, np.int64))


def class_counts(y: np.ndarray, classes: tuple[str, ...] = CLASSES) -> dict[str, int]:
    counts = np.bincount(y, minlength=len(classes))
    return {name: int(n) for name, n in zip(classes, counts)}


def check_replaceable(out_dir: Path) -> None:
    """`out_dir` is replaced whole, so it must be new, empty or an earlier prepare's output:
    a data.prepared_dir that names the raw data, models/ or the project would delete them."""
    out_dir = Path(out_dir)
    if out_dir.resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents):
        raise ConfigError(f"data.prepared_dir {out_dir} is the working folder or one above it; "
                          f"prepare replaces that whole folder: name a folder of its own (data/prepared)")
    if out_dir.exists() and not out_dir.is_dir():
        # DVC no longer deletes it first (persist: true): replaced whole, the file would be hidden away
        raise ConfigError(f"data.prepared_dir {out_dir} is a file; prepare replaces that path with a "
                          f"folder: name a new or empty folder (data/prepared)")
    if not out_dir.is_dir():
        return
    ours = {META_NAME, *(f"{split}.npz" for split in SPLITS)}
    foreign = sorted(p.name + ("/" if p.is_dir() else "") for p in out_dir.iterdir()
                     if p.name not in ours or not p.is_file())
    if foreign:
        raise ConfigError(f"data.prepared_dir {out_dir}/ holds files prepare did not write "
                          f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); prepare replaces "
                          f"that whole folder: name a new or empty folder (data/prepared)")


def write_prepared(out_dir: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                   meta: dict[str, Any]) -> dict[str, Any]:
    """Atomically replace `out_dir` with the splits and meta.json (counts are added here)."""
    check_replaceable(out_dir)
    for split in SPLITS:
        if split not in splits or len(splits[split][1]) == 0:
            usage = next(u for u, s in USAGE_TO_SPLIT.items() if s == split)
            raise DataError(f"split '{split}' is empty: the dataset has no images for it (FER2013's "
                            f"{usage}: {usage}_* files or Usage {usage} rows)")
    meta = {**meta, "classes": list(CLASSES),
            "counts": {s: class_counts(splits[s][1]) for s in SPLITS}}
    with fileio.atomic_folder(out_dir) as tmp:
        for split in SPLITS:
            x, y = splits[split]
            np.savez(tmp / f"{split}.npz", x=np.ascontiguousarray(x, np.uint8), y=y.astype(np.int64))
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def load_meta(prepared_dir: Path) -> dict[str, Any]:
    path = Path(prepared_dir) / META_NAME
    if not path.is_file():
        raise DataError(f"no prepared dataset at {prepared_dir}/ (run `python -m stages.prepare` first)")
    return json.loads(path.read_text())


def load_split(prepared_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(x uint8 (N, 48, 48), y int64 (N,)) of one prepared split."""
    path = Path(prepared_dir) / f"{split}.npz"
    if not path.is_file():
        raise DataError(f"missing {path} (run `python -m stages.prepare` first)")
    with np.load(path) as data:
        return data["x"], data["y"]
