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

import contextlib
import multiprocessing
import multiprocessing.connection
import signal
import threading
import time
import traceback
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

CHUNK = 512  # faces per task: progress lines, and a worker's share handed out as it asks
WORKER_EXIT_S = 5.0  # how long a worker whose pipe closed is given to end, for its exit code


class WorkerDied(EmovisionError):
    """A process cutting faces died (killed: the OOM killer) before it had cut its share."""


class _Failed:
    """A worker's exception, sent to the main process with its traceback's text."""

    def __init__(self, error: BaseException, trace: str) -> None:
        self.error, self.trace = error, trace


class _RemoteTraceback(Exception):
    """The worker's traceback, shown as the cause of its exception (as a Pool showed it)."""

    def __str__(self) -> str:
        return self.args[0]


def _work(conn: multiprocessing.connection.Connection) -> None:
    """A worker process: ask for a chunk over its own pipe `conn`, cut it, send the result back
    with the next ask, until it is sent None."""
    # Ctrl-C (to the terminal's whole process group) is the main process's to handle: it stops
    # the workers. Ignored from birth too (_ctrl_c_ignored); here for one started otherwise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import cv2
    import torch

    torch.set_num_threads(1)  # the processes share the cores: one thread each
    cv2.setNumThreads(1)
    detector = make_detector()
    result = None  # the first ask carries no result
    try:
        while True:
            conn.send(result)
            task = conn.recv()
            if task is None:
                return
            try:
                result = _cut(*task, detector)
            except Exception as err:  # raised again in the main process, which stops
                conn.send(_Failed(err, traceback.format_exc()))
                return
    except (EOFError, BrokenPipeError):  # the main process is gone: nobody wants the faces
        return


def _cut(seed: int, first: int, faces: np.ndarray, detector) -> tuple[int, np.ndarray, np.ndarray]:
    out, found = faces.copy(), np.zeros(len(faces), bool)
    for j, face in enumerate(faces):
        crop = app_crop(face, np.random.default_rng([seed, first + j]), detector)
        if crop is not None:
            out[j], found[j] = crop, True
    return first, out, found


def cut_app_views(x: np.ndarray, seed: int, workers: int = 0, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """(the app's crops of faces `x`, which were found): `workers` processes (0: one per core),
    `chunk` faces per task."""
    if not workers:  # the CPUs this process may use (affinity and cgroup quota)
        workers = usable_cpus()
    out, found = x.copy(), np.zeros(len(x), bool)
    tasks = [(seed, s, x[s:s + chunk]) for s in range(0, len(x), chunk)]
    started, done = time.perf_counter(), 0
    # Our own processes, each with its own pipe, rather than a multiprocessing Pool: a Pool put a
    # new worker in place of one killed (the OOM killer's kill -9) and waited for its chunk for
    # ever, went on cutting every face when the one killed was still starting, and could hang
    # stopping if one died holding its task queue's lock. A ProcessPoolExecutor, on Ctrl-C or
    # kill, cut every queued chunk before it exited (minutes on FER2013).
    context = multiprocessing.get_context("spawn")  # a fork of a process whose torch/OpenMP threads have run can hang
    crew: list[_Worker] = []
    try:
        with _ctrl_c_ignored():
            for _ in range(min(workers, len(tasks))):
                crew.append(_Worker(context))
        for k, (s, crops, hits) in enumerate(_results(crew, tasks), 1):
            out[s:s + len(crops)], found[s:s + len(crops)] = crops, hits
            done += len(crops)
            if done == len(x) or k % 10 == 0:
                print(f"recrop: {done:,}/{len(x):,} faces, {found.sum() / done:.1%} found, "
                      f"{time.perf_counter() - started:.0f}s", flush=True)
    except BaseException:  # Ctrl-C, kill, a worker lost: stop the others now
        for worker in crew:
            worker.process.terminate()
        raise
    finally:
        for worker in crew:
            worker.process.join()
            worker.conn.close()
    return out, found


class _Worker:
    """A process cutting faces, and our end of its own pipe."""

    def __init__(self, context) -> None:
        self.conn, theirs = context.Pipe()
        self.process = context.Process(target=_work, args=(theirs,), daemon=True)
        self.process.start()
        theirs.close()  # the worker's end is its alone: its death, at any moment, reads as EOF here


@contextlib.contextmanager
def _ctrl_c_ignored() -> Iterator[None]:
    """Ignore Ctrl-C while the block starts the workers, which inherit that: one pressed while a
    worker was still importing printed its traceback. A Ctrl-C in the milliseconds they take to
    start is lost (press it again); `kill` is not. Only the main thread can set signal handlers."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _results(crew: list[_Worker], tasks: list) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first face, crops, found) of each of `tasks`, handed to the `crew` one at a time as each
    asks, in the order they come back. A worker that ends before it is told to stop (killed at
    any moment: starting, cutting, sending) ends recrop in WorkerDied."""
    todo = iter(tasks)
    working = {worker.conn: worker for worker in crew}
    owner = {**working, **{worker.process.sentinel: worker for worker in crew}}
    while working:
        # its pipe and its process: a death is seen even where it leaves the pipe readable
        for ready in multiprocessing.connection.wait([*working, *(w.process.sentinel for w in working.values())]):
            worker = owner[ready]
            if worker.conn not in working:  # told to stop, and stopped
                continue
            try:  # a result (or its first ask); a dead worker's pipe ends in EOF after what it sent
                result = worker.conn.recv()
            except (EOFError, OSError):  # killed before it sent, or while it sent
                raise _died(worker) from None
            if isinstance(result, _Failed):
                raise result.error from _RemoteTraceback(result.trace)
            task = next(todo, None)
            try:
                worker.conn.send(task)
            except OSError:  # killed since it asked
                raise _died(worker) from None
            if task is None:
                del working[worker.conn]
            if result is not None:
                yield result


def _died(worker: _Worker) -> WorkerDied:
    worker.process.join(WORKER_EXIT_S)  # its pipe closes as it dies: wait for its exit code
    code = worker.process.exitcode
    return WorkerDied(f"recrop: a worker process died (exit code {code}"
                      f"{'; killed, perhaps for want of memory' if code == -signal.SIGKILL else ''}); "
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
