"""Shared fixtures: small params files, prepared demo data, an isolated MLflow store."""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SHARED_ARCHIVE = REPO.parent / "shared" / "data" / "fer2013-images.tar.xz"

# A suite started in the background (`cmd &` without job control, as some CI runners do)
# gets SIGINT ignored, and every process it starts inherits that: the Ctrl-C tests' children
# would then never see the signal and finish normally. A handler set here is reset to the
# default in each child at exec, so children take Ctrl-C as a terminal's processes do.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The apps keep ONNX exports in the user's cache (onnx_backend.cache_dir): the suite keeps its own,
# shared by every test of a run (each model is exported once) and by the processes they start.
_CACHE = tempfile.TemporaryDirectory(prefix="emovision-test-cache-")
os.environ["XDG_CACHE_HOME"] = _CACHE.name

# Small, fast settings every end-to-end test starts from.
TINY = {
    "data": {"synthetic_train_per_class": 20},
    "model": {"width": 8},
    "train": {"epochs": 1, "batch_size": 32, "patience": 0, "threads": 1},
    "evaluate": {"batch_size": 256},
    "bench": {"repeats": 2, "train_batches": 2, "video_frames": 20},
    "tune": {"n_trials": 3, "epochs": 1},
    "distill": {"teachers": [], "alpha": 0.0},  # params.yaml distils from FER2013 teachers
}


def write_params(path: Path, overrides: dict | None = None, base: dict | None = None) -> Path:
    """Write a params file: `base` (default TINY) deep-merged with `overrides`."""
    merged: dict = {k: dict(v) for k, v in (base if base is not None else TINY).items()}
    for section, values in (overrides or {}).items():
        merged.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(merged, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def migrated_mlflow_db(tmp_path_factory):
    """An empty MLflow store whose schema is made once: migrating a new mlflow.db takes
    seconds on a busy machine (in each process that opens it first), copying one takes
    milliseconds."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch, migrated_mlflow_db):
    """A real MLflow SQLite store in a temp dir, used through MLFLOW_TRACKING_URI: a copy of
    the empty migrated store (MLflow made its schema once per session). A test about what
    happens before a store exists deletes the file first; the `trained` fixture and the
    servers of test_mlflow_ui still have MLflow make new stores."""
    path = tmp_path / "mlflow.db"
    shutil.copy(migrated_mlflow_db, path)
    uri = f"sqlite:///{path}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import mlflow

    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None) if hasattr(mlflow, "set_tracking_uri") else None


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run with the temp dir as the project root (stages write data/, models/, reports/)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """One tiny demo model, trained, registered as fer v1 and promoted, in its own MLflow
    store; tests that use it get MLFLOW_TRACKING_URI and the working directory set to it."""
    from stages.prepare import main as prepare_main
    from stages.promote import main as promote_main
    from stages.train import main as train_main

    root = tmp_path_factory.mktemp("trained")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    write_params(root / "params.yaml")
    assert prepare_main(["--params", "params.yaml"]) == 0
    assert train_main(["--params", "params.yaml"]) == 0
    assert promote_main(["--params", "params.yaml", "--version", "1"]) == 0
    mp.undo()
    return root


@pytest.fixture
def in_trained(trained, monkeypatch):
    monkeypatch.chdir(trained)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{trained / 'mlflow.db'}")
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{trained / 'mlflow.db'}")
    return trained


@pytest.fixture(scope="session")
def fer2013_raw(tmp_path_factory) -> Path:
    """The real FER2013 archive unpacked once per session (skips when ../shared is absent)."""
    import tarfile

    if not SHARED_ARCHIVE.is_file():
        pytest.skip("FER2013 archive (../shared/data) not present")
    raw = tmp_path_factory.mktemp("fer2013_raw")
    with tarfile.open(SHARED_ARCHIVE) as tar:
        tar.extractall(raw / "fer2013", filter="data")
    return raw


@pytest.fixture(scope="session")
def fer2013_prepared(fer2013_raw, tmp_path_factory) -> Path:
    """The real FER2013 through `stages.prepare`, once per session: its prepared dir."""
    from stages.prepare import main as prepare_main

    root = tmp_path_factory.mktemp("fer2013_prepared")
    params = write_params(root / "params.yaml", {"data": {
        "source": "fer2013", "raw_dir": str(fer2013_raw), "prepared_dir": str(root / "prepared")}})
    assert prepare_main(["--params", str(params)]) == 0
    return root / "prepared"
