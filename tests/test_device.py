"""CPU counts under restricted CPUs: an affinity mask (taskset, a cpuset) and a cgroup quota."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emovision.device import CGROUP_ROOT, affinity_cpus, cgroup_cpu_limit, quota_thread_env, usable_cpus
from tests.conftest import REPO, write_params

V1_QUOTA = CGROUP_ROOT / "cpu" / "cpu.cfs_quota_us"


def cgroup(tmp_path: Path, v2: str | None = None, v1: tuple[str, str] | None = None) -> Path:
    """A cgroup folder holding the files the kernel writes, with their real contents."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2)
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(v1[0])
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(v1[1])
    return tmp_path


@pytest.mark.parametrize("v2, v1, limit", [
    ("max 100000\n", None, None),             # v2, no quota (the default)
    ("100000 100000\n", None, 1.0),           # docker run --cpus 1
    ("150000 100000\n", None, 1.5),           # docker run --cpus 1.5
    ("50000 100000\n", None, 0.5),            # a Kubernetes limit of 500m
    (None, ("-1\n", "100000\n"), None),       # v1, no quota (this machine's files)
    (None, ("200000\n", "100000\n"), 2.0),    # v1, --cpus 2
    (None, None, None),                       # no cgroup files (macOS, a bare chroot)
])
def test_the_cgroup_quota_is_read_from_the_kernels_files(tmp_path, v2, v1, limit):
    assert cgroup_cpu_limit(cgroup(tmp_path, v2, v1)) == limit


@pytest.mark.skipif(not V1_QUOTA.is_file(), reason="no cgroup v1 cpu controller here")
def test_this_machines_own_cgroup_files_parse(tmp_path):
    real = (V1_QUOTA.read_text(), (V1_QUOTA.parent / "cpu.cfs_period_us").read_text())
    expected = int(real[0]) / int(real[1]) if int(real[0]) > 0 else None
    assert cgroup_cpu_limit(cgroup(tmp_path, v1=real)) == expected


def test_a_quota_cuts_the_usable_cpus_and_torchs_threads(tmp_path):
    """torch starts a thread per CPU of the affinity mask, and a quota does not shrink the mask."""
    half = cgroup(tmp_path / "half", v2="50000 100000\n")
    one_and_a_half = cgroup(tmp_path / "1.5", v2="150000 100000\n")
    unlimited = cgroup(tmp_path / "max", v2="max 100000\n")
    assert usable_cpus(half) == 1
    assert usable_cpus(one_and_a_half) == min(2, affinity_cpus())
    assert usable_cpus(unlimited) == affinity_cpus()
    assert quota_thread_env(half) == ({"OMP_NUM_THREADS": "1"} if affinity_cpus() > 1 else {})
    assert quota_thread_env(unlimited) == {}


TASKSET = shutil.which("taskset")
needs_taskset = pytest.mark.skipif(TASKSET is None or not hasattr(os, "sched_getaffinity"),
                                   reason="needs taskset (Linux util-linux)")


def one_cpu(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """`code` in a fresh Python allowed only the first CPU of this process's mask."""
    first = str(min(os.sched_getaffinity(0)))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("OMP_NUM_THREADS", None)
    return subprocess.run([TASKSET, "-c", first, sys.executable, "-c", code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@needs_taskset
def test_on_one_cpu_every_library_runs_one_thread(tmp_path):
    out = one_cpu("import emovision, cv2, torch\n"
                  "from emovision.device import usable_cpus\n"
                  "print(usable_cpus(), torch.get_num_threads(), cv2.getNumThreads())", tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1", "1"]


@needs_taskset
def test_train_threads_above_the_usable_cpus_are_capped(tmp_path):
    """A params.yaml with train.threads 2 (a 2-core colleague's) ran 2 threads on a 1-CPU runner:
    cnn_small trained 20% slower (747-774 img/s vs 895-959, taskset -c 0)."""
    write_params(tmp_path / "params.yaml", {"train": {"threads": 2}})
    prepared = one_cpu("from stages.prepare import main; main([])", tmp_path)
    assert prepared.returncode == 0, prepared.stderr
    out = one_cpu("import torch\n"
                  "from emovision.config import load_params\n"
                  "from emovision.training import load_train_val\n"
                  "load_train_val(load_params('params.yaml'))\n"
                  "print('threads', torch.get_num_threads())", tmp_path)
    assert out.returncode == 0, out.stderr
    assert "train.threads 2 -> 1: this process may use 1 CPU" in out.stdout
    assert out.stdout.splitlines()[-1] == "threads 1"
