"""CPU ms per face at batch 1, with and without flip TTA: the latency column of the README's
shipped-model table and the model card, measured the way they state it.

    python scripts/latency.py [MODEL ...] [--backends torch onnx] [--threads 1]
                              [--rounds 5] [--calls 100]

MODEL: any `load_classifier` reference (default: pretrained, teachers/cnn-w48-s42 and
pretrained-ensemble). Each round times `--calls` batch-1 calls of one random 48x48 face
(after a warm-up call) for every model, backend and TTA mode, in an order reversed every
other round so a busy machine slows them alike; the figure is the median of the rounds'
medians, printed with the rounds' spread (min-max). `onnx` runs the model on ONNX Runtime
(the apps' CPU backend; exported once into the ONNX cache). No data is read: the figures
depend on the architecture and the machine, not on the faces.
"""
from __future__ import annotations

import argparse
import platform
import statistics

import numpy as np
import torch

from emovision.device import torch_threads, usable_cpus
from emovision.errors import ConfigError, cli_main
from emovision.inference import load_classifier
from stages.bench import timed

DEFAULT_MODELS = ("pretrained", "teachers/cnn-w48-s42", "pretrained-ensemble")


def round_medians(classifiers: dict[tuple[str, str], object], threads: int, rounds: int,
                  calls: int) -> dict[tuple[str, str, bool], list[float]]:
    """{(model, backend, tta): [median ms of `calls` batch-1 calls, one per round]}."""
    face = np.random.default_rng(0).integers(0, 256, (1, 48, 48), dtype=np.uint8)
    configs = [(model, backend, tta) for model, backend in classifiers for tta in (False, True)]
    out: dict[tuple[str, str, bool], list[float]] = {c: [] for c in configs}
    with torch_threads(threads):
        for r in range(rounds):
            for model, backend, tta in configs if r % 2 == 0 else reversed(configs):
                clf = classifiers[model, backend]
                seconds = timed(lambda: clf.predict_proba(face, tta=tta), calls, lambda: None)
                out[model, backend, tta].append(1000 * statistics.median(seconds))
    return out


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=list(DEFAULT_MODELS), metavar="MODEL")
    p.add_argument("--backends", nargs="+", default=["torch"], choices=("torch", "onnx"))
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default: %(default)s, as the app)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=100, help="batch-1 calls timed per round and configuration")
    args = p.parse_args(argv)
    for name in ("rounds", "calls"):  # checked before any model loads
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not 1 <= args.threads <= usable_cpus():
        raise ConfigError(f"--threads must be 1..{usable_cpus()} (the CPUs this process may use), got {args.threads}")
    with torch_threads(args.threads):  # an ONNX Runtime session takes torch's thread count when made
        classifiers = {(m, b): load_classifier(m, "cpu", backend=b) for m in args.models for b in args.backends}
    times = round_medians(classifiers, args.threads, args.rounds, args.calls)
    print(f"batch 1, {args.threads} thread(s), median of {args.rounds} rounds of {args.calls} calls "
          f"(min-max of the rounds); {platform.processor() or platform.machine()}, torch {torch.__version__}")
    print("| model | backend | TTA | ms per face | rounds min-max |")
    print("|---|---|---|---|---|")
    for (model, backend, tta), ms in times.items():
        print(f"| {model} | {backend} | {'flip' if tta else 'none'} | {statistics.median(ms):.2f} "
              f"| {min(ms):.2f}-{max(ms):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
