"""The live app on a long video: faces found per appearance, track ids, false boxes, memory.

    python scripts/long_run.py [--frames 10000] [--model models:/fer/Production] [--out long_run/]

Renders a 640x480 video (seeded): matplotlib's grace_hopper drifting over blurred noise in
four appearances, and scikit-image's astronaut photo at 200x200 px (a ~65 px face) beside
her during the second half of each. Runs the real app on it
(`python -m emovision.webcam --no-display --log`), samples the app's resident memory every
few seconds, and scores the log against the rendered truth: a face counts as found in a
frame when a logged box's centre lies inside its true region.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import psutil

SIZE = (640, 480)
FPS = 30
GRACE_SIZE = (180, 225)
ASTRO_BOX = (420, 140, 200, 200)  # right of Grace's path: the two never overlap
APPEARANCE = 0.2  # of the frames: four appearances with gaps of 1/20 of the video between them
RSS_EVERY_S = 5.0


def render(path: Path, frames: int, seed: int = 0) -> list[dict]:
    """Write the video; return per frame the true regions [x, y, w, h] of each face (or None)."""
    from matplotlib import cbook
    from skimage import data

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        grace = cv2.resize(cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR), GRACE_SIZE)
    ax, ay, aw, ah = ASTRO_BOX
    astro = cv2.resize(data.astronaut()[:, :, ::-1], (aw, ah), interpolation=cv2.INTER_AREA)
    w, h = SIZE
    noise = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    background = cv2.GaussianBlur(noise, (0, 0), 6)
    length = int(frames * APPEARANCE)
    starts = [int(frames * (0.04 + 0.25 * k)) for k in range(4)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    truth = []
    for i in range(frames):
        frame, here = background.copy(), {"grace": None, "astronaut": None}
        for start in starts:
            if start <= i < start + length:
                u = (i - start) / length
                x = int(20 + 200 * (0.5 + 0.5 * np.sin(6 * np.pi * u)))
                y = int(60 + 80 * (0.5 + 0.5 * np.cos(4 * np.pi * u)))
                frame[y:y + GRACE_SIZE[1], x:x + GRACE_SIZE[0]] = grace
                here["grace"] = [x, y, *GRACE_SIZE]
                if u >= 0.5:
                    frame[ay:ay + ah, ax:ax + aw] = astro
                    here["astronaut"] = list(ASTRO_BOX)
        writer.write(frame)
        truth.append(here)
    writer.release()
    return truth


def run_app(video: Path, log: Path, model: str) -> tuple[list[float], str]:
    """The real app, headless; its resident memory in MB every RSS_EVERY_S and its summary line."""
    cmd = [sys.executable, "-m", "emovision.webcam", "--model", model, "--source", str(video),
           "--no-display", "--log", str(log)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    app, rss = psutil.Process(proc.pid), []
    while proc.poll() is None:
        try:
            rss.append(app.memory_info().rss / 2**20)
        except psutil.NoSuchProcess:
            break
        time.sleep(RSS_EVERY_S)
    out = proc.stdout.read()
    if proc.returncode != 0:
        sys.exit(f"error: the app failed (exit {proc.returncode}): {out.strip().splitlines()[-1:]}")
    return rss, out.strip().splitlines()[-1]


def score(truth: list[dict], log: Path) -> dict:
    records = [json.loads(line) for line in log.read_text().splitlines()]

    def inside(box, region) -> bool:
        x, y, w, h = box
        rx, ry, rw, rh = region
        return rx <= x + w / 2 <= rx + rw and ry <= y + h / 2 <= ry + rh

    out = {}
    for who in ("grace", "astronaut"):
        frames = found = 0
        ids: list[set] = []
        for i, (here, rec) in enumerate(zip(truth, records)):
            region = here[who]
            if region is None:
                continue
            if i == 0 or truth[i - 1][who] is None:
                ids.append(set())  # a new appearance
            frames += 1
            hits = [f for f in rec["faces"] if inside(f["box"], region)]
            if hits:
                found += 1
                ids[-1].update(f["track_id"] for f in hits)
        out[who] = {"frames": frames, "found": found, "ids_per_appearance": [len(s) for s in ids]}
    out["false_boxes"] = sum(1 for here, rec in zip(truth, records) for f in rec["faces"]
                             if not any(here[k] and inside(f["box"], here[k]) for k in ("grace", "astronaut")))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=10_000)
    p.add_argument("--model", default="models:/fer/Production")
    p.add_argument("--out", type=Path, default=Path("long_run"))
    args = p.parse_args()
    if args.frames < 100:
        sys.exit("error: --frames must be at least 100")
    args.out.mkdir(parents=True, exist_ok=True)
    truth = render(args.out / "long.mp4", args.frames)
    rss, summary = run_app(args.out / "long.mp4", args.out / "faces.jsonl", args.model)
    result = score(truth, args.out / "faces.jsonl")
    print(summary)
    for who in ("grace", "astronaut"):
        r = result[who]
        print(f"{who}: found in {r['found']} of {r['frames']} frames ({r['found'] / max(1, r['frames']):.1%}); "
              f"track ids per appearance: {r['ids_per_appearance']}")
    print(f"false boxes: {result['false_boxes']}")
    if rss:
        warm = rss[min(2, len(rss) - 1)]  # the first samples are taken while the app still loads
        print(f"app memory (MB, every {RSS_EVERY_S:.0f} s): after warm-up {warm:.0f}, last {rss[-1]:.0f}, "
              f"max {max(rss):.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
