"""Training images/s of a model with and without bf16 autocast and channels_last.

    python scripts/bench_train_modes.py [--model cnn_small] [--width 48] [--repeats 7]

The four variants run interleaved (round-robin), so a noisy shared machine slows them
alike; medians are reported, with each variant's ratio to fp32 / NCHW.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch
import torch.nn.functional as F

from emovision.config import AugmentParams
from emovision.data.augment import augment_batch
from emovision.models import create_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cnn_small")
    p.add_argument("--width", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 1, 48, 48)
    y = torch.randint(0, 7, (args.batch_size,))
    variants = {}
    for bf16, cl in itertools.product((False, True), (False, True)):
        model = create_model(args.model, width=args.width)
        fmt = torch.channels_last if cl else torch.contiguous_format
        model = model.to(memory_format=fmt)
        variants[(bf16, cl)] = (model, torch.optim.AdamW(model.parameters()), fmt)

    def run(key) -> float:
        model, opt, fmt = variants[key]
        start = time.perf_counter()
        for _ in range(args.steps):
            xb = augment_batch(x, AugmentParams()).contiguous(memory_format=fmt)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=key[0]):
                loss = F.cross_entropy(model(xb).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return args.steps * args.batch_size / (time.perf_counter() - start)

    for key in variants:  # warm-up
        run(key)
    rates = {key: [] for key in variants}
    for _ in range(args.repeats):
        for key in variants:
            rates[key].append(run(key))
    base = statistics.median(rates[(False, False)])
    print(f"{args.model} width {args.width}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} interleaved repeats")
    for (bf16, cl), r in rates.items():
        med = statistics.median(r)
        print(f"  {'bf16' if bf16 else 'fp32'} {'channels_last' if cl else 'NCHW         '}  "
              f"{med:7.0f} img/s  x{med / base:.2f}")


if __name__ == "__main__":
    main()
