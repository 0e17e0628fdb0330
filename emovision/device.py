"""Which torch device to run on: one helper for training, evaluation and every app."""
from __future__ import annotations

import os
import re

import torch

from emovision.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")  # and cuda:N


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without a GPU, or a device this project does not
    run on ('mps', a typo), is an error the caller reports."""
    device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in DEVICES and not re.fullmatch(r"cuda:\d+", device):
        raise ConfigError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but no CUDA GPU is available; use --device cpu")
    return torch.device(device)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, as a container or taskset limits it;
    macOS has no sched_getaffinity)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
