"""PyTorch on a CPU that is doing something else: OpenMP's wait policy, measured side by side.

    python scripts/busy_cpu.py [--busy 1] [--rounds 3] [--model pretrained]

PyTorch's CPU threads (GNU OpenMP) spin-wait between parallel regions unless told otherwise.
On a machine with other work (a browser, a second training) the spinning threads hold the
cores the working thread needs. `import emovision` therefore sets OMP_WAIT_POLICY=PASSIVE
unless the user set it (emovision/__init__.py). This script measures what that changes, with
the machine as it is and with `--busy` more processes each spinning one core, alternating the two
policies in fresh processes (OpenMP reads the variable once, when torch loads; the probe
imports torch first, as a user's script may):

- classify one face with flip TTA (the app's and `predict`'s call), median ms of 40 calls;
- classify 256 faces without TTA (evaluate's batches), ms per face;
- cnn_small w48 training steps (batch 128, fp32, AdamW), images per second.

Figures are medians over `--rounds` fresh processes per policy; torch uses all cores.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# OMP_WAIT_POLICY unset (GNU OpenMP spins a while, then sleeps: torch's behaviour unless told
# otherwise) and PASSIVE (sleeps at once). The probe imports torch before emovision, so the
# unset case stays unset.
# (A short spin, GOMP_SPINCOUNT=10000, measured worse than both under load: 64-108 ms a face.)
POLICIES = {"unset": {}, "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}}

# Run in a fresh interpreter with OMP_WAIT_POLICY set: prints one JSON line of figures.
PROBE = """
import json, statistics, sys, time
import numpy as np, torch
from emovision.inference import load_classifier
from emovision.models import create_model

clf = load_classifier(sys.argv[1], "cpu")
rng = np.random.default_rng(0)
one, many = rng.integers(0, 256, (1, 48, 48), np.uint8), rng.integers(0, 256, (256, 48, 48), np.uint8)

def median_s(fn, n):
    fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)

model = create_model("cnn_small", width=48).to(memory_format=torch.channels_last)
opt = torch.optim.AdamW(model.parameters(), 1e-3)
x = torch.randn(128, 1, 48, 48).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 7, (128,))

def step():
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()

print(json.dumps({"one_face_ms": 1000 * median_s(lambda: clf.predict_proba(one, tta=True), 40),
                  "batch_ms_per_face": 1000 * median_s(lambda: clf.predict_proba(many, tta=False), 3) / 256,
                  "train_img_s": 128 / median_s(step, 6), "threads": torch.get_num_threads()}))
"""


def spin() -> None:
    while True:
        pass


def probe(policy: dict[str, str], model: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update({"PYTHONPATH": str(REPO), **policy})
    out = subprocess.run([sys.executable, "-c", PROBE, model], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(busy: int, rounds: int, model: str) -> dict[str, dict[str, float]]:
    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(busy)]
    for p in spinners:
        p.start()
    try:
        runs: dict[str, list[dict]] = {policy: [] for policy in POLICIES}
        for _ in range(rounds):  # alternating, so drift in the machine's load hits both alike
            for policy, value in POLICIES.items():
                runs[policy].append(probe(value, model))
    finally:
        for p in spinners:
            p.terminate()
    return {policy: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for policy, rs in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=1, help="other processes spinning one core each (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per policy and load (default 3)")
    parser.add_argument("--model", default="pretrained", help="model reference to classify with")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} before the run "
          f"(what else runs counts too); medians of {args.rounds} processes per policy")
    print("| added load | OMP_WAIT_POLICY | one face, TTA (ms) | 256 faces (ms per face) | training (img/s) |")
    print("|---|---|---|---|---|")
    for busy in (0, args.busy):
        figures = measure(busy, args.rounds, args.model)
        for policy in POLICIES:
            f = figures[policy]
            print(f"| {f'{busy} spinning process(es)' if busy else 'none'} | {policy} | {f['one_face_ms']:.2f} "
                  f"| {f['batch_ms_per_face']:.2f} | {f['train_img_s']:.0f} |")


if __name__ == "__main__":
    main()
