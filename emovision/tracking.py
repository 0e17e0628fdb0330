"""MLflow: where runs live, how a model is logged and registered, how references resolve.

Runs live in `sqlite:///<project root>/mlflow.db` with artifacts in `<project root>/mlruns`
(`MLFLOW_TRACKING_URI` overrides), so plain `mlflow ui` in the project root shows all.
A logged model is a folder `model/` holding `weights.pt` (a state dict, loadable with
`torch.load(weights_only=True)`) and `config.json` (architecture, kwargs, classes,
preprocessing): nothing in it is ever unpickled as code.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch

from emovision.errors import ModelRefError

EXPERIMENT = "emovision"
MODEL_ARTIFACT = "model"
WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.json"
PRODUCTION = "Production"
STORE_INIT_RETRIES = 5
CHAMPION = "champion"
# `dvc exp run --temp/--queue` runs stages in <root>/.dvc/tmp/exps/<name>/: log to <root>.
_DVC_TEMP = re.compile(r"^(?P<root>.*?)/\.dvc/tmp/exps/")


def project_root(cwd: Path | None = None) -> Path:
    cwd = (cwd or Path.cwd()).resolve()
    match = _DVC_TEMP.match(str(cwd))
    return Path(match["root"]) if match else cwd


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def quiet_mlflow() -> None:
    """Our own calls use registry stages on purpose (users asked for models:/fer/Production)."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"mlflow(\.|$)")
    warnings.filterwarnings("ignore", message=r".*[Ss]tage.*deprecated.*")
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def setup(experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the project store; create the experiment with artifacts in <root>/mlruns."""
    import mlflow

    quiet_mlflow()
    mlflow.set_tracking_uri(tracking_uri())
    with _store_lock(tracking_uri()):
        return _setup_experiment(mlflow, experiment)


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise store creation between processes for a local SQLite store: the first client
    creates the schema, and two doing so at once (parallel tuning workers) can fail."""
    path = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
    try:
        import fcntl
    except ImportError:  # Windows: rely on the retries alone
        fcntl = None
    if path is None or fcntl is None or not Path(path).parent.is_dir():
        yield
        return
    with open(f"{path}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
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
        except Exception:
            if attempt == STORE_INIT_RETRIES - 1:
                raise
            time.sleep(0.5 + random.random())
    if exp is None:
        location = None
        if tracking_uri().startswith("sqlite:///") and "MLFLOW_TRACKING_URI" not in os.environ:
            location = (project_root() / "mlruns").as_uri()
        try:
            exp_id = client.create_experiment(experiment, artifact_location=location)
        except Exception:  # created concurrently by another process
            exp_id = client.get_experiment_by_name(experiment).experiment_id
    else:
        exp_id = exp.experiment_id
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
    """An MLflow run that ends FINISHED, FAILED on an exception, KILLED on Ctrl-C."""
    import mlflow

    run = mlflow.start_run(run_id=run_id, run_name=run_name, nested=nested, tags=tags)
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def run_tags(meta: dict[str, Any]) -> dict[str, str]:
    tags = {"dataset": str(meta.get("source", "unknown"))}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git_commit"] = commit
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


# ---------------------------------------------------------------- model artifacts


def model_config(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The JSON half of a model: everything needed to rebuild and feed it."""
    keys = ("arch", "arch_kwargs", "classes", "preprocess", "metrics", "epoch", "dataset")
    return {"format": "emovision-model/1", **{k: ckpt[k] for k in keys if k in ckpt}}


def write_model_dir(ckpt: dict[str, Any], out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt["state_dict"], out_dir / WEIGHTS_FILE)
    (out_dir / CONFIG_FILE).write_text(json.dumps(model_config(ckpt), indent=2) + "\n")
    return out_dir


def log_model(ckpt: dict[str, Any], artifact_path: str = MODEL_ARTIFACT) -> str:
    """Log weights + config into the active run; returns the artifact URI."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifacts(str(write_model_dir(ckpt, Path(tmp))), artifact_path)
    return mlflow.get_artifact_uri(artifact_path)


def register_model(name: str, source: str, run_id: str | None, tags: dict[str, str]) -> str:
    """A new version of `name` pointing at a logged model folder; returns the version."""
    import mlflow

    client = mlflow.MlflowClient()
    with contextlib.suppress(mlflow.exceptions.MlflowException):
        client.create_registered_model(name, description="Facial emotion recognition (emovision)")
    version = client.create_model_version(name, source=source, run_id=run_id,
                                          tags={k: str(v) for k, v in tags.items()})
    return str(version.version)


# ---------------------------------------------------------------- resolving references

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<stage>[^/]+)|@(?P<alias>.+))?$")


def _registry_hint(name: str) -> str:
    """What exists in the registry, for error messages."""
    import mlflow

    client = mlflow.MlflowClient()
    try:
        models = [m.name for m in client.search_registered_models()]
    except Exception:
        models = []
    if name not in models:
        have = f"registered models: {', '.join(models)}" if models else "the registry is empty"
        return f"{have} (tracking URI {tracking_uri()}); run `dvc repro` to train and register one"
    versions = client.search_model_versions(f"name='{name}'")
    stages = sorted({v.current_stage for v in versions if v.current_stage != "None"})
    aliases = sorted(client.get_registered_model(name).aliases)
    return (f"'{name}' has versions {', '.join(sorted((str(v.version) for v in versions), key=int))}"
            f"; stages: {', '.join(stages) or 'none'}; aliases: {', '.join(aliases) or 'none'}"
            f"; make one with `python -m stages.promote --version N`")


def download_model(ref: str) -> Path:
    """Resolve `models:/name/Stage`, `models:/name@alias`, `models:/name/3` or `runs:/id/model`
    to a local folder with weights.pt and config.json."""
    import mlflow

    setup()
    m = _MODELS_URI.match(ref)
    if ref.startswith("models:/") and not m:
        raise ModelRefError(f"malformed model URI {ref!r}; use models:/NAME/STAGE, models:/NAME@ALIAS "
                            f"or models:/NAME/VERSION")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = Path(mlflow.artifacts.download_artifacts(ref))
    except mlflow.exceptions.MlflowException as err:
        if m:
            first = str(err).splitlines()[0]
            raise ModelRefError(f"cannot load {ref}: {first}. {_registry_hint(m['name'])}") from None
        raise ModelRefError(f"cannot load {ref}: {str(err).splitlines()[0]}") from None
    except OSError as err:
        raise ModelRefError(f"cannot load {ref}: {err}") from None
    if not (path / WEIGHTS_FILE).is_file() or not (path / CONFIG_FILE).is_file():
        raise ModelRefError(f"{ref} is not an emovision model (no {WEIGHTS_FILE} and {CONFIG_FILE} in it)")
    return path


def read_model_dir(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, state_dict) of a model folder, without unpickling code."""
    config = json.loads((Path(path) / CONFIG_FILE).read_text())
    state_dict = torch.load(Path(path) / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    return config, state_dict
