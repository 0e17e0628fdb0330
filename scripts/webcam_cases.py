"""Webcam conditions beyond the 640x480 renders, through the real webcam app (issue 11;
docs/live-app.md: Webcam conditions).

    python scripts/webcam_cases.py --seed 0 --out after.json [--only size-1280,dim] [--repeat 3] [--extra "--min-face 60"]
    python scripts/webcam_cases.py --table before.json after.json

Seeded clips of grace_hopper and the astronaut (head crops, drifting): HD and odd frame sizes
(faces of the same relative size, a quarter and half the frame height), portrait frames, dim
rooms with sensor noise (with no face; with a bright window or lamp), backlight, low-quality
MJPEG, mains flicker, motion blur, a hand over the mouth or eyes, heads tilted 20-35 degrees, two
faces crossing, and one person replaced by another at the same place within the 2 s a lost
face keeps its id (grace_hopper fading out, the chair empty 0.5-1.5 s, the astronaut fading in; or
leaving by the frame's edge and the astronaut entering there), with the same person coming back as
the control. Each is written to mp4 and run through `emovision.webcam.main` (what the CLI
calls), headless, with `--log`; the code run is the emovision first on PYTHONPATH. Scored per
clip: frames where each face is found, boxes on no face, track ids per face, ids shared by both
faces (a swap), and the app's fps processing and detect ms on detection frames (medians of
--repeat runs).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))  # the photos and face boxes the tests use (tests/media.py)
from edge_faces import on_face, run_app, scenes, write  # noqa: E402  (scripts/, beside this one: the same app
# run, summary parse, faceless scenes, clip writer and "box on the face" rule)
VID = Path(tempfile.gettempdir()) / "emovision-webcam-cases"
FRAMES = 60
CASES = 57  # clips a seed makes (a cached seed with fewer is made again)
HEAD = 0.7  # the head crop: the face box plus this fraction of its side on every edge
LIGHT_HIDDEN = 0.3  # a window or lamp is hidden behind the face box plus this fraction of its side
FADE = 8  # frames a face takes to fade out of (or into) the scene in the swap clips
EMPTY_S = (0.5, 1.0, 1.5)  # seconds the chair stays empty between them: all within ID_LIFETIME_S


def photos():
    from tests.media import ASTRONAUT_FACE, HOPPER_FACE, astronaut, grace_hopper
    out = {}
    for name, (img, (fx, fy, fw, fh)) in {"hopper": (grace_hopper(), HOPPER_FACE),
                                          "astronaut": (astronaut(), ASTRONAUT_FACE)}.items():
        x0, y0 = max(0, int(fx - HEAD * fw)), max(0, int(fy - HEAD * fh))
        x1, y1 = min(img.shape[1], int(fx + fw + HEAD * fw)), min(img.shape[0], int(fy + fh + HEAD * fh))
        out[name] = (img[y0:y1, x0:x1], (fx - x0, fy - y0, fw, fh))
    return out


def paste(frame, photo, face, cx, cy, width, angle=0.0, gain=1.0, cover=None):
    """The head (the ellipse inside its crop) scaled so its face box is `width` wide, face centred
    at (cx, cy), turned by `angle` degrees, its levels times `gain`, pasted in place; returns the
    face's box [x, y, w, h]. `cover`: a frame-sized bool array, set where the head was pasted."""
    fx, fy, fw, fh = face
    s = width / fw
    img = cv2.resize(photo, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    img = np.clip(img.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    mask = np.zeros(img.shape[:2], np.uint8)
    cv2.ellipse(mask, (img.shape[1] // 2, img.shape[0] // 2), (img.shape[1] // 2, img.shape[0] // 2), 0, 0, 360, 255, -1)
    if angle:
        c = ((fx + fw / 2) * s, (fy + fh / 2) * s)
        m = cv2.getRotationMatrix2D(c, angle, 1.0)
        img = cv2.warpAffine(img, m, img.shape[1::-1], flags=cv2.INTER_LINEAR)
        mask = cv2.warpAffine(mask, m, img.shape[1::-1], flags=cv2.INTER_NEAREST)
    H, W = frame.shape[:2]
    x, y = int(round(cx - (fx + fw / 2) * s)), int(round(cy - (fy + fh / 2) * s))
    x0, y0, x1, y1 = max(0, x), max(0, y), min(W, x + img.shape[1]), min(H, y + img.shape[0])
    if x1 > x0 and y1 > y0:
        src, m = img[y0 - y:y1 - y, x0 - x:x1 - x], mask[y0 - y:y1 - y, x0 - x:x1 - x, None] > 0
        frame[y0:y1, x0:x1] = np.where(m, src, frame[y0:y1, x0:x1])
        if cover is not None:
            cover[y0:y1, x0:x1] |= m[..., 0]
    return [cx - width / 2, cy - fh * s / 2, width, fh * s]


def drift(rng, W, H, width, n=FRAMES, speed=2.0):
    """Face centres drifting from a random start at about `speed` px a frame, kept inside."""
    half = width / 2
    lo, hi = np.array([half, half * 1.1]), np.array([W - half, H - half * 1.1])
    p = rng.uniform(lo, np.maximum(lo, hi))
    v = rng.normal(0, 1, 2)
    v = v / (np.linalg.norm(v) + 1e-9) * speed
    out = []
    for _ in range(n):
        out.append(p.copy())
        p = p + v
        bounce = (p < lo) | (p > hi)
        v[bounce] *= -1
        p = np.clip(p, lo, np.maximum(lo, hi))
    return out


def clip(rng, ph, size, width, bg=None, speed=2.0, who=None, angle=0.0, gain=1.0, post=None):
    W, H = size
    name = who or ("hopper", "astronaut")[int(rng.integers(2))]
    level = int(rng.integers(60, 200)) if bg is None else bg
    frames, truth = [], []
    for i, (cx, cy) in enumerate(drift(rng, W, H, width, speed=speed)):
        f = np.full((H, W, 3), level, np.uint8)
        box = paste(f, *ph[name], cx, cy, width, angle, gain)
        if post is not None:
            f = post(f, i, box)
        frames.append(f)
        truth.append({name: box})
    return frames, truth


def make_cases(seed):
    """[(name, group, frames, truth: per frame {face: box})]."""
    rng = np.random.default_rng(seed)
    ph = photos()
    cases = []

    def add(name, group, frames_truth):
        cases.append((name, group, *frames_truth))

    # frame sizes: the same relative face (120 px at 1080p, 0.11 of the height), and a face half the height
    for W, H in ((640, 480), (1280, 720), (1920, 1080), (480, 640), (800, 600), (1024, 576)):
        add(f"size-{W}x{H}-rel", "size-rel", clip(rng, ph, (W, H), H * 0.11 * rng.uniform(0.9, 1.1)))
        add(f"size-{W}x{H}-half", "size-half", clip(rng, ph, (W, H), H * 0.5 * rng.uniform(0.9, 1.0), speed=1))
        add(f"size-{W}x{H}-mid", "size-mid", clip(rng, ph, (W, H), H * 0.25 * rng.uniform(0.9, 1.1)))
    # dim rooms: levels x0.2-0.35 plus per-frame gaussian sensor noise
    for gain, sigma in ((0.35, 6), (0.2, 6), (0.35, 12), (0.2, 12)):
        def noisy(f, i, box, sigma=sigma, r=np.random.default_rng(seed * 100 + sigma)):
            return np.clip(f.astype(np.float32) + r.normal(0, sigma, f.shape[:2])[..., None], 0, 255).astype(np.uint8)
        add(f"dim-x{gain}-s{sigma}", "dim", clip(rng, ph, (640, 480), rng.uniform(100, 160),
                                                 bg=int(rng.integers(60, 200) * gain), gain=gain, post=noisy))
    # backlight: a bright window behind a dark face
    for gain in (0.3, 0.45):
        add(f"backlight-x{gain}", "backlight", clip(rng, ph, (640, 480), rng.uniform(100, 160), bg=245, gain=gain))
    # motion blur along the motion, a face moving 12 px a frame
    for k in (9, 15):
        def blur(f, i, box, k=k):
            kernel = np.zeros((k, k), np.float32)
            kernel[k // 2] = 1.0 / k
            return cv2.filter2D(f, -1, kernel)
        add(f"blur-{k}", "blur", clip(rng, ph, (640, 480), rng.uniform(100, 160), speed=12, post=blur))
    # a hand-coloured block over the mouth or the eyes for 20 frames
    for part, (top, bottom) in (("mouth", (0.6, 1.0)), ("eyes", (0.15, 0.5))):
        def cover(f, i, box, top=top, bottom=bottom):
            if 20 <= i < 40:
                x, y, w, h = box
                f[int(y + top * h):int(y + bottom * h), int(x - 0.1 * w):int(x + 1.1 * w)] = (140, 170, 210)
            return f
        add(f"cover-{part}", "cover", clip(rng, ph, (640, 480), rng.uniform(100, 160), post=cover))
    # a cheap webcam's MJPEG at low quality, and mains flicker (bands of brightness rolling down the frame)
    for q in (15, 30):
        def jpeg(f, i, box, q=q):
            return cv2.imdecode(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, q])[1], cv2.IMREAD_COLOR)
        add(f"jpeg-q{q}", "jpeg", clip(rng, ph, (640, 480), rng.uniform(100, 160), post=jpeg))
    for depth in (0.15, 0.3):
        def flicker(f, i, box, depth=depth):
            rows = 1 + depth * np.sin(np.arange(f.shape[0]) / 480 * 2 * np.pi * 3 + i * 1.3)
            return np.clip(f * rows[:, None, None], 0, 255).astype(np.uint8)
        add(f"flicker-{depth}", "flicker", clip(rng, ph, (640, 480), rng.uniform(100, 160), post=flicker))
    # heads tilted beyond the harness's 15 degrees
    for angle in (20, -25, 30, -35):
        add(f"tilt-{angle}", "tilt", clip(rng, ph, (640, 480), rng.uniform(100, 160), angle=angle))
    # two faces crossing: the astronaut passes in front of grace_hopper, at a slightly other height
    # (dy: the astronaut this many face sides lower or higher; at 1 both faces stay in sight)
    for k, lift in enumerate((0.3, -0.4, 1.0, -1.1)):
        frames, truth = [], []
        width = rng.uniform(100, 130)
        y0, dy = rng.uniform(180, 300), lift * width
        level = int(rng.integers(60, 200))
        for i in range(FRAMES):
            t = i / (FRAMES - 1)
            f = np.full((480, 640, 3), level, np.uint8)
            a = paste(f, *ph["hopper"], 100 + 440 * t, y0 - dy / 2, width)
            hidden = np.zeros(f.shape[:2], bool)
            b = paste(f, *ph["astronaut"], 540 - 440 * t, y0 + dy / 2, width * rng.uniform(0.97, 1.03), cover=hidden)
            # grace_hopper hidden behind the astronaut where most of her face is covered
            x, y, w, h = (int(round(v)) for v in a)
            covered = hidden[max(0, y):y + h, max(0, x):x + w].mean()
            frames.append(f)
            truth.append({"astronaut": b, **({"hopper": a} if covered < 0.5 else {})})
        cases.append((f"cross-{k}", "cross", frames, truth))
    # faceless dim rooms: the dim clips' light and noise on a flat wall and on a dimmed scene, no
    # face (a dim pass must not box the noise); their own generator, so the clips above stay the same
    rng = np.random.default_rng([seed, 11])
    for name, gain, sigma in (("flat", 0.2, 12), ("flat", 0.35, 6), ("scene", 0.2, 12), ("scene", 0.35, 6)):
        r = np.random.default_rng([seed, 11, sigma])
        walls = scenes() if name == "scene" else [np.full((480, 640, 3), int(rng.integers(60, 200)), np.uint8)]
        room = cv2.cvtColor(walls[int(rng.integers(len(walls)))], cv2.COLOR_BGR2GRAY)
        frames = [np.clip(room[..., None] * gain + r.normal(0, sigma, room.shape)[..., None], 0, 255).astype(np.uint8)
                  .repeat(3, 2) for _ in range(FRAMES)]
        cases.append((f"dim-empty-{name}-x{gain}-s{sigma}", "dim-empty", frames, [{}] * FRAMES))
    # a dim room (x0.2, sigma 12) with a bright window (a rectangle) or a lamp (a disc with a glow)
    # of 1-10% of the frame, in a seeded place, which made the frame as a whole not dim; the head
    # hides what is behind it. With a face, and without (a flat wall, a scene): no box there
    rng = np.random.default_rng([seed, 12])
    for k, (kind, share) in enumerate((("window", 0.02), ("window", 0.08), ("lamp", 0.01), ("lamp", 0.04))):
        r = np.random.default_rng([seed, 12, k])
        bright = light(rng, (480, 640), kind, share)

        def lit(f, i, box, bright=bright, r=r):
            x, y, w, h = box
            g = bright.copy()
            g[max(0, int(y - LIGHT_HIDDEN * h)):int(y + (1 + LIGHT_HIDDEN) * h),
              max(0, int(x - LIGHT_HIDDEN * w)):int(x + (1 + LIGHT_HIDDEN) * w)] = 0
            noisy = np.maximum(f, g[..., None]) + r.normal(0, 12, f.shape[:2])[..., None]
            return np.clip(noisy, 0, 255).astype(np.uint8)
        add(f"dim-{kind}-{int(share * 100)}pc", "dim-light",
            clip(rng, ph, (640, 480), rng.uniform(100, 160), bg=int(rng.integers(60, 200) * 0.2), gain=0.2, post=lit))
    for k, (name, kind, share) in enumerate((("flat", "window", 0.05), ("scene", "lamp", 0.03))):
        r = np.random.default_rng([seed, 13, k])
        walls = scenes() if name == "scene" else [np.full((480, 640, 3), int(rng.integers(60, 200)), np.uint8)]
        room = cv2.cvtColor(walls[int(rng.integers(len(walls)))], cv2.COLOR_BGR2GRAY) * 0.2
        room = np.maximum(room, light(rng, room.shape, kind, share))
        frames = [np.clip(room[..., None] + r.normal(0, 12, room.shape)[..., None], 0, 255).astype(np.uint8)
                  .repeat(3, 2) for _ in range(FRAMES)]
        cases.append((f"dim-empty-{kind}-{name}", "dim-empty-light", frames, [{}] * FRAMES))
    cases += swap_cases(seed, ph)
    return cases


def swap_cases(seed, ph):
    """Issue 11's id theft: grace_hopper (100-150 px) on a still scikit-image scene fades out over
    FADE frames, the chair stays empty EMPTY_S seconds, and the astronaut fades in at her place and
    size (`swap-*`: a new person, must get a new id); the same with grace_hopper coming back
    (`same-*`: must keep hers). `swap-edge`: she leaves by the left or right edge and the astronaut
    enters there 0.5 s later, at her height and size. Own generator: the other clips stay as they were."""
    rng = np.random.default_rng([seed, 14])
    walls = scenes()
    out = []

    def faded(room, who, cx, cy, width, alpha):
        f = room.copy()
        box = paste(f, *ph[who], cx, cy, width)
        return np.clip(room * (1 - alpha) + f * alpha, 0, 255).astype(np.uint8), box

    for kind, back in (("swap", "astronaut"), ("same", "hopper")):
        for empty in EMPTY_S:
            room = walls[int(rng.integers(len(walls)))]
            width = rng.uniform(100, 150)
            cx, cy = rng.uniform(width, 640 - width), rng.uniform(width, 480 - width)
            alphas = ([("hopper", 1.0)] * 20 + [("hopper", 1 - (k + 1) / (FADE + 1)) for k in range(FADE)]
                      + [(None, 0.0)] * int(round(empty * 30))
                      + [(back, (k + 1) / (FADE + 1)) for k in range(FADE)] + [(back, 1.0)] * 24)
            frames, truth = [], []
            for who, alpha in alphas:
                f, box = faded(room, who, cx, cy, width, alpha) if who else (room.copy(), None)
                frames.append(f)
                truth.append({who: box} if who and alpha >= 0.5 else {})
            out.append((f"{kind}-{empty}s", kind, frames, truth))
    # the edge: out at 10 px a frame until gone, 0.5 s empty, the other in at 10 px a frame and held
    room = walls[int(rng.integers(len(walls)))]
    width = rng.uniform(100, 150)
    cy, side = rng.uniform(width, 480 - width), int(rng.integers(2))
    inside, gone = width * 1.2, -width * 1.2  # distance of the face's centre inside the edge
    depth = [inside] * 15 + list(np.arange(inside, gone, -10.0)) + [gone] * 15 + list(np.arange(gone, inside, 10.0)) \
        + [inside] * 20
    leaving = 15 + len(np.arange(inside, gone, -10.0))
    frames, truth = [], []
    for i, d in enumerate(depth):
        who = "hopper" if i < leaving else "astronaut"
        cx = d if side == 0 else 640 - d
        f = room.copy()
        x, y, w, h = box = paste(f, *ph[who], cx, cy, width)
        shown = (min(640, x + w) - max(0, x)) / w
        frames.append(f)
        truth.append({who: box} if shown >= 0.5 else {})
    out.append(("swap-edge", "swap-edge", frames, truth))
    return out


def light(rng, shape, kind, share):
    """A bright area covering `share` of a frame of `shape` (a window: a rectangle, 200-255; a lamp:
    a disc with a glow fading over its radius), in a random place; float32 levels, 0 elsewhere."""
    H, W = shape
    level = rng.uniform(200, 255)
    if kind == "window":
        w = np.sqrt(share * H * W * rng.uniform(0.6, 1.6))
        h = share * H * W / w
        x, y = int(rng.uniform(0, W - w)), int(rng.uniform(0, H - h))
        out = np.zeros(shape, np.float32)
        out[y:y + int(h), x:x + int(w)] = level
        return out
    r = np.sqrt(share * H * W / np.pi)
    x, y = rng.uniform(r, W - r), rng.uniform(r, H - r)
    d = np.hypot(*np.mgrid[:H, :W][::-1] - np.array([x, y])[:, None, None])
    return np.where(d < r, level, level * np.exp(-2 * ((d - r) / r) ** 2)).astype(np.float32)


def score(log, truth):
    recs = [json.loads(line) for line in open(log)]
    out = {"frames": len(truth), "faces": 0, "found": 0, "off": 0, "ids": {}, "shared_ids": 0}
    ids: dict[str, set] = {}
    for rec, t in zip(recs, truth):
        out["faces"] += len(t)
        used = set()
        for name, tb in t.items():
            on = [i for i, f in enumerate(rec["faces"]) if i not in used and on_face(f["box"], tb)]
            if on:
                out["found"] += 1
                used.add(on[0])
                ids.setdefault(name, set()).add(rec["faces"][on[0]]["track_id"])
        out["off"] += len(rec["faces"]) - len(used)
    out["ids"] = {k: sorted(v) for k, v in ids.items()}
    sets = list(ids.values())
    out["shared_ids"] = len(set.intersection(*sets)) if len(sets) > 1 else 0
    return out


def table(files):
    tabs = [{r["name"]: r for r in json.loads(Path(f).read_text())} for f in files]
    print(f"{'clip':<22}" + "".join(f" | {Path(f).stem[-30:]:>40}" for f in files))
    print(f"{'':<22}" + " |   found/faces off ids  swap  fps  detect ms" * len(files))
    for name in tabs[0]:
        line = f"{name:<22}"
        for t in tabs:
            r = t.get(name)
            if r is None:
                line += f" | {'-':>40}"
                continue
            nid = "/".join(str(len(v)) for v in r["ids"].values()) or "0"
            line += (f" | {r['found']:>6}/{r['faces']:<5} {r['off']:>3} {nid:>4} {r['shared_ids']:>4} "
                     f"{r['fps'] or 0:>5.0f} {r['detect_ms'] or 0:>8.1f}")
        print(line)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="results JSON (and a .logs folder beside it)")
    p.add_argument("--videos", type=Path, default=VID, help="where the clips are cached (default: %(default)s)")
    p.add_argument("--table", nargs="+", metavar="JSON", help="print the table of these results files and stop")
    p.add_argument("--extra", default="", help="extra app flags")
    p.add_argument("--only", default="", help="clip name prefix filter (comma-separated)")
    p.add_argument("--repeat", type=int, default=1, help="runs per clip; fps is their median")
    a = p.parse_args()
    if a.table:
        return table(a.table)
    if not a.out:
        p.error("--out is required to run the harness")
    vdir = a.videos / str(a.seed)
    vdir.mkdir(parents=True, exist_ok=True)
    meta = vdir / "truth.json"
    if not meta.exists() or len(json.loads(meta.read_text())) < CASES:
        # clips made once per seed (again where cases were added), so two code versions run on the same videos
        cases = make_cases(a.seed)
        for name, _, frames, _ in cases:
            write(vdir / f"{name}.mp4", frames)
        meta.write_text(json.dumps([(n, g, t) for n, g, _, t in cases]))
    logs = Path(a.out).with_suffix(".logs")
    logs.mkdir(parents=True, exist_ok=True)
    prefixes = tuple(x for x in a.only.split(",") if x)
    results = []
    for name, group, truth in json.loads(meta.read_text()):
        if prefixes and not name.startswith(prefixes):
            continue
        log = logs / f"{name}.jsonl"
        t0 = time.perf_counter()
        runs = [run_app(vdir / f"{name}.mp4", log, a.extra.split()) for _ in range(a.repeat)]
        s = score(log, truth)
        fps = [f for _, f, _ in runs if f is not None]
        det = [d for _, _, d in runs if d is not None]
        s.update(name=name, group=group, rc=runs[-1][0], fps=statistics.median(fps) if fps else None,
                 detect_ms=statistics.median(det) if det else None)
        results.append(s)
        print(json.dumps(s), f"{time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    Path(a.out).write_text(json.dumps(results, indent=0))


if __name__ == "__main__":
    main()
