"""Between prepare and train: cache the teachers' probabilities on the train split (distillation).

With `distill.teachers` set, every Training image is scored by each teacher in every view of
emovision.distill.VIEWS (the image and its mirror) through the one prediction path, and the
mean probabilities are written to `distill.probs` (float16, with the teacher references, a
hash of each teacher's weights and of the train split, so train refuses a stale file).
Committed outputs (`distill.reuse`, teachers/fer2013-probs.npz for the teachers in teachers/)
are copied instead of running the teachers when they were made by the same teachers, the same
weights behind each reference and the same train split, so a distillation costs no teacher
forward pass on a fresh clone either; anything else runs the teachers and says why.
Without teachers (or on the demo set, unless `demo.distill`) it writes only an empty marker file (DVC needs the output) and reads no
data, so the default pipeline costs a second here.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from emovision import distill, fileio
from emovision.config import Params
from emovision.data.prepared import load_meta, load_split, split_digest
from emovision.errors import DataError, cli_main
from stages import parse, stage_parser


def teach(params: Params) -> distill.TeacherCache:
    """Compute and write the teacher cache `params` describe (an empty one without teachers)."""
    teachers, out = params.distill.teachers, Path(params.distill.probs)
    # Checked before any teacher runs: writable where params say, and not a file of the user's.
    fileio.check_replaceable_file(out, "distill.probs", distill.CACHE_KEYS, Params().distill.probs)
    prepared = Path(params.data.prepared_dir)
    meta = load_meta(prepared) if teachers else None  # without teachers no data is read
    why = "no distill.teachers"
    if meta is not None and not params.distills_on(meta["source"]):
        why, teachers = "demo set: distillation off (demo.distill: the teachers are FER2013 models)", ()
    if not teachers:
        cache = distill.TeacherCache(probs=np.zeros((len(distill.VIEWS), 0, 0), distill.PROBS_DTYPE),
                                     views=distill.VIEWS, teachers=(), digests=(), classes=(), train="")
        distill.write_cache(out, cache)
        print(f"{why}: wrote an empty {out} (training uses labels only)")
        return cache
    x, y = load_split(prepared, "train")
    started = time.perf_counter()
    cache = reusable(params.distill.reuse, teachers, x, y, meta["classes"], params.base.device)
    if cache is None:
        cache = distill.teacher_probs(teachers, x, y, meta["classes"], params.base.device,
                                      params.evaluate.batch_size)
    distill.write_cache(out, cache)
    agree = [float((cache.probs[v].argmax(1) == y).mean()) for v in range(len(cache.views))]
    print(f"wrote {out}: {len(teachers)} teacher(s) x {len(x):,} train images x {len(cache.views)} views "
          f"({out.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - started:.0f}s); the mean teacher "
          f"agrees with the labels on " + ", ".join(f"{a:.1%} ({v})" for a, v in zip(agree, cache.views)))
    return cache


def reusable(path: str, teachers, x: np.ndarray, y: np.ndarray, classes, device: str) -> distill.TeacherCache | None:
    """The committed cache at `path` when it belongs to these teachers and this train split, else
    None (with one line saying why it is not used; "" means never reuse)."""
    if not path:
        return None
    try:
        cache = distill.read_cache(path)
        distill.check_cache(path, cache, teachers, classes, split_digest(x, y), len(x), device)
    except DataError as err:  # its advice is for distill.probs (recompute, delete), not for this file
        why = str(err).removesuffix("; " + distill.REDO).removesuffix(": " + fileio.DAMAGED + distill.REDO)
        print(f"not reusing {why}: running the teachers")
        return None
    print(f"reusing {path}: the same teachers, weights and train split (no teacher forward pass)")
    return cache


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__.splitlines()[0])
    _, params = parse(parser, argv)
    teach(params)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
