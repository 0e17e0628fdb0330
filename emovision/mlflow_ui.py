"""`mlflow ui --app-name emovision`: MLflow's own server and UI, opening in the model-training view.

MLflow 3's UI chooses between its *GenAI* and *Model training* views per browser, not per
experiment: the choice is the `workflowType` URL parameter or else the browser's localStorage
key `mlflow.workflowType_v1`, which starts at "genai"; the experiment tag `mlflow.experimentKind`
is not consulted when that choice is made (MLflow 3.17 and 3.18; see README, "Tracking").
This app is MLflow's unchanged server (registered as an `mlflow.app` plugin in
pyproject.toml, the mechanism MLflow's own `basic-auth` app uses) whose page seeds that key
with "machine_learning" in a browser that has not chosen yet, so our experiment opens as a
training experiment, and the GenAI / Model training switch still works and is remembered.
Started in a project subfolder, it serves the project's store in place of the empty one
`mlflow ui` makes there. Before it serves, the app points a moved or copied project's store at the project's own
mlruns/ (`tracking.follow_moved_project`, what every stage does first), so the UI shows this
folder's artifacts, not the old folder's (or none, once that is gone).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import socket
import sqlite3
import sys
import tempfile
from pathlib import Path

from flask import Response
from mlflow.server import BACKEND_STORE_URI_ENV_VAR, REGISTRY_STORE_URI_ENV_VAR
from mlflow.server import app as flask_app
from mlflow.server.fastapi_app import app  # the ASGI app `mlflow ui` runs; it mounts flask_app

from emovision import fileio, tracking
from emovision.config import MLFLOW_DB, PROJECT_MARKER

__all__ = ["app", "WORKFLOW_STORAGE_KEY", "MODEL_TRAINING_WORKFLOW", "seed_script"]

# The UI's storage: useLocalStorage({key: "mlflow.workflowType", version: 1}) writes
# `${key}_v${version}` holding JSON; tests/test_mlflow_ui.py checks the installed bundle still does.
WORKFLOW_STORAGE_KEY = "mlflow.workflowType_v1"
MODEL_TRAINING_WORKFLOW = "machine_learning"
INDEX_VIEW = "serve"  # mlflow.server's view function for index.html
# Held by the one worker of a server that speaks: `mlflow ui` starts 4 workers (uvicorn, all
# children of one parent), each importing this app, and each printed the same line. On Linux an
# abstract socket name, which the kernel frees when its holder ends: a lock file in the temp
# folder was left behind by every server (uvicorn ends its workers by re-raising SIGTERM, so no
# atexit runs). Elsewhere that file, under flock.
# The server is named as fileio names an owner (host, PID namespace, PID): two containers sharing
# the network (one abstract namespace) each run their server under the same small PID, and the
# second one's workers took the first one's lock for their own and said nothing.
SPEAKER_LOCK = "emovision-mlflow-ui.{server}.lock"
ABSTRACT_NAME_MAX = 107  # bytes a Linux socket name holds after its leading NUL
_speaker: list = []  # the lock (socket or open file), kept for the worker's life


def seed_script() -> str:
    """The inline script that picks Model training in a browser with no choice stored yet."""
    key, value = json.dumps(WORKFLOW_STORAGE_KEY), json.dumps(json.dumps(MODEL_TRAINING_WORKFLOW))
    # try/catch: a browser with storage disabled still gets the UI, in MLflow's default view.
    return (f"<script>try{{if(localStorage.getItem({key})===null)"
            f"localStorage.setItem({key},{value})}}catch(e){{}}</script>")


def _serve_index() -> Response:
    index = Path(flask_app.static_folder, "index.html")
    if not index.is_file():  # a source checkout without the built UI: MLflow's own message
        return _mlflow_serve()
    # An inline script in <head> runs before the UI's deferred bundle reads the key.
    html = index.read_text(encoding="utf-8").replace("</head>", seed_script() + "</head>", 1)
    return Response(html, mimetype="text/html", headers={"Cache-Control": "no-cache"})


_mlflow_serve = flask_app.view_functions[INDEX_VIEW]
flask_app.view_functions[INDEX_VIEW] = _serve_index


def served_store() -> str | None:
    """The SQLite store this server serves (`mlflow ui` passes it to its workers in
    BACKEND_STORE_URI_ENV_VAR; by default sqlite:///mlflow.db in its working directory), as an
    absolute sqlite:/// URI; None outside a server or for another kind of store."""
    uri = os.environ.get(BACKEND_STORE_URI_ENV_VAR, "")
    if not uri.startswith("sqlite:///") or "?" in uri:
        return None
    return f"sqlite:///{Path.cwd().resolve() / uri.removeprefix('sqlite:///')}"


def serve_the_projects_store() -> None:
    """Started in a project subfolder, `mlflow ui` serves ./mlflow.db there, an empty store it
    has just made, not the project's: no runs, no models. Serve the project's <root>/mlflow.db
    instead (only in place of an empty store; one line when it does)."""
    uri = served_store()
    if uri is None:
        return
    served, root = Path(uri.removeprefix("sqlite:///")), tracking.project_root()
    project_db = root / MLFLOW_DB
    if served == project_db or not project_db.is_file() or not (root / PROJECT_MARKER).is_file():
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{served}?mode=ro", uri=True)) as con:
            if con.execute("SELECT (SELECT COUNT(*) FROM runs) + (SELECT COUNT(*) FROM registered_models)").fetchone()[0]:
                return  # a store of its own: served as asked
    except sqlite3.Error:  # not an MLflow store MLflow made: MLflow says what it says
        return
    asked = os.environ[BACKEND_STORE_URI_ENV_VAR]
    for var in (BACKEND_STORE_URI_ENV_VAR, REGISTRY_STORE_URI_ENV_VAR):  # the registry follows unless set apart
        if os.environ.get(var) in (None, asked):
            os.environ[var] = f"sqlite:///{project_db}"
    say_once(f"mlflow ui: {served} is an empty store; serving this project's {project_db} "
             f"(start `mlflow ui` in {root} to serve it directly)")


def say_once(line: str) -> None:
    """Print `line` to stderr from one worker of this server only: the first to take its lock."""
    if not _speaker and not _take_speaker_lock():
        return  # another worker of this server holds it and has said it
    print(line, file=sys.stderr)


def _take_speaker_lock() -> bool:
    """Whether this worker may speak: it took its server's lock, or no lock can be had (then
    every worker says it)."""
    name = SPEAKER_LOCK.format(server=fileio.process_owner(os.getppid()))
    if sys.platform.startswith("linux"):
        if len(name.encode()) > ABSTRACT_NAME_MAX:  # a long host name: the same name for the same server, shorter
            name = SPEAKER_LOCK.format(server=hashlib.sha256(name.encode()).hexdigest()[:32])
        lock = socket.socket(socket.AF_UNIX)
        try:
            lock.bind("\0" + name)  # a leading NUL: an abstract name, never a file
        except OSError as err:
            lock.close()
            return err.errno != errno.EADDRINUSE
        _speaker.append(lock)
        return True
    try:
        import fcntl
    except ImportError:  # Windows: no flock
        return True
    try:
        handle = open(Path(tempfile.gettempdir()) / name, "a")
    except OSError:
        return True
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return False
    _speaker.append(handle)
    return True


def follow_moved_project() -> None:
    """Point the served store at this project's mlruns/ when the project was moved or copied
    (only the project's own <root>/mlflow.db, as stages do; one line when it did). A store that
    cannot be written is said in one line and served as it is; one in a folder this user cannot
    write (no lock file can be made there) is only read."""
    uri = served_store()
    if uri is None:
        return
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(tracking.store_lock(uri))  # the server's workers start together
        except OSError:  # a read-only folder: each worker looks alone, and can only find it unmoved or say so
            pass
        try:
            tracking.follow_moved_project(uri)
        except sqlite3.Error as err:
            print(f"MLflow store {uri.removeprefix('sqlite:///')} names its artifacts in another folder (the project "
                  f"was moved) and cannot be updated ({err}): the UI shows them where they were", file=sys.stderr)


serve_the_projects_store()
follow_moved_project()
