"""Which torch device and inference backend to run on, and how many CPU threads: one helper for
training, evaluation and every app."""
from __future__ import annotations

import contextlib
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from emovision.errors import ConfigError

if TYPE_CHECKING:  # torch loads lazily: `import emovision` asks usable_cpus() before torch loads
    import torch

DEVICES = ("auto", "cpu", "cuda")  # and cuda:N
BACKENDS = ("auto", "torch", "onnx")  # inference.load_classifier
# The apps' default: ONNX Runtime wherever the model runs on a CPU. On the shipped model it
# classified a face with flip TTA in 4.7 ms against PyTorch's 11.4 (one thread; the webcam app
# 93 vs 55 fps on stages.bench's video, 2-core AMD EPYC), and x2.4-8 on every CPU measured
# (docs/cpu.md), with probabilities within 1e-6. PyTorch stays the library's default and runs on CUDA.
APP_BACKEND = "auto"
# Where a container sees its own cgroup (v2 cpu.max; v1 cpu/cpu.cfs_quota_us): the files
# OpenCV reads for its thread count, so torch and OpenCV agree.
CGROUP_ROOT = Path("/sys/fs/cgroup")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without a GPU, or a device this project does not
    run on ('mps', a typo), is an error the caller reports."""
    import torch

    device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in DEVICES and not re.fullmatch(r"cuda:\d+", device):
        raise ConfigError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but no CUDA GPU is available; use --device cpu")
    return torch.device(device)


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPUs' worth of time this process's cgroup may use (`docker run --cpus 1.5`, a
    Kubernetes CPU limit): cgroup v2 `cpu.max` ("150000 100000" -> 1.5, "max 100000": none),
    else v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us` (-1: none). None when no quota is set."""
    try:
        fields = (root / "cpu.max").read_text().split()
    except OSError:
        try:
            fields = [(root / "cpu" / name).read_text().strip() for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us")]
        except OSError:
            return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except (IndexError, ValueError):  # "max": no quota
        return None
    return quota / period if quota > 0 and period > 0 else None


def affinity_cpus() -> int:
    """The CPUs in this process's affinity mask (taskset, a container's cpuset; macOS has no
    sched_getaffinity): what torch and OpenMP start one thread each for."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may run on: its affinity mask, cut to its cgroup's CPU quota. A
    quota is no affinity, so torch alone would start a thread per CPU of the host and have the
    quota throttle them. A quota of 1.5 CPUs counts as 2: two threads get 1.5 CPUs of work done."""
    limit = cgroup_cpu_limit(cgroup_root)
    cpus = affinity_cpus()
    return cpus if limit is None else max(1, min(cpus, math.ceil(limit)))


def quota_thread_env(cgroup_root: Path = CGROUP_ROOT) -> dict[str, str]:
    """OMP_NUM_THREADS for a process whose cgroup quota allows fewer CPUs than its affinity
    mask holds (read by OpenMP and MKL when torch loads); empty when the two agree."""
    cpus = usable_cpus(cgroup_root)
    return {"OMP_NUM_THREADS": str(cpus)} if cpus < affinity_cpus() else {}


def cpu_threads(requested: int = 0) -> int:
    """torch's CPU threads for `requested` (train.threads; 0: one per usable CPU), never more
    than the usable CPUs: the extra threads only wait for each other (two on one CPU trained
    cnn_small 20% slower and classified a face 60% slower, with OMP_WAIT_POLICY=PASSIVE)."""
    cpus = usable_cpus()
    return min(requested, cpus) if requested > 0 else cpus


def use_cpu_threads(requested: int = 0) -> str | None:
    """Set torch's intra-op threads to `cpu_threads(requested)`; a one-line note for the user
    when `requested` was more than this process may use."""
    import torch

    threads = cpu_threads(requested)
    torch.set_num_threads(threads)
    if requested > threads:
        return (f"train.threads {requested} -> {threads}: this process may use {threads} CPU"
                f"{'s' if threads > 1 else ''} (affinity mask / cgroup quota)")
    return None


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Set torch's intra-op threads for the block (None or 0: leave them), then restore them:
    the app's --threads, and a script's latency figure measured on as many threads as the app."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
