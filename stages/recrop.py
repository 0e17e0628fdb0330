"""Between prepare and train: cut the app's crop of every Training face (augment.app_view).

Each Training face is rendered into a 640x480 frame (a replicated border, 80-300 px, a flat or
noisy background), found by the app's default detector and cut with the app's framing and
levelling (`emovision.livecheck.app_crop`); faces it misses keep the dataset crop. The crops
go to `data.app_views` with which faces were found and the train split's digest, so train
refuses a stale file (emovision.data.app_views). Image i is drawn from its own seed
(base.seed, i), so the file does not depend on how many processes cut it. About 5 minutes
for FER2013's 28,709 faces on two cores.

With `augment.app_view: 0`, or on the demo set, it writes an empty marker (DVC needs the
output) and reads no data, so the default pipeline costs a second here.
"""
from __future__ import annotations

import multiprocessing
import signal
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from emovision import fileio
from emovision.config import Params
from emovision.data.app_views import KEYS as APP_VIEWS_KEYS, AppViews, write_app_views
from emovision.data.prepared import load_meta, load_split, split_digest
from emovision.device import usable_cpus
from emovision.errors import ConfigError, EmovisionError, cli_main
from emovision.faces import make_detector
from emovision.livecheck import app_crop
from stages import parse, stage_parser

CHUNK = 512  # faces per task: progress lines and an even split over the processes
POLL_S = 2.0  # how often the worker processes are checked while a chunk is awaited

_detector = None  # one per worker process


class WorkerDied(EmovisionError):
    """A process cutting faces died (killed: the OOM killer) before it returned its chunk."""


def _start_worker() -> None:
    global _detector
    import cv2
    import torch

    # Ctrl-C (to the terminal's whole process group) is the main process's to handle: it stops
    # the workers; here it printed a 'Process SpawnPoolWorker-N:' traceback per worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)  # the processes share the cores: one thread each
    cv2.setNumThreads(1)
    _detector = make_detector()


def _cut(seed: int, first: int, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out, found = faces.copy(), np.zeros(len(faces), bool)
    for j, face in enumerate(faces):
        crop = app_crop(face, np.random.default_rng([seed, first + j]), _detector)
        if crop is not None:
            out[j], found[j] = crop, True
    return out, found


def _cut_chunk(task: tuple[int, int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return _cut(*task)


def cut_app_views(x: np.ndarray, seed: int, workers: int = 0, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """(the app's crops of faces `x`, which were found): `workers` processes (0: one per core),
    `chunk` faces per task."""
    if not workers:  # the CPUs this process may use (affinity and cgroup quota)
        workers = usable_cpus()
    out, found = x.copy(), np.zeros(len(x), bool)
    starts = range(0, len(x), chunk)
    started, done = time.perf_counter(), 0
    # spawned, not forked: a fork of a process whose torch/OpenMP threads have run can hang
    others = set(multiprocessing.active_children())
    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_start_worker)
    crew = set(multiprocessing.active_children()) - others
    try:
        tasks = [(seed, s, x[s:s + chunk]) for s in starts]
        for k, (s, (crops, hits)) in enumerate(zip(starts, _results(pool.imap(_cut_chunk, tasks), crew)), 1):
            out[s:s + chunk], found[s:s + chunk] = crops, hits
            done += len(crops)
            if done == len(x) or k % 10 == 0:
                print(f"recrop: {done:,}/{len(x):,} faces, {found[:done].mean():.1%} found, "
                      f"{time.perf_counter() - started:.0f}s", flush=True)
        pool.close()
    except BaseException:
        # Ctrl-C or kill: stop the workers now. A ProcessPoolExecutor's exit cut every queued
        # chunk first, so `kill` stopped recrop only after minutes, when all faces were cut.
        pool.terminate()
        raise
    finally:
        pool.join()
    return out, found


def _results(results, crew: set) -> Iterator:
    """`results` of a Pool's imap, as long as none of its worker processes `crew` has died: a
    Pool starts another worker in place of one that died (the OOM killer's kill -9) and waits
    for the lost chunk for ever (recrop hung, where a ProcessPoolExecutor said it was broken)."""
    while True:
        try:
            yield results.next(timeout=POLL_S)
        except StopIteration:
            return
        except multiprocessing.TimeoutError:
            dead = [p for p in crew if not p.is_alive()]
            if dead:
                raise WorkerDied(f"recrop: a worker process died (exit code {dead[0].exitcode}"
                                 f"{'; killed, perhaps for want of memory' if dead[0].exitcode == -9 else ''}); "
                                 f"nothing was written; run again, with fewer --workers if memory is short")


def recrop(params: Params, workers: int = 0) -> AppViews:
    """Write the app views `params` describe (an empty marker when they are off)."""
    out = Path(params.data.app_views)
    # Checked before any face is cut: writable where params say, and not a file of the user's.
    fileio.check_replaceable_file(out, "data.app_views", APP_VIEWS_KEYS, Params().data.app_views)
    prepared = Path(params.data.prepared_dir)
    meta = load_meta(prepared) if params.augment.app_view > 0 else None  # off: no data is read
    if meta is None or not params.app_views_on(meta["source"]):
        why = ("augment.app_view is 0" if meta is None else
               "demo set: app views off (its drawn faces are not what a face detector is made for)")
        views = AppViews(np.zeros((0, 0, 0), np.uint8), np.zeros(0, bool), "")
        write_app_views(out, views)
        print(f"{why}: wrote an empty {out} (training shows the dataset crops only)")
        return views
    x, y = load_split(prepared, "train")
    make_detector()  # the app's detector loads here before any process starts
    started = time.perf_counter()
    crops, found = cut_app_views(x, params.base.seed, workers)
    views = AppViews(crops, found, split_digest(x, y))
    write_app_views(out, views)
    print(f"wrote {out}: the app's crop of {found.sum():,} of {len(x):,} train faces ({found.mean():.1%}; "
          f"the rest keep the dataset crop), {time.perf_counter() - started:.0f}s")
    return views


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=0, help="processes cutting faces (default: one per core)")
    args, params = parse(parser, argv)
    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    recrop(params, args.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
