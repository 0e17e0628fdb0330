"""emovision: facial emotion recognition you can reproduce, tune and demo."""
from __future__ import annotations

import os

# PyTorch's CPU threads (GNU OpenMP) spin-wait between parallel regions unless told otherwise.
# On a machine doing anything else (a browser, another training) the spinning threads hold the
# cores the working thread needs. Measured on a 2-core CPU (scripts/busy_cpu.py, both policies
# side by side, torch on 2 threads): with other work running, one face took 177-900 ms instead
# of 8-14 and training ran at 47-137 images/s instead of 235-497. On an idle CPU passive waiting
# costs ~5.5 ms on a one-face call (4.2 -> 9.8 ms) and within 5% on batches and training: a
# small price against a 5-100x loss. The live app classifies on one thread and is unaffected.
# OpenMP reads this once, when torch loads, so it is set before anything here imports torch;
# a user's own setting wins, and a script that imports torch before emovision keeps OpenMP's
# default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# OpenMP starts one thread per CPU of the affinity mask, but a container's CPU quota (`docker run
# --cpus 1`, a Kubernetes limit) is no affinity: torch would run a thread per CPU of the host and
# have the quota throttle them (OpenCV reads the quota itself). Read with OMP_WAIT_POLICY, once,
# when torch loads; a user's own OMP_NUM_THREADS wins. device.py owns the count.
from emovision.device import quota_thread_env  # noqa: E402  (no torch import: kept light)

for _name, _value in quota_thread_env().items():
    os.environ.setdefault(_name, _value)

__version__ = "0.1.0"
__all__ = ["load_classifier", "__version__"]


def __getattr__(name: str):
    # Lazy, so `import emovision` stays light (no torch import) for CLI start-up.
    if name == "load_classifier":
        from emovision.inference import load_classifier

        return load_classifier
    raise AttributeError(f"module 'emovision' has no attribute {name!r}")
