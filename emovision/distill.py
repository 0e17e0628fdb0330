"""Teacher outputs for distillation: computed once, cached in one small file, checked on use.

The teachers (any PyTorch model reference `load_classifier` accepts; not an .onnx export)
score every Training image in a fixed set of views through the one prediction path
(`EmotionClassifier.predict_proba`, i.e. `emovision.scoring`), and their softmax
probabilities are averaged over teachers:

    probs.npz   probs      float16 (V, N, C)  mean teacher probabilities per view and image
                views      str (V,)           "identity", "hflip" (index 1 = mirrored image)
                teachers   str (T,)           the model references, as in params
                digests    str (T,)           a hash of each teacher's weights
                classes    str (C,)           class order of the probabilities
                train      str ()             a hash of the prepared train split (pixels + labels)

Distillation then costs no teacher forward pass. A file made for other teachers, other
weights behind the same reference or another train split is refused with one line, before
training starts. The file is written deterministically (fixed zip timestamps), so the same
teachers on the same data give the same bytes and DVC sees no change.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from emovision import fileio, scoring
from emovision.data.prepared import DIGEST_CHARS, split_digest
from emovision.device import resolve_device
from emovision.errors import DataError, EmovisionError
from emovision.inference import EmotionClassifier, from_spec, load_artifact

if TYPE_CHECKING:
    from emovision.config import Params
    from emovision.training import SoftTargets

VIEWS = ("identity", "hflip")  # teacher views of each image; index 1 is what a flipped sample sees
PROBS_DTYPE = np.float16  # 2 bytes per probability: FER2013 Training, 2 views, 7 classes = 0.8 MB
CACHE_KEYS = ("probs", "views", "teachers", "digests", "classes", "train")
PROB_FLOOR = 1e-7  # below float16's normal range; a probability of exactly 0 becomes this
REDO = "run `python -m stages.teach` (or `dvc repro`) to recompute it"


@dataclass(frozen=True)
class TeacherCache:
    """The content of a teacher-probabilities file (see the module docstring)."""

    probs: np.ndarray
    views: tuple[str, ...]
    teachers: tuple[str, ...]
    digests: tuple[str, ...]
    classes: tuple[str, ...]
    train: str


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """A short hash of a model's weights, independent of memory layout (channels_last or not)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else tensor.float().numpy().tobytes())
    return h.hexdigest()[:DIGEST_CHARS]


def load_teacher(ref: str, device: str = "auto") -> EmotionClassifier:
    """The teacher `ref` names, or its loading error with the param named: `distill.teachers 'REF': ...`."""
    # Not load_classifier: it runs an .onnx file on ONNX Runtime, which has no weights for the cache
    # to hash; load_artifact refuses one in a line, here naming the param.
    try:
        return from_spec(*load_artifact(ref), resolve_device(device), ref)
    except EmovisionError as err:
        raise type(err)(f"distill.teachers {ref!r}: {err}") from None


def teacher_probs(teachers: Sequence[str], x: np.ndarray, y: np.ndarray, classes: Sequence[str],
                  device: str = "auto", gpu_batch: int = scoring.DEFAULT_BATCH) -> TeacherCache:
    """Mean softmax probabilities of `teachers` for every view of the train split's uint8 faces
    `x` (N, H, W) with labels `y`, each teacher with its own preprocessing, through the one
    prediction path (no TTA: the views are kept apart); `gpu_batch` faces per forward pass off
    the CPU (`scoring.batch_size_for`)."""
    if not teachers:
        raise ValueError("teacher_probs needs at least one teacher")
    # Every teacher is loaded and checked before any scores: a bad last one was found only
    # after the others had scored the whole train split (minutes each on FER2013).
    classifiers, digests = [], []
    for ref in teachers:
        clf = load_teacher(ref, device)
        if tuple(clf.classes) != tuple(classes):
            raise DataError(f"distill.teachers {ref!r} predicts classes {', '.join(clf.classes)}, but the prepared "
                            f"data has {', '.join(classes)}: a teacher must share the data's class order")
        digest = weights_digest(clf.model.state_dict())
        if digest in digests:  # one model under two names (a path with a slash, a copy) would count twice
            raise DataError(f"distill.teachers {ref!r} has the weights of {teachers[digests.index(digest)]!r} "
                            f"({digest}): name each teacher once")
        classifiers.append(clf)
        digests.append(digest)
    total = np.zeros((len(VIEWS), len(x), len(classes)), np.float64)
    views = {"identity": x, "hflip": np.ascontiguousarray(x[:, :, ::-1])}
    for ref, clf, digest in zip(teachers, classifiers, digests):
        for i, view in enumerate(VIEWS):
            total[i] += clf.predict_proba(views[view], tta=False,
                                          batch_size=scoring.batch_size_for(clf.device, gpu_batch=gpu_batch))
        print(f"teacher {ref}: weights {digest}, {len(x):,} images x {len(VIEWS)} views", flush=True)
    return TeacherCache(probs=(total / len(teachers)).astype(PROBS_DTYPE), views=VIEWS,
                        teachers=tuple(teachers), digests=tuple(digests), classes=tuple(classes),
                        train=split_digest(x, y))


def write_cache(path: str | Path, cache: TeacherCache) -> Path:
    """Atomically write `cache` as an .npz with fixed timestamps (same content, same bytes)."""
    arrays = {"probs": cache.probs.astype(PROBS_DTYPE), "views": np.array(cache.views, dtype=str),
              "teachers": np.array(cache.teachers, dtype=str), "digests": np.array(cache.digests, dtype=str),
              "classes": np.array(cache.classes, dtype=str), "train": np.array(cache.train, dtype=str)}
    fileio.write_npz(path, **arrays)
    return Path(path)


def read_cache(path: str | Path) -> TeacherCache:
    """A teacher-probabilities file, or one DataError line saying what is wrong with it."""
    arrays = fileio.read_npz(path, CACHE_KEYS, "teacher probabilities file", REDO)
    return TeacherCache(probs=arrays["probs"], views=tuple(arrays["views"].tolist()),
                        teachers=tuple(arrays["teachers"].tolist()), digests=tuple(arrays["digests"].tolist()),
                        classes=tuple(arrays["classes"].tolist()), train=str(arrays["train"]))


def check_cache(path: str | Path, cache: TeacherCache, teachers: Sequence[str], classes: Sequence[str],
                train_digest: str, n_train: int, device: str = "auto") -> None:
    """Refuse, in one line, a cache that does not belong to these teachers and this train split:
    other references, other weights behind a reference, other classes, views or images."""
    if cache.teachers != tuple(teachers):
        raise DataError(f"{path} holds the outputs of teachers {list(cache.teachers)}, but distill.teachers "
                        f"is {list(teachers)}; {REDO}")
    if cache.views[:len(VIEWS)] != VIEWS or cache.classes != tuple(classes):
        raise DataError(f"{path} holds views {list(cache.views)} and classes {list(cache.classes)}; training "
                        f"needs views {list(VIEWS)} and classes {list(classes)}; {REDO}")
    if cache.train != train_digest or cache.probs.shape != (len(cache.views), n_train, len(classes)):
        raise DataError(f"{path} was computed on another train split (digest {cache.train}, "
                        f"{cache.probs.shape[1]:,} images; the prepared one is {train_digest}, {n_train:,}); {REDO}")
    if not np.isfinite(cache.probs).all():
        raise DataError(f"{path} holds non-finite probabilities; {REDO}")
    for ref, digest in zip(cache.teachers, cache.digests):
        now = weights_digest(load_teacher(ref, device).model.state_dict())
        if now != digest:
            raise DataError(f"{path}: teacher {ref!r} now has other weights ({now}, the file was computed "
                            f"with {digest}); {REDO}")


def tempered(probs: np.ndarray | torch.Tensor, temperature: float) -> torch.Tensor:
    """Teacher probabilities softened at `temperature`: softmax(log p / T), float32.

    For one teacher this is exactly softmax(logits / T); for an ensemble it softens the mean
    distribution the cache holds. Zeros (float16 underflow) are floored so log stays finite.
    """
    p = torch.as_tensor(np.asarray(probs, np.float32) if isinstance(probs, np.ndarray) else probs).float()
    return torch.softmax(p.clamp_min(PROB_FLOOR).log() / temperature, dim=-1)


def soft_targets(params: Params, meta: dict, device: torch.device) -> tuple[SoftTargets | None, dict]:
    """The distillation targets `params.distill` asks for (None when alpha is 0) on `device`,
    and what to log about them; the cached teacher file must belong to exactly these teachers
    and this train split (`check_cache`, one line otherwise)."""
    from emovision.data.prepared import load_split
    from emovision.training import SoftTargets

    d = params.distill
    teachers, alpha, temperature, path = d.teachers, d.alpha, d.temperature, Path(d.probs)
    if alpha == 0:
        return None, {"distill": "off"}
    cache = read_cache(path)
    x, y = load_split(Path(params.data.prepared_dir), "train")  # raw pixels, as the teachers saw them
    check_cache(path, cache, teachers, meta["classes"], split_digest(x, y), len(y), params.base.device)
    probs = tempered(cache.probs, temperature).to(device)
    info = {"distill": f"{len(teachers)} teacher(s), alpha {alpha:g}, T {temperature:g}",
            "teachers": list(cache.teachers), "teacher_digests": list(cache.digests),
            "views": list(cache.views), "train_digest": cache.train, "probs": str(path)}
    return SoftTargets(probs, alpha, temperature), info
