"""MLflow: where runs live, how a model is logged and registered, how references resolve.

Runs live in `sqlite:///<project root>/mlflow.db` with artifacts in `<project root>/mlruns`
(`MLFLOW_TRACKING_URI` overrides), so plain `mlflow ui` in the project root shows all. The
project root is found, not assumed: the nearest folder holding dvc.yaml, from the working
directory up. A logged model is an MLflow pyfunc model from code (emovision/mlflow_model.py)
(logged by `emovision.serving.log_model`) whose artifacts are the model folder of `emovision.artifact`: `weights.pt` (a state dict,
loaded with `torch.load(weights_only=True)`) and `config.json`; nothing in it is ever
unpickled. Reading a model never creates a store, an experiment or a lock file.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from emovision import fileio
from emovision.config import MLFLOW_ARTIFACTS, MLFLOW_DB, PROJECT_MARKER, nearest_project
from emovision.errors import DataError, ModelRefError, shown_uri

EXPERIMENT = "emovision"
# MLflow 3's UI opens an experiment in the view its kind names; ours trains models (not GenAI).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
PRODUCTION = "Production"
# Inside paths.models: the training's MLflow run id (written when the run starts), then its
# registered version and logged model (written when it finishes). Read and written only here.
RUN_FILE = "run.json"
RUN_FILE_FIX = "run `python -m stages.train` again (or delete it to start over)"
STORE_INIT_RETRIES = 5
# A tracking server (MLFLOW_TRACKING_URI=http://...) that has not answered in this long is down:
# asked directly, MLflow's client retries each request for minutes (7 retries, up to 120 s apart)
SERVER_ANSWER_S = 10
# The process that has a run open (fileio.this_process()), set each time one is started or
# resumed: a run left RUNNING by a process that is gone was killed (end_orphaned_runs).
OWNER_TAG = "owner"
CHAMPION = "champion"
# `dvc exp run --temp/--queue` runs stages in <root>/.dvc/tmp/exps/<name>/: log to <root>.
_DVC_TEMP = re.compile(r"^(?P<root>.*?)/\.dvc/tmp/exps/")


def project_root(cwd: Path | None = None) -> Path:
    """The project the user is in: a DVC temp workspace's parent project, else the nearest
    folder with dvc.yaml from `cwd` up, else `cwd` itself (a bare folder: tests, scripts)."""
    cwd = (cwd or Path.cwd()).resolve()
    match = _DVC_TEMP.match(str(cwd))
    if match:
        return Path(match["root"])
    return nearest_project(cwd)


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / MLFLOW_DB}"


def quiet_mlflow() -> None:
    """Our own calls use registry stages on purpose (users asked for models:/fer/Production)."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"mlflow(\.|$)")
    warnings.filterwarnings("ignore", message=r".*[Ss]tage.*deprecated.*")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per download otherwise
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # It logs each SQL error with a traceback and then raises it anyway: a full disk under mlflow.db
    # printed 40 lines before the one that says so (errors.no_space)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def check_store(uri: str | None = None) -> None:
    """A local SQLite store that exists must be an SQLite file, and a tracking server must answer:
    checked before a stage deletes or writes anything, since MLflow's own error is a traceback
    after minutes of work (or of waiting)."""
    uri = uri or tracking_uri()
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    if not path.is_file() or path.stat().st_size == 0:  # none yet (or empty): MLflow creates it
        return
    try:
        with path.open("rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as err:
        raise DataError(f"MLflow store {path} cannot be read ({err.strerror})") from None
    if head != SQLITE_MAGIC:
        raise DataError(f"MLflow store {path} is not an SQLite database (a damaged or foreign file); "
                        f"move it aside to start a new store, or set MLFLOW_TRACKING_URI")


def check_server(uri: str) -> None:
    """A tracking server must answer before MLflow is asked anything: MLflow's client retries a
    refused connection for minutes per request, so a server that is down (or a mistyped port)
    held a model load 12.5 minutes before its error (a stage: still waiting at 3 minutes). Any
    HTTP answer will do (a proxy's 404, a login's 401): only a server out of reach is refused."""
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=SERVER_ANSWER_S)
    except requests.exceptions.SSLError:
        return  # it answered; MLflow checks TLS with its own settings (MLFLOW_TRACKING_INSECURE_TLS, ...)
    except (requests.ConnectionError, requests.Timeout) as err:
        if isinstance(err, requests.Timeout):
            reason = f"no answer in {SERVER_ANSWER_S} s"
        else:  # the OS's words, not urllib3's nested repr: "Connection refused", "Name or service not known"
            cause = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(err))
            reason = cause[1].strip() if cause else type(err).__name__
        raise DataError(f"MLflow tracking server {shown_uri(uri)} does not answer ({reason}); start it, or correct "
                        f"MLFLOW_TRACKING_URI") from None


def project_store(uri: str | None = None) -> bool:
    """Whether `uri` is the project's own store, `<project root>/mlflow.db`, whose artifacts
    belong in `<project root>/mlruns` (however the URI was given: default or MLFLOW_TRACKING_URI)."""
    uri = uri or tracking_uri()
    return uri.startswith("sqlite:///") and Path(uri.removeprefix("sqlite:///")) == project_root() / MLFLOW_DB


def setup(experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the project store; create the experiment with artifacts in <root>/mlruns."""
    import mlflow

    quiet_mlflow()
    check_store()
    mlflow.set_tracking_uri(tracking_uri())
    with store_lock(tracking_uri()):
        try:
            follow_moved_project()
        except sqlite3.Error as err:
            raise DataError(f"MLflow store {tracking_uri().removeprefix('sqlite:///')} names its artifacts in "
                            f"another folder (the project was moved) and cannot be updated ({err})") from None
        return _setup_experiment(mlflow, experiment)


# Where MLflow keeps artifact locations, all absolute: a moved project's store names the old folder.
_LOCATION_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                     ("logged_models", "artifact_location"), ("model_versions", "storage_location"),
                     ("model_versions", "source"))


def _local_path(location: str) -> str:
    """A local artifact location as a plain path (MLflow stores both paths and file:// URIs)."""
    from urllib.parse import unquote, urlparse

    return unquote(urlparse(location).path) if location.startswith("file:") else location


def _another_store(path: Path, db: Path) -> bool:
    """Whether `path` is an MLflow store other than `db`: the folder this project was copied from."""
    return os.path.isfile(path) and not os.path.samefile(path, db)


def follow_moved_project(uri: str | None = None) -> tuple[str, str] | None:
    """A project folder moved or copied after runs exist: the project store (mlflow.db) still
    names every artifact by its old absolute path, so models:/ references fail to load and new
    runs write into the old folder. When the store's experiment lives in another folder's
    mlruns/ and this project has its own mlruns/, every artifact location is pointed here, in
    one SQLite transaction; returns (old, new) mlruns folders when it did so, else None.
    `uri`: the store to look at (default: the one stages use; `mlflow ui --app-name emovision`
    passes the one it serves). Raises sqlite3.Error when the store cannot be written."""
    uri = uri or tracking_uri()
    db = Path(uri.removeprefix("sqlite:///"))
    new = project_root() / MLFLOW_ARTIFACTS
    if not project_store(uri) or not db.is_file() or not new.is_dir():
        return None
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as con:
        try:
            row = con.execute("SELECT artifact_location FROM experiments WHERE name = ?", (EXPERIMENT,)).fetchone()
        except sqlite3.OperationalError:  # an empty file: MLflow has not made its tables yet
            return None
        if row is None or not row[0] or ("://" in row[0] and not row[0].startswith("file:")):
            return None
        parts = Path(_local_path(row[0])).parts
        if MLFLOW_ARTIFACTS not in parts:
            return None
        old = Path(*parts[:len(parts) - parts[::-1].index(MLFLOW_ARTIFACTS)])
        # os.path.exists: a folder this user may not look into (a project copied from a
        # colleague's private folder) is one the project left; Path.exists raises there
        reachable = os.path.exists(old)
        if old == new or (reachable and os.path.samefile(old, new)):
            return None
        if reachable and not _another_store(old.parent / db.name, db):
            return None  # kept there on purpose, or a store this folder shares (mlflow.db a link)
        tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        with con:  # one transaction: every location moves, or none
            con.execute("BEGIN IMMEDIATE")
            for table, column in _LOCATION_COLUMNS:
                if table not in tables:
                    continue
                for before, after in {(str(old), str(new)), (old.as_uri(), new.as_uri()),
                                      (f"file://{old}", f"file://{new}")}:
                    con.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                                f"WHERE substr({column}, 1, ?) = ? AND (length({column}) = ? "
                                f"OR substr({column}, ?, 1) = '/')",
                                (after, len(before) + 1, len(before), before, len(before), len(before) + 1))
    print(f"the project moved: MLflow's artifact paths in {db.name} now point into {new} (they named {old})",
          file=sys.stderr)
    return str(old), str(new)


@contextlib.contextmanager
def store_lock(uri: str | None = None) -> Iterator[None]:
    """Serialise store creation and registry changes between processes for a local SQLite
    store: the first client creates the schema, and two doing so at once (parallel tuning
    workers) can fail; a promotion checks the champion and replaces it as one step."""
    uri = uri or tracking_uri()
    path = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
    try:
        import fcntl
    except ImportError:  # Windows: rely on the retries alone
        fcntl = None
    if path is None or fcntl is None or not Path(path).parent.is_dir():
        yield
        return
    with open(f"{path}.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # waiting in silence looked like a hang (`dvc repro` said nothing for ever)
            handle.seek(0)
            holder = handle.read().strip()
            print(f"waiting for the MLflow store lock {path}.lock, held by "
                  f"{f'process {holder}' if holder else 'another process'} (Ctrl-C to stop)",
                  file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.truncate(0)  # the holder, for the message above
        handle.write(fileio.this_process())
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _setup_experiment(mlflow, experiment: str) -> str:
    for attempt in range(STORE_INIT_RETRIES):
        try:  # the first client creates the SQLite schema; parallel workers may race on it
            client = mlflow.MlflowClient()
            exp = client.get_experiment_by_name(experiment)
            break
        except Exception as err:
            if not tracking_uri().startswith("sqlite:///"):  # a server that is down or refuses us
                raise DataError(_unusable_store(tracking_uri(), err)) from None
            if attempt == STORE_INIT_RETRIES - 1:
                raise
            time.sleep(0.5 + random.random())
    if exp is None:
        # decided by the store's path: MLFLOW_TRACKING_URI cannot tell (mlflow.set_tracking_uri
        # sets it), and MLflow's own default is <working directory>/mlruns
        location = str(project_root() / MLFLOW_ARTIFACTS) if project_store() else None
        try:
            exp_id = client.create_experiment(experiment, artifact_location=location,
                                              tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except Exception:  # created concurrently by another process
            exp_id = client.get_experiment_by_name(experiment).experiment_id
    else:
        exp_id = exp.experiment_id
        if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # a store made before this tag
            client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def git_commit(root: Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root or project_root(),
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@contextlib.contextmanager
def tracked_run(run_name: str | None = None, run_id: str | None = None, nested: bool = False,
                tags: dict[str, str] | None = None) -> Iterator[Any]:
    """An MLflow run that ends FINISHED, FAILED on an exception, KILLED on Ctrl-C; tagged with
    its owner process, so a later stage can end it KILLED after a kill -9 (end_orphaned_runs)."""
    import mlflow

    tags = {**(tags or {}), OWNER_TAG: fileio.this_process()}
    run = mlflow.start_run(run_id=run_id, run_name=run_name, nested=nested, tags=tags)
    try:  # from here on the run is ours to end: a Ctrl-C while tidying a reopened run ends it too
        if run_id is not None:  # reopened (a resumed training): what it left PENDING, a process that is gone did
            fail_pending_models(run_id)
        yield run
    except BaseException as err:
        with contextlib.suppress(Exception):  # the run's end matters more than this tidying
            fail_pending_models(run.info.run_id)
        mlflow.end_run("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    mlflow.end_run("FINISHED")


def fail_pending_models(run_id: str, client=None) -> list[str]:
    """Mark FAILED the models of run `run_id` that MLflow left PENDING, and return their ids:
    MLflow marks a logged model READY when `log_model` returns and leaves it PENDING for good
    when that is interrupted (Ctrl-C or kill -9 while it copies the files), a model without
    weights listed beside the run's real one."""
    import mlflow
    from mlflow.entities import LoggedModelStatus

    client = client or mlflow.MlflowClient()
    experiment = client.get_run(run_id).info.experiment_id
    pending = [m.model_id for m in client.search_logged_models([experiment], filter_string=f"source_run_id = '{run_id}'")
               if m.status == LoggedModelStatus.PENDING]
    for model_id in pending:
        client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)
    return pending


def run_file(models_dir: Path) -> Path:
    return Path(models_dir) / RUN_FILE


def write_run_file(models_dir: Path, info: dict[str, Any]) -> Path:
    """Record the training in `models_dir` (atomically: a reader never sees half a file)."""
    if not isinstance(info.get("run_id"), str) or not info["run_id"]:
        raise ValueError(f"a {RUN_FILE} needs a run_id, got {info!r}")
    return fileio.write_json(run_file(models_dir), info)


def read_run_file(models_dir: Path, required: bool = False) -> dict[str, Any] | None:
    """The training recorded in `models_dir`: None when there is no run.json (and `required`
    is False); a DataError in one line when it is unreadable or not a training record."""
    path = run_file(models_dir)
    if not path.exists():
        if required:
            raise DataError(f"no trained model in {models_dir}/: {path} is missing "
                            f"(run `python -m stages.train` first)")
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path} cannot be read ({type(err).__name__}); {RUN_FILE_FIX}") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON (line {err.lineno}, column {err.colno}); {RUN_FILE_FIX}") from None
    if not isinstance(info, dict) or not isinstance(info.get("run_id"), str) or not info["run_id"]:
        raise DataError(f"{path} is not a training record (no run_id); {RUN_FILE_FIX}")
    return info


def is_finished(info: dict[str, Any]) -> bool:
    """Whether run.json records a training that registered its model (a killed one has only run_id)."""
    return {"model_name", "model_version"} <= set(info)


def check_finished(models_dir: Path, info: dict[str, Any]) -> None:
    """A DataError in one line when run.json's training never registered its model. Asked after
    `check_recorded_run`: --resume continues only a run the store in use holds."""
    if not is_finished(info):
        raise DataError(f"{run_file(models_dir)}: the training in {models_dir}/ did not finish (no registered "
                        f"model); finish it with `python -m stages.train --resume` or run `dvc repro`")


TRAIN_AGAIN = "or train again with `dvc repro -f --downstream train` (train, evaluate and bench)"


def recorded_run_problem(models_dir: Path, info: dict[str, Any], version: bool = False,
                         logged_model: bool = False) -> str | None:
    """Why the MLflow run run.json names (and, with `version`, its registered version; with
    `logged_model`, its logged model) cannot be used in the store in use, or None: a store
    deleted to start afresh, a run, version or model deleted in MLflow, another MLFLOW_TRACKING_URI."""
    import mlflow

    client = mlflow.MlflowClient()
    where = f"{run_file(models_dir)} names MLflow run {info['run_id']}"
    try:
        run = client.get_run(info["run_id"])
    except mlflow.exceptions.MlflowException:
        return (f"{where}, which is not in the store {shown_uri(tracking_uri())} (a new or another store: "
                f"if another holds it, set MLFLOW_TRACKING_URI to that one)")
    if run.info.lifecycle_stage == "deleted":
        return f"{where}, which was deleted in MLflow (`mlflow ui` can restore it)"
    if version:
        try:
            client.get_model_version(info["model_name"], str(info["model_version"]))
        except mlflow.exceptions.MlflowException:
            return (f"{run_file(models_dir)} names {info['model_name']} v{info['model_version']}, which is "
                    f"not in the registry of {shown_uri(tracking_uri())} (deleted?)")
    if logged_model and info.get("model_id"):
        try:
            client.get_logged_model(info["model_id"])
        except mlflow.exceptions.MlflowException:
            return (f"{run_file(models_dir)} names MLflow logged model {info['model_id']}, which is not in "
                    f"the store {shown_uri(tracking_uri())} (deleted?)")
    return None


def check_recorded_run(models_dir: Path, info: dict[str, Any], version: bool = False,
                       logged_model: bool = False) -> None:
    """A DataError in one line, before a stage writes anything, when run.json's run (or version)
    is not in the store in use (`recorded_run_problem`): evaluate and bench otherwise rewrote
    their reports and then ended in MLflow's traceback `Run with id=... not found`."""
    problem = recorded_run_problem(models_dir, info, version, logged_model)
    if problem:
        raise DataError(f"{problem}; {TRAIN_AGAIN}")


def recorded_run_id(models_dir: Path) -> str | None:
    """The MLflow run run.json in `models_dir` names; None when there is none or it is unreadable."""
    try:
        info = read_run_file(models_dir)
    except DataError:
        return None
    return info["run_id"] if info else None


def end_abandoned_run(models_dir: Path) -> str | None:
    """A training killed outright (kill -9, a reboot) leaves its MLflow run RUNNING; when the
    next training in `models_dir` starts over instead of resuming it, that run is marked
    KILLED here (its id returned). Only for the unfinished run run.json names: the caller
    holds `models_dir`, so no live training owns it."""
    import mlflow

    try:
        info = read_run_file(models_dir)
    except DataError:  # unreadable: nothing to tell which run it was
        return None
    if info is None or "model_version" in info:
        return None
    try:
        ended = end_runs([info["run_id"]])
    except mlflow.exceptions.MlflowException:  # another store, or deleted
        return None
    return ended[0] if ended else None


def end_runs(run_ids: list[str], client=None) -> list[str]:
    """Mark KILLED those of `run_ids` still RUNNING (whose process is known to be gone);
    returns their ids."""
    import mlflow

    client = client or mlflow.MlflowClient()
    ended = []
    for run_id in run_ids:
        if client.get_run(run_id).info.status == "RUNNING":
            fail_pending_models(run_id, client)
            client.set_terminated(run_id, "KILLED")
            ended.append(run_id)
    return ended


def end_orphaned_runs(experiment_id: str, keep: str | None = None) -> list[Any]:
    """Mark KILLED the runs of the experiment left RUNNING by a process of this machine that
    is gone (kill -9, a crash before its run could end; `OWNER_TAG`), and return them. Runs of
    other machines, or without an owner, are left: from here nobody can tell they are dead.
    The run `keep` is left to its caller (a training that may resume it)."""
    import mlflow

    client = mlflow.MlflowClient()
    orphans = [run for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'")
               if run.info.run_id != keep and fileio.owner_gone(run.data.tags.get(OWNER_TAG))]
    end_runs([run.info.run_id for run in orphans], client)
    return orphans


def run_tags(meta: dict[str, Any]) -> dict[str, str]:
    tags = {"dataset": str(meta.get("source", "unknown"))}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git_commit"] = commit
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


def run_name(params, source: str) -> str:
    """A run name a person can tell apart in the UI: DVC experiment, model, key params, data."""
    m, t = params.model, params.train
    parts = [os.environ.get("DVC_EXP_NAME") or "train", f"{m.name}-w{m.width}", f"lr{t.lr:g}",
             f"{t.epochs}ep", "demo" if source == "synthetic" else source]
    return " ".join(parts)


def log_dataset(meta: dict[str, Any], prepared_dir: Path) -> None:
    """Each prepared split as an MLflow dataset input (name, digest, row count in its profile),
    so the UI says what a run was trained, selected and tested on."""
    import mlflow

    from emovision.data.prepared import load_split

    name = "FER2013" if meta.get("source") == "fer2013" else "demo (synthetic faces)"
    for split, context in (("train", "training"), ("val", "validation (PublicTest)"), ("test", "test (PrivateTest)")):
        x, y = load_split(Path(prepared_dir), split)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "source can be interpreted in multiple ways": a local file
            dataset = mlflow.data.from_numpy(x, targets=y, source=str(Path(prepared_dir).resolve() / f"{split}.npz"),
                                             name=f"{name} {split}")
        mlflow.log_input(dataset, context=context)


# ---------------------------------------------------------------- model artifacts


def register_model(name: str, model_info, tags: dict[str, str]) -> str:
    """A new version of `name` for a logged model; returns the version."""
    import mlflow

    client = mlflow.MlflowClient()
    with contextlib.suppress(mlflow.exceptions.MlflowException):
        client.create_registered_model(name, description="Facial emotion recognition (emovision)")
    version = client.create_model_version(name, source=model_info.model_uri, run_id=model_info.run_id,
                                          tags={k: str(v) for k, v in tags.items()},
                                          model_id=model_info.model_id)
    return str(version.version)


def registered_version(name: str, run_id: str, epoch: int) -> tuple[str, str] | None:
    """(version, logged model id) of the version of `name` that run `run_id` registered from
    its best epoch `epoch`, or None."""
    import mlflow

    for version in mlflow.MlflowClient().search_model_versions(f"name='{name}' and run_id='{run_id}'"):
        if version.tags.get("epoch") == str(epoch):
            # the SQLite store leaves model_id empty; the source names the logged model
            return str(version.version), version.model_id or version.source.removeprefix("models:/")
    return None


# ---------------------------------------------------------------- resolving references

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<stage>[^/]+)|@(?P<alias>.+))?$")
PROMOTE_HINT = "`python -m stages.promote --version N` makes version N Production and @champion"


def _registry_hint(name: str, client=None) -> str:
    """What exists in the registry, for error messages."""
    import mlflow

    client = client or mlflow.MlflowClient()
    try:
        models = [m.name for m in client.search_registered_models()]
    except Exception:  # a server that is down: the registry is unknown, not empty
        return f"the registry at {shown_uri(client.tracking_uri)} cannot be read (MLFLOW_TRACKING_URI)"
    if name not in models:
        have = f"registered models: {', '.join(models)}" if models else "the registry is empty"
        return (f"{have} (tracking URI {shown_uri(client.tracking_uri)}); train and register one with `dvc repro` "
                f"(`dvc repro -f --downstream train` when it finds nothing to do), or register the shipped model with "
                f"`python -m stages.promote --pretrained`")
    versions = client.search_model_versions(f"name='{name}'")
    stages = sorted({v.current_stage for v in versions if v.current_stage != "None"})
    aliases = sorted(client.get_registered_model(name).aliases)
    return (f"'{name}' has versions {', '.join(sorted((str(v.version) for v in versions), key=int))}"
            f"; stages: {', '.join(stages) or 'none'}; aliases: {', '.join(aliases) or 'none'}"
            f" ({PROMOTE_HINT})")


def _registered(client, name: str) -> bool:
    import mlflow

    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        return False
    return True


def _unusable_store(uri: str, err: BaseException) -> str:
    """The line for a tracking URI MLflow will not use: a server that refuses us, a scheme it has
    no store for (foo://), a folder or file:// (its file store, off in MLflow 3)."""
    line = shown_uri((str(err).strip().splitlines() or [type(err).__name__])[0])[:300]
    return f"MLflow store {shown_uri(uri)} cannot be used (MLFLOW_TRACKING_URI): {line}"


def read_client():
    """A client on the project's store for reading only: a missing SQLite store is an error,
    never created (no mlflow.db, no lock file, no experiment)."""
    import mlflow

    quiet_mlflow()
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        if project_store(uri) and (project_root() / PROJECT_MARKER).is_file():  # a project that registered nothing yet
            raise ModelRefError(
                f"no MLflow store at {uri.removeprefix('sqlite:///')} yet: nothing is registered in this project; "
                f"`dvc repro` trains and registers a model, `python -m stages.promote --pretrained` registers "
                f"the shipped one (or name it directly: pretrained)")
        if os.environ.get("MLFLOW_TRACKING_URI"):  # the user's own name for it, not the project's store
            raise ModelRefError(f"no MLflow store at {uri.removeprefix('sqlite:///')}, the SQLite file "
                                f"MLFLOW_TRACKING_URI names: correct it, or unset it to use the project's store")
        raise ModelRefError(
            f"no MLflow store at {uri.removeprefix('sqlite:///')} (the project root is the nearest folder "
            f"with {PROJECT_MARKER} from {Path.cwd()} up); run this from the project, or set MLFLOW_TRACKING_URI")
    check_store(uri)
    try:
        follow_moved_project()
    except sqlite3.Error as err:  # a read-only store, say: loading would fail on the old paths
        raise ModelRefError(f"MLflow store {uri.removeprefix('sqlite:///')} names its artifacts in another "
                            f"folder (the project was moved) and cannot be updated ({err}); run this where "
                            f"the store can be written") from None
    try:  # MLflow opens the store here: a folder or an unknown scheme raised its traceback
        return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    except mlflow.exceptions.MlflowException as err:
        raise ModelRefError(_unusable_store(uri, err)) from None


def _raise_if_files_missing(ref: str, client) -> None:
    """A reference that resolves in the store but whose local files are gone (mlruns/ deleted,
    or mlflow.db copied without it): MLflow's own words for it are `No such artifact: ''`."""
    try:
        if ref.startswith("models:/"):
            from mlflow.store.artifact.utils.models import get_model_name_and_version

            found = get_model_name_and_version(client, ref)
            if len(found) != 2:  # models:/<logged model id>
                return
            location = client.get_model_version_download_uri(*found)
        else:
            location = client.get_run(ref.removeprefix("runs:/").split("/")[0]).info.artifact_uri
    except Exception:  # it does not resolve: the caller's message says so
        return
    if "://" in location and not location.startswith("file:"):
        return
    folder = Path(_local_path(location))
    if folder.exists():
        return
    if client.tracking_uri.startswith(("http://", "https://")):
        # runs logged to the store itself (the project's mlflow.db, served by `mlflow ui`) name
        # their files by a path of the server's machine; runs logged through an `mlflow server`
        # have mlflow-artifacts: locations, which it serves
        raise ModelRefError(f"cannot load {ref}: its files are in {folder} on the machine of the tracking server "
                            f"{shown_uri(client.tracking_uri)}, not on this one (its runs were logged to the store there, not "
                            f"through the server); load it there, or share models through an `mlflow server "
                            f"--artifacts-destination ...` that training logs to as well")
    raise ModelRefError(f"cannot load {ref}: its files are missing ({folder} does not exist: "
                        f"{MLFLOW_ARTIFACTS}/ deleted, or mlflow.db copied without it)")


def _artifact_location(ref: str, client) -> str:
    """Where a models:/ or runs:/ reference's files are, resolved in `client`'s registry. MLflow's own
    resolution of models:/ (3.17) asks the process-wide registry URI whatever it is passed, by
    default sqlite:///mlflow.db in the working directory: from a project subfolder it made an
    empty store there and said 'Registered Model with name=fer not found'. runs:/<id>/<name>
    names the run's logged model <name>, resolved the same way."""
    if ref.startswith("runs:/"):
        run_id, _, rest = ref.removeprefix("runs:/").partition("/")
        name, _, inside = rest.partition("/")
        experiment = client.get_run(run_id).info.experiment_id
        logged = client.search_logged_models(experiment_ids=[experiment],
                                             filter_string=f"name = '{name}' AND source_run_id = '{run_id}'")
        if not logged:  # the run's own artifacts: MLflow resolves those with the URI it is passed
            return ref
        return logged[0].artifact_location + (f"/{inside}" if inside else "")
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    found = get_model_name_and_version(client, ref)
    if len(found) == 1:  # models:/<logged model id>
        return client.get_logged_model(found[0]).artifact_location
    return client.get_model_version_download_uri(*found)


def download_model(ref: str) -> Path:
    """Resolve `models:/name/Stage`, `models:/name@alias`, `models:/name/3` or `runs:/id/model`
    to a local model folder (an MLflow model, or the older weights.pt + config.json folder)."""
    import mlflow

    m = _MODELS_URI.match(ref)
    if ref.startswith("runs:/") and not ref[len("runs:/"):].split("/")[0]:
        raise ModelRefError(f"malformed model URI {ref!r}; use runs:/RUN_ID/model")
    if ref.startswith("models:/") and not m:
        raise ModelRefError(f"malformed model URI {ref!r}; use models:/NAME/STAGE, models:/NAME@ALIAS "
                            f"or models:/NAME/VERSION")
    client = read_client()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = Path(mlflow.artifacts.download_artifacts(_artifact_location(ref, client),
                                                            tracking_uri=client.tracking_uri))
    except (mlflow.exceptions.MlflowException, OSError) as err:
        _raise_if_files_missing(ref, client)
        first = (str(err).splitlines() or [type(err).__name__])[0].rstrip(". ")
        if m and m["alias"] and isinstance(err, mlflow.exceptions.MlflowException) and _registered(client, m["name"]):
            first = f"'{m['name']}' has no alias '{m['alias']}'"  # MLflow says the model itself is not found
        elif m and not m["stage"] and not m["alias"] and _registered(client, m["name"]):
            # MLflow 3 reads models:/X as a logged model's id: "Logged model with ID 'fer' not found"
            first = (f"a registered model needs a version, stage or alias after its name (models:/{m['name']}/1, "
                     f"models:/{m['name']}/Production, models:/{m['name']}@champion)")
        if m and isinstance(err, mlflow.exceptions.MlflowException):
            raise ModelRefError(f"cannot load {ref}: {first}. {_registry_hint(m['name'], client)}") from None
        raise ModelRefError(f"cannot load {ref}: {first}") from None
    from emovision import artifact  # torch: not for what only opens the store (mlflow ui --app-name emovision)

    try:
        artifact.model_files(path)
    except ModelRefError:
        _raise_if_files_missing(ref, client)
        raise ModelRefError(f"{ref} is not an emovision model (no {artifact.CONFIG_FILE} in it)") from None
    return path
