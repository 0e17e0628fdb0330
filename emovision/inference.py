"""EmotionClassifier: a trained model plus its own classes and preprocessing.

`load_classifier(ref)` accepts every way a user names a model (registry stage or alias,
version, run, local checkpoint, the shipped "pretrained" weights) and never unpickles
arbitrary code: weights load with `torch.load(weights_only=True)`, the rest is JSON.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from emovision import artifact, scoring
from emovision.artifact import ENSEMBLE_DIR, PRETRAINED, PRETRAINED_ENSEMBLE, WEIGHTS_DIR, ModelSpec
from emovision.device import BACKENDS, resolve_device
from emovision.errors import ModelRefError
from emovision.preprocess import PreprocessConfig, prepare_pixels

# What a model reference can be, for the lines that refuse one (load_classifier's docstring has examples)
MODEL_REFS = (f"{PRETRAINED}, {PRETRAINED_ENSEMBLE}, models:/NAME/STAGE, models:/NAME@ALIAS, runs:/ID/model, "
              "a model folder, a checkpoint file or a .onnx file")

__all__ = ["EmotionClassifier", "load_artifact", "load_classifier", "from_spec", "resolve_device", "PRETRAINED",
           "PRETRAINED_ENSEMBLE", "WEIGHTS_DIR"]


class EmotionClassifier:
    """Predicts emotion probabilities for batches of grayscale face crops of any size."""

    def __init__(
        self,
        model: nn.Module,
        classes: Sequence[str],
        preprocess: PreprocessConfig,
        device: str | torch.device = "cpu",
        info: dict | None = None,
        tta: bool = True,
    ):
        self.device = torch.device(device)
        # channels_last: oneDNN's convolutions run ~1.5x faster at batch 1 and ~1.9x batched
        # on CPU, with the same fp32 math (identical predictions on PrivateTest).
        self.model = scoring.inference_layout(model.to(self.device))
        self.classes = tuple(classes)
        self.preprocess = preprocess
        self.info = dict(info or {})  # provenance: source ref, arch, dataset, metrics
        # Flip TTA by default: the model card's headline accuracy is measured with it, and a
        # user of the API or the app gets that accuracy unless they switch it off.
        self.tta = tta

    def predict_proba(self, faces: np.ndarray | Sequence[np.ndarray], tta: bool | None = None,
                      batch_size: int | None = None) -> np.ndarray:
        """(N, H, W) crops (or a list of crops of any size, grey or BGR) -> (N, n_classes) float32.

        Levels by dtype (`emovision.levels`): uint8 0..255, uint16 0..65535, float 0..1; a
        crop outside its dtype's range (a float crop of 0..255) is a ValueError, never cast.

        With `tta` (default: the classifier's `tta`, on unless switched off), probabilities
        are averaged with those of the mirrored face. `batch_size` (faces per forward pass):
        by default `scoring.batch_size_for` the classifier's device.
        """
        tta = self.tta if tta is None else tta
        out, = self._in_chunks(faces, batch_size, 1, lambda pixels: (
            scoring.predict_proba(self.model, pixels, self.preprocess, tta, batch_size),))
        return out

    def predict_proba_both(self, faces: np.ndarray | Sequence[np.ndarray],
                           batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(without TTA, with flip TTA) probabilities, each equal to `predict_proba(faces, tta=...)`,
        from one pass: scoring a split both ways (a model card's two rows) costs two forwards, not three."""
        return self._in_chunks(faces, batch_size, 2, lambda pixels: scoring.predict_proba_both(
            self.model, pixels, self.preprocess, batch_size))

    def _in_chunks(self, faces, batch_size: int | None, n_outputs: int, probs_of) -> tuple[np.ndarray, ...]:
        """`probs_of(pixels)`, a tuple of `n_outputs` (n, n_classes) tensors, over `faces`
        preprocessed `batch_size` crops at a time."""
        batch_size = scoring.batch_size_for(self.device, batch_size)
        outs = tuple(np.zeros((len(faces), len(self.classes)), dtype=np.float32) for _ in range(n_outputs))
        for start in range(0, len(faces), batch_size):
            pixels = torch.from_numpy(prepare_pixels(faces[start:start + batch_size], self.preprocess))
            for out, probs in zip(outs, probs_of(pixels.to(self.device))):
                out[start:start + len(pixels)] = probs.cpu().numpy()
        return outs

    def predict(self, faces: np.ndarray | Sequence[np.ndarray], tta: bool | None = None) -> list[str]:
        """Most likely class name per face."""
        return [self.classes[i] for i in self.predict_proba(faces, tta).argmax(1)]

    def __repr__(self) -> str:
        return f"EmotionClassifier({self.info.get('arch', '?')}, classes={len(self.classes)}, device={self.device})"


def from_spec(spec: ModelSpec, state_dict: dict, device: str | torch.device = "cpu",
              source: str = "model") -> EmotionClassifier:
    """An EmotionClassifier from the artifact's spec and weights (the one build)."""
    info = {"source": source, "arch": spec.arch, "dataset": spec.dataset, "metrics": spec.metrics,
            "weights": spec.weights}
    return EmotionClassifier(artifact.build(spec, state_dict, source), spec.classes, spec.preprocess,
                             device, info)


def load_classifier(ref: str | os.PathLike = PRETRAINED, device: str = "auto", backend: str = "torch"):
    """Load any model reference as an EmotionClassifier (or, with backend "onnx", an
    `emovision.onnx_backend.OnnxClassifier` with the same API; "auto": ONNX Runtime on a CPU,
    PyTorch on CUDA, and PyTorch, with a warning line, where the model cannot be exported).

    `ref`: "pretrained" (the FER2013 model shipped in the package), "pretrained-ensemble" (the
    shipped ensemble: more accurate, several times slower), `models:/fer/Production`,
    `models:/fer@champion`, `models:/fer/3`, `runs:/<run id>/model`, a model folder
    (weights.pt + config.json, or a downloaded MLflow model), a training checkpoint
    (`models/best.pt`) or an exported `.onnx` file. Nothing is unpickled and no model code
    is run: weights load with `torch.load(weights_only=True)`, the rest is JSON.
    """
    ref = str(ref)  # a pathlib.Path names a checkpoint, folder or .onnx file as well as its text
    if not ref.strip():  # `--model "$MODEL"` with MODEL unset: as a path, "" is the working folder
        raise ModelRefError(f"the model reference is empty: pass {MODEL_REFS}")
    if backend not in BACKENDS:
        raise ModelRefError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if ref.endswith(".onnx") or backend == "onnx":
        return _load_onnx(ref)
    dev = resolve_device(device)
    if backend == "auto" and dev.type == "cpu":
        return _load_onnx(ref, fallback=True)
    return from_spec(*load_artifact(ref), dev, ref)


def load_artifact(ref: str) -> tuple[ModelSpec, dict]:
    """(spec, state_dict) of any torch model reference (what load_classifier builds)."""
    if ref == PRETRAINED:
        if not WEIGHTS_DIR.is_dir():
            raise ModelRefError(f"no pretrained weights shipped in {WEIGHTS_DIR}; reinstall emovision")
        return artifact.load_model_dir(WEIGHTS_DIR)
    if ref == PRETRAINED_ENSEMBLE:
        if not ENSEMBLE_DIR.is_dir():
            raise ModelRefError(f"no pretrained ensemble shipped in {ENSEMBLE_DIR}; reinstall emovision")
        return artifact.load_model_dir(ENSEMBLE_DIR)
    if ref.startswith(("models:/", "runs:/")):
        from emovision import tracking

        return artifact.load_model_dir(tracking.download_model(ref))
    if ref.endswith(".onnx"):  # a graph for ONNX Runtime: training and teacher hashes need the weights
        raise ModelRefError(f"{ref}: an ONNX export, with no PyTorch weights to build the model from; name the "
                            f"checkpoint or model folder it was exported from")
    if not Path(ref).exists():
        raise ModelRefError(f"model {ref!r} not found: pass {MODEL_REFS}")
    return artifact.load(ref)


def _load_onnx(ref: str, fallback: bool = False):
    """An .onnx file as given; a registered model's exported fer.onnx (stages.export logs it with
    the MLflow model); otherwise the model exported once and cached (`onnx_backend.cached_export`).
    With `fallback`, a model that cannot be exported or run there runs on PyTorch (CPU) instead,
    and a warning line says why."""
    import sys

    from emovision import onnx_backend

    if str(ref).endswith(".onnx"):
        if not Path(ref).is_file():
            raise ModelRefError(f"{ref}: no such ONNX file (python -m stages.export writes one)")
        return onnx_backend.OnnxClassifier(ref)
    if ref.startswith(("models:/", "runs:/")):
        from emovision import tracking

        folder = tracking.download_model(ref)
        if (folder / onnx_backend.ONNX_FILE).is_file():
            return onnx_backend.OnnxClassifier(folder / onnx_backend.ONNX_FILE)
        spec, state_dict = artifact.load_model_dir(folder)
    else:
        spec, state_dict = load_artifact(ref)
    def on_cpu():  # the model on PyTorch: what an export is checked against, and the fallback
        return from_spec(spec, state_dict, torch.device("cpu"), ref)

    try:
        return onnx_backend.cached_export(spec, state_dict, on_cpu)[0]
    except Exception as err:  # noqa: BLE001 - an exporter's or runtime's failure of any kind: PyTorch runs it
        if not fallback:
            raise
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        print(f"warning: ONNX Runtime cannot run {ref} ({reason}); using PyTorch", file=sys.stderr)
        return on_cpu()
