"""How fast a whole split scores on CPU at each batch size, and whether the probabilities move.

    python scripts/score_batches.py [--models pretrained pretrained-ensemble fit-val resnet_fer]
                                    [--threads 1 2] [--batches 16 32 64 128 256 512]
                                    [--rounds 3] [--faces 0] [--prepared data/prepared]

Each row times one pass over PublicTest (never PrivateTest: this measures what to choose)
as the library's callers make it, both ways at once (plain and flip TTA, two forwards):

- a model reference (`pretrained`, `pretrained-ensemble`, any `load_classifier` ref):
  `EmotionClassifier.predict_proba_both(x, batch_size=B)` (evaluate, the gate, ship_model);
- an architecture name (`resnet_fer`): the same, untrained, at its default width;
- `fit-val`: `training.evaluate` on the EMA copy of params.yaml's model (untrained), as `fit`
  calls it after every epoch; its compared "probabilities" are val_loss, val_acc, val_acc_tta.

Configurations alternate within each round (reversed every other round) so a busy machine
slows them alike; figures are the median wall and CPU seconds (process time, all threads) of
`--rounds` passes, with the spread. Probabilities at each batch are compared with those at
`scoring.DEFAULT_BATCH`: the largest absolute difference and how many predicted classes change.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from emovision import scoring, training
from emovision.config import load_params
from emovision.data.prepared import load_split
from emovision.device import torch_threads
from emovision.errors import cli_main
from emovision.inference import EmotionClassifier, load_classifier
from emovision.models import create_model, trainable_models

FIT_VAL = "fit-val"
SPLIT = "val"  # PublicTest


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def scorers(names: list[str], x: np.ndarray, y: np.ndarray):
    """name -> fn(batch) returning (plain, tta) probabilities as numpy arrays."""
    params = load_params()
    pre = training.preprocess_config(params)
    out = {}
    for name in names:
        if name == FIT_VAL:
            model = create_model(params.model.name, num_classes=7, **params.model.kwargs())
            if params.train.channels_last:
                model = model.to(memory_format=torch.channels_last)
            ema = training.ModelEma(model, params.train.ema_decay).module  # what fit validates
            val = training.to_tensors(x, y, pre, torch.device("cpu"))
            # the metrics stand in for probabilities: (1, 3) arrays compared like them below
            out[name] = lambda b, m=ema, v=val: (np.array([list(training.evaluate(m, v, pre, b).values())]),)
        elif name in trainable_models():
            clf = EmotionClassifier(create_model(name, num_classes=7).eval(), range(7), pre, "cpu")
            out[name] = lambda b, c=clf: c.predict_proba_both(x, batch_size=b)
        else:
            clf = load_classifier(name, "cpu")
            out[name] = lambda b, c=clf: c.predict_proba_both(x, batch_size=b)
    return out


@cli_main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["pretrained", FIT_VAL])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--batches", nargs="+", type=int, default=[16, 32, 64, 128, 256, 512])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--faces", type=int, default=0, help="score only the first N faces (0: all)")
    ap.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    args = ap.parse_args(argv)

    x, y = load_split(args.prepared, SPLIT)
    if args.faces:
        x, y = x[:args.faces], y[:args.faces]
    score = scorers(args.models, x, y)
    configs = [(m, t, b) for m in args.models for t in args.threads for b in args.batches]
    wall = {c: [] for c in configs}
    cpu = {c: [] for c in configs}
    probs = {}
    for name in args.models:  # warm-up: oneDNN builds its kernels on first use of a shape
        with torch_threads(args.threads[0]):
            probs[name, scoring.DEFAULT_BATCH] = score[name](scoring.DEFAULT_BATCH)
    for r in range(args.rounds):
        for c in (configs if r % 2 == 0 else configs[::-1]):
            name, threads, batch = c
            with torch_threads(threads):
                w, p = time.perf_counter(), time.process_time()
                out = score[name](batch)
                wall[c].append(time.perf_counter() - w)
                cpu[c].append(time.process_time() - p)
            probs.setdefault((name, batch), out)
            print(f"round {r + 1} {name} {threads} thr batch {batch}: {wall[c][-1]:.2f} s, "
                  f"{cpu[c][-1]:.2f} CPU-s", flush=True)

    print(f"\n{cpu_name()}, torch {torch.__version__}, {len(x):,} faces of PublicTest, "
          f"{args.rounds} rounds; plain + flip TTA per pass; vs batch {scoring.DEFAULT_BATCH}\n")
    print("| model | threads | batch | wall s median (min-max) | CPU-s median (min-max) | max abs diff | argmax changes |")
    print("|---|---|---|---|---|---|---|")
    for c in configs:
        name, threads, batch = c
        ref, got = probs[name, scoring.DEFAULT_BATCH], probs[name, batch]
        diff = max(float(np.abs(a - b).max()) for a, b in zip(ref, got))
        flips = "-" if name == FIT_VAL else sum(int((a.argmax(1) != b.argmax(1)).sum())
                                                for a, b in zip(ref, got))
        print(f"| {name} | {threads} | {batch} | {statistics.median(wall[c]):.2f} ({min(wall[c]):.2f}-"
              f"{max(wall[c]):.2f}) | {statistics.median(cpu[c]):.2f} ({min(cpu[c]):.2f}-{max(cpu[c]):.2f}) "
              f"| {diff:.1e} | {flips} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
