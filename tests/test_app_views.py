"""The app's crop of each Training face (stages.recrop, augment.app_view): real faces found and
cut in the app's framing, faces it misses kept as they are, the file tied to its train split,
and training shown those crops."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest
import torch

from emovision.config import AugmentParams, load_params
from emovision.data.app_views import AppViews, load_app_views, read_app_views, write_app_views
from emovision.data.prepared import load_split, split_digest, write_prepared
from emovision.errors import DataError
from emovision.faces import make_detector
from emovision.livecheck import app_crop
from emovision.training import SplitTensors, batch_pixels
from stages.recrop import cut_app_views
from stages.recrop import main as recrop_main
from stages.train import main as train_main
from tests.conftest import REPO, write_params
from tests.media import ASTRONAUT_FACE, HOPPER_FACE, astronaut, grace_hopper


def fer_like(photo: np.ndarray, box: tuple) -> np.ndarray:
    """A photo's face cut at its box and scaled to 48x48 gray, as FER2013 stores faces."""
    x, y, w, h = box
    return cv2.resize(cv2.cvtColor(photo[y:y + h, x:x + w], cv2.COLOR_BGR2GRAY), (48, 48), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """Two real faces and their mirrors, then two faceless crops (flat grey, a gradient)."""
    real = [fer_like(grace_hopper(), HOPPER_FACE), fer_like(astronaut(), ASTRONAUT_FACE)]
    real += [f[:, ::-1] for f in real]
    faceless = [np.full((48, 48), 128, np.uint8), np.tile(np.linspace(40, 220, 48, dtype=np.uint8), (48, 1))]
    return np.ascontiguousarray(np.stack(real + faceless))


def test_app_crop_cuts_a_real_face_close_to_its_dataset_crop(faces):
    detector = make_detector()
    corr = lambda a, b: np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1]  # noqa: E731
    for face, other in ((faces[0], faces[1]), (faces[1], faces[0])):
        crops = [app_crop(face, np.random.default_rng([0, k]), detector) for k in range(6)]
        found = [c for c in crops if c is not None]
        assert len(found) >= 5, f"found in {len(found)} of 6 renders"
        for crop in found:  # the same face reframed (measured: 0.34-0.94 vs 0.23-0.49 for the other face)
            assert crop.shape == (48, 48) and crop.dtype == np.uint8
            assert corr(crop, face) > corr(crop, other) + 0.05
    for face in faces[4:]:
        assert all(app_crop(face, np.random.default_rng([0, k]), detector) is None for k in range(4))


def prepared_from(faces: np.ndarray, root) -> tuple[str, np.ndarray, np.ndarray]:
    y = np.arange(len(faces)) % 7
    write_prepared(root / "prepared", {s: (faces, y) for s in ("train", "val", "test")}, {"source": "fer2013"})
    return str(root / "prepared"), faces, y


def test_recrop_stage_writes_the_apps_crops_of_the_train_split(faces, tmp_path):
    prepared, x, y = prepared_from(faces, tmp_path)
    out = tmp_path / "app_views.npz"
    params = write_params(tmp_path / "params.yaml", {"data": {"prepared_dir": prepared, "app_views": str(out)},
                                                     "augment": {"app_view": 0.5}})
    assert recrop_main(["--params", str(params)]) == 0
    views = load_app_views(out, x, y)
    assert views.train == split_digest(x, y) and views.found[:4].sum() >= 3 and not views.found[4:].any()
    assert (views.x[4:] == x[4:]).all() and (views.x[views.found] != x[views.found]).any()  # misses kept
    first = out.read_bytes()
    assert recrop_main(["--params", str(params), "--workers", "1"]) == 0
    assert out.read_bytes() == first  # rewritten with the same content: the same bytes (DVC sees no change)
    # each face has its own seed: the same crops from any split into tasks and processes
    crops, found = cut_app_views(x, load_params(params).base.seed, workers=2, chunk=2)
    assert (crops == views.x).all() and (found == views.found).all()


def test_recrop_off_writes_an_empty_marker_without_reading_data(tmp_path):
    out = tmp_path / "app_views.npz"
    params = write_params(tmp_path / "params.yaml", {"data": {"prepared_dir": str(tmp_path / "absent"),
                                                              "app_views": str(out)}})
    assert recrop_main(["--params", str(params)]) == 0
    assert len(read_app_views(out).x) == 0 and read_app_views(out).train == ""


@pytest.mark.parametrize("where, why", [("folder", "is a folder"), ("notes.txt/views.npz", "is a file, not a folder")])
def test_recrop_refuses_an_output_it_cannot_write_before_cutting(tmp_path, capsys, where, why):
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    params = write_params(tmp_path / "params.yaml", {"data": {"prepared_dir": str(tmp_path / "absent"),
                                                              "app_views": str(tmp_path / where)}})
    assert recrop_main(["--params", str(params)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"data.app_views {tmp_path / where} cannot be written (" in err and why in err and "\n" not in err, err


def test_train_refuses_app_views_of_another_split_in_one_line(faces, tmp_path, capsys):
    prepared, x, y = prepared_from(faces, tmp_path)
    out = tmp_path / "app_views.npz"
    other = x.copy()
    other[0, 0, 0] ^= 1  # one pixel of one face differs: another split
    write_app_views(out, AppViews(other, np.zeros(len(x), bool), split_digest(other, y)))
    models = tmp_path / "models"
    models.mkdir()
    (models / "best.pt").write_bytes(b"the previous model")
    params = write_params(tmp_path / "params.yaml", {
        "data": {"prepared_dir": prepared, "app_views": str(out)}, "augment": {"app_view": 0.5},
        "paths": {"models": str(models), "reports": str(tmp_path / "reports")}, "distill": {"teachers": []}})
    assert train_main(["--params", str(params)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cut from another train split" in err[0] and "stages.recrop" in err[0]
    assert (models / "best.pt").read_bytes() == b"the previous model"
    whole = out.read_bytes()
    for damaged in (whole[:len(whole) // 2], b"not an npz"):  # a half-copied file, a foreign one
        out.write_bytes(damaged)
        with pytest.raises(DataError, match="unreadable app-views file"):
            load_app_views(out, x, y)
    out.unlink()
    with pytest.raises(DataError, match=r"no app-views file; run `python -m stages.recrop`"):
        load_app_views(out, x, y)


def test_training_shows_the_app_crop_for_app_view_of_the_images():
    n = 2000
    data = SplitTensors(torch.zeros(n, 1, 4, 4, dtype=torch.uint8), torch.zeros(n, dtype=torch.long),
                        torch.ones(n, 1, 4, 4, dtype=torch.uint8))
    idx = torch.arange(n)
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert (batch_pixels(data, idx, AugmentParams(app_view=0.0), generator) == 0).all()
    assert torch.equal(generator.get_state(), state)  # off draws nothing: other augmentations unchanged
    assert (batch_pixels(data, idx, AugmentParams(app_view=1.0), generator) == 1).all()
    shown = batch_pixels(data, idx, AugmentParams(app_view=0.3), generator)[:, 0, 0, 0].float().mean()
    assert 0.26 < shown < 0.34  # 2,000 seeded draws: 4 standard errors (0.010) either side
    assert (batch_pixels(SplitTensors(data.x, data.y), idx, AugmentParams(app_view=1.0), generator) == 0).all()


WORKERS_WAIT_S = 60  # how long a test waits for recrop's worker processes to exist
WORKER_POLL_S = 0.01  # how often it looks

CUTTING = """
import sys
import numpy as np
from emovision.errors import cli_main
from stages.recrop import cut_app_views

@cli_main
def main():
    faces = np.load(sys.argv[1])
    cut_app_views(np.tile(faces, (3000, 1, 1)), 0, workers=2, chunk=10)  # 18,000 faces: minutes of work

sys.exit(main())
"""


def spawned_workers(pid: int) -> list[int]:
    """recrop's worker processes among `pid`'s children (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def ignores_ctrl_c(pid: int) -> bool:
    ignored = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("SigIgn:"))
    return bool(int(ignored.split()[1], 16) & 1 << (signal.SIGINT - 1))


@contextlib.contextmanager
def cutting(faces: np.ndarray, tmp_path: Path, started: bool = True) -> Iterator[subprocess.Popen]:
    """CUTTING in its own process group, yielded once its workers are cutting (`started`) or as
    soon as it runs; the group is killed afterwards, whatever happened (its workers too)."""
    np.save(tmp_path / "faces.npy", faces)
    proc = subprocess.Popen([sys.executable, "-c", CUTTING, str(tmp_path / "faces.npy")], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        if started:
            assert proc.stdout.readline().startswith("recrop: 100/18,000 faces")  # the workers are cutting
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("kill", [lambda pid: os.kill(pid, signal.SIGTERM), lambda pid: os.killpg(pid, signal.SIGINT)],
                         ids=["kill", "ctrl-c"])
def test_kill_stops_recrop_at_once_not_after_every_face(faces, tmp_path, kill):
    """Stopped by `kill` or `kill -INT PID` (the main process alone, as a scheduler or a script
    stops it), recrop went on cutting every face the pool had queued (28,709 on FER2013: more
    than a minute after the signal on two cores) before it exited. Now the workers are
    stopped and it exits at once: here well within the 60 s that 18,000 faces would take several
    times over (about 60 faces/s on two busy cores). Ctrl-C (SIGINT to the whole group) also
    printed 'Process SpawnPoolWorker-N:' for a worker it interrupted: the workers leave it to
    the main process now, which says 'interrupted' alone."""
    with cutting(faces, tmp_path) as proc:
        kill(proc.pid)
        _, err = proc.communicate(timeout=60)
        assert (proc.returncode, err.strip()) == (130, "interrupted")


def test_a_worker_killed_ends_recrop_in_one_line_not_a_hang(faces, tmp_path):
    """A worker killed (the OOM killer's kill -9) hung recrop for ever: a multiprocessing Pool
    starts another worker and waits for the lost chunk. Now it ends in one line, exit 2."""
    with cutting(faces, tmp_path) as proc:
        workers = spawned_workers(proc.pid)  # both started before any chunk was handed out
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2
        assert err.startswith("error: recrop: a worker process died (exit code -9; killed") and err.count("\n") == 1


def test_a_worker_killed_while_starting_ends_recrop_too(faces, tmp_path):
    """The test above failed 1 run in 2 beside 3 busy processes on two cores: the worker it
    killed was still importing, held no chunk, so the Pool put another in its place, the other
    worker's results kept coming and recrop cut all 18,000 faces (its 60 s ran out). Any
    worker's death now ends recrop in the same line; here one is killed as soon as it exists,
    after checking it already ignores Ctrl-C (the main process stops the workers)."""
    with cutting(faces, tmp_path, started=False) as proc:
        deadline = time.monotonic() + WORKERS_WAIT_S
        while not (workers := spawned_workers(proc.pid)) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(WORKER_POLL_S)
        assert workers, f"no worker process within {WORKERS_WAIT_S} s"
        # and ignores Ctrl-C from birth: one pressed while a worker was importing printed its traceback
        assert ignores_ctrl_c(workers[0])
        os.kill(workers[0], signal.SIGKILL)  # importing its modules: seconds before it can take a chunk
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2 and "18,000/18,000" not in out
        assert err.startswith("error: recrop: a worker process died (exit code -9; killed") and err.count("\n") == 1
