"""The one prediction path: every caller that turns faces into probabilities comes here.

Validation during training, the evaluate stage, the promotion gate, predict, the webcam app
and the MLflow model all call `predict_proba`, so a model has one accuracy per split
whoever computes it: fp32 (no autocast), channels_last, the model's own preprocessing, and
optionally flip test-time augmentation (the mean of the face's and its mirror's softmax).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from emovision.preprocess import PreprocessConfig, normalize

DEFAULT_BATCH = 256  # faces per forward pass on a GPU (or any device but the CPU)
# On a CPU a batch of 32 48x48 faces keeps each layer's activations in cache (cnn_small width
# 48: 14 MB at 32, 113 MB at 256), so 32 is the default there (`batch_size_for`). PublicTest,
# plain + flip TTA, one thread, AMD EPYC 32 MB L3 (scripts/score_batches.py, medians of 3
# alternating runs): shipped model 12.0 s at 32 against 21.6 at 256 and 24.9 at 512; the
# ensemble 22.3 against 45.0; untrained resnet_fer w64 15.0 against 25.4 (512 faces).
# Probabilities at every batch measured (16-512) are the same to the bit for both shipped
# models (earlier, on both test splits at 32 and 256 with 2 threads too; batches of a few
# faces can differ in the last float bit: oneDNN picks kernels by batch).
CPU_BATCH = 32
LOG_EPS = 1e-8  # keeps log(p) finite for a probability of exactly zero


def batch_size_for(device: torch.device | str, batch_size: int | None = None,
                   gpu_batch: int = DEFAULT_BATCH) -> int:
    """Faces per forward pass on `device`: `batch_size` when the caller gives one, otherwise
    CPU_BATCH on the CPU (cache-sized) and `gpu_batch` elsewhere (a configured
    `evaluate.batch_size` is a GPU batch: on the CPU it would only be slower)."""
    if batch_size is not None:
        return batch_size
    return CPU_BATCH if torch.device(device).type == "cpu" else gpu_batch


def inference_layout(model: nn.Module) -> nn.Module:
    """The model in eval mode and channels_last: oneDNN's convolutions run ~1.5x faster at
    batch 1 and ~1.9x batched on CPU with the same fp32 math. A model not yet in that layout
    (a live training model) is copied, never changed under its optimiser."""
    first = next((p for p in model.parameters() if p.dim() == 4), None)
    if first is not None and not first.is_contiguous(memory_format=torch.channels_last):
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    return model.eval()


@torch.inference_mode()
def predict_proba(model: nn.Module, pixels: torch.Tensor, pre: PreprocessConfig, tta: bool,
                  batch_size: int | None = None) -> torch.Tensor:
    """uint8 pixels (N, H, W) or (N, 1, H, W) of `pre.size`, on the model's device ->
    softmax probabilities (N, C) float32; with `tta`, averaged with the mirrored face's."""
    plain, mirrored = _forward(model, pixels, pre, batch_size, mirror=tta)
    return mirrored if tta else plain


@torch.inference_mode()
def predict_proba_both(model: nn.Module, pixels: torch.Tensor, pre: PreprocessConfig,
                       batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(without TTA, with flip TTA) from one pass, each exactly what `predict_proba` gives:
    the plain forward is the first half of the TTA one, so both cost two forwards, not three."""
    return _forward(model, pixels, pre, batch_size, mirror=True)


@torch.inference_mode()
def score(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, pre: PreprocessConfig,
          batch_size: int | None = None) -> dict[str, float]:
    """Accuracy and loss of a split with and without flip TTA, from one pass over it:
    {"acc", "loss", "acc_tta", "loss_tta"}."""
    plain, tta = _forward(model, pixels, pre, batch_size, mirror=True)
    labels = labels.to(plain.device)
    out = {}
    for suffix, probs in (("", plain), ("_tta", tta)):
        out[f"acc{suffix}"] = (probs.argmax(1) == labels).float().mean().item()
        out[f"loss{suffix}"] = F.nll_loss(probs.clamp_min(LOG_EPS).log(), labels).item()
    return out


def _forward(model: nn.Module, pixels: torch.Tensor, pre: PreprocessConfig, batch_size: int | None,
             mirror: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(plain, flip-TTA) probabilities; without `mirror` the second is the first (no mirror pass)."""
    model = inference_layout(model)
    batch_size = batch_size_for(pixels.device, batch_size)
    plain, tta = [], []
    for start in range(0, len(pixels), batch_size):
        x = normalize(pixels[start:start + batch_size], pre).contiguous(memory_format=torch.channels_last)
        probs = model(x).float().softmax(1)
        plain.append(probs)
        if mirror:  # faces are roughly left-right symmetric; expressions are too
            tta.append((probs + model(x.flip(-1)).float().softmax(1)) / 2)
    if not plain:
        n_classes = _num_classes(model)
        empty = torch.zeros((0, n_classes), dtype=torch.float32, device=pixels.device)
        return empty, empty
    return torch.cat(plain), torch.cat(tta) if mirror else torch.cat(plain)


def _num_classes(model: nn.Module) -> int:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else 0
