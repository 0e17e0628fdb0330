"""`mlflow ui --app-name emovision`: a real MLflow server on 127.0.0.1 whose page opens a new
browser in the model-training view, and the installed UI still keeps that choice where we seed it."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import mlflow
import pytest
from mlflow.utils.plugins import get_entry_points

from emovision import fileio, mlflow_ui
from tests.conftest import REPO
from tests.servers import running_server, server_env

UI_BUILD = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"


def test_installed_ui_keeps_the_workflow_choice_under_our_key():
    # The seed only works while MLflow's UI stores its GenAI / Model training choice with
    # useLocalStorage({key: "mlflow.workflowType", version: 1}) -> `${key}_v${version}`.
    bundle = next(UI_BUILD.glob("main.*.js")).read_text(encoding="utf-8")
    key, version = mlflow_ui.WORKFLOW_STORAGE_KEY.rsplit("_v", 1)
    assert f'key:"{key}",version:{version}' in bundle
    assert f'MACHINE_LEARNING="{mlflow_ui.MODEL_TRAINING_WORKFLOW}"' in bundle
    assert "=(e,t)=>`${e}_v${t}`" in bundle  # the key format of MLflow's useLocalStorage


@dataclass
class MovedProjectUI:
    port: int
    project: Path
    log: Path
    run_id: str
    stop: Callable[[], None]


@pytest.fixture(scope="module")
def moved_project_ui(trained, tmp_path_factory) -> Iterator[MovedProjectUI]:
    """`mlflow ui --app-name emovision` as a user starts it in a project moved after runs existed:
    in a project subfolder (docs/, so the app serves the project's store in place of the empty
    one MLflow makes there), before any stage ran there. Started once for this module's server
    tests (a cold start is most of their time); they only read it, until the last one stops it."""
    from emovision import tracking

    tmp_path = tmp_path_factory.mktemp("moved")
    first, project = tmp_path / "first", tmp_path / "moved project"
    first.mkdir()
    (first / "dvc.yaml").write_text("stages: {}\n")
    shutil.copy(trained / "mlflow.db", first / "mlflow.db")
    shutil.copytree(trained / "mlruns", first / "mlruns")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(first)
        tracking.follow_moved_project()  # the store now names first/mlruns, as if made there
    first.rename(project)  # and the project is moved: first/ is gone
    run_id = json.loads((trained / "models" / "run.json").read_text())["run_id"]
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {k: v for k, v in server_env(PYTHONPATH=pythonpath).items() if k != "MLFLOW_TRACKING_URI"}
    ui = [sys.executable, "-m", "mlflow", "ui", "--app-name", "emovision", "--host", "127.0.0.1",
          "--workers", "2", "--port"]
    log = tmp_path / "ui.log"
    (project / "docs").mkdir()
    with contextlib.ExitStack() as server:
        port, _ = server.enter_context(running_server(lambda port: ui + [str(port)], "/", project / "docs", env, log))
        yield MovedProjectUI(port, project, log, run_id, server.close)


def _page(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
        return response.read().decode()


def test_mlflow_ui_app_seeds_the_model_training_view(moved_project_ui):
    assert "emovision" in [e.name for e in get_entry_points("mlflow.app")], \
        "the mlflow.app entry point is not installed: run `pip install -e .`"
    port = moved_project_ui.port
    page = _page(port)
    # the seed runs in <head>, before the UI's deferred bundle reads the key
    assert mlflow_ui.seed_script() in page.split("</head>")[0]
    assert page.index('<script defer="defer"') < page.index(mlflow_ui.seed_script())  # defer runs after parse
    assert f'localStorage.getItem("{mlflow_ui.WORKFLOW_STORAGE_KEY}")===null' in page  # a chosen view is kept
    # and it is MLflow's whole server: the tracking API answers
    request = urllib.request.Request(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search",
                                     json.dumps({"max_results": 5}).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert "Default" in [e["name"] for e in json.loads(response.read())["experiments"]]


def _get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/{path}", timeout=30) as response:
        return json.loads(response.read())


def test_mlflow_ui_app_follows_a_moved_project(moved_project_ui):
    """A project moved after runs existed, then `mlflow ui --app-name emovision` in it before any
    stage: the store still named every artifact by the old folder, so the UI showed no artifacts
    and no model files (or, for a copy, the original's). The app points the store here first."""
    port, project, log, run_id = (moved_project_ui.port, moved_project_ui.project, moved_project_ui.log,
                                  moved_project_ui.run_id)
    run = _get(port, f"runs/get?run_id={run_id}")["run"]
    assert run["info"]["artifact_uri"].removeprefix("file://").startswith(f"{project / 'mlruns'}/")
    files = [f["path"] for f in _get(port, f"artifacts/list?run_id={run_id}").get("files", [])]
    assert "training_curves.png" in files, files
    model = _get(port, "model-versions/get-download-uri?name=fer&version=1")["artifact_uri"]
    assert model.removeprefix("file://").startswith(f"{project / 'mlruns'}/"), model
    said = [line for line in log.read_text().splitlines() if "the project moved" in line]
    assert len(said) == 1 and f"now point into {project / 'mlruns'}" in said[0], log.read_text()[-3000:]


def test_mlflow_ui_app_serves_a_store_in_a_folder_it_cannot_write(trained, tmp_path, monkeypatch, capsys):
    """`mlflow ui --app-name emovision` on a project this user cannot write (a read-only mount, a
    colleague's folder): the lock file beside mlflow.db could not be made, so every worker died
    importing the app (OSError) and the UI never served. The store is read as it is now. Root
    writes anywhere, so a folder stands where the lock file would go: open() refuses it alike."""
    from mlflow.server import BACKEND_STORE_URI_ENV_VAR

    shutil.copy(trained / "mlflow.db", tmp_path / "mlflow.db")
    (tmp_path / "mlflow.db.lock").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(BACKEND_STORE_URI_ENV_VAR, "sqlite:///mlflow.db")  # as `mlflow ui` passes it to a worker
    mlflow_ui.follow_moved_project()
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("own_store", [False, True])
def test_mlflow_ui_app_in_a_project_subfolder_serves_the_projects_store(migrated_mlflow_db, tmp_path, monkeypatch,
                                                                        capsys, own_store):
    """Started in <project>/docs, `mlflow ui` serves docs/mlflow.db, an empty store it has just
    made: no runs, no models. The app serves the project's store instead, unless the subfolder's
    store has runs or models of its own."""
    from mlflow.server import BACKEND_STORE_URI_ENV_VAR, REGISTRY_STORE_URI_ENV_VAR

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    shutil.copy(migrated_mlflow_db, tmp_path / "mlflow.db")
    sub = tmp_path / "docs"
    sub.mkdir()
    shutil.copy(migrated_mlflow_db, sub / "mlflow.db")
    if own_store:
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{sub / 'mlflow.db'}").create_registered_model("mine")
    monkeypatch.chdir(sub)
    monkeypatch.setenv(BACKEND_STORE_URI_ENV_VAR, "sqlite:///mlflow.db")  # as `mlflow ui` passes it to a worker
    monkeypatch.delenv(REGISTRY_STORE_URI_ENV_VAR, raising=False)
    mlflow_ui.serve_the_projects_store()
    served = os.environ[BACKEND_STORE_URI_ENV_VAR]
    if own_store:
        assert served == "sqlite:///mlflow.db" and capsys.readouterr().err == ""
    else:
        assert served == os.environ[REGISTRY_STORE_URI_ENV_VAR] == f"sqlite:///{tmp_path / 'mlflow.db'}"
        assert f"serving this project's {tmp_path / 'mlflow.db'}" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the speaker's lock is an abstract socket on Linux")
def test_only_one_worker_of_a_server_says_it_serves_the_projects_store(migrated_mlflow_db, tmp_path, monkeypatch,
                                                                         capsys):
    """`mlflow ui` starts 4 workers that each import the app: each printed the same line. A worker
    whose sibling (same parent) already holds the speaker's lock serves the project's store silently."""
    from mlflow.server import BACKEND_STORE_URI_ENV_VAR, REGISTRY_STORE_URI_ENV_VAR

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    shutil.copy(migrated_mlflow_db, tmp_path / "mlflow.db")
    (tmp_path / "docs").mkdir()
    shutil.copy(migrated_mlflow_db, tmp_path / "docs" / "mlflow.db")
    monkeypatch.chdir(tmp_path / "docs")
    monkeypatch.setenv(BACKEND_STORE_URI_ENV_VAR, "sqlite:///mlflow.db")
    monkeypatch.delenv(REGISTRY_STORE_URI_ENV_VAR, raising=False)
    for spoken in getattr(mlflow_ui, "_speaker", []):  # an earlier test's call made this process the speaker
        spoken.close()
    monkeypatch.setattr(mlflow_ui, "_speaker", [], raising=False)
    with socket.socket(socket.AF_UNIX) as sibling:  # the worker that spoke first
        sibling.bind("\0" + mlflow_ui.SPEAKER_LOCK.format(server=fileio.process_owner(os.getppid())))
        mlflow_ui.serve_the_projects_store()
    assert os.environ[BACKEND_STORE_URI_ENV_VAR] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert capsys.readouterr().err == ""


CLONE_NEWPID = 0x20000000  # linux/sched.h: the next child starts a new PID namespace, as its PID 1


def _speaks_in_a_new_pid_namespace(release: tuple[int, int]) -> tuple[bool, int]:
    """Whether a worker whose server is PID 0 of a fresh PID namespace (so every such worker's
    server has the same PID: a container's) takes its speaker's lock, and the child to wait for.
    The worker (a forked child's child, PID 1 there) holds the lock until `release` (a pipe) is
    closed here."""
    import ctypes

    said_r, said_w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(release[1])  # only the test holds the write end: its close ends the worker
            if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWPID) == 0:
                if os.fork() == 0:
                    fileio._machine.cache_clear()  # a process started there finds its namespace anew
                    mlflow_ui._speaker.clear()  # the lock this test process took, if it spoke, is not the worker's
                    os.write(said_w, b"1" if mlflow_ui._take_speaker_lock() else b"0")
                    os.read(release[0], 1)
                    os._exit(0)
                os.wait()
        finally:
            os._exit(0)
    os.close(said_w)
    said = os.read(said_r, 1)
    os.close(said_r)
    if not said:
        os.waitpid(child, 0)
        pytest.skip("no new PID namespace here (unshare needs root)")
    return said == b"1", child


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the speaker's lock is an abstract socket on Linux")
def test_servers_in_two_containers_each_say_their_line():
    """Two containers sharing the host's network share its abstract socket names, and each runs
    its `mlflow ui` under the same small PID: the speaker's lock named only that PID, so the
    second server's workers found the first one's lock taken and said nothing."""
    release = os.pipe()
    children = []
    try:
        for _ in range(2):  # the first worker holds its lock while the second takes its own
            spoke, child = _speaks_in_a_new_pid_namespace(release)
            children.append(child)
            assert spoke
    finally:
        os.close(release[1])
        os.close(release[0])
        for child in children:
            os.waitpid(child, 0)


def _speaker_lock_free(server_pid: int) -> bool:
    """Whether a new worker of that server could take the speaker's lock (no sibling holds it)."""
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.bind("\0" + mlflow_ui.SPEAKER_LOCK.format(server=fileio.process_owner(server_pid)))
        except OSError:
            return False
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the speaker's lock is an abstract socket on Linux")
def test_a_stopped_server_leaves_no_lock_file(moved_project_ui):
    """Each `mlflow ui --app-name emovision` left an empty emovision-mlflow-ui.<pid>.lock in the
    temp folder (its speaking worker's lock). The lock is held while the server runs, and nothing
    is left once it stops. Stops the module's server: keep this test last."""
    log = moved_project_ui.log.read_text()
    assert log.count("is an empty store; serving this project's") == 1, log[-3000:]
    server_pid = int(re.search(r"Started parent process \[(\d+)\]", log)[1])  # uvicorn's: the workers' parent
    assert not _speaker_lock_free(server_pid)
    moved_project_ui.stop()
    assert not list(Path(tempfile.gettempdir()).glob(f"emovision-mlflow-ui.*{server_pid}.lock"))
    assert _speaker_lock_free(server_pid)
