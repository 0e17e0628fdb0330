"""Experiment (README, "Training on the app's own framing"): recrop FER2013 Training faces the
way the live app frames them. Each face, with a replicated border, is upscaled to 80-300 px into
a flat or noisy 640x480 frame, found by the app's detector and cut with the app's framing and
levelling; faces it misses keep their raw crop. Not a pipeline stage yet.

    python scripts/recrop_train.py LO HI SEED OUT.npz   # run on two halves in parallel, 1 thread each

Then replace train.npz's x in a copy of the prepared data with the two halves' `x`.
"""
import sys, time
import numpy as np, cv2, torch
torch.set_num_threads(1); cv2.setNumThreads(1)
from pathlib import Path
from emovision.data.prepared import load_split
from emovision.faces import make_detector, landmark_angles
from emovision.framing import crop_faces
from emovision.preprocess import to_gray_crops
from emovision.livecheck import BORDER, FACE_SIDES, FRAME_SIZE, _background, _on_face

lo, hi, seed, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
PREPARED = "data/prepared"
x, y = load_split(Path(PREPARED), "train")
det = make_detector()
rng = np.random.default_rng(seed + lo)
W, H = FRAME_SIZE
res = x[lo:hi].copy(); found = np.zeros(hi - lo, bool)
t0 = time.time()
for j, i in enumerate(range(lo, hi)):
    face = x[i]
    side = rng.uniform(*FACE_SIDES)
    pad = int(round(BORDER * 48))
    src = cv2.copyMakeBorder(face, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    big = cv2.resize(src, None, fx=side / 48, fy=side / 48, interpolation=cv2.INTER_CUBIC)
    frame = _background("flat" if rng.random() < 0.5 else "noise", rng, ())  # the harness's surroundings
    reach = side * 0.6
    cx, cy = rng.uniform(reach, W - reach), rng.uniform(reach, H - reach)
    bh, bw = big.shape
    x0, y0 = int(round(cx - bw / 2)), int(round(cy - bh / 2))
    fx0, fy0 = max(x0, 0), max(y0, 0); fx1, fy1 = min(x0 + bw, W), min(y0 + bh, H)
    frame[fy0:fy1, fx0:fx1] = big[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]
    boxes = det.detect(frame)
    if len(boxes):
        s = bw * 48 / src.shape[1]
        sq = (x0 + bw / 2, y0 + bh / 2, s)
        hits = [k for k, b in enumerate(boxes) if _on_face(b, sq)]
        if hits:
            ang = landmark_angles(det, len(boxes))
            k = hits[0]
            crop = crop_faces(frame, [boxes[k]], det.framing, None if ang is None else [ang[k]])
            res[j] = to_gray_crops(crop)[0]; found[j] = True
    if j % 1000 == 0:
        print(j, found[:j + 1].mean(), round(time.time() - t0), flush=True)
np.savez(out, x=res, found=found, lo=lo, hi=hi)
print("done", found.mean(), time.time() - t0)
