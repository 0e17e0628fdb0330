"""Faces entering and leaving the frame, through the real webcam app (the tenth session's
edge harness; docs/live-app.md: Faces at the frame's edge).

    python scripts/edge_faces.py --seeds 0-5 --out after.json [--videos DIR] [--detector haar]
        [--extra "--detect-every 3"]
    python scripts/edge_faces.py --table before.json after.json

grace_hopper and the astronaut at 90-150 px slide out of each edge and back, enter and leave,
or are held half outside, on flat, noisy and natural backgrounds, plus faceless clips; each clip
is written to mp4 and run through `emovision.webcam.main` (what the CLI calls). Scored per clip:
frames found where at least half the face shows, partly visible frames found, boxes off the
face, ghost boxes after the face left, track ids. Videos are made once per seed (cached in
--videos) so that two code versions (PYTHONPATH) run on the same clips.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))  # the photos and face boxes the tests use (tests/media.py); after PYTHONPATH, whose
# emovision is the code measured
VID = Path(tempfile.gettempdir()) / "emovision-edge-videos"
W, H = 640, 480
EDGES = ("left", "right", "top", "bottom")


def photos():
    from tests.media import ASTRONAUT_FACE, HOPPER_FACE, astronaut, grace_hopper
    return {"hopper": (grace_hopper(), HOPPER_FACE), "astronaut": (astronaut(), ASTRONAUT_FACE)}


def scenes():
    from skimage import data
    out = []
    for name in ("clock", "coffee", "rocket", "brick", "grass", "gravel", "moon", "page", "coins"):
        img = getattr(data, name)()
        if img.ndim == 3:
            img = cv2.cvtColor(img[..., :3], cv2.COLOR_RGB2GRAY)
        out.append(cv2.cvtColor(cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2BGR))
    return out


def background(kind, rng, sc):
    if kind == "flat":
        return np.full((H, W, 3), int(rng.integers(30, 220)), np.uint8)
    if kind == "noise":
        g = np.clip(rng.normal(rng.uniform(60, 200), 25, (H, W)), 0, 255).astype(np.uint8)
        return cv2.cvtColor(g, cv2.COLOR_GRAY2BGR)
    return sc[int(rng.integers(len(sc)))].copy()


def paste(bg, photo, face, cx, cy, width):
    """photo scaled so its face box is `width` wide, face centred at (cx, cy), cut at the frame."""
    fx, fy, fw, fh = face
    s = width / fw
    img = cv2.resize(photo, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    frame = bg.copy()
    x, y = int(round(cx - (fx + fw / 2) * s)), int(round(cy - (fy + fh / 2) * s))
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(W, x + img.shape[1]), min(H, y + img.shape[0])
    if x1 > x0 and y1 > y0:
        frame[y0:y1, x0:x1] = img[y0 - y:y1 - y, x0 - x:x1 - x]
    return frame, (cx - fw * s / 2, cy - fh * s / 2, fw * s, fh * s)


def centre_for(edge, outside, width, along):
    """Face centre so that fraction `outside` of the face box is past `edge` (negative: inside,
    -outside*width from the edge); `along`: position along the edge, 0..1 of the free range."""
    half = width / 2
    if edge in ("left", "right"):
        cy = half + along * (H - width)
        cx = half - outside * width if edge == "left" else W - half + outside * width
    else:
        cx = half + along * (W - width)
        cy = half - outside * width if edge == "top" else H - half + outside * width
    return cx, cy


def visible(box):
    x, y, w, h = box
    ix = max(0, min(W, x + w) - max(0, x))
    iy = max(0, min(H, y + h) - max(0, y))
    return ix * iy / (w * h)


def write(path, frames):
    h, w = frames[0].shape[:2]  # webcam_cases' clips come in many sizes
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (w, h))
    for f in frames:
        wr.write(f)
    wr.release()


def make_cases(seed):
    """[(name, group, frames, truth boxes (None for no face))]."""
    rng = np.random.default_rng(seed)
    ph = photos()
    sc = scenes()
    cases = []
    names = list(ph)
    # slide out until m outside, hold, back
    for edge in EDGES:
        for m in (0.3, 0.5, 0.7):
            photo, face = ph[names[int(rng.integers(2))]]
            width = rng.uniform(90, 150)
            along = rng.uniform(0.2, 0.8)
            bg = background("flat", rng, sc)
            steps = int(rng.integers(18, 26))
            path = list(np.full(10, -0.2)) + list(np.linspace(-0.2, m, steps)) + [m] * 10 + \
                list(np.linspace(m, -0.2, steps)) + [-0.2] * 10
            frames, truth = [], []
            for o in path:
                f, b = paste(bg, photo, face, *centre_for(edge, o, width, along), width)
                frames.append(f)
                truth.append(b)
            cases.append((f"slide-{edge}-{int(m * 100)}", f"slide{int(m * 100)}", frames, truth))
    # enter from outside, stay, leave, gone
    for edge in EDGES:
        photo, face = ph[names[int(rng.integers(2))]]
        width = rng.uniform(90, 150)
        along = rng.uniform(0.2, 0.8)
        bg = background(["flat", "noise", "natural"][int(rng.integers(3))], rng, sc)
        steps = int(rng.integers(25, 35))
        path = [1.1] * 5 + list(np.linspace(1.1, -0.2, steps)) + [-0.2] * 15 + list(np.linspace(-0.2, 1.1, steps)) + [1.1] * 15
        frames, truth = [], []
        for o in path:
            f, b = paste(bg, photo, face, *centre_for(edge, o, width, along), width)
            frames.append(f)
            truth.append(b if visible(b) > 0 else None)
        cases.append((f"enter-{edge}", "enter", frames, truth))
    # static half outside at an edge, on flat / noisy / natural backgrounds
    for kind in ("flat", "noise", "natural"):
        for edge in EDGES:
            photo, face = ph[names[int(rng.integers(2))]]
            width = rng.uniform(90, 150)
            along = rng.uniform(0.2, 0.8)
            bg = background(kind, rng, sc)
            frames, truth = [], []
            for i in range(40):
                f, b = paste(bg, photo, face, *centre_for(edge, 0.5, width, along), width)
                frames.append(f)
                truth.append(b)
            cases.append((f"half-{kind}-{edge}", f"half-{kind}", frames, truth))
    # no face: noise (uniform, gaussian, blurred) and natural scenes, some frames each
    frames = []
    for i in range(60):
        k = i % 4
        if k == 0:
            frames.append(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        elif k == 1:
            frames.append(background("noise", rng, sc))
        elif k == 2:
            frames.append(cv2.GaussianBlur(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), (0, 0), 3))
        else:
            frames.append(background("natural", rng, sc))
    cases.append(("noise", "noise", frames, [None] * len(frames)))
    return cases


def on_face(box, truth):
    x, y, w, h = box
    tx, ty, tw, th = truth
    return tx <= x + w / 2 <= tx + tw and ty <= y + h / 2 <= ty + th and 0.45 <= max(w, h) / max(tw, th) <= 2.2


def score(log, truth):
    recs = [json.loads(l) for l in open(log)]
    assert len(recs) == len(truth), (len(recs), len(truth))
    out = dict(vis50=0, found50=0, part=0, found_part=0, vis30_50=0, found30_50=0, off=0, ghost=0, ids=set(),
               frames=len(truth))
    for rec, t in zip(recs, truth):
        faces = rec["faces"]
        if t is None:
            out["ghost"] += len(faces) > 0
            out["off"] += len(faces)
            continue
        v = visible(t)
        on = [f for f in faces if on_face(f["box"], t)]
        out["off"] += len(faces) - len(on)
        out["ids"] |= {f["track_id"] for f in on}
        if v >= 0.5 - 1e-9:
            out["vis50"] += 1
            out["found50"] += bool(on)
            if v < 0.99:
                out["part"] += 1
                out["found_part"] += bool(on)
        elif v >= 0.3 - 1e-9:
            out["vis30_50"] += 1
            out["found30_50"] += bool(on)
    out["ids"] = len(out["ids"])
    return out


def run_app(video, log, extra):
    """The real app headless on `video` (scripts/webcam_cases.py runs it too): its exit code, and
    from its summary line the fps processing and detect ms on detection frames (None if absent)."""
    from emovision import webcam
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = webcam.main(["--model", "pretrained", "--source", str(video), "--no-display", "--log", str(log), *extra])
    fps = re.search(r"([\d.]+) fps processing", buf.getvalue())
    detect = re.search(r"detect ([\d.]+) \(on detection frames\)", buf.getvalue())
    return rc, float(fps[1]) if fps else None, float(detect[1]) if detect else None


def table(files: list[str]) -> None:
    """Per group and file: found/visible>=50%, partly visible, 30-50% visible, off-face boxes,
    ghost boxes, ids per clip (clips with more than one id)."""
    tabs = []
    for f in files:
        g = defaultdict(lambda: defaultdict(float))
        for r in json.loads(Path(f).read_text()):
            for k in ("vis50", "found50", "part", "found_part", "vis30_50", "found30_50", "off", "ghost", "frames"):
                g[r["group"]][k] += r[k]
            g[r["group"]]["clips"] += 1
            g[r["group"]]["multi_id"] += r["ids"] > 1
            g[r["group"]]["ids"] += r["ids"]
        tabs.append((f, g))
    print(f"{'group':<13}" + "".join(f" | {f[-22:]:>44}" for f, _ in tabs))
    print(f"{'':<13}" + " | found>=50%  partly    30-50%  off ghost ids(clips>1)" * len(tabs))
    for grp in tabs[0][1]:
        line = f"{grp:<13}"
        for _, g in tabs:
            d = g[grp]
            line += (f" | {int(d['found50']):>4}/{int(d['vis50']):<4} {int(d['found_part']):>3}/{int(d['part']):<4} "
                     f"{int(d['found30_50']):>3}/{int(d['vis30_50']):<3} {int(d['off']):>3} {int(d['ghost']):>3} "
                     f"{d['ids'] / d['clips']:.2f}({int(d['multi_id'])})")
        print(line)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0-5")
    p.add_argument("--out", help="results JSON (and a .logs folder beside it)")
    p.add_argument("--videos", type=Path, default=VID, help="where the clips are cached (default: %(default)s)")
    p.add_argument("--table", nargs="+", metavar="JSON", help="print the table of these results files and stop")
    p.add_argument("--extra", default="", help="extra app flags")
    p.add_argument("--detector", choices=("haar", "mtcnn"), help="the app's --detector (default: the app's own)")
    p.add_argument("--only", default="", help="case name prefix filter")
    a = p.parse_args()
    if a.table:
        return table(a.table)
    if not a.out:
        p.error("--out is required to run the harness")
    lo, _, hi = a.seeds.partition("-")
    seeds = range(int(lo), int(hi or lo) + 1)
    extra = a.extra.split() + (["--detector", a.detector] if a.detector else [])
    results = []
    logs = Path(a.out).with_suffix(".logs")
    logs.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        vdir = a.videos / str(seed)
        vdir.mkdir(parents=True, exist_ok=True)
        cases = None
        meta = vdir / "truth.json"
        if not meta.exists():
            cases = make_cases(seed)
            for name, group, frames, truth in cases:
                write(vdir / f"{name}.mp4", frames)
            meta.write_text(json.dumps([(n, g, t) for n, g, _, t in cases]))
        for name, group, truth in json.loads(meta.read_text()):
            if a.only and not name.startswith(a.only):
                continue
            log = logs / f"{seed}-{name}.jsonl"
            t0 = time.perf_counter()
            rc, fps, _ = run_app(vdir / f"{name}.mp4", log, extra)
            s = score(log, truth)
            s.update(seed=seed, name=name, group=group, rc=rc, fps=fps)
            results.append(s)
            print(json.dumps(s), f"{time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    Path(a.out).write_text(json.dumps(results, indent=0))


if __name__ == "__main__":
    main()
