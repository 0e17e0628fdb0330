"""Model references resolve in the project's store from wherever in the project they are used."""
from __future__ import annotations

import shutil

import pytest

from emovision import tracking


@pytest.fixture
def in_project_subfolder(trained, tmp_path, monkeypatch):
    """A copy of the trained project (with dvc.yaml, so it is a project root), the working
    directory a folder inside it, and no tracking URI set anywhere: as a user's shell has it."""
    import mlflow

    root = tmp_path / "project"
    shutil.copytree(trained, root)
    (root / tracking.PROJECT_MARKER).write_text("stages: {}\n")
    sub = root / "docs" / "sub"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)
    mlflow.set_tracking_uri(None)
    return root


@pytest.mark.parametrize("ref", ["models:/fer/Production", "models:/fer@champion", "models:/fer/1", "runs"])
def test_a_model_reference_from_a_project_subfolder_uses_the_projects_store(in_project_subfolder, ref):
    # MLflow resolved models:/ (and runs:/ of a logged model) in ./mlflow.db, whatever it was
    # passed: 'Registered Model with name=fer not found', and an empty store made in docs/sub
    root = in_project_subfolder
    client = tracking.read_client()
    if ref == "runs":
        ref = f"runs:/{client.get_model_version('fer', '1').run_id}/model"
    folder = tracking.download_model(ref)
    assert folder.is_dir()
    assert not (root / "docs" / "sub" / "mlflow.db").exists()


HANG_GUARD_S = 30  # only reached when the waiter never speaks
HOLD_LOCK = """import sys
from emovision import tracking
with tracking.store_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_a_held_store_lock_says_who_holds_it_and_waits(tmp_path):
    """A stage waiting for the store lock another process held (`dvc repro` beside a tuning run)
    waited in silence, for ever to the eye. It says once who holds it, then waits as before."""
    import os
    import subprocess
    import sys
    import threading

    from tests.conftest import REPO

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = dict(env=env, cwd=tmp_path, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, uri], **run)
    waiter = None
    try:
        assert holder.stdout.readline() == "held\n"
        waiter = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, uri], **run)
        # a waiter that says nothing would block this read for ever: both are killed after a
        # while, and its stderr ends empty (a failure, not a hang)
        guard = threading.Timer(HANG_GUARD_S, lambda: (holder.kill(), waiter.kill()))
        guard.start()
        line = waiter.stderr.readline()  # said while the holder still holds it
        guard.cancel()
        assert line and line == (f"waiting for the MLflow store lock {tmp_path / 'mlflow.db'}.lock, held by process "
                        f"{(tmp_path / 'mlflow.db.lock').read_text()} (Ctrl-C to stop)\n")
        assert line.rstrip().endswith(f".{holder.pid} (Ctrl-C to stop)")
        holder.communicate("\n")
        assert waiter.stdout.readline() == "held\n"  # then it waits as before, and gets the lock
        waiter.communicate("\n")
        assert (holder.returncode, waiter.returncode) == (0, 0)
    finally:
        for process in (holder, waiter):
            if process is not None and process.poll() is None:
                process.kill()
