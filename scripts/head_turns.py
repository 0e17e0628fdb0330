"""Head turns through the real app (issue 11): does a face keep its id when the head turns?

    python scripts/head_turns.py --out turns/ [--code PATH] [--seeds 0-3]

Seeded 640x480 mp4v clips of grace_hopper or the astronaut (220-300 px photo) on a brick wall:
squashed sideways to cos(80 degrees) and back in 6, 10 or 16 frames (a head turning), turned
away (cos 85 degrees) and held 10 or 20 frames, or turned round to the other side (squashed, then
shown mirrored: a crude stand-in, as a real head shows its back). Runs the real app headless on
each (`python -m emovision.webcam --no-display --log`, with `--code` first on PYTHONPATH, so two
versions run on the same clips) and prints frames with a face and the track ids per clip.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.media import astronaut, grace_hopper  # noqa: E402

SIZE, FPS, STILL = (640, 480), 30, 30  # frames before and after each turn


def room(seed: int) -> np.ndarray:
    from skimage import data

    wall = cv2.resize(data.brick(), SIZE, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(np.roll(wall, 37 * seed, axis=1), cv2.COLOR_GRAY2BGR)


def render(bg: np.ndarray, photo: np.ndarray, cx: float, cy: float, h: int, squash: float, mirror: bool) -> np.ndarray:
    img = cv2.resize(photo, (int(round(h * photo.shape[1] / photo.shape[0])), h), interpolation=cv2.INTER_AREA)
    img = img[:, ::-1] if mirror else img
    img = cv2.resize(img, (max(2, int(round(img.shape[1] * squash))), h), interpolation=cv2.INTER_AREA)
    out = bg.copy()
    x, y = int(cx - img.shape[1] / 2), int(cy - h / 2)
    out[y:y + h, x:x + img.shape[1]] = img
    return out


def clips(seed: int):
    rng = np.random.default_rng(seed)
    for who, photo in (("hopper", grace_hopper()), ("astro", astronaut())):
        bg, h, cx = room(seed), int(rng.uniform(220, 300)), rng.uniform(200, 440)
        shot = lambda squash=1.0, mirror=False: render(bg, photo, cx, 240, h, squash, mirror)  # noqa: E731
        still = [shot()] * STILL
        for n in (6, 10, 16):
            turn = [math.cos(math.radians(80 * math.sin(math.pi * k / n))) for k in range(n + 1)]
            yield f"{who}-squash{n}", still + [shot(f) for f in turn] + still
        away = [math.cos(math.radians(85 * k / 5)) for k in range(6)]
        for hold in (10, 20):
            yield f"{who}-away{hold}", still + [shot(f) for f in away + [away[-1]] * hold + away[::-1]] + still
        turn = [abs(math.cos(math.radians(18 * k))) for k in range(11)]
        yield f"{who}-round", still + [shot(max(f, 0.05), k > 5) for k, f in enumerate(turn)] + [shot(1.0, True)] * STILL


def seeds(text: str) -> list[int]:
    a, _, b = text.partition("-")
    return list(range(int(a), int(b or a) + 1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="clips and logs go here (clips are reused)")
    p.add_argument("--code", type=Path, default=REPO, help="the emovision checkout to run (default: this one)")
    p.add_argument("--seeds", default="0-3")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    one, total, found = 0, 0, 0
    for seed in seeds(a.seeds):
        for name, frames in clips(seed):
            video = a.out / f"s{seed}-{name}.mp4"
            if not video.exists():
                tmp = video.with_suffix(".partial.mp4")
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
                for f in frames:
                    writer.write(f)
                writer.release()
                tmp.replace(video)
            log = a.out / f"s{seed}-{name}.{a.code.resolve().name}.jsonl"
            log.unlink(missing_ok=True)
            done = subprocess.run([sys.executable, "-m", "emovision.webcam", "--model", "pretrained", "--source",
                                   str(video), "--no-display", "--log", str(log)], capture_output=True, text=True,
                                  cwd=a.code, env={**os.environ, "PYTHONPATH": str(a.code.resolve())})
            if done.returncode:
                print(done.stderr[-2000:], file=sys.stderr)
                return done.returncode
            records = [json.loads(line) for line in log.read_text().splitlines()]
            ids = sorted({f["track_id"] for r in records for f in r["faces"]})
            shown = sum(bool(r["faces"]) for r in records)
            one, total, found = one + (len(ids) == 1), total + 1, found + shown
            print(f"seed {seed} {name:<15} {shown:>3}/{len(records)} frames with a face, ids {ids}", flush=True)
    print(f"one id in {one} of {total} clips; {found} frames with a face")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
