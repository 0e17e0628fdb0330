"""PNG plots (matplotlib, Agg): training curves, confusion matrix, per-class F1.

PNGs because `dvc plots show` HTML loads its JavaScript from a CDN, and MLflow shows PNGs
inline.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from emovision import fileio  # noqa: E402


def _save(fig, path: Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    try:
        with fileio.atomic_path(path, suffix=path.suffix) as tmp:  # the suffix picks the format
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path


def training_curves(history: Sequence[dict], path: Path) -> Path:
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(13, 3.6))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], label="val")
    ax_loss.set(title="loss", xlabel="epoch")
    ax_acc.plot(epochs, [h["train_acc"] for h in history], label="train")
    ax_acc.plot(epochs, [h["val_acc"] for h in history], label="val")
    ax_acc.set(title="accuracy", xlabel="epoch")
    ax_lr.plot(epochs, [h["lr"] for h in history])
    ax_lr.set(title="learning rate (end of epoch)", xlabel="epoch")
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    return _save(fig, path)


def confusion_matrix(cm: np.ndarray, classes: Sequence[str], path: Path, title: str) -> Path:
    """Row-normalised heat map with raw counts in the cells."""
    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{cm[i, j]}", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def per_class_bars(values: dict[str, float], path: Path, title: str, ylabel: str = "F1") -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    names = list(values)
    ax.bar(names, [values[n] for n in names], color="tab:blue")
    ax.set(ylim=(0, 1), ylabel=ylabel, title=title)
    ax.tick_params(axis="x", rotation=30)
    for i, n in enumerate(names):
        ax.text(i, values[n] + 0.02, f"{values[n]:.2f}", ha="center", fontsize=8)
    return _save(fig, path)
